"""Overhead of depthscope.watch: training-step time with / without watching, measured in one run.

For the CNN and the transformer of examples/watch_*.py, times blocks of training
steps unwatched, watched with every=50 and watched with every=1. Each repeat runs
one block of each, in an order that alternates (U, W50, W1), (W1, W50, U), ... so a
load that drifts during a repeat hits both sides of a ratio alike; each watched block
is divided by the unwatched block of the same repeat (paired ratios), and the median
and quartiles of those ratios over the repeats are printed.

A block of every=50 is 50 steps under a fresh watch: exactly one recorded step
(step 0) and 49 bare steps, attach and detach included. Two clocks: wall time and
the process's CPU time (``time.process_time``); with one thread the CPU time is the
step's own cost and barely moves when other processes load the machine, the wall
time is what a user waits. Single-threaded by default for stable numbers.

    python benchmarks/bench_watch.py [--repeats 9] [--threads 1] [--only transformer]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "src"))

import depthscope  # noqa: E402
import watch_cnn  # noqa: E402
import watch_transformer  # noqa: E402

CASES = {
    "cnn": ("cnn (ResNet-style, 64x1x28x28)",
            lambda: (watch_cnn.build_model(), watch_cnn.make_batch(64), torch.nn.functional.cross_entropy)),
    "transformer": ("transformer (2 layers, d=64, 64x16 tokens)",
                    lambda: (watch_transformer.build_model(), watch_transformer.make_batch(64), watch_transformer.loss_fn)),
}

# (label, every, steps per block); None: unwatched
MODES = [("unwatched", None, 50), ("every=50", 50, 50), ("every=1", 1, 10)]


def time_block(model, opt, batch, loss_fn, steps: int, every: int | None) -> tuple[float, float]:
    """(wall, cpu) seconds per step of ``steps`` training steps, under a fresh watch unless every is None."""
    x, y = batch
    w = depthscope.watch(model, every=every, optimizer=opt) if every is not None else None
    t0, c0 = time.perf_counter(), time.process_time()
    if w is not None:
        w.attach()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    if w is not None:
        w.detach()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if w is not None and not w.records:
        raise RuntimeError("the watch recorded nothing")
    return wall / steps, cpu / steps


def quartiles(v: list[float]) -> tuple[float, float, float]:
    if len(v) < 2:
        return v[0], v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], statistics.median(v), q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case (repeatable)")
    args = ap.parse_args()
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit(f"--repeats and --threads must be >= 1, got {args.repeats} and {args.threads}")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, "
          f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    print(f"{args.repeats} repeats of one block per mode in alternating order; ratios paired per repeat, "
          "median [quartiles]")
    for key in args.only or list(CASES):
        title, build = CASES[key]
        model, batch, loss_fn = build()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        time_block(model, opt, batch, loss_fn, 5, None)  # warm-up: allocator, kernels, hooks
        time_block(model, opt, batch, loss_fn, 3, 1)
        wall: dict[str, list[float]] = {m[0]: [] for m in MODES}
        cpu: dict[str, list[float]] = {m[0]: [] for m in MODES}
        for rep in range(args.repeats):
            for label, every, steps in (MODES if rep % 2 == 0 else MODES[::-1]):
                tw, tc = time_block(model, opt, batch, loss_fn, steps, every)
                wall[label].append(tw)
                cpu[label].append(tc)
        n_watched = len(depthscope.watch(model).names)
        print(f"\n{title}: {n_watched} watched modules")
        print(f"  {'mode':10s} {'wall ms/step':>12s} {'wall ratio':>24s} {'cpu ms/step':>12s} {'cpu ratio':>24s}")
        for label, _, _ in MODES:
            row = f"  {label:10s}"
            for times in (wall, cpu):
                ratios = [a / b for a, b in zip(times[label], times["unwatched"])]
                q1, med, q3 = quartiles(ratios)
                row += f" {statistics.median(times[label]) * 1e3:12.2f} {med:7.3f} [{q1:.3f}, {q3:.3f}] {100 * (med - 1):+5.1f}%"
            print(row)
    load1 = os.getloadavg()
    print(f"\nload average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
