"""Training throughput: the stacked engine vs a plain one-net-at-a-time PyTorch loop.

    PYTHONPATH=src python benchmarks/bench_engine.py            # full table (a few minutes on 2 cores)
    PYTHONPATH=src python benchmarks/bench_engine.py --quick    # smaller, ~1 minute
    PYTHONPATH=src python benchmarks/bench_engine.py --threads 1 --clock process   # on a loaded machine
    PYTHONPATH=src python benchmarks/bench_engine.py --step-time 25,100,500 --width 500
                                                                # per-step times, paper wall-time estimate

For each (width, K) it trains the same K runs (depth 50, tanh, critical Gaussian
init, SGD, batch 100, lr and seed differing per member, each member on its own data
order) two ways, interleaved in rounds with a float32 matmul-peak measurement (2048^3
mm) so that load on a shared machine hits all three alike, keeping the best round of
each:

* ``loop``: for each member an ``nn.Sequential`` of ``nn.Linear`` + ``nn.Tanh`` built
  from the same initial weights, ``F.cross_entropy``, autograd, ``torch.optim.SGD``;
* ``engine``: :func:`depthscope.train.members_per_ensemble` picks the stack size for
  the shape and device (``--stack`` forces one), then ``Ensemble.train_step`` as the
  trainer calls it (hand-written backprop, per-layer update, per-layer gradient norms,
  every step's losses read back); at width 500 on CPU that is K = 1, i.e. the
  engine trains members one after another with its own kernels.

Both run the same number of steps per member. The loop's cost per member does not
depend on K, so it is timed on the first ``--members`` members (column ``timed``:
loop/engine members); the engine is timed on all K when it stacks them, and on the
same first members when it trains one member at a time. It prints time per
member-step, the ratio loop / engine, achieved GFLOP/s (6 B x (weights) flops per
member-step: forward 2, backward 4) as a percentage of the best matmul peak of the
same rounds, and the largest difference between the two losses after the timed steps
(``max |dloss|``; equal results means a difference at float32 rounding level).

``--clock process`` times with the process' CPU time instead of wall time: with
``--threads 1`` that leaves out the time the process waited for a core, so a machine
shared with other jobs still gives the unloaded figures (with more threads it would
add the threads' times, spin-waits included, so use wall time there).
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from depthscope.ensemble import Ensemble
from depthscope.nets import NetSpec, layer_params, linear_from_params
from depthscope.sweep import resolve_device
from depthscope.train import RunSpec, epoch_order, members_per_ensemble

D, C, B = 784, 10, 100

#: The clock every timing reads: wall time (default), or with ``--clock process`` the
#: process' CPU time, which on a machine shared with other jobs does not count the time
#: this process waited for a core (meaningful with ``--threads 1`` only: with more threads
#: it adds the threads' times, spin-waits included).
CLOCK = [time.perf_counter]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Best float32 GFLOP/s of an n x n x n matmul."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    torch.mm(a, b, out=c)
    best = math.inf
    for _ in range(reps):
        sync(device)
        t = CLOCK[0]()
        torch.mm(a, b, out=c)
        sync(device)
        best = min(best, CLOCK[0]() - t)
    return 2 * n**3 / best / 1e9


def flops_per_member_step(depth: int, width: int) -> float:
    return 6.0 * B * (D * width + (depth - 1) * width * width + width * C)


def make_data(n: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, D, generator=g)
    x = x - x.mean(0)
    y = torch.randint(0, C, (n,), generator=g)
    return x.to(device), y.to(device)


def sequential(spec: NetSpec, seed: int, device) -> nn.Sequential:
    mods = []
    for l in list(range(1, spec.depth + 1)) + [-1]:
        lin = linear_from_params(*layer_params(spec, seed, l))
        mods.append(lin)
        if l != -1:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods).to(device)


def batches(seed: int, n: int, steps: int, device):
    order = epoch_order(seed, 1, n).to(device)
    return [order[i * B:(i + 1) * B] for i in range(steps)]


def time_loop(runs, x, y, steps, device):
    """Seconds per member-step of the plain loop, and each member's last loss."""
    total, last = 0.0, []
    for r in runs:
        net = sequential(r.net_spec(D), r.seed, device)
        opt = torch.optim.SGD(net.parameters(), lr=r.lr)
        idx = batches(r.seed, x.shape[0], steps + 1, device)
        loss = F.cross_entropy(net(x[idx[0]]), y[idx[0]])  # warm-up step, not timed
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        t = CLOCK[0]()
        for i in idx[1:]:
            loss = F.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        lv = float(loss.detach())
        total += CLOCK[0]() - t
        last.append(lv)
    return total / (len(runs) * steps), last


def time_engine(runs, x, y, steps, device, k):
    """Seconds per member-step of the engine stacking k members at a time, and the last losses."""
    total, last = 0.0, []
    for c in range(0, len(runs), k):
        chunk = runs[c:c + k]
        ens = Ensemble([(r.net_spec(D), r.seed) for r in chunk], "sgd", [r.lr for r in chunk], device)
        idx = [torch.stack(t) for t in zip(*(batches(r.seed, x.shape[0], steps + 1, device) for r in chunk))]
        loss, _, _, _ = ens.train_step(x[idx[0]], y[idx[0]])  # warm-up step, not timed
        sync(device)
        t = CLOCK[0]()
        for i in idx[1:]:
            # as the trainer: per-layer gradient norms, and every step's losses looked at (divergence)
            loss, _, _, _ = ens.train_step(x[i], y[i])
            loss.cpu()
        total += CLOCK[0]() - t
        last += loss.tolist()
    return total / (len(runs) * steps), last


def runs_for(depth: int, width: int, k: int) -> list[RunSpec]:
    return [RunSpec(depth, width, "tanh", "gaussian", "sgd", 10 ** (-3 + 2 * i / max(k - 1, 1)), i)
            for i in range(k)]


def table(args, device) -> None:
    print(f"device {device}, torch threads {torch.get_num_threads()}; float32 matmul peak (2048^3 mm) "
          "measured in every round beside the two trainers (column 'peak': best of the rounds)")
    x, y = make_data(B * (args.steps + 1), device)
    hdr = f"{'width':>5} {'K':>3} {'stack':>5} {'timed':>5} {'loop ms/ms':>10} {'engine ms/ms':>12} " \
          f"{'speed-up':>8} {'peak GF/s':>9} {'loop %pk':>8} {'eng GF/s':>8} {'eng %pk':>7} {'max|dloss|':>10}"
    print(f"depth {args.depth}, batch {B}, {args.steps} steps per member, best of {args.rounds} rounds; "
          "ms/ms = milliseconds per member-step")
    print(hdr)
    for width in args.widths:
        for k in args.ks:
            runs = runs_for(args.depth, width, k)
            stack = min(k, args.stack or members_per_ensemble(runs[0], D, device))
            loop_runs = runs[:min(k, args.members)]
            eng_runs = runs if stack > 1 else loop_runs
            tl = te = math.inf
            peak = 0.0
            for _ in range(args.rounds):
                a, la = time_loop(loop_runs, x, y, args.steps, device)
                peak = max(peak, matmul_peak(device, reps=2))
                b, le = time_engine(eng_runs, x, y, args.steps, device, stack)
                tl, te = min(tl, a), min(te, b)
            fl = flops_per_member_step(args.depth, width)
            diff = max(abs(p - q) for p, q in zip(la, le))
            print(f"{width:>5} {k:>3} {stack:>5} {len(loop_runs):>2}/{len(eng_runs):<2} {tl * 1e3:>10.3f} {te * 1e3:>12.3f} "
                  f"{tl / te:>7.2f}x {peak:>9.1f} {100 * fl / tl / 1e9 / peak:>7.0f}% {fl / te / 1e9:>8.1f} "
                  f"{100 * fl / te / 1e9 / peak:>6.0f}% {diff:>10.2e}")
            sys.stdout.flush()


#: The paper preset of `depthscope reproduce fig5` (thesis section 5.1): 31,680 runs over
#: 11 depths (25:500:11, log-uniform), 100 epochs of 60,000 / 100 steps at most (the preset
#: trains on the whole 60,000-image MNIST training split, batch 100).
PAPER_DEPTHS = [25, 34, 46, 61, 83, 112, 151, 204, 275, 371, 500]
PAPER_RUNS, PAPER_STEPS = 31_680, 100 * 60_000 // 100


def step_times(args, device) -> None:
    peak = matmul_peak(device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, float32 matmul peak {peak:.1f} GFLOP/s; "
          f"engine seconds per member-step (train_step, SGD, grad norms), width {args.width}, batch {B}, "
          f"best of {args.rounds} rounds of {args.steps} steps")
    x, y = make_data(B * (args.steps + 1), device)
    per_depth = {}
    for depth in args.step_time:
        for k in args.ks_step:
            runs = runs_for(depth, args.width, k)
            stack = min(k, args.stack or members_per_ensemble(runs[0], D, device))
            te = min(time_engine(runs[:stack], x, y, args.steps, device, stack)[0] for _ in range(args.rounds))
            per_depth.setdefault(depth, te)
            per_depth[depth] = min(per_depth[depth], te)
            fl = flops_per_member_step(depth, args.width)
            print(f"depth {depth:>4} K {k:>3} (stack {stack:>3}): {te * 1e3:9.3f} ms per member-step, "
                  f"{fl / te / 1e9:7.1f} GFLOP/s ({100 * fl / te / 1e9 / peak:.0f}% of peak)")
            sys.stdout.flush()
    if len(per_depth) >= 2 and args.width == 500:
        # t(L) = t0 + L t1 (layer 1 and the readout, then one N x N layer per depth step): least squares
        ds = sorted(per_depth)
        n = len(ds)
        mx, my = sum(ds) / n, sum(per_depth[d] for d in ds) / n
        t1 = sum((d - mx) * (per_depth[d] - my) for d in ds) / sum((d - mx) ** 2 for d in ds)
        t0 = my - t1 * mx
        member_steps = PAPER_RUNS // len(PAPER_DEPTHS) * PAPER_STEPS
        total = member_steps * sum(t0 + t1 * d for d in PAPER_DEPTHS)
        print(f"fit: t(L) = {t0 * 1e3:.3f} ms + L x {t1 * 1e3:.4f} ms per member-step")
        print(f"paper preset, every run to 100 epochs (upper bound): {PAPER_RUNS} runs x {PAPER_STEPS} steps "
              f"= {total:.3g} s = {total / 86400:.3g} days = {total / 86400 / 365.25:.3g} years on this device")
        print("scale by the mean fraction of the 100 epochs the runs take (early success or divergence)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, rounds and timed members")
    p.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=[32, 64, 128, 500])
    p.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[16, 64])
    p.add_argument("--steps", type=int, default=None, help="timed steps per member (default 5, quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds, best kept (default 3, quick 2)")
    p.add_argument("--members", type=int, default=None,
                   help="members timed when a configuration is too expensive to time all (default 8, quick 4)")
    p.add_argument("--stack", type=int, default=None,
                   help="force the engine's stack size (default: members_per_ensemble's choice)")
    p.add_argument("--step-time", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   metavar="DEPTHS", help="print engine seconds per member-step at these depths instead")
    p.add_argument("--width", type=int, default=500, help="width for --step-time")
    p.add_argument("--k", dest="ks_step", type=lambda s: [int(v) for v in s.split(",")], default=[1],
                   help="ensemble sizes for --step-time")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="wall time (default) or process CPU time (use with --threads 1 on a loaded machine)")
    args = p.parse_args(argv)
    CLOCK[0] = time.perf_counter if args.clock == "wall" else time.process_time
    args.steps = args.steps or (3 if args.quick else 5)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.members = args.members or (4 if args.quick else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = torch.device(resolve_device(args.device))
    except ValueError as e:
        p.error(str(e))
    if args.step_time:
        step_times(args, device)
    else:
        table(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
