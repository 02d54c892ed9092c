"""Accuracy of the relu radial-angular VNI model (issue 12 section 1): a table of measured VNI against it.

    PYTHONPATH=src python benchmarks/theory_relu_table.py --widths 100 --seeds 32 --out benchmarks/data/relu_100.json
    PYTHONPATH=src python benchmarks/theory_relu_table.py --widths 1000 --inits gaussian --seeds 1 --first-seed 3 \
        --depths 1,3,10,100,250 --out benchmarks/data/relu_1000_gaussian_mid_s3.json   # one more seed, resumable
    PYTHONPATH=src python benchmarks/theory_relu_table.py --from benchmarks/data/relu_100.json,...  # the table again

The table in docs/theory.md is the --from of every file in benchmarks/data/ (seeds pooled per point).

Bias-free relu nets at sigma_w^2 = 2, i.i.d. N(0, 0.1) inputs of 784 features, 1000 samples, float64, layers
streamed (depthscope.nets.stream_layers: one layer's weights in memory). For each width N and init, the VNI
(eq. 3.5) at depths 1, 3, 10, N/10, N/4, N/2, N, averaged over seeds, beside the model's prediction of what
1000 samples read (predict(..., samples=1000).vni_sampled) and eq. 3.7. "err" is model/measured - 1; "se" is
the standard error of the measured mean over seeds, as a share of it: a gap below ~2 se is within the noise.
Prints a markdown table; --out FILE also writes the numbers (every seed's measurement) as JSON, and --from FILE
prints the table again from such a file with the current model, without simulating.

--parts measures the model's pieces per net instead (docs/theory.md, "ReLU"): the radial fraction f = m^T C m / tr C
(m the mean direction), the VNI of the orthogonal complement R_perp (debiased for the sample count), the share of
2 |Cov(r, u_perp)|^2 in tr C^2, and the spread over nets of 1 - c (c the mean cosine over all pairs), each beside
the model's value:

    PYTHONPATH=src python benchmarks/theory_relu_table.py --parts --widths 100 --seeds 24
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from depthscope import theory
from depthscope.metrics import vni
from depthscope.nets import NetSpec, stream_layers


def depths_for(n: int) -> list[int]:
    return sorted({d for d in (1, 3, 10, n // 10, n // 4, n // 2, n) if 1 <= d <= n})


def measure(init: str, n: int, depths: list[int], seeds: int, samples: int, p: int = 784,
            first_seed: int = 0) -> np.ndarray:
    out = np.empty((seeds, len(depths)))
    for i, s in enumerate(range(first_seed, first_seed + seeds)):
        spec = NetSpec(depth=max(depths), width=n, activation="relu", init=init, in_features=p)
        g = torch.Generator().manual_seed(1_000_000 + s)
        x = torch.randn(samples, p, generator=g, dtype=torch.float64) * math.sqrt(0.1)
        got = {l: float(vni(xl)) for l, _, xl in stream_layers(spec, x, s) if l in depths}
        out[i] = [got[d] for d in depths]
    return out


def parts(init: str, n: int, depths: list[int], seeds: int, samples: int, p: int = 784) -> None:
    """Print measured vs modelled f, R_perp, the cross share and sd(1 - c_net) (the mechanisms, one by one)."""
    from depthscope.theory_relu import relu_vni

    acc = {d: [] for d in depths}
    for s in range(seeds):
        spec = NetSpec(depth=max(depths), width=n, activation="relu", init=init, in_features=p)
        g = torch.Generator().manual_seed(1_000_000 + s)
        x = torch.randn(samples, p, generator=g, dtype=torch.float64) * math.sqrt(0.1)
        for l, _, xl in stream_layers(spec, x, s):
            if l not in acc:
                continue
            m = xl.mean(0)
            mh = m / m.norm()
            xc = xl - m
            c = xc.T @ xc / (samples - 1)
            t = c.trace()
            cm = c @ mh
            vr = mh @ cm
            cov = cm - vr * mh
            proj = torch.eye(n, dtype=c.dtype) - torch.outer(mh, mh)
            cp = proj @ c @ proj
            xn = xl / xl.norm(dim=1, keepdim=True)
            cos = ((xn.sum(0) ** 2).sum() - samples) / (samples * (samples - 1))
            acc[l].append([float((c * c).sum() / t**2), float(vr / t), float((cp * cp).sum() / cp.trace() ** 2),
                           float(2 * (cov @ cov) / (c * c).sum()), float(1 - cos)])
    mod = relu_vni(max(depths), n, init, p, samples)
    print(f"| {n} {init} L | R meas / model | f meas / model | N R_perp meas / model | cross share meas / model "
          "| sd(1 - c_net) meas / model |")
    print("| ---: | --- | --- | --- | --- | --- |")
    for d in depths:
        a = np.array(acc[d])
        r, f, rp, cr, oc = a.mean(0)
        rp = (rp - 1 / samples) / (1 + 1 / samples)  # the Wishart excess of the complement's own VNI
        i = d - 1
        print(f"| {d} | {r:.4f} / {mod['vni_sampled'][i]:.4f} | {f:.3f} / {mod['radial_fraction'][i]:.3f} | "
              f"{n * rp:.2f} / {n * mod['vni_angular'][i]:.2f} | {cr:.3f} / {mod['cross'][i] / mod['vni'][i]:.3f} | "
              f"{a[:, 4].std(ddof=1):.4f} / {math.sqrt(mod['_e'][i]):.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="100,200,400")
    ap.add_argument("--inits", default="gaussian,orthogonal")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depths", default=None, help="comma list (default: 1, 3, 10, N/10, N/4, N/2, N)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (extra seeds for a run)")
    ap.add_argument("--parts", action="store_true", help="measure the model's pieces per net (see above)")
    ap.add_argument("--summary", action="store_true",
                    help="also print one row per (N, init): each depth's model error, se where > 3% (docs/theory.md)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--from", dest="source", default=None,
                    help="JSON files from --out (comma list; distinct seeds are pooled per point): re-evaluate, "
                         "no simulation")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.parts:
        for n in [int(w) for w in a.widths.split(",")]:
            for init in a.inits.split(","):
                ds = [int(d) for d in a.depths.split(",")] if a.depths else depths_for(n)
                parts(init, n, ds, a.seeds, a.samples)
        return
    saved = {}
    if a.source:
        for path in a.source.split(","):
            with open(path) as f:
                for r in json.load(f):
                    point = saved.setdefault((r["width"], r["init"]), {}).setdefault(r["depth"], {})
                    # older files have no seed list: their seeds were 0..k-1
                    point.update(zip(r.get("seed_ids", range(len(r["per_seed"]))), r["per_seed"]))
        a.widths = ",".join(sorted({str(w) for w, _ in saved}, key=int))
        a.inits = ",".join(dict.fromkeys(i for _, i in saved))
    rows = []
    print("| N | init | L | seeds | measured | se | model | err | eq. 3.7 err |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in [int(w) for w in a.widths.split(",")]:
        depths = depths_for(n)
        for init in a.inits.split(","):
            t0 = time.time()
            if a.source:
                if (n, init) not in saved:
                    continue
                depths = sorted(saved[(n, init)])
                per = [np.array(list(saved[(n, init)][d].values())) for d in depths]
                ids = [list(saved[(n, init)][d]) for d in depths]
            else:
                if a.depths:
                    depths = [int(d) for d in a.depths.split(",")]
                m = measure(init, n, depths, a.seeds, a.samples, first_seed=a.first_seed)
                per = list(m.T)
                ids = [list(range(a.first_seed, a.first_seed + a.seeds))] * len(depths)
            r = theory.predict(max(depths), n, "relu", init, in_features=784, samples=a.samples)
            for i, d in enumerate(depths):
                vals = per[i]
                seeds = len(vals)
                mean = float(vals.mean())
                se = float(vals.std(ddof=1) / math.sqrt(seeds)) / mean if seeds > 1 else float("nan")
                model, eq37 = float(r.vni_sampled[d - 1]), float(r.vni_asymptotic[d - 1])
                rows.append(dict(width=n, init=init, depth=d, measured=mean, se=se, model=model,
                                 err=model / mean - 1, eq37_err=eq37 / mean - 1, seeds=seeds,
                                 per_seed=vals.tolist(), seed_ids=[int(k) for k in ids[i]]))
                print(f"| {n} | {init} | {d} | {seeds} | {mean:.4f} | {100 * se:.1f}% | {model:.4f} | "
                      f"{100 * (model / mean - 1):+.1f}% | {100 * (eq37 / mean - 1):+.0f}% |", flush=True)
            print(f"<!-- N={n} {init}: {time.time() - t0:.0f} s -->", flush=True)
    if a.summary:
        print("\n| N | init | seeds | L: model error (se where > 3%) | eq. 3.7 error |")
        print("| ---: | --- | ---: | --- | --- |")
        for key in dict.fromkeys((r["width"], r["init"]) for r in rows):
            rs = [r for r in rows if (r["width"], r["init"]) == key]
            seeds = sorted({r["seeds"] for r in rs})
            cells = ", ".join(f"{r['depth']}: {100 * r['err']:+.1f}%"
                              + (f" ({100 * r['se']:.0f}%)" if r["se"] > 0.03 or r["seeds"] < 2 else "")
                              for r in rs).replace("-", "−").replace("(nan%)", "(1 net)")
            lo, hi = min(r["eq37_err"] for r in rs), max(r["eq37_err"] for r in rs)
            print(f"| {key[0]} | {key[1]} | {'–'.join(map(str, seeds)) if len(seeds) > 1 else seeds[0]} | {cells} | "
                  f"{100 * lo:+.0f}% to {100 * hi:+.0f}% |".replace("+-", "−").replace("-", "−"))
    worst = max(rows, key=lambda r: abs(r["err"]))
    print(f"\nworst |err| {100 * abs(worst['err']):.1f}% at N={worst['width']} {worst['init']} L={worst['depth']} "
          f"(se {100 * worst['se']:.1f}%); within 10%: {sum(abs(r['err']) <= 0.10 for r in rows)}/{len(rows)}; "
          f"within 10% + 2 se: {sum(abs(r['err']) <= 0.10 + 2 * (r['se'] if r['seeds'] > 1 else 0) for r in rows)}"
          f"/{len(rows)}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
