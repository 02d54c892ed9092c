"""``depthscope sweep``: train a grid of networks into a results store (resumable)."""
from __future__ import annotations

import argparse
import sys

#: flag -> SweepSpec key, for the grid flags (values parsed by SweepSpec itself)
_GRID_FLAGS = {
    "depths": "comma list or LO:HI:COUNT log-uniform (rounded), e.g. 25,50 or 25:500:11",
    "widths": "comma list, e.g. 64,128",
    "lrs": "comma list or LO:HI:COUNT log-uniform, e.g. 1e-4:1e-2:5",
    "optimizers": "comma list of sgd, momentum, adam, rmsprop",
    "activations": "comma list, e.g. tanh,relu",
    "inits": "comma list of gaussian, uniform, orthogonal",
    "seeds": "a count n (seeds 0..n-1) or a comma list",
}


def register(sub: argparse._SubParsersAction) -> None:
    from ..cli import nonneg_int, positive_int

    p = sub.add_parser(
        "sweep", help="train a grid of networks (depth x lr x optimizer x ...) into a results store",
        description="Expand a grid (defaults < CONFIG.toml < flags) into training runs, train runs of the same "
        "shape together as batched ensembles, and write each run to RUN_DIR/results.sqlite as it finishes. "
        "Rerunning the same command resumes: finished runs are never repeated.")
    p.add_argument("config", nargs="?", metavar="CONFIG.toml", help="sweep config (keys: see docs/sweeps.md)")
    for name, helptext in _GRID_FLAGS.items():
        p.add_argument(f"--{name}", default=None, help=helptext)
    p.add_argument("--name", default=None, help="experiment name in the store (default: sweep)")
    p.add_argument("--dataset", default=None, help="mnist, fashion-mnist or synthetic")
    p.add_argument("--split", default=None, help="train, test or any (the first that exists)")
    p.add_argument("--n-train", type=positive_int, default=None, help="training images used (default 2000)")
    p.add_argument("--epochs", type=positive_int, default=None, help="max epochs (success must come within)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--target-accuracy", type=float, default=None, help="success threshold on train accuracy")
    p.add_argument("--group-size", type=positive_int, default=None, help="max nets per batched ensemble (K)")
    p.add_argument("--early-stop", default=None, metavar="VNI:EPOCHS",
                   help="stop a run as failed once its output VNI is > VNI after EPOCHS consecutive epochs, e.g. "
                   "0.99:5 (for exploration; stored with each run); off (the default) trains every run to its "
                   "budget, the thesis' protocol. See docs/sweeps.md, 'Stopping collapsed runs early'")
    p.add_argument("--run-dir", default="depthscope-sweep", help="where the store goes (default ./depthscope-sweep)")
    p.add_argument("--backend", default="local", choices=["local", "inline", "ray"],
                   help="local worker processes (default), inline (this process, for debugging) or ray")
    p.add_argument("--address", default=None,
                   help="Ray cluster address, e.g. HEAD:6379, auto or ray://HEAD:10001 (ray backend; default: "
                   "$RAY_ADDRESS, else a new local Ray); see docs/cluster.md")
    p.add_argument("--workers", type=nonneg_int, default=0,
                   help="worker processes / Ray CPUs (0: one per core; 1 on GPU)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", default=None, help="directory holding the MNIST/Fashion-MNIST IDX files")
    p.add_argument("--trainer", default=None, metavar="MODULE:FUNCTION",
                   help="a train_group-compatible function (default depthscope.train:train_group)")
    p.add_argument("--force", action="store_true",
                   help="retrain every run of the grid; each stored run is replaced only when its new result "
                   "is written (an interrupted --force resumes where it stopped)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved grid and group counts, train nothing")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def _overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    for name in _GRID_FLAGS:
        v = getattr(args, name)
        if v is not None:
            out[name] = v
    for flag, key in (("name", "name"), ("dataset", "dataset"), ("split", "split"), ("n_train", "n_train"),
                      ("epochs", "epochs"), ("batch_size", "batch_size"), ("target_accuracy", "target_accuracy"),
                      ("group_size", "group_size"), ("early_stop", "early_stop")):
        v = getattr(args, flag)
        if v is not None:
            out[key] = v
    return out


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..cli import print_json
    from ..store import Store
    from ..sweep import (DEFAULT_TRAINER, SweepSpec, check_device, default_workers, expand, make_groups,
                         resolve_trainer, run_sweep)

    over = _overrides(args)
    sweep = SweepSpec.from_toml(args.config, over) if args.config else SweepSpec.from_dict(over)
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    # everything is checked before the run directory is made: the device, then whether the grid and
    # the largest runs fit in memory (a dry run checks as much as a real one, and trains nothing)
    device = check_device(args.device, args.backend)  # on Ray only the name: the cluster decides
    resolve_trainer(args.trainer or DEFAULT_TRAINER)  # an unknown trainer is an error before the store is opened
    if args.backend == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ValueError("the ray backend needs Ray: pip install 'depthscope[ray]'")
    # on Ray the runs train on the cluster's nodes: only what the driver holds (the grid) is checked here
    mem_device = "cpu" if args.backend == "ray" else device
    sweep.check_memory(1 if args.backend == "inline" else (args.workers or default_workers(mem_device)), mem_device)
    if args.dry_run:
        runs = expand(sweep)
        doc = {"sweep": sweep.to_dict(), "runs": len(runs), "groups": len(make_groups(runs, sweep.group_size))}
        if args.json:
            print_json(doc)
        else:
            print(f"{doc['runs']} runs in {doc['groups']} ensembles; grid: {doc['sweep']}")
        return 0
    with Store(args.run_dir) as store:
        summary = run_sweep(sweep, store, backend=args.backend, workers=args.workers or None, device=device,
                            trainer=args.trainer or DEFAULT_TRAINER, data_dir=args.data_dir, address=args.address,
                            quiet=args.quiet, force=args.force)
    doc = summary.to_dict()
    doc["run_dir"] = args.run_dir
    if args.json:
        print_json(doc)
    else:
        now = summary.this_invocation
        errors = (f"; {summary.errors} crashed (stored as errors, retried on the next run)" if summary.errors
                  else "")
        stopped = (f", {summary.stopped} stopped early by the policy ({sweep.early_stop})" if sweep.early_stop
                   else "")
        print(f"{summary.experiment}: {summary.success} of {summary.total} runs reached {sweep.target_accuracy:.0%}, "
              f"{summary.failed} failed ({summary.diverged} diverged{stopped}); {summary.ran} trained now "
              f"({now['success']} reached it), {summary.skipped} stored before{errors}; {summary.seconds:.1f}s on "
              f"{summary.device} "
              f"({summary.backend}, {summary.workers} workers) -> {args.run_dir}", file=sys.stderr)
    return 0
