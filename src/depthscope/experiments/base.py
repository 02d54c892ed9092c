"""What an experiment is, and the generic resumable runner.

An experiment is a subclass of :class:`Experiment` in any module of this package;
:func:`registry` finds them all (no central list to edit). It declares

* ``name`` (what ``depthscope reproduce NAME`` takes, e.g. ``"fig3.2"``),
  ``title``, ``reproduces`` (e.g. ``"thesis Fig. 3.2"``),
* ``presets``: ``{"quick": {...}, "paper": {...}}`` of plain parameters,
* :meth:`Experiment.units`: the list of :class:`WorkUnit` a preset expands to,
* :meth:`Experiment.run_unit`: the measurements of one unit (a list of
  :class:`~depthscope.store.Value`), or raise :class:`UnitFailed` to record a failure,
* :meth:`Experiment.figures`: draw from the store only, return :class:`FigureResult`.

:func:`run_experiment` skips units already in the store, so killing and
re-running loses nothing and repeats nothing. Experiments whose units are
trained together in batches (the sweep engine) override :meth:`Experiment.run`.
"""
from __future__ import annotations

import importlib
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..progress import Progress
from ..store import Store, Value, unit_key


@dataclass
class WorkUnit:
    """One unit of work: its spec (plain JSON-able dict) and seed. The key is derived from both."""

    spec: dict
    seed: int | None = None

    @property
    def key(self) -> str:
        return unit_key(self.spec, self.seed)


class UnitFailed(Exception):
    """Raised by run_unit to record a unit as failed (with its partial values) instead of crashing."""

    def __init__(self, reason: str, values: list[Value] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.values = values or []


@dataclass
class FigureResult:
    """A figure written to disk, and what the report says about it."""

    name: str  # e.g. "fig3.2a"
    title: str
    paths: list[Path]  # PNG first, then SVG
    command: str  # the command that regenerates it
    reproduces: str  # e.g. "thesis Fig. 3.2"
    verdict: str  # one line: what we saw vs what the source claims
    caption: str = ""
    agrees: bool | None = None  # does the data agree with the source's claim? None: not judged


@dataclass
class RunContext:
    """What a run needs beyond its parameters."""

    store: Store
    preset: str
    params: dict
    quiet: bool = False
    device: str = "cpu"
    data_dir: str | None = None
    extra: dict = field(default_factory=dict)


class Experiment:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    reproduces: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict]] = {}

    def params(self, preset: str, overrides: dict | None = None) -> dict:
        if preset not in self.presets:
            raise ValueError(f"experiment {self.name!r} has no preset {preset!r}; expected one of: "
                             f"{', '.join(self.presets)}")
        p = dict(self.presets[preset])
        from ..params import check_overrides  # shape, NaN/null and range of each --set value (errors helper)

        check_overrides(self.name, self.presets, overrides)
        for k, v in (overrides or {}).items():
            if k not in p:
                raise ValueError(f"experiment {self.name!r} has no parameter {k!r}; valid: {', '.join(sorted(p))}")
            p[k] = v
        return p

    def units(self, params: dict) -> list[WorkUnit]:
        raise NotImplementedError

    def run_unit(self, unit: WorkUnit, ctx: RunContext) -> list[Value]:
        raise NotImplementedError

    def run(self, ctx: RunContext) -> dict:
        """Run every unit not yet in the store; returns counts."""
        units = self.units(ctx.params)
        done = ctx.store.done_keys(self.name)
        todo = [u for u in units if u.key not in done]
        counts = {"total": len(units), "skipped": len(units) - len(todo), "ran": 0, "failed": 0}
        with Progress(len(todo), self.name, quiet=ctx.quiet) as bar:
            for u in todo:
                t0 = time.time()
                try:
                    values, status, reason = self.run_unit(u, ctx), "done", None
                except UnitFailed as e:
                    values, status, reason = e.values, "failed", e.reason
                    counts["failed"] += 1
                ctx.store.record(self.name, u.key, spec=u.spec, seed=u.seed, values=values,
                                 status=status, reason=reason, started=t0)
                counts["ran"] += 1
                bar.update()
        return counts

    def figures(self, store: Store, outdir: Path, params: dict) -> list[FigureResult]:
        return []


def registry() -> dict[str, Experiment]:
    """Every Experiment subclass defined in depthscope.experiments.*, by name (sorted)."""
    from .. import experiments as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{pkg.__name__}.{mod.name}")
    found: dict[str, Experiment] = {}

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            if sub.name:
                found[sub.name] = sub()
            walk(sub)

    walk(Experiment)
    return dict(sorted(found.items()))


def get_experiment(name: str) -> Experiment:
    reg = registry()
    if name not in reg:
        raise ValueError(f"unknown experiment {name!r}; expected one of: {', '.join(reg)}")
    return reg[name]


def run_experiment(
    name: str,
    store: Store,
    preset: str = "quick",
    *,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    quiet: bool = False,
    device: str = "cpu",
    data_dir: str | None = None,
) -> dict:
    """Run one experiment into ``store`` (resuming), saving its resolved parameters in the store's meta."""
    exp = get_experiment(name)
    params = exp.params(preset, overrides)
    if force:
        store.clear(exp.name)
    store.set_meta(f"params:{exp.name}", {"preset": preset, "params": params})
    ctx = RunContext(store=store, preset=preset, params=params, quiet=quiet, device=device, data_dir=data_dir)
    return exp.run(ctx)
