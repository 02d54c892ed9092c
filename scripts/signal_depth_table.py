"""The depth scale xi_c measured on simulated nets against -1/log chi_c (issue 12 section 3; docs/theory.md).

    PYTHONPATH=src python scripts/signal_depth_table.py [--out benchmarks/data/signal_xi.json]
    PYTHONPATH=src python scripts/signal_depth_table.py --from benchmarks/data/signal_xi.json   # the table again

For each (activation, sigma_w^2, sigma_b^2, init, N): signal.measure_xi_c (pairs of inputs at q*, nets of seeds
0..nets-1, float64). Chaotic phase: g_l = half the difference of two trajectories started at c* -/+ delta on the
same nets; ordered phase: g_l = 1 - c_l from 1 - delta. xi is the log-linear fit of g_l over the asymptotic range
(from the layer where the c-map's own local depth scale is within 1% of xi_c, to the last layer where g_l is
above 10 standard errors over nets), xi_map the same fit on the c-map. The last column is the old measurement's
fit: the c-map from c = 0.45 over layers 3-25 (a log-linear fit of |c_l - c*| that includes the transient).
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from depthscope import signal

POINTS = [  # (activation, sigma_w2, sigma_b2, init, N, delta, pairs, nets)
    ("tanh", 4.0, 0.05, "gaussian", 1000, 0.1, 64, 32),
    ("tanh", 4.0, 0.05, "gaussian", 250, 0.1, 64, 32),
    ("tanh", 4.0, 0.05, "gaussian", 100, 0.1, 64, 32),
    ("tanh", 4.0, 0.05, "orthogonal", 500, 0.1, 64, 32),
    ("tanh", 2.5, 0.1, "gaussian", 1000, 0.05, 64, 32),
    ("hard_tanh", 2.0, 0.05, "gaussian", 1000, 0.1, 64, 32),
    ("tanh", 0.8, 0.05, "gaussian", 1000, 0.1, 64, 16),
    ("tanh", 1.5, 0.05, "gaussian", 1000, 0.1, 64, 16),
    ("relu", 1.5, 0.1, "gaussian", 1000, 0.1, 64, 16),
]


def naive_fit(act: str, sw2: float, sb2: float) -> float:
    """The c-map's |c_l - c*| from 0.45, log-linear over layers 3-25 (the first session's fit, transient included)."""
    s = signal.signal(act, sw2, sb2)
    if s.c_star >= 1.0:
        return math.nan
    g = np.abs(signal.correlation_trajectory(act, 0.45, 25, sw2, sb2) - s.c_star)
    return -1.0 / np.polyfit(np.arange(3, 26), np.log(g[2:25]), 1)[0]


def old_setup(nets: int, first_seed: int = 0) -> tuple[float, float]:
    """The first session's measurement, redone: tanh (4.0, 0.05), N = 1000, 16 pairs from c = 0.45, ``nets`` nets;
    log-linear fit of |c_l - c_inf| over layers 3-25, c_inf = the mean c over layers 40-60 (measured limit).
    Returns (xi, the same fit with c_inf = c*)."""
    s = signal.signal("tanh", 4.0, 0.05)
    c = 1.0 - signal.simulate_correlation("tanh", 4.0, 0.05, [0.45], 60, 1000, pairs=16, nets=nets,
                                          seed=first_seed)[:, 0].mean(0)
    fit = lambda g: -1.0 / np.polyfit(np.arange(3, 26), np.log(np.abs(g[2:25])), 1)[0]  # noqa: E731
    return fit(c - c[39:].mean()), fit(c - s.c_star)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--from", dest="source", default=None)
    ap.add_argument("--only", type=int, default=None, help="run POINTS[i] only")
    ap.add_argument("--old", action="store_true", help="redo the first session's fit (2 nets, 8 times; 32 nets)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.old:
        for nets, first in [(2, 2 * k) for k in range(8)] + [(32, 100)]:
            xi, xi_star = old_setup(nets, first)
            print(f"{nets} nets (seeds {first}..{first + nets - 1}): xi = {xi:.2f} (c_inf measured), "
                  f"{xi_star:.2f} (c_inf = c*)", flush=True)
        return
    if a.source:
        with open(a.source) as f:
            rows = json.load(f)
    else:
        rows = []
        for i, (act, sw2, sb2, init, n, delta, pairs, nets) in enumerate(POINTS):
            if a.only is not None and i != a.only:
                continue
            t0 = time.process_time()
            fit = signal.measure_xi_c(act, sw2, sb2, n, delta=delta, pairs=pairs, nets=nets, init=init)
            s = signal.signal(act, sw2, sb2)
            rows.append(dict(activation=act, sigma_w2=sw2, sigma_b2=sb2, init=init, width=n, delta=delta,
                             pairs=pairs, nets=nets, phase=s.phase, c_star=s.c_star, c_end=fit.c_end, xi=fit.xi,
                             se=fit.se, first=fit.first, last=fit.last, xi_c=fit.xi_c, xi_map=fit.xi_map,
                             naive=naive_fit(act, sw2, sb2), cpu_s=time.process_time() - t0,
                             gap=fit.gap.tolist(), gap_map=fit.gap_map.tolist()))
            print(f"# {act} {sw2} {sb2} {init} N={n}: {rows[-1]['cpu_s']:.0f} s CPU", flush=True)
    print("| φ | σ_w² | σ_b² | init | N | phase | c* | c at end | pairs × nets | layers fitted "
          "| ξ measured (± se) | ξ_c | err | err / se | ξ of the c-map there | c-map 3–25 from 0.45 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        err = r["xi"] / r["xi_c"] - 1
        naive = "—" if not math.isfinite(r["naive"]) else f"{r['naive']:.2f}"
        print(f"| {r['activation']} | {r['sigma_w2']:g} | {r['sigma_b2']:g} | {r['init']} | {r['width']} | "
              f"{r['phase']} | {r['c_star']:.4f} | {r['c_end']:.4f} | {r['pairs']} × {r['nets']} | "
              f"{r['first']}–{r['last']} | {r['xi']:.2f} ± {r['se']:.2f} | {r['xi_c']:.2f} | {100 * err:+.1f}% | "
              f"{(r['xi'] - r['xi_c']) / r['se']:+.1f} | {r['xi_map']:.2f} | {naive} |", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
