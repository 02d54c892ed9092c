"""Overhead of depthscope.watch: training-step time with / without watching, measured in one run.

For the CNN and the transformer of examples/watch_*.py, times blocks of training
steps unwatched, watched with every=50 and watched with every=1, interleaved
(so machine load hits all three alike), after a warm-up, and prints the median
per-step time of each and the ratios. Single-threaded by default for stable numbers.

    python benchmarks/bench_watch.py [--repeats 7] [--threads 1]
"""
from __future__ import annotations

import argparse
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


def cases():
    yield "cnn (ResNet-style, 64x1x28x28)", watch_cnn.build_model(), watch_cnn.make_batch(64), torch.nn.functional.cross_entropy
    yield "transformer (2 layers, d=64, 64x16 tokens)", watch_transformer.build_model(), watch_transformer.make_batch(64), watch_transformer.loss_fn


def time_block(model, opt, batch, loss_fn, steps: int) -> float:
    x, y = batch
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} interleaved repeats (ratios paired per repeat)")
    for name, model, batch, loss_fn in cases():
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        # modes: (label, every, steps per block); a block of 100 steps at every=50 holds two watched steps
        modes = [("unwatched", None, 100), ("every=50", 50, 100), ("every=1", 1, 10)]
        times: dict[str, list[float]] = {m[0]: [] for m in modes}
        time_block(model, opt, batch, loss_fn, 5)  # warm-up
        with depthscope.watch(model, every=1, optimizer=opt):
            time_block(model, opt, batch, loss_fn, 3)
        for _ in range(args.repeats):
            for label, every, steps in modes:
                if every is None:
                    times[label].append(time_block(model, opt, batch, loss_fn, steps))
                else:
                    with depthscope.watch(model, every=every, optimizer=opt) as w:
                        times[label].append(time_block(model, opt, batch, loss_fn, steps))
                    assert w.records, "the watch recorded nothing"
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{name}: {len(w.names)} watched modules")
        for label, _, _ in modes:
            # paired: each repeat's watched block over the unwatched block timed just before it
            ratio = statistics.median(a / b for a, b in zip(times[label], times["unwatched"]))
            print(f"  {label:10s} {med[label] * 1e3:8.2f} ms/step   ratio {ratio:.3f}"
                  f"   overhead {100 * (ratio - 1):+.1f}%")


if __name__ == "__main__":
    main()
