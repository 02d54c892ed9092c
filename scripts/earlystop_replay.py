"""Replay early-stop rules on stored full-budget runs (docs/sweeps.md, "Stopping collapsed runs early").

    PYTHONPATH=src python scripts/earlystop_replay.py RUN_DIR [--experiment fig5] [--vni 0.9,0.95,0.99,0.999]
        [--epochs 1,2,3,5,10] [--where max_epochs=100] [--step-ms 25=34.6,100=124.9,500=624.4]

Reads every finished run of EXPERIMENT trained without a policy (depthscope.earlystop.trajectories), applies
the rule "output VNI > VNI for EPOCHS consecutive epochs" for each pair (depthscope.earlystop.replay), and
prints: the table (runs stopped, false stops = stopped runs that went on to reach the target, compute saved),
the longest streak above each threshold in a successful run (the margin), the recommended rule
(depthscope.earlystop.recommend) split by activation and optimizer, and the runs each unsafe rule would
have stopped wrongly. With --step-ms (milliseconds per member-step at width 500, measured by
benchmarks/bench_engine.py --step-time) it also prints the paper preset's time bound and its share with and
without the recommended rule (depthscope.earlystop.budget_fraction; the thesis' outcome counts).
"""
from __future__ import annotations

import argparse
import math
import sys

from depthscope.earlystop import (
    EarlyStop,
    bound_flops,
    bound_seconds,
    budget_fraction,
    longest_streak,
    parse_early_stop,
    policy_grid,
    recommend,
    replay,
    table,
    trajectories,
)
from depthscope.params import parse_assignments
from depthscope.store import Store

#: the paper preset (chapter5.Chapter5.presets["paper"]): 11 depths, 2,880 runs per depth, 600 updates per epoch
PAPER_DEPTHS = (25, 34, 46, 61, 83, 112, 151, 204, 275, 371, 500)
PAPER_RUNS_PER_DEPTH = 2880
PAPER_STEPS_PER_EPOCH = 600
THESIS_FAILED, THESIS_SUCCEEDED = 13101, 18579  # Table 5.1 summed


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _where(items: list[str]) -> dict:
    try:
        return parse_assignments(items, "--where")
    except ValueError as e:
        raise SystemExit(str(e)) from None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--experiment", default="fig5")
    ap.add_argument("--vni", default="0.9,0.95,0.99,0.999,0.9999", help="thresholds, comma list")
    ap.add_argument("--epochs", default="1,2,3,5,10,15,20,30", help="consecutive epochs, comma list")
    ap.add_argument("--show", action="append", default=[], metavar="VNI:EPOCHS",
                    help="also split this rule's stops and false stops by --by (repeatable)")
    ap.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                    help="only runs whose spec has FIELD=VALUE (e.g. max_epochs=100)")
    ap.add_argument("--by", default="activation,optimizer", help="spec fields to split the recommended rule by")
    ap.add_argument("--step-ms", default=None, metavar="DEPTH=MS,...",
                    help="member-step times at width 500 for the paper preset's estimate")
    ap.add_argument("--tflops", type=float, default=None,
                    help="an achieved TFLOP/s (e.g. 30 for one GPU) for the paper preset's FLOP-based estimate")
    args = ap.parse_args()
    try:
        for t in args.show:
            parse_early_stop(t)
        pols = policy_grid(_floats(args.vni), [int(e) for e in args.epochs.split(",") if e.strip()])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with Store(args.run_dir, readonly=True) as store:
        runs = trajectories(store, args.experiment, **_where(args.where))
    if not runs:
        print(f"error: no finished full-budget runs of {args.experiment!r} in {args.run_dir}", file=sys.stderr)
        return 2
    budgets = sorted({r.max_epochs for r in runs})
    n_fail = sum(not r.success for r in runs)
    print(f"{len(runs)} runs of {args.experiment!r} ({n_fail} failed, {sum(r.diverged for r in runs)} diverged; "
          f"budget {budgets} epochs, {sorted({r.steps_per_epoch for r in runs})} updates per epoch)")
    kinds: dict[str, int] = {}
    for r in runs:
        kinds[r.failure or "success"] = kinds.get(r.failure or "success", 0) + 1
    print("outcomes at the full budget: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    full = [r for r in runs if not r.success and not r.diverged]
    print(f"full budget: {sum(len(r.accuracy) == r.max_epochs for r in full)} of the {len(full)} failed runs that did "
          f"not diverge trained all their epochs; successful runs stopped at the target (epoch "
          f"{min((len(r.accuracy) for r in runs if r.success), default=0)}-"
          f"{max((len(r.accuracy) for r in runs if r.success), default=0)}): a rule firing before that epoch is a "
          f"false stop, and the rule never fires at or after it")
    rows = replay(runs, pols)
    print()
    print(table(rows))
    print()
    for v in sorted({p.vni for p in pols}):
        print(f"longest run of epochs with output VNI > {v:g} before success, in a successful run: "
              f"{longest_streak(runs, v)}; in a failed run: {longest_streak(runs, v, successful=False)}")
    best = recommend(rows)
    print()
    if best is None:
        print("no rule without false stops (and safe neighbours) in this grid")
    else:
        print(f"recommended: {best.policy.text()} ({best.policy.to_config()}): stops {best.stopped} of "
              f"{best.failed} failed runs, {best.false_stops} false stops, saves {100 * best.flops_share:.1f} % "
              f"of the compute ({100 * best.steps_share:.1f} % of the updates), mean stop epoch "
              f"{best.mean_stop_epoch:.1f}")
    shown = ([best.policy] if best is not None else []) + [parse_early_stop(t) for t in args.show]
    for pol in shown:
        print(f"{pol.text()} ({pol.to_config()}), by {args.by}:")
        for field in [f for f in args.by.split(",") if f]:
            for val in sorted({r.spec.get(field) for r in runs}, key=str):
                sub = [r for r in runs if r.spec.get(field) == val]
                b = replay(sub, [pol])[0]
                print(f"  {field} {val}: stops {b.stopped - b.false_stops} of {b.failed} failed runs and "
                      f"{b.false_stops} that later succeeded, saves {100 * b.flops_share:.1f} % of its compute")
    for r in rows:
        if r.false_stops:
            keys = set(r.false_stop_keys)
            bad = [t for t in runs if t.key in keys][:5]
            desc = "; ".join(f"{t.spec['optimizer']} {t.spec['activation']} {t.spec['init']} L={t.spec['depth']} "
                             f"lr={t.spec['lr']:g} seed {t.seed}: succeeded at epoch {len(t.accuracy)}" for t in bad)
            print(f"false stops of {r.policy.to_config()}: {r.false_stops} ({desc}{' ...' if r.false_stops > 5 else ''})")
    bounds = []
    if args.step_ms:
        step = {int(k): float(v) / 1e3 for k, v in (item.split("=") for item in args.step_ms.split(","))}
        secs, t0, t1 = bound_seconds(step, PAPER_DEPTHS, PAPER_RUNS_PER_DEPTH, 100 * PAPER_STEPS_PER_EPOCH)
        print()
        print(f"paper preset: t(L) = {t0 * 1e3:.2f} ms + L x {t1 * 1e3:.4f} ms per member-step")
        bounds.append(("the measured step times", secs))
    if args.tflops:
        fl = bound_flops(PAPER_DEPTHS, 500, PAPER_RUNS_PER_DEPTH, 100 * PAPER_STEPS_PER_EPOCH)
        print(f"paper preset: {fl:.3g} FLOP if every run trains 100 epochs")
        bounds.append((f"{args.tflops:g} TFLOP/s", fl / (args.tflops * 1e12)))
    year, day = 365.25 * 86400, 86400
    for what, secs in bounds:
        unit, div = ("years", year) if secs > 2 * year else ("days", day)
        print(f"every run to 100 epochs, at {what}: {secs:.3g} s = {secs / div:.2f} {unit}")
        if best is not None:
            share = best.failed_share if best.failed else 0.0
            for e_s in (1, 10):
                off = budget_fraction(THESIS_FAILED, THESIS_SUCCEEDED, e_s, 100)
                on = budget_fraction(THESIS_FAILED, THESIS_SUCCEEDED, e_s, 100, share, best.mean_stop_epoch)
                print(f"  successful runs stop after {e_s} epochs: {off:.3f} of the bound ({off * secs / div:.2f} "
                      f"{unit}); with {best.policy.to_config()} stopping {100 * share:.0f} % of the failed runs at "
                      f"epoch {best.mean_stop_epoch:.1f}: {on:.3f} ({on * secs / div:.2f} {unit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
