"""Overhead of depthscope.watch: training-step time with / without watching, measured in one run.

For the CNN and the transformer of examples/watch_*.py, two identical copies of the
model (same seed, same batch) train side by side: one under a watch that stays
attached for the whole run, exactly as a user runs it, the other bare. Their steps
alternate (watched then bare, then bare then watched, ...), and each pair gives a
ratio t_watched / t_bare. Pairing single steps, not blocks, is what makes the figures
hold on a loaded machine: both steps of a pair see the same load, and a step that
the scheduler preempted is one outlier among hundreds that the median ignores.

A control row times two bare copies the same way: its ratio (ideally 1) shows the
resolution of the method on this machine at this load. For ``every = k`` the watched copy runs ``--cycles`` cycles of k steps; step 0 of
each cycle is recorded (scheduled), the other k - 1 run with the watch attached.
  r_s = median ratio of the scheduled steps, r_u = median ratio of the others,
  overhead(every = k) = (r_s + (k - 1) r_u) / k - 1   (the mean cost of a step in a cycle).
Two clocks: wall time, and the process's CPU time (one thread: the step's own work).
``sum ratio`` (total watched time / total bare time - 1) is printed beside the
median-based figure; on a quiet machine the two agree.

Compiled rows (``--compile inductor``, or ``eager``): the same, both copies
``torch.compile``'d with that backend and the watch given the compiled module,
so the compiled overhead is printed beside the eager one, measured in the same run.
Memory: the peak of the watch's own buffers (``w.peak_held_bytes``, counted by the
watch) and the stated bound (``extra_memory_bound``) for each model at every=1.

Estimator row (``every=1 rows=256``): every=1 with ``max_rows=256``, a sample of 256 rows per
module instead of up to 4096, and for each model the VNI error of that sample (and of the
default 4096) against the VNI of every row of the same forward pass.

    python benchmarks/bench_watch.py [--cycles 6] [--threads 1] [--only transformer] [--compile inductor]
                                     [--estimator-rows 256]
"""
from __future__ import annotations

import argparse
import contextlib
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
EVERY = (None, 50, 1)  # None: the control, a bare copy timed as if watched


def train_step(model, opt, batch, loss_fn) -> None:
    x, y = batch
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()


def timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def measure(build, every: int | None, cycles: int, backend: str | None = None, max_rows: int = 4096) -> dict[str, list]:
    """{'scheduled' | 'idle': [(wall ratio, cpu ratio) per pair], 'sums': [wall w, wall b, cpu w, cpu b], 'peak': bytes}."""
    (model_w, batch, loss_fn), (model_b, _, _) = build(), build()
    if backend is not None:
        model_w, model_b = torch.compile(model_w, backend=backend), torch.compile(model_b, backend=backend)
    opt_w = torch.optim.SGD(model_w.parameters(), lr=1e-3)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=1e-3)
    # warm-up: allocator, kernels, the watched code path. The watched copy's first call runs under a
    # watch: a compiled graph keeps the hooks it is first traced with (docs/watch.md, torch.compile)
    with depthscope.watch(model_w, every=1, optimizer=opt_w):
        for _ in range(3):
            train_step(model_w, opt_w, batch, loss_fn)
    for _ in range(5):
        train_step(model_b, opt_b, batch, loss_fn)
        train_step(model_w, opt_w, batch, loss_fn)
    out: dict[str, list] = {"scheduled": [], "idle": [], "sums": [0.0, 0.0, 0.0, 0.0]}
    w = depthscope.watch(model_w, every=every or 1, optimizer=opt_w, max_rows=max_rows)
    with w if every else contextlib.nullcontext():  # every=None: the control, both copies bare
        for i in range(cycles * (every or 1)):
            scheduled = every is not None and w.step_count % every == 0
            if i % 2 == 0:
                tw = timed(lambda: train_step(model_w, opt_w, batch, loss_fn))
                tb = timed(lambda: train_step(model_b, opt_b, batch, loss_fn))
            else:
                tb = timed(lambda: train_step(model_b, opt_b, batch, loss_fn))
                tw = timed(lambda: train_step(model_w, opt_w, batch, loss_fn))
            out["scheduled" if scheduled else "idle"].append((tw[0] / tb[0], tw[1] / tb[1]))
            for j, v in enumerate((tw[0], tb[0], tw[1], tb[1])):
                out["sums"][j] += v
    if every and len({r["step"] for r in w.records}) != cycles:
        raise RuntimeError(f"expected {cycles} recorded steps, the watch has {len({r['step'] for r in w.records})}")
    out["peak"] = w.peak_held_bytes if every else 0
    out["bound"] = 0
    if every:
        from depthscope.watch.quantities import extra_memory_bound

        last = [r for r in w.records if r["step"] == w.records[-1]["step"]]
        out["bound"] = extra_memory_bound([int(r["nodes"]) for r in last], w.max_rows,
                                          rows=[int(r["samples"]) for r in last],
                                          call_rows=max(int(r["samples"]) for r in last))
    return out


def estimator_accuracy(build, max_rows: int, seeds: int = 8) -> tuple[float, float, float, float]:
    """(median, max) |VNI - exact| and (median, max) |vni_debiased - exact vni_debiased| over modules and seeds.

    One forward pass of the model at initialisation: "exact" is the VNI of every row (no sampling),
    the estimate that of ``max_rows`` rows drawn with each seed (the watch's sample).
    """
    model, (x, _), _ = build()

    def vnis(rows: int, seed: int) -> dict[str, tuple[float, float]]:
        with depthscope.watch(model, every=1, max_rows=rows, seed=seed) as w, torch.no_grad():
            model(x)
        return {r["name"]: (r["vni"], r["vni_debiased"]) for r in w.records}

    exact = vnis(2**40, 0)
    raw, deb = [], []
    for seed in range(seeds):
        for name, (v, d) in vnis(max_rows, seed).items():
            raw.append(abs(v - exact[name][0]))
            deb.append(abs(d - exact[name][1]))
    return statistics.median(raw), max(raw), statistics.median(deb), max(deb)


def breakdown(build, steps: int = 20) -> tuple[float, dict[str, float]]:
    """(overhead, {part: share of the bare step}) of every=1: where a recorded step's extra time goes.

    Process CPU time of the watch's own functions, timed by wrapping them for this
    measurement only (restored after): the forward hooks (``Watch._capture``), the
    output-gradient hooks (``core._read_grad``), VNI and the moments (``slab_moments`` /
    ``moments``: the batched Grams) and the rest of the record (``Watch.flush`` minus the
    moments); "other" is the remainder of the measured overhead (hook registration, tensor
    hooks, Python between them). The bare and watched copies alternate step by step.
    """
    from depthscope.watch import core, quantities

    acc = dict.fromkeys(("forward hooks", "gradient hooks", "moments (Grams)", "flush"), 0.0)

    def timed_(fn, key):
        def g(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.process_time() - t
        return g

    saved = [(core.Watch, "_capture"), (core.Watch, "flush"), (core, "_read_grad"), (quantities, "slab_moments"),
             (quantities, "moments")]
    saved = [(o, n, getattr(o, n)) for o, n in saved]
    for (o, n, f), key in zip(saved, ("forward hooks", "flush", "gradient hooks", "moments (Grams)", "moments (Grams)")):
        setattr(o, n, timed_(f, key))
    try:
        (model_w, batch, loss_fn), (model_b, _, _) = build(), build()
        opt_w = torch.optim.SGD(model_w.parameters(), lr=1e-3)
        opt_b = torch.optim.SGD(model_b.parameters(), lr=1e-3)
        tw = tb = 0.0
        with depthscope.watch(model_w, every=1, optimizer=opt_w):
            for i in range(steps + 3):
                if i == 3:
                    acc.update(dict.fromkeys(acc, 0.0))
                    tw = tb = 0.0
                tb += timed(lambda: train_step(model_b, opt_b, batch, loss_fn))[1]
                tw += timed(lambda: train_step(model_w, opt_w, batch, loss_fn))[1]
    finally:
        for o, n, f in saved:
            setattr(o, n, f)
    parts = {"moments (Grams)": acc["moments (Grams)"], "rest of the record": acc["flush"] - acc["moments (Grams)"],
             "forward hooks": acc["forward hooks"], "gradient hooks": acc["gradient hooks"]}
    parts["other"] = (tw - tb) - sum(parts.values())
    return (tw - tb) / tb, {k: v / tb for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=6, help="cycles of `every` steps per watch setting (every=1: 50x as many)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case (repeatable)")
    ap.add_argument("--compile", choices=("eager", "inductor"), default=None,
                    help="also time each case torch.compile'd with this backend (rows 'compiled ...')")
    ap.add_argument("--estimator-rows", type=int, default=256,
                    help="also time every=1 with max_rows this small, and print its VNI error against every row")
    args = ap.parse_args()
    if args.cycles < 1 or args.threads < 1 or args.estimator_rows < 2:
        raise SystemExit(f"--cycles and --threads must be >= 1 and --estimator-rows >= 2, got {args.cycles}, "
                         f"{args.threads} and {args.estimator_rows}")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, "
          f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    for key in args.only or list(CASES):
        title, build = CASES[key]
        print(f"\n{title}: {len(depthscope.watch(build()[0]).names)} watched modules")
        print(f"  {'':18s} {'pairs':>5s} {'bare ms':>8s} {'wall: r_s':>10s} {'r_u':>6s} {'overhead':>9s} {'sum ratio':>9s}"
              f" {'cpu: r_s':>9s} {'r_u':>6s} {'overhead':>9s} {'sum ratio':>9s}")
        rows = [(None, e, 4096) for e in EVERY] + [(None, 1, args.estimator_rows)]
        rows += [(args.compile, e, 4096) for e in EVERY] if args.compile else []
        for backend, every, max_rows in rows:
            m = measure(build, every, args.cycles * (1 if every == 50 else 50), backend, max_rows)
            pairs = len(m["scheduled"]) + len(m["idle"])
            label = ("compiled " if backend else "") + ("control" if every is None else f"every={every}")
            label += f" rows={max_rows}" if max_rows != 4096 else ""
            row = f"  {label:18s} {pairs:5d} {1e3 * m['sums'][1] / pairs:8.2f}"
            for c in (0, 1):
                rs = statistics.median(r[c] for r in m["scheduled"]) if m["scheduled"] else float("nan")
                ru = statistics.median(r[c] for r in m["idle"]) if m["idle"] else float("nan")
                if every is None:
                    overhead = ru - 1
                elif every == 1:
                    overhead = rs - 1
                else:
                    overhead = (rs + (every - 1) * ru) / every - 1
                total = m["sums"][2 * c] / m["sums"][2 * c + 1] - 1
                row += f" {rs:10.3f} {ru:6.3f} {100 * overhead:+8.1f}% {100 * total:+8.1f}%"
            print(row)
            if every == 1 and max_rows == 4096:
                print(f"  {'':18s} memory: watch buffers peak {m['peak'] / 2**20:.2f} MiB, "
                      f"stated bound {m['bound'] / 2**20:.2f} MiB")
        over, parts = breakdown(build)
        print(f"  where every=1's time goes (CPU time, share of the bare step; +{100 * over:.1f}% in this "
              "measurement): " + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in parts.items()))
        for rows_ in sorted({4096, args.estimator_rows}):
            med, mx, dmed, dmx = estimator_accuracy(build, rows_)
            print(f"  max_rows={rows_}: |VNI - VNI of every row| median {med:.1e}, max {mx:.1e}; "
                  f"vni_debiased: median {dmed:.1e}, max {dmx:.1e} (against its every-row value; 8 seeds, every module, at init)")
    load1 = os.getloadavg()
    print(f"\nload average at end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
