"""``depthscope watch-report``: the heatmap of a ``depthscope.watch`` run, drawn from its store."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch-report", help="draw VNI (or another quantity) per module over steps of a watch run",
                       description="Read the rows that depthscope.watch(model, run_dir=RUN_DIR) wrote and draw "
                       "a heatmap of modules x steps (PNG and SVG) per watch run.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--run", default=None, help="only this watch run (default: every run in the store)")
    p.add_argument("--quantity", default="vni", help="vni (default), effective_nodes, grad_rms, act_var, ...")
    p.add_argument("--out", default=None, help="directory for the figures (default: RUN_DIR)")
    p.set_defaults(func=cmd_watch_report)


def cmd_watch_report(args: argparse.Namespace) -> int:
    from ..watch import watch_report

    paths = watch_report(args.run_dir, run=args.run, quantity=args.quantity, outdir=args.out)
    if not paths:
        raise ValueError(f"no {args.quantity} rows to draw in {args.run_dir}")
    for p in paths:
        print(p)
    return 0
