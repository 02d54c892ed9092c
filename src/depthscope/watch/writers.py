"""Writers: where a watch's records go (the depthscope store, CSV, TensorBoard, or anything with write())."""
from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import NAME_MAX, NAME_PATTERN, check_name
from .alerts import Alert
from .quantities import QUANTITIES
from .select import _Watched

logger = logging.getLogger("depthscope.watch")

EXPERIMENT = "watch"

#: A run name follows the one name rule of experiments and sweeps (:data:`depthscope.errors.NAME_PATTERN`).
RUN_NAME = NAME_PATTERN


def check_run_name(run: Any, what: str = "run") -> str:
    """``run`` if it is a valid run name (:func:`depthscope.errors.check_name`), else a one-line InputError."""
    return check_name(run, f"{what} name")


def fresh_run_name(run: str, taken: Sequence[str]) -> str:
    """``run`` if it is not taken, else the first free ``run-2``, ``run-3``, ... (cut to fit
    :data:`~depthscope.errors.NAME_MAX` characters)."""
    if run not in taken:
        return run
    i = 2
    while True:
        suffix = f"-{i}"
        name = run[: NAME_MAX - len(suffix)] + suffix
        if name not in taken:
            return name
        i += 1


class StoreWriter:
    """Rows to a depthscope store: one unit per (run, step), key ``f"{run}:{step}"``, experiment 'watch'.

    Module names go to meta ``watch/<run>/layers`` (index l-1 = layer l); alerts to ``watch/<run>/alerts``.
    A run never overwrites another: when ``run`` is already in the store, this run is named
    ``run-2`` (``run-3``, ...) unless ``resume`` is true, which continues the stored run (its
    modules must be the same; a step recorded again replaces the stored one). ``self.run`` is
    the name used, known after :meth:`start`.
    """

    def __init__(self, run_dir: str | os.PathLike, run: str, spec: Mapping[str, Any], seed: int,
                 *, resume: bool = False, named: bool = True):
        from ..store import Store

        self.run = check_run_name(run)
        self.store = Store(run_dir)
        self.spec, self.seed, self.resume, self._named = dict(spec), seed, resume, named

    def start(self, watched: Sequence[_Watched]) -> None:
        runs = self.store.get_meta("watch/runs", [])
        names, types = [w.name for w in watched], [type(w.module).__name__ for w in watched]
        if self.run in runs and self.resume:
            stored = self.store.get_meta(f"watch/{self.run}/layers", [])
            if stored != names:
                raise ValueError(f"cannot resume watch run {self.run!r}: it watched {len(stored)} modules "
                                 f"({', '.join(stored[:3])}, ...), this watch {len(names)} "
                                 f"({', '.join(names[:3])}, ...); choose another run name")
            return
        if self.run in runs:
            new = fresh_run_name(self.run, runs)
            (logger.warning if self._named else logger.info)(
                "depthscope.watch: run %r already exists in %s: this run is %r (resume=True continues %r)",
                self.run, str(self.store.run_dir), new, self.run)
            self.run = new
        self.store.set_meta(f"watch/{self.run}/layers", names)
        self.store.set_meta(f"watch/{self.run}/types", types)
        self.store.set_meta("watch/runs", runs + [self.run])

    def write(self, step: int, records: Sequence[dict]) -> None:
        from ..store import Value

        values = [Value(q, r[q], layer=r["layer"], step=step)
                  for r in records for q in QUANTITIES if not math.isnan(r[q])]
        self.store.record(EXPERIMENT, f"{self.run}:{step}", spec={**self.spec, "run": self.run, "step": step},
                          seed=self.seed, values=values)

    def alert(self, alerts: Sequence[Alert]) -> None:
        self.store.set_meta(f"watch/{self.run}/alerts", [a.__dict__ for a in alerts])

    def close(self) -> None:
        self.store.close()


class CSVWriter:
    """Rows to a CSV file (one line per step and module; NaN for missing quantities), appended."""

    COLUMNS = ("step", "layer", "name") + QUANTITIES

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=list(self.COLUMNS), extrasaction="ignore")
        if new:
            self._w.writeheader()

    def start(self, watched: Sequence[_Watched]) -> None:
        pass

    def write(self, step: int, records: Sequence[dict]) -> None:
        self._w.writerows(records)
        self._f.flush()

    def alert(self, alerts: Sequence[Alert]) -> None:
        pass

    def close(self) -> None:
        self._f.close()


class TensorBoardWriter:
    """Scalars ``depthscope/<quantity>/<module name>`` through a ``SummaryWriter`` (or anything with ``add_scalar``)."""

    def __init__(self, target: Any):
        if isinstance(target, (str, os.PathLike)):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("the TensorBoard writer needs tensorboard: pip install 'depthscope[tensorboard]'") from None
            self.sw, self._own = SummaryWriter(str(target)), True
        elif hasattr(target, "add_scalar"):
            self.sw, self._own = target, False
        else:
            raise ValueError(f"tensorboard= expects a log directory or a SummaryWriter, got {type(target).__name__}")

    def start(self, watched: Sequence[_Watched]) -> None:
        pass

    def write(self, step: int, records: Sequence[dict]) -> None:
        for r in records:
            for q in QUANTITIES:
                if q not in ("nodes", "samples", "calls") and not math.isnan(r[q]):
                    self.sw.add_scalar(f"depthscope/{q}/{r['name'] or '<root>'}", r[q], step)

    def alert(self, alerts: Sequence[Alert]) -> None:
        pass

    def close(self) -> None:
        if self._own:
            self.sw.close()
        elif hasattr(self.sw, "flush"):
            self.sw.flush()
