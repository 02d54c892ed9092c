"""The results store: one SQLite file (WAL) per run directory.

Schema (all experiments share it)::

    units(experiment, key, spec JSON, seed, status, reason, code_version, started, finished)
        one row per unit of work (a net, a training run, a sweep member), PRIMARY KEY (experiment, key)
    measurements(experiment, key, quantity, layer, step, value)
        one row per measured number; provenance comes from its unit
    meta(name, value)
        free-form JSON: resolved configs, presets

A unit and all its measurements are written in one transaction, so a killed
process leaves either the whole unit or none of it: re-running skips exactly the
finished units (:meth:`Store.done_keys`). Figures read only from here.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    experiment TEXT NOT NULL,
    key TEXT NOT NULL,
    spec TEXT NOT NULL,
    seed INTEGER,
    status TEXT NOT NULL,
    reason TEXT,
    code_version TEXT NOT NULL,
    started REAL,
    finished REAL NOT NULL,
    PRIMARY KEY (experiment, key)
);
CREATE TABLE IF NOT EXISTS measurements (
    experiment TEXT NOT NULL,
    key TEXT NOT NULL,
    quantity TEXT NOT NULL,
    layer INTEGER,
    step INTEGER,
    value REAL
);
CREATE INDEX IF NOT EXISTS measurements_by_quantity ON measurements (experiment, quantity);
CREATE INDEX IF NOT EXISTS measurements_by_unit ON measurements (experiment, key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: done: finished; failed: a training outcome (e.g. diverged); error: the code crashed (an exception), which
#: is not a result: an error unit is not done (done_keys/is_done leave it out, so it is retried)
STATUSES = ("done", "failed", "error")

#: Columns of every export (CSV, Parquet) and of :meth:`Store.iter_all` rows; ``time`` is the unit's finish time.
EXPORT_COLUMNS = ("experiment", "key", "quantity", "layer", "step", "value", "spec", "seed", "status",
                  "reason", "code_version", "time")


class Value(NamedTuple):
    """One measured number: ``quantity`` at ``layer`` (1..L or None) and ``step`` (or None)."""

    quantity: str
    value: float
    layer: int | None = None
    step: int | None = None


def code_version() -> str:
    """depthscope's version, plus the git commit (and '+dirty') when run from a checkout."""
    from . import __version__

    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=5,
        )
        if rev.returncode == 0 and rev.stdout.strip():
            return f"{__version__}+g{rev.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def unit_key(spec: Mapping[str, Any], seed: int | None = None) -> str:
    """A stable key for a unit: canonical JSON of its spec and seed."""
    return json.dumps({"spec": dict(spec), "seed": seed}, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class Unit:
    """A finished unit read back from the store."""

    experiment: str
    key: str
    spec: dict
    seed: int | None
    status: str
    reason: str | None
    code_version: str
    started: float | None
    finished: float


class Store:
    """A results store in ``run_dir/results.sqlite``; safe to open from several processes."""

    def __init__(self, run_dir: str | os.PathLike, *, create: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if not self.path.exists() and not create:
            raise FileNotFoundError(f"no results store at {self.path}; run an experiment into {self.run_dir} first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._version: str | None = None

    # -- lifecycle -------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def code_version(self) -> str:
        if self._version is None:
            self._version = code_version()
        return self._version

    # -- writing ---------------------------------------------------------------
    def record(
        self,
        experiment: str,
        key: str,
        *,
        spec: Mapping[str, Any],
        seed: int | None,
        values: Iterable[Value | tuple],
        status: str = "done",
        reason: str | None = None,
        started: float | None = None,
    ) -> None:
        """Write one unit and all its measurements atomically (replacing an earlier copy)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if not (isinstance(experiment, str) and experiment) or not (isinstance(key, str) and key):
            raise ValueError(f"experiment and key must be non-empty strings, got {experiment!r}, {key!r}")
        # every row is checked before the transaction opens: bad input never reaches the database
        rows = [(experiment, key, *_checked(v)) for v in values]
        spec_json = json.dumps(dict(spec), sort_keys=True, default=str)
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("DELETE FROM measurements WHERE experiment=? AND key=?", (experiment, key))
            c.executemany("INSERT INTO measurements VALUES (?,?,?,?,?,?)", rows)
            c.execute(
                "INSERT OR REPLACE INTO units VALUES (?,?,?,?,?,?,?,?,?)",
                (experiment, key, spec_json, seed, status, reason, self.code_version, started, time.time()),
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def clear(self, experiment: str) -> int:
        """Forget every unit of ``experiment`` (for --force); returns how many there were."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        n = c.execute("SELECT COUNT(*) FROM units WHERE experiment=?", (experiment,)).fetchone()[0]
        c.execute("DELETE FROM measurements WHERE experiment=?", (experiment,))
        c.execute("DELETE FROM units WHERE experiment=?", (experiment,))
        c.execute("COMMIT")
        return n

    def set_meta(self, name: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (name, json.dumps(value, default=str)))

    def get_meta(self, name: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return default if row is None else json.loads(row[0])

    # -- reading ---------------------------------------------------------------
    def done_keys(self, experiment: str) -> set[str]:
        """Keys of every finished unit (status done or failed, not error) of ``experiment``."""
        rows = self._conn.execute("SELECT key FROM units WHERE experiment=? AND status!='error'", (experiment,))
        return {r[0] for r in rows}

    def is_done(self, experiment: str, key: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM units WHERE experiment=? AND key=? AND status!='error'",
                                 (experiment, key)).fetchone()
        return row is not None

    def experiments(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT DISTINCT experiment FROM units ORDER BY experiment")]

    def units(self, experiment: str) -> list[Unit]:
        rows = self._conn.execute(
            "SELECT experiment, key, spec, seed, status, reason, code_version, started, finished "
            "FROM units WHERE experiment=? ORDER BY rowid", (experiment,))
        return [Unit(r[0], r[1], json.loads(r[2]), *r[3:]) for r in rows]

    def rows(self, experiment: str, quantity: str | None = None, **where: Any) -> list[dict]:
        """Measurements of ``experiment`` joined with their unit, spec fields flattened into each row.

        ``where`` filters on spec fields (``depth=50``) or on ``seed``/``status``/``layer``/``step``;
        a list value means "any of".
        """
        sql = ("SELECT m.key, m.quantity, m.layer, m.step, m.value, u.spec, u.seed, u.status "
               "FROM measurements m JOIN units u ON u.experiment=m.experiment AND u.key=m.key "
               "WHERE m.experiment=?")
        args: list[Any] = [experiment]
        if quantity is not None:
            sql += " AND m.quantity=?"
            args.append(quantity)
        out = []
        for key, q, layer, step, value, spec, seed, status in self._conn.execute(sql + " ORDER BY m.rowid", args):
            row = dict(json.loads(spec))
            row.update(key=key, quantity=q, layer=layer, step=step, value=_nan_if_null(value), seed=seed,
                       status=status)
            if all(_matches(row.get(k), v) for k, v in where.items()):
                out.append(row)
        return out

    def iter_all(self, experiment: str | None = None) -> Iterator[dict]:
        """Every measurement with full provenance (for export)."""
        sql = ("SELECT m.experiment, m.key, m.quantity, m.layer, m.step, m.value, u.spec, u.seed, u.status, "
               "u.reason, u.code_version, u.finished FROM measurements m JOIN units u "
               "ON u.experiment=m.experiment AND u.key=m.key")
        args: tuple = ()
        if experiment is not None:
            sql += " WHERE m.experiment=?"
            args = (experiment,)
        for r in self._conn.execute(sql + " ORDER BY m.rowid", args):
            row = dict(zip(EXPORT_COLUMNS, r))
            row["value"] = _nan_if_null(row["value"])
            yield row

    # -- export ----------------------------------------------------------------
    def export_csv(self, path: str | os.PathLike, experiment: str | None = None) -> int:
        """Write every measurement (with provenance) to CSV; returns the row count."""
        n = 0
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=EXPORT_COLUMNS)
            w.writeheader()
            for row in self.iter_all(experiment):
                w.writerow(row)
                n += 1
        return n

    def export_parquet(self, path: str | os.PathLike, experiment: str | None = None) -> int:
        """Write every measurement to Parquet (needs the optional ``pyarrow``)."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("Parquet export needs pyarrow: pip install 'depthscope[parquet]'") from None
        rows = list(self.iter_all(experiment))
        table = pa.table({c: [r[c] for r in rows] for c in EXPORT_COLUMNS})
        pq.write_table(table, path)
        return len(rows)


def _nan_if_null(value: float | None) -> float:
    """SQLite stores a NaN REAL as NULL; every value written is a float, so NULL can only have been NaN."""
    return math.nan if value is None else value


def _checked(v: Value | tuple) -> tuple[str, int | None, int | None, float]:
    """(quantity, layer, step, value) of one measurement, or a one-line ValueError naming what is wrong."""
    if not isinstance(v, tuple) or not 2 <= len(v) <= 4:
        raise ValueError(f"a measurement is Value(quantity, value, layer=None, step=None) or a tuple of 2 to 4 "
                         f"of those, got {v!r}")
    v = Value(*v)
    if not (isinstance(v.quantity, str) and v.quantity):
        raise ValueError(f"quantity must be a non-empty string, got {v.quantity!r}")
    if isinstance(v.value, (str, bytes)):
        raise ValueError(f"value of {v.quantity!r} must be a number, got {v.value!r}")
    try:
        value = float(v.value)
    except (TypeError, ValueError):
        raise ValueError(f"value of {v.quantity!r} must be a number, got {v.value!r}") from None
    ints = []
    for name in ("layer", "step"):
        x = getattr(v, name)
        try:
            ok = x is None or (not isinstance(x, (bool, str)) and int(x) == x)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{name} of {v.quantity!r} must be an integer or None, got {x!r}")
        ints.append(None if x is None else int(x))
    return v.quantity, ints[0], ints[1], value


def _matches(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return actual in wanted
    return actual == wanted
