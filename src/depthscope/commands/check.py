"""``depthscope check``: is a run directory's store whole? (thin: :func:`depthscope.store.check` does the work)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a run directory's store: units missing their rows, damage, old schema",
                       description="Report what makes a results store untrustworthy: SQLite damage, units that "
                       "claim done but lost measurement rows (a resumed `depthscope reproduce` redoes them), rows "
                       "without a unit, text that is not JSON. A schema-1 store is migrated when writable. "
                       "Exit 0 when the store is whole, 1 when it has problems.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--no-integrity", action="store_true", help="skip SQLite's page-level check (faster)")
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from ..cli import print_json
    from ..store import check

    rep = check(args.run_dir, integrity=not args.no_integrity)
    if args.json:
        print_json(rep.to_dict())
        return 0 if rep.ok else 1
    print(f"{rep.path}: store schema {rep.schema_version}")
    for name, c in rep.experiments.items():
        print(f"  {name}: {c['done']} done, {c['failed']} failed, {c['error']} error, {c['rows']} rows")
    for p in rep.problems:
        print(f"problem: {p}")
    for n in rep.notes:
        print(f"note: {n}")
    print("ok" if rep.ok else f"{len(rep.problems)} problem(s)")
    return 0 if rep.ok else 1
