"""The ``depthscope`` command: thin parsing around the library.

Each subcommand lives in a module that exposes ``register(subparsers)``; the
parser it adds sets ``func`` to a function taking the parsed args and returning
an exit code. Errors in user input (``ValueError`` from the library, bad flags)
print one line and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Sequence

import numpy as np

#: Modules that add subcommands (each has ``register(subparsers)``).
COMMAND_MODULES = [
    "depthscope.commands.core",  # theory, vni
    "depthscope.commands.reproduce",  # reproduce, report, export
    "depthscope.commands.sweep",  # sweep
    "depthscope.commands.watch",  # watch-report
    "depthscope.commands.check",  # check
]


class UsageError(Exception):
    """Bad user input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (v >= 0 and np.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def to_jsonable(obj: Any) -> Any:
    """numpy/torch scalars and arrays -> plain JSON (non-finite floats -> None)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    return obj


def print_json(doc: Any) -> None:
    json.dump(to_jsonable(doc), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="depthscope", description="Why is a deep network hard to train? "
                     "Vanishing nodes, vanishing gradients and volume conservation, beside their theory.")
    parser.add_argument("--version", action="version", version=f"depthscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"depthscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"depthscope {args.command}: interrupted; finished work is kept in the store", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
