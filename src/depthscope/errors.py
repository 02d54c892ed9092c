"""Bad input, told in one line: the exception type, path and name checks, and the CLI's classifier.

The library raises :class:`InputError` (a ``ValueError``, so ``except ValueError``
keeps working) for input that cannot be used: a value out of range, a path of the
wrong kind, a size that cannot fit in memory. The CLI (:func:`depthscope.cli.main`)
prints such errors as one line and exits with 2; :func:`user_message` decides what
counts as bad input:

* :class:`InputError`, anywhere;
* a ``ValueError`` whose innermost frame is depthscope's own code: a ``raise`` in
  its validation (the project's convention before this module existed) or a builtin
  such as ``int(text)`` called there. A ``ValueError`` from inside numpy, torch or
  the standard library is a bug in how we called them and keeps its traceback;
* an ``OSError`` about a path the user gave (missing, a file where a directory
  belongs or the reverse, not writable, read-only file system, disk full);
* running out of memory despite the estimate (:mod:`depthscope.memory`) having
  let the sizes through.

Everything else is a bug and keeps its traceback. ``DEPTHSCOPE_DEBUG=1`` shows the
traceback of every error, one-line ones included.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

__all__ = ["OneLineError", "InputError", "WorkersDied", "TooBig", "describe_exit", "check_name", "check_input_file",
           "check_input_dir", "check_output_dir", "check_output_file", "confined", "user_message", "NAME_PATTERN",
           "NAME_MAX"]


class OneLineError(Exception):
    """An error the CLI prints as one line (exit 2): the user can act on its message, a traceback adds nothing."""


class InputError(OneLineError, ValueError):
    """Input that cannot be used (a value, a path, a size): the CLI prints it as one line and exits 2."""


class WorkersDied(OneLineError, RuntimeError):
    """Worker processes kept dying (killed, out of memory, a crash in native code): the message says which
    signal or exit code, how many times, and where their log is."""


class TooBig(InputError):
    """A size whose estimated memory exceeds what the machine has (raised before allocating)."""

    def __init__(self, message: str, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available


# ----------------------------------------------------------------------------- names
#: The longest name: with a suffix such as ``-vni_heatmap.png`` it stays far below the 255 bytes a file
#: name may have.
NAME_MAX = 100
#: The one rule for every name that becomes part of a file name: experiment, sweep and watch run names
#: (:func:`check_name`; ``depthscope.watch``'s ``check_run_name`` is this check). A letter or digit,
#: then letters, digits, ``.``, ``_``, ``+``, ``-``, at most :data:`NAME_MAX` characters: no separators,
#: no spaces, never ``.`` or ``..``, never a leading ``-`` (an option) or ``.`` (a hidden file), so a name
#: never leaves its directory.
NAME_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._+-]{{0,{NAME_MAX - 1}}}")


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it matches :data:`NAME_PATTERN`, else an :class:`InputError` saying what is allowed."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError(f"{what} {name!r} is not allowed: use 1 to {NAME_MAX} letters, digits, '.', '_', '+' or "
                         "'-', starting with a letter or digit (it becomes part of file names)")
    return name


def confined(directory: str | os.PathLike, filename: str) -> Path:
    """``directory / filename``, refusing a ``filename`` that would land outside ``directory``.

    Use it for every output file whose name is built from a user's value (an
    experiment or run name): separators, ``..`` and absolute names are refused.
    """
    base = Path(directory)
    if not filename or os.sep in filename or (os.altsep and os.altsep in filename) or filename in (".", ".."):
        raise InputError(f"file name {filename!r} must be a plain name inside {base} (no separators)")
    path = base / filename
    if path.resolve().parent != base.resolve():
        raise InputError(f"file name {filename!r} would leave {base}")
    return path


# ----------------------------------------------------------------------------- paths
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """An existing, readable regular file; else an :class:`InputError` naming ``what`` and the path."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory, expected a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {p} is not readable")
    return p


def check_input_dir(path: str | os.PathLike, what: str) -> Path:
    """An existing directory; else an :class:`InputError` naming ``what`` and the path."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise InputError(f"{what} {p} is a file, expected a directory")
    return p


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """A directory that exists and is writable, or can be created; checked without creating anything.

    Refused: a file at ``path`` or at any of its ancestors, and a directory we cannot
    write in (the directory itself, or the nearest existing ancestor when it must be made).
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise InputError(f"{what} {p} is a file, expected a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"{what} {p} is not writable")
        return p
    anc = _nearest_existing(p.parent if p.parent != p else p)
    if anc.exists() and not anc.is_dir():
        raise InputError(f"{what} {p} cannot be created: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{what} {p} cannot be created: {anc} is not writable")
    return p


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """A file we can (over)write: not a directory, in an existing writable directory."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory, expected a file name")
    parent = p.parent
    if not parent.exists():
        anc = _nearest_existing(parent)
        if anc.exists() and not anc.is_dir():
            raise InputError(f"{what} {p} cannot be written: {anc} is a file, not a directory")
        raise InputError(f"{what} {p} cannot be written: directory {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"{what} {p} cannot be written: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{what} {p} is not writable")
    return p


def describe_exit(code: int | None) -> str:
    """A process exit code in words: -9 -> 'killed by signal 9 (SIGKILL)'."""
    import signal

    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"


# ----------------------------------------------------------------------------- classifying
#: OSError numbers that describe the user's paths or machine, not a bug in depthscope.
USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EEXIST,
               errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTEMPTY}

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _raised_in_depthscope(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or type(text).__name__


def _oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc)
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "CUDA out of memory" in text))


def user_message(exc: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input or machine; None for a bug."""
    if isinstance(exc, OneLineError):
        return _one_line(str(exc))
    if isinstance(exc, OSError) and exc.errno is None and _raised_in_depthscope(exc):
        return _one_line(str(exc))  # e.g. FileNotFoundError("no results store at ...") from our own checks
    if isinstance(exc, OSError) and exc.errno in USER_ERRNOS:
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        reason = exc.strerror or str(exc)
        return _one_line(f"{where}: {reason}" if where else reason)
    if _oom(exc):
        first = _one_line(str(exc))[:300]
        return (f"out of memory ({first or type(exc).__name__}); use smaller sizes (width, depth, samples, "
                "seeds, group size) or fewer workers")
    if isinstance(exc, ValueError) and _raised_in_depthscope(exc):
        return _one_line(str(exc))
    return None
