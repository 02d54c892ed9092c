"""A dependency-free progress bar on stderr; silent when ``quiet`` or when stderr is not a terminal
(then it prints one line per 10% so logs still show progress)."""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, total: int, desc: str = "", *, quiet: bool = False, stream=None):
        self.total = max(int(total), 0)
        self.desc = desc
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.t0 = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1
        self._last_draw = 0.0

    def update(self, k: int = 1, note: str = "") -> None:
        self.n += k
        if self.quiet:
            return
        now = time.perf_counter()
        if self._tty:
            if now - self._last_draw > 0.1 or self.n >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now, note) + "\x1b[K")
                self.stream.flush()
        else:
            decile = int(10 * self.n / self.total) if self.total else 10
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line(now, note) + "\n")
                self.stream.flush()

    def _line(self, now: float, note: str) -> str:
        el = now - self.t0
        frac = self.n / self.total if self.total else 1.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        eta = el / frac - el if frac > 0 else float("nan")
        s = f"{self.desc} [{bar}] {self.n}/{self.total} {el:6.1f}s"
        if self.n < self.total and frac > 0:
            s += f" eta {eta:5.0f}s"
        return s + (f" {note}" if note else "")

    def close(self) -> None:
        if not self.quiet and self._tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], total: int, desc: str = "", *, quiet: bool = False) -> Iterator[T]:
    """Iterate ``items`` with a progress bar."""
    with Progress(total, desc, quiet=quiet) as p:
        for it in items:
            yield it
            p.update()
