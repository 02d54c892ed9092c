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
import json
import math
import pkgutil
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InputError
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


class DataMissing(Exception):
    """Work that needs a dataset which is not on disk (and could not be downloaded).

    Raised by :meth:`Experiment.run` (or :meth:`Experiment.run_unit`) instead of
    training on a stand-in: :func:`run_experiment` records the experiment's
    remaining units as *not run* (store meta ``not_run:NAME``, with ``message``),
    never as done, so a later run with the data runs them, and the report lists
    them with this reason.
    """

    def __init__(self, dataset: str, message: str):
        super().__init__(message)
        self.dataset = dataset
        self.message = message


#: The verdict kinds of a claim, kept apart (the report's verdict table shows these words).
VERDICTS = {
    "agree": "values agree within the stated tolerance",
    "trend": "trend agrees, values differ",
    "differs": "differs",
    "not run": "not run",
    "not judged": "not judged",
}


@dataclass
class Claim:
    """One row of the report's verdict table: a claim of the source, its value and ours, and the verdict.

    ``verdict`` is a key of :data:`VERDICTS`: "agree" only when the *values* agree within the
    tolerance stated in ``why``; "trend" when the direction / ordering agrees but the values do not
    (``why`` gives the scale reason); "differs"; "not run" (``why`` says why); "not judged" (the
    source gives nothing to compare with).
    """

    claim: str
    thesis: str
    ours: str
    scale: str  # preset and scale: width, seeds, ...
    verdict: str
    why: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")


def judge(values_agree: bool | None, trend_agrees: bool | None) -> str:
    """The verdict kind from two separate checks: the values within tolerance, and the trend / ordering.

    Values agreeing implies "agree"; else a holding trend gives "trend"; a failing trend (or values
    that differ where no trend is checked) gives "differs"; nothing checkable gives "not judged".
    """
    if values_agree:
        return "agree"
    if trend_agrees:
        return "trend"
    if trend_agrees is False or values_agree is False:
        return "differs"
    return "not judged"


def within(ours: float | None, thesis: float, rtol: float) -> bool:
    """|ours - thesis| <= rtol |thesis| (False when ours is missing or not finite)."""
    import math

    if ours is None or not math.isfinite(ours):
        return False
    return abs(ours - thesis) <= rtol * abs(thesis)


@dataclass
class FigureResult:
    """A figure written to disk, and what the report says about it.

    ``claims`` are its rows in the report's verdict table; a figure without claims gets one row
    built from ``verdict`` and ``agrees`` (kind "not judged" unless ``agrees`` says otherwise).
    """

    name: str  # e.g. "fig3.2a"
    title: str
    paths: list[Path]  # PNG first, then SVG
    command: str  # the command that regenerates it
    reproduces: str  # e.g. "thesis Fig. 3.2"
    verdict: str  # one line: what we saw vs what the source claims
    caption: str = ""
    agrees: bool | None = None  # does the data agree with the source's claim? None: not judged
    claims: list[Claim] = field(default_factory=list)
    html: str = ""  # extra HTML the report shows under the figure (e.g. a table), already escaped


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
        """The preset's parameters with ``overrides`` applied, each override checked against the presets' values
        (type, shape, range, names: :func:`depthscope.params.check_overrides`, the one place ``--set`` values
        are checked) so bad input is refused before anything runs."""
        from ..params import check_overrides

        if preset not in self.presets:
            raise ValueError(f"experiment {self.name!r} has no preset {preset!r}; expected one of: "
                             f"{', '.join(self.presets)}")
        check_overrides(self.name, self.presets, overrides, preset)
        p = dict(self.presets[preset])
        for k, v in (overrides or {}).items():
            if k not in p:  # a parameter of another preset only: this preset's units would not read it
                raise ValueError(f"experiment {self.name!r} has no parameter {k!r} at preset {preset!r}; valid: "
                                 f"{', '.join(sorted(p))}")
            p[k] = v
        return p

    def memory_bytes(self, params: dict) -> tuple[int, dict]:
        """(bytes, sizes): the least memory these parameters need (:func:`depthscope.memory.experiment_bytes`,
        from the sizes the parameter names give); an experiment with a tighter count overrides it."""
        from ..memory import experiment_bytes

        return experiment_bytes(params)

    def validate(self, params: dict) -> None:
        """Raise ValueError (one line) for parameters this experiment cannot run; called before anything is
        written. The default checks nothing beyond :meth:`params`; experiments override it for their own rules."""

    def units(self, params: dict) -> list[WorkUnit]:
        raise NotImplementedError

    def run_unit(self, unit: WorkUnit, ctx: RunContext) -> list[Value]:
        raise NotImplementedError

    def run(self, ctx: RunContext) -> dict:
        """Run every unit not yet in the store; returns counts.

        With a ``workers`` parameter above 1 the units run on that many spawned processes
        (:func:`unit_results`). Each result is recorded by this process as it arrives, so a killed run loses
        only the units in flight, as in the serial loop."""
        units = self.units(ctx.params)
        done = ctx.store.done_keys(self.name)
        todo = [u for u in units if u.key not in done]
        counts = {"total": len(units), "skipped": len(units) - len(todo), "ran": 0, "failed": 0}
        with Progress(len(todo), self.name, quiet=ctx.quiet) as bar:
            run_and_record(self, ctx, todo, int(ctx.params.get("workers", 1) or 1), counts, bar)
        return counts

    def figures(self, store: Store, outdir: Path, params: dict) -> list[FigureResult]:
        return []


def run_and_record(exp: Experiment, ctx: RunContext, todo: list[WorkUnit], workers: int, counts: dict,
                   bar: Progress) -> None:
    """Run ``todo`` (:func:`unit_results`) and record each unit as it finishes; counts "ran" and "failed"."""
    with closing(unit_results(exp, ctx, todo, workers)) as results:
        for i, values, status, reason, t0 in results:
            u = todo[i]
            counts["failed"] += status == "failed"
            ctx.store.record(exp.name, u.key, spec=u.spec, seed=u.seed, values=values, status=status,
                             reason=reason, started=t0)
            counts["ran"] += 1
            bar.update()


def unit_results(exp: Experiment, ctx: RunContext, todo: list[WorkUnit], workers: int = 1) -> Iterator[tuple]:
    """(i, values, status, reason, started) for each unit ``todo[i]``: here, in order, or with ``workers`` > 1
    on that many spawned processes of one thread each, in the order they finish (:func:`_unit_job`:
    ``run_unit`` there gets a context without a store, so only experiments whose ``run_unit`` reads nothing
    but the unit, the parameters and the device have a ``workers`` parameter). The caller records each
    result; closing the iterator (a killed run, a crash) stops the workers at once."""
    if workers > 1 and len(todo) > 1:
        yield from _pool_results(exp.name, todo, ctx, min(workers, len(todo)))
    else:
        for i, u in enumerate(todo):
            yield _unit_result(exp, i, u, ctx)


def _unit_result(exp: Experiment, i: int, u: WorkUnit, ctx: RunContext) -> tuple:
    """(i, values, status, reason, started) of one unit: a UnitFailed is a recorded failure, not a crash."""
    t0 = time.time()
    try:
        return i, exp.run_unit(u, ctx), "done", None, t0
    except UnitFailed as e:
        return i, e.values, "failed", e.reason, t0


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _unit_job(job: tuple) -> tuple:
    name, i, spec, seed, preset, params, device, data_dir = job
    # the parent records every result; a worker never opens the store (SQLite across processes would
    # serialise the writes anyway, and a killed worker could leave a half-written unit)
    ctx = RunContext(store=None, preset=preset, params=params, quiet=True, device=device,  # type: ignore[arg-type]
                     data_dir=data_dir)
    return _unit_result(get_experiment(name), i, WorkUnit(spec, seed), ctx)


def _pool_results(name: str, todo: list[WorkUnit], ctx: RunContext, workers: int):
    """Yield each unit's result as a worker finishes it (any order); on any exit (done, killed, a crash)
    the workers are stopped at once, not after the units in flight."""
    import multiprocessing as mp

    jobs = [(name, i, u.spec, u.seed, ctx.preset, ctx.params, ctx.device, ctx.data_dir)
            for i, u in enumerate(todo)]
    # spawn, not fork: the parent may hold torch's thread pool and an open SQLite connection
    pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=(1,))
    try:
        yield from pool.imap_unordered(_unit_job, jobs, chunksize=1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


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
    """Run one experiment into ``store`` (resuming), saving its resolved parameters in the store's meta.

    Everything is validated before the store is touched: the parameters (:meth:`Experiment.params`, the
    experiment's units and :meth:`Experiment.validate`) and that the store is writable. ``force`` never deletes
    first: every stored unit stops counting as done (:meth:`Store.begin_redo`), each is replaced when its new
    copy is recorded, and the leftovers are dropped only once every unit of the new run is in
    (:meth:`Store.drop_superseded`). Units that could not run (e.g. MNIST missing) keep their old results. The
    resolved parameters are saved once the run has recorded a unit or finished. Units claiming done without
    all their measurements are redone (:meth:`Store.done_keys`).
    """
    exp = get_experiment(name)
    params, keys = resolve(name, preset, overrides, device=device)
    if store.readonly:
        raise ValueError(f"{store.path} is open read-only; cannot run {name!r} into it")
    t0 = time.time()
    generation = store.begin_redo(exp.name) if force else None
    ctx = RunContext(store=store, preset=preset, params=params, quiet=quiet, device=device, data_dir=data_dir)
    finished = False
    try:
        counts = run_noting_missing_data(exp, ctx)
        finished = True
    finally:
        recorded = store.recorded_since(exp.name, t0)
        saved = {"preset": preset, "params": params}
        # written only when it changes: a forced rerun that could redo nothing leaves the store's bytes as they were
        if (recorded or finished) and store.get_meta(f"params:{exp.name}") != json.loads(json.dumps(saved, default=str)):
            store.set_meta(f"params:{exp.name}", saved)
        if generation is not None and not recorded:
            store.abandon_redo(exp.name, generation)  # nothing new: the old results count as done again
    # also after a killed --force resumed without it: the old units go once every new one is in
    dropped = store.drop_superseded(exp.name, keys)
    if generation is not None:
        counts["replaced"] = dropped
        counts["kept_old"] = len(set(keys) - recorded)  # not redone (e.g. no data): old results kept, if any
    _note_not_run(store, exp.name, keys, counts)
    return counts


def _note_not_run(store: Store, name: str, keys: list[str], counts: dict) -> None:
    """Store meta ``not_run:NAME`` for the report: the units still without a result for want of data (null once
    none lack). Counted after a failed --force has given the old results back, and written only when it
    changes, so a run that could not redo anything leaves the store as it was."""
    lacking = len(set(keys) - store.done_keys(name)) if counts.get("missing") else 0
    value = ({"units": lacking, "of": counts.get("total"), "missing": counts["missing"]} if lacking else None)
    if store.get_meta(f"not_run:{name}") != value:
        store.set_meta(f"not_run:{name}", value)


def resolve(name: str, preset: str = "quick", overrides: dict[str, Any] | None = None, *,
            device: str = "cpu") -> tuple[dict, list[str]]:
    """The checked parameters of experiment ``name`` and its unit keys; a ValueError (one line) for anything
    it cannot run, a :class:`~depthscope.errors.TooBig` for sizes that cannot fit in ``device``'s memory
    (checked before the units are listed: ``--set seeds=100000000`` allocates nothing). Writes nothing:
    callers validate every experiment with it before touching a store."""
    exp = get_experiment(name)
    params = exp.params(preset, overrides)
    # on Ray the device names the workers' nodes (unresolved, possibly a GPU this driver lacks): sizes are
    # checked against this machine's memory, the only one known here
    check_memory(exp, preset, params, overrides, "cpu" if params.get("backend") == "ray" else device)
    keys = unit_keys(exp, params)
    exp.validate(params)
    return params, keys


def check_memory(exp: Experiment, preset: str, params: dict, overrides: dict[str, Any] | None,
                 device: str = "cpu") -> None:
    """Refuse (:class:`~depthscope.errors.TooBig`, one line with both numbers) parameters whose estimated memory
    (:meth:`Experiment.memory_bytes`) exceeds what ``device`` has; the message names the ``--set`` values."""
    from ..memory import check_fits

    needed, sizes = exp.memory_bytes(params)
    shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items() if v)
    given = " ".join(f"--set {k}={json.dumps(v)}" for k, v in (overrides or {}).items())
    check_fits(needed, f"{exp.name} at preset {preset}{' with ' + given if given else ''} ({shown})", device)


def unit_keys(exp: Experiment, params: dict) -> list[str]:
    """The keys of ``exp``'s units at ``params``; parameters its units cannot be made from, or that list a unit
    twice (a value repeated in a list, ``widths=[25,25]``: the unit would run twice and mean nothing more), are
    a ValueError."""
    try:
        keys = [u.key for u in exp.units(params)]
    except ValueError:
        raise
    except (TypeError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise ValueError(f"parameters of {exp.name!r} do not fit together ({type(e).__name__}: {e}); compare "
                         f"them with `depthscope reproduce --list` and the preset") from None
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        twice = next(k for k in keys if k in seen or seen.add(k))
        raise InputError(f"the parameters of {exp.name!r} list the same unit twice (a value repeated in a list?): "
                         f"{twice[:120]}")
    return keys


def run_noting_missing_data(exp: Experiment, ctx: RunContext) -> dict:
    """``exp.run(ctx)``, turning :class:`DataMissing` into a skip.

    The counts gain ``not_run`` (units left undone for want of data) and ``missing`` (dataset ->
    the message naming where its files go); :func:`run_experiment` notes them in the store for the report.
    """
    try:
        counts = exp.run(ctx)
    except DataMissing as e:
        units = exp.units(ctx.params)
        done = ctx.store.done_keys(exp.name)
        todo = sum(u.key not in done for u in units)
        counts = {"total": len(units), "skipped": len(units) - todo, "ran": 0, "failed": 0,
                  "not_run": todo, "missing": {e.dataset: e.message}}
    return counts
