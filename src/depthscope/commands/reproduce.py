"""``depthscope reproduce``, ``depthscope report`` and ``depthscope export``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_RUN_DIR = "depthscope-run"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run experiments into a results store, then write the report",
                       description="Run the named experiments (all of them when none is named) at a preset, "
                       "resuming from whatever the run directory already holds, then write report.html.")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiment names (see --list); default: all")
    p.add_argument("--preset", default="quick", help="quick (CPU minutes, the default) or paper (the thesis' sizes)")
    p.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=f"where the store, figures and report go "
                   f"(default: ./{DEFAULT_RUN_DIR})")
    p.add_argument("--force", action="store_true", help="discard stored results of these experiments and rerun")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset parameter (JSON value), only with one NAME")
    p.add_argument("--data-dir", default=None, help="directory holding the MNIST/Fashion-MNIST IDX files")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    p.add_argument("--no-report", action="store_true", help="skip writing the report")
    p.add_argument("--list", action="store_true", help="list the experiments and their presets, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)

    r = sub.add_parser("report", help="draw every figure from a run directory's store and write report.html")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="write report.html and figures/ into DIR instead of RUN_DIR (the store is only read: "
                   "a read-only run directory needs this)")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("export", help="export a run directory's store to CSV or Parquet")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("output", metavar="OUTPUT", help="file name ending in .csv or .parquet")
    e.add_argument("--experiment", default=None)
    e.set_defaults(func=cmd_export)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..experiments import registry, run_experiment
    from ..experiments.base import get_experiment, resolve
    from ..params import parse_assignments
    from ..store import Store
    from ..sweep import check_device

    reg = registry()
    if args.list:
        for name, exp in reg.items():
            print(f"{name:16s} {exp.title}  [{', '.join(exp.presets)}]  ({exp.reproduces})")
        return 0
    names = args.names or list(reg)
    for n in names:
        if n not in reg:
            raise ValueError(f"unknown experiment {n!r}; expected one of: {', '.join(reg)}")
    overrides = parse_assignments(args.set)
    if overrides and len(names) != 1:
        raise ValueError("--set applies to one experiment: name exactly one NAME")
    devices: dict[str, str] = {}
    for n in names:  # every experiment's parameters (and their memory) are checked before the store is opened
        params = get_experiment(n).params(args.preset, overrides)
        # on Ray the workers' nodes decide "auto" (a head without a GPU drives GPU workers), not this machine
        devices[n] = check_device(args.device, params.get("backend", "local"))
        resolve(n, args.preset, overrides, device=devices[n])
    kept: list[str] = []
    missing: dict[str, str] = {}  # dataset -> where its files go (one warning at the end, not one per experiment)
    not_run: list[str] = []
    with Store(args.run_dir) as store:
        for n in names:
            t0 = time.time()
            counts = run_experiment(n, store, args.preset, overrides=overrides, force=args.force,
                                    quiet=args.quiet, device=devices[n], data_dir=args.data_dir)
            if counts.get("kept_old"):
                kept.append(f"{n}: {counts['kept_old']} units could not be redone"
                            + (f" ({counts['not_run']} need {', '.join(counts.get('missing', {}))}; see --data-dir)"
                               if counts.get("not_run") else ""))
            for dataset, message in counts.get("missing", {}).items():
                missing.setdefault(dataset, message)
            if counts.get("not_run"):
                not_run.append(f"{n} ({counts['not_run']} of {counts['total']} units)")
            if not args.quiet:
                lacking = (f", {counts['not_run']} not run (need {', '.join(counts.get('missing', {}))})"
                           if counts.get("not_run") else "")
                print(f"{n}: {counts['ran']} ran ({counts['failed']} units stopped early: diverged, overflowed "
                      f"or errored){lacking}, {counts['skipped']} already stored, {time.time() - t0:.1f}s",
                      file=sys.stderr)
    for dataset, message in missing.items():
        print(f"warning: not run for want of {dataset}: {', '.join(not_run)}. {message}.", file=sys.stderr)
    if not args.no_report:
        from ..report import write_report

        path = write_report(Path(args.run_dir), quiet=args.quiet)
        print(path)
    if kept:  # --force could not do what was asked: say so, and keep the old results (never exit 0 here)
        from ..cli import UsageError

        raise UsageError(f"--force incomplete: {'; '.join(kept)}; their earlier results are kept")
    return 0


def _incomplete(run_dir: str, command: str) -> int:
    """0 when the store is consistent, else 1 after one warning line (units missing rows, damage)."""
    from ..store import Store

    with Store(run_dir, create=False, readonly=True) as store:
        rep = store.check(integrity=False)
    if rep.ok:
        return 0
    more = f" (and {len(rep.problems) - 1} more)" if len(rep.problems) > 1 else ""
    print(f"depthscope {command}: warning: {rep.path} is incomplete: {rep.problems[0]}{more}; "
          f"`depthscope check {run_dir}` lists it all, `depthscope reproduce` redoes such units", file=sys.stderr)
    return 1


def cmd_report(args: argparse.Namespace) -> int:
    from ..cli import UsageError
    from .. import report
    from ..store import Store

    Store(args.run_dir, create=False, readonly=True).close()  # a missing, damaged or old store: one line first
    out = None
    if args.out is not None:
        from ..errors import InputError, check_output_dir

        if args.out == "":
            raise InputError("--out must not be empty")
        out = check_output_dir(args.out, "--out")
    if out is None and not report.writable_dir(Path(args.run_dir)):
        raise UsageError(f"cannot write the report into {args.run_dir}: the run directory is not writable; "
                         "pass --out DIR to write it elsewhere (the store is only read)")
    try:
        print(report.write_report(Path(args.run_dir), quiet=args.quiet, out=out))
    except PermissionError as e:
        raise UsageError(f"cannot write the report into {args.out or args.run_dir}: {e.strerror} ({e.filename}); "
                         "pass --out DIR to write it elsewhere") from None
    return _incomplete(args.run_dir, "report")


def cmd_export(args: argparse.Namespace) -> int:
    from ..store import Store

    out = Path(args.output)
    if out.suffix not in (".csv", ".parquet"):
        raise ValueError(f"OUTPUT must end in .csv or .parquet, got {out.name!r}")
    if out.is_dir():
        raise ValueError(f"OUTPUT {out} is a directory; name a file ending in {out.suffix or '.csv'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"cannot write {out}: the directory {parent} does not exist")
    with Store(args.run_dir, create=False, readonly=True) as store:  # export only reads the store
        if out.suffix == ".csv":
            n = store.export_csv(out, args.experiment)
        else:
            from ..cli import UsageError

            try:
                n = store.export_parquet(out, args.experiment)
            except RuntimeError as e:  # pyarrow missing: one line, not a traceback
                raise UsageError(str(e)) from None
    print(f"{n} rows -> {out}")
    return _incomplete(args.run_dir, "export")
