"""Measured vs predicted VNI of residual nets, both branch families (docs/theory.md, "Residual nets").

    PYTHONPATH=src python scripts/residual_theory_table.py [--seeds 3] [--big]
    PYTHONPATH=src python scripts/residual_theory_table.py --points relu,two,128,3000,0.1 --seeds 8 --first-seed 8 \
        --out benchmarks/data/residual_relu_two_128_3000_s8.json          # more seeds of one point, resumable
    PYTHONPATH=src python scripts/residual_theory_table.py --from "benchmarks/data/residual_*.json"  # pooled table
    PYTHONPATH=src python scripts/residual_theory_table.py --pieces --seeds 16     # relu/two N = 128: the pieces

Inputs: n = 4N i.i.d. N(0, 1) samples (seed 1000 + s); nets of seeds s at the activation's critical
sigma_w^2, Gaussian weights; VNI streamed layer by layer (metrics.vni_per_layer) and read at L/4, L/2, L.
Prediction: theory_residual.predict_residual with samples = n. ``--big`` adds N = 128, L = 3000 (minutes on one
core). ``--out`` writes every seed's values as JSON; ``--from`` pools such files (distinct seeds per point) and
prints the table again against the current theory, without simulating.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import time

import torch

from depthscope.metrics import vni_per_layer
from depthscope.nets import NetSpec
from depthscope.theory_residual import predict_residual

POINTS = [  # (activation, branch, N, L, alpha)
    ("linear", "one", 64, 400, 0.1), ("linear", "two", 64, 400, 0.1), ("linear", "one", 128, 100, 0.3),
    ("tanh", "one", 64, 400, 0.1), ("tanh", "two", 64, 400, 0.1), ("tanh", "two", 128, 200, 0.3),
    ("relu", "two", 64, 400, 0.1), ("relu", "two", 128, 200, 0.3), ("relu", "one", 64, 400, 0.1),
]
BIG = [("relu", "two", 128, 3000, 0.1), ("tanh", "two", 128, 3000, 0.1)]


def parse_point(text: str) -> tuple[str, str, int, int, float]:
    act, br, n_w, depth, alpha = text.split(",")
    return act, br, int(n_w), int(depth), float(alpha)


def measure(point: tuple[str, str, int, int, float], seeds: list[int]) -> dict[int, dict[int, float]]:
    """{layer: {seed: VNI}} at L/4, L/2, L for the given net seeds (inputs of seed 1000 + s)."""
    act, br, n_w, depth, alpha = point
    layers = sorted({depth // 4, depth // 2, depth})
    out: dict[int, dict[int, float]] = {l: {} for l in layers}
    for s in seeds:
        x = torch.randn(4 * n_w, n_w, generator=torch.Generator().manual_seed(1000 + s))
        spec = NetSpec(depth, n_w, act, "gaussian", arch="residual", branch=br, alpha=alpha)
        r = vni_per_layer(spec, x, s, layers=layers)
        for l in layers:
            out[l][s] = float(r[l - 1])
    return out


def table(data: dict[tuple, dict[int, dict[int, float]]]) -> list[dict]:
    """Rows (one per point and layer): seeds' mean, its standard error (share of the mean), theory, rel. error."""
    rows = []
    for point, per_layer in data.items():
        act, br, n_w, depth, alpha = point
        th = predict_residual(depth, n_w, act, "gaussian", branch=br, alpha=alpha, input_variance=1.0,
                              samples=4 * n_w)
        for l in sorted(per_layer):
            vals = list(per_layer[l].values())
            k = len(vals)
            mean = sum(vals) / k
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (k - 1)) if k > 1 else float("nan")
            p = float(th.vni[l - 1])
            rows.append(dict(activation=act, branch=br, width=n_w, depth=depth, alpha=alpha, layer=l, seeds=k,
                             measured=mean, se=sd / math.sqrt(k) / mean if k > 1 else float("nan"),
                             theory=p, err=p / mean - 1, covered=bool(th.covered), per_seed=per_layer[l]))
    return rows


def pieces(seeds: list[int], n_w: int = 128, depth: int = 3000, alpha: float = 0.1) -> None:
    """The radial mode's pieces per net (relu/two), measured against the model at L/4, L/2, 3L/4, L: R, the log-norm
    variance v, mean2 = |mean|^2/N (measured/model and its spread over nets), the radial fraction f = m^T C m / tr C
    (m the mean direction) and its mean square, f from the per-net formula mean2 (1 - e^{-v/4}) / T with the
    measured pieces, the bulk's variance over the mean T (1 - f) / mean2, and the correlation over nets of log mean2
    and log T_b."""
    import math

    import numpy as np

    from depthscope.nets import stream_layers

    marks = [depth // 4, depth // 2, 3 * depth // 4, depth]
    acc: dict[int, list] = {l: [] for l in marks}
    for s in seeds:
        x = torch.randn(4 * n_w, n_w, generator=torch.Generator().manual_seed(1000 + s)).double()
        spec = NetSpec(depth, n_w, "relu", "gaussian", arch="residual", branch="two", alpha=alpha)
        for l, _, xl in stream_layers(spec, x, s):
            if l not in acc:
                continue
            m = xl.mean(0)
            xc = xl - m
            c = xc.T @ xc / (len(xl) - 1)
            t = float(c.trace()) / n_w
            mh = m / m.norm()
            v = float(torch.log((xl**2).sum(1)).var())
            mean2 = float(m @ m) / n_w
            acc[l].append([float((c * c).sum()) / float(c.trace()) ** 2, t, mean2, v, float(mh @ c @ mh) / n_w / t,
                           mean2 * -math.expm1(-v / 4) / t])
    th = predict_residual(depth, n_w, "relu", "gaussian", branch="two", alpha=alpha, input_variance=1.0,
                          samples=4 * n_w)
    print(f"{len(seeds)} nets | L | R meas / model | v meas / model | mean2 meas / model (rel. sd over nets) | "
          "f meas / model | E f^2 meas | f per-net formula | T_b / mean2 meas / model | corr(log mean2, log T_b)")
    for l in marks:
        a = np.array(acc[l])
        r, t, m2, v, f, fr = a.T
        tb = t * (1 - f)
        i = l - 1
        t_r = th.mean2[i] * -math.expm1(-th.norm_variance[i] / 4)
        print(f"| {l} | {r.mean():.3f} / {th.vni[i]:.3f} | {v.mean():.3f} / {th.norm_variance[i]:.3f} | "
              f"{m2.mean() / th.mean2[i]:.2f} ({m2.std(ddof=1) / m2.mean():.2f}) | {f.mean():.3f} / "
              f"{th.radial_fraction[i]:.3f} | {(f * f).mean():.3f} | {fr.mean():.3f} | {np.mean(tb / m2):.4f} / "
              f"{(th.m1[i] - t_r) / th.mean2[i]:.4f} | {np.corrcoef(np.log(m2), np.log(tb))[0, 1]:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--points", default=None, help="ACT,BRANCH,N,L,ALPHA[;...] instead of the built-in list")
    ap.add_argument("--out", default=None, help="write every seed's values as JSON")
    ap.add_argument("--pieces", action="store_true",
                    help="relu/two N = 128, alpha = 0.1, L = 3000: the radial mode's pieces per net (seeds as given)")
    ap.add_argument("--from", dest="source", default=None,
                    help="JSON files (comma list or glob) from --out: pool seeds per point, no simulation")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.pieces:
        pieces(list(range(a.first_seed, a.first_seed + a.seeds)))
        return
    data: dict[tuple, dict[int, dict[int, float]]] = {}
    if a.source:
        paths = [p for pat in a.source.split(",") for p in sorted(glob.glob(pat))]
        for path in paths:
            with open(path) as f:
                for r in json.load(f):
                    key = (r["activation"], r["branch"], r["width"], r["depth"], r["alpha"])
                    point = data.setdefault(key, {}).setdefault(r["layer"], {})
                    point.update({int(s): v for s, v in r["per_seed"].items()})
    else:
        pts = [parse_point(p) for p in a.points.split(";")] if a.points else POINTS + (BIG if a.big else [])
        for point in pts:
            t0 = time.process_time()
            data[point] = measure(point, list(range(a.first_seed, a.first_seed + a.seeds)))
            print(f"# {point}: {time.process_time() - t0:.0f} s CPU", flush=True)
    rows = table(data)
    print("| φ | branch | N | α | layer | seeds | measured | se | theory | rel. err | err / se |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['activation']} | {r['branch']} | {r['width']} | {r['alpha']:g} | {r['layer']} | {r['seeds']} | "
              f"{r['measured']:.4f} | {100 * r['se']:.1f}% | {r['theory']:.4f} | {100 * r['err']:+.1f}% | "
              + (f"{r['err'] / r['se']:+.1f} |" if r["covered"] and r["seeds"] > 1 and r["se"] > 0 else
                 "— |" if r["covered"] else "— (not covered) |"), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
