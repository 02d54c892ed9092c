"""The ``depthscope`` command: thin parsing around the library.

Each subcommand lives in a module that exposes ``register(subparsers)``; the
parser it adds sets ``func`` to a function taking the parsed args and returning
an exit code. Errors in user input print one line on stderr and exit 2, never a
traceback: bad flags (argparse), :class:`depthscope.errors.InputError`, a
``ValueError`` raised by depthscope's own validation, an ``OSError`` about the
user's paths, and running out of memory (see :func:`depthscope.errors.user_message`).
Any other exception is a bug: it keeps its traceback (exit 1).
``DEPTHSCOPE_DEBUG=1`` shows the traceback of one-line errors too.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
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


from .errors import InputError, user_message

#: Bad user input: printed as one line, exit code 2 (the library's :class:`~depthscope.errors.InputError`).
UsageError = InputError


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


#: Largest value a float flag takes: its square must stay a finite float64 (sigma_b^2, q = sigma_w^2 E[phi^2]).
FLOAT_FLAG_MAX = 1e154


def nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (0 <= v <= FLOAT_FLAG_MAX):  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected a finite number in [0, {FLOAT_FLAG_MAX:g}], got {text!r}")
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


#: What each path argument must be, checked before a command runs (so nothing is written on a bad path):
#: (command, argument) -> "in-dir" (an existing directory), "store-dir" (the same, holding a results store: the
#: store itself is checked when it is opened), "out-dir" (a directory that exists and is
#: writable, or can be made), "in-file" (a readable file) or "out-file" (a file we can write). Commands
#: that are not registered are ignored (the table may name one before it exists).
PATH_ARGS: dict[tuple[str, str], tuple[str, str]] = {
    ("vni", "data_dir"): ("in-dir", "--data-dir"),
    ("reproduce", "run_dir"): ("out-dir", "--run-dir"),
    ("reproduce", "data_dir"): ("in-dir", "--data-dir"),
    ("report", "run_dir"): ("store-dir", "RUN_DIR"),
    ("export", "run_dir"): ("store-dir", "RUN_DIR"),
    ("export", "output"): ("out-file", "OUTPUT"),
    ("sweep", "config"): ("in-file", "CONFIG"),
    ("sweep", "run_dir"): ("out-dir", "--run-dir"),
    ("sweep", "data_dir"): ("in-dir", "--data-dir"),
    ("watch-report", "run_dir"): ("store-dir", "RUN_DIR"),
    ("watch-report", "out"): ("out-dir", "--out"),
    ("check", "run_dir"): ("store-dir", "RUN_DIR"),
}


def check_paths(args: argparse.Namespace) -> None:
    """Check every path argument of ``args`` against :data:`PATH_ARGS`; an InputError names the first bad one."""
    from .errors import check_input_dir, check_input_file, check_output_dir, check_output_file

    if getattr(args, "list", False):  # reproduce --list reads no path
        return
    def store_dir(value: str, flag: str) -> None:
        if not os.path.lexists(value):
            raise InputError(f"no results store at {value}: {flag} {value} does not exist")
        check_input_dir(value, flag)

    checks = {"in-dir": check_input_dir, "store-dir": store_dir, "out-dir": check_output_dir,
              "in-file": check_input_file, "out-file": check_output_file}
    for (command, dest), (kind, flag) in PATH_ARGS.items():
        if command != args.command:
            continue
        value = getattr(args, dest, None)
        if value is None:
            continue
        if value == "":
            raise InputError(f"{flag} must not be empty")
        checks[kind](value, flag)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_paths(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"depthscope {args.command}: interrupted; finished work is kept in the store", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - classified: bad input is one line, a bug keeps its traceback
        msg = user_message(e)
        if msg is None or os.environ.get("DEPTHSCOPE_DEBUG"):
            raise
        print(f"depthscope {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
