"""Measured vs predicted VNI of residual nets, both branch families (docs/theory.md, "Residual nets").

    PYTHONPATH=src python scripts/residual_theory_table.py [--seeds 3] [--big]

Inputs: n = 4N i.i.d. N(0, 1) samples (seed 1000 + s); nets of seeds 0..S-1 at the activation's critical
sigma_w^2, Gaussian weights; VNI streamed layer by layer (metrics.vni_per_layer). Prediction:
theory_residual.predict_residual with samples = n. ``--big`` adds N = 128, L = 3000 (minutes on one core).
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--big", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    pts = POINTS + ([("relu", "two", 128, 3000, 0.1), ("tanh", "two", 128, 3000, 0.1)] if a.big else [])
    print(f"{'act':>6} {'branch':>6} {'N':>4} {'L':>5} {'alpha':>5} {'layer':>5} {'measured':>9} {'± sem':>7} "
          f"{'theory':>8} {'rel.err':>8}  covered")
    for act, br, n_w, depth, alpha in pts:
        n = 4 * n_w
        t0 = time.time()
        runs = []
        for s in range(a.seeds):
            x = torch.randn(n, n_w, generator=torch.Generator().manual_seed(1000 + s))
            spec = NetSpec(depth, n_w, act, "gaussian", arch="residual", branch=br, alpha=alpha)
            layers = sorted({depth // 4, depth // 2, depth})
            runs.append(vni_per_layer(spec, x, s, layers=layers))
        m = torch.stack(runs)
        th = predict_residual(depth, n_w, act, "gaussian", branch=br, alpha=alpha, input_variance=1.0, samples=n)
        for l in layers:
            mean = float(m[:, l - 1].mean())
            sem = float(m[:, l - 1].std() / a.seeds**0.5) if a.seeds > 1 else 0.0
            p = float(th.vni[l - 1])
            print(f"{act:>6} {br:>6} {n_w:4d} {depth:5d} {alpha:5.2g} {l:5d} {mean:9.4f} {sem:7.4f} {p:8.4f} "
                  f"{(p - mean) / mean:+8.1%}  {th.covered}", flush=True)
        print(f"# {act} {br} N={n_w} L={depth}: {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
