"""Measured vs predicted VNI of residual nets, both branch families (docs/theory.md, "Residual nets").

    PYTHONPATH=src python scripts/residual_theory_table.py [--seeds 3] [--big]
    PYTHONPATH=src python scripts/residual_theory_table.py --points relu,two,128,3000,0.1 --seeds 8 --first-seed 8 \
        --out benchmarks/data/residual_relu_two_128_3000_s8.json          # more seeds of one point, resumable
    PYTHONPATH=src python scripts/residual_theory_table.py --from benchmarks/data/residual_*.json   # pooled table

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--points", default=None, help="ACT,BRANCH,N,L,ALPHA[;...] instead of the built-in list")
    ap.add_argument("--out", default=None, help="write every seed's values as JSON")
    ap.add_argument("--from", dest="source", default=None,
                    help="JSON files (comma list or glob) from --out: pool seeds per point, no simulation")
    a = ap.parse_args()
    torch.set_num_threads(1)
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
              f"{r['err'] / r['se'] if r['seeds'] > 1 else float('nan'):+.1f} |"
              + ("" if r["covered"] else " (not covered)"), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
