"""The results store: one SQLite file (WAL) per run directory.

Schema version 2 (``PRAGMA user_version``; all experiments share it)::

    experiments(id, name UNIQUE, generation)
        one row per experiment; ``generation`` is raised by ``--force`` (see :meth:`Store.begin_redo`)
    quantities(id, name UNIQUE)
        measured quantity names, interned ("vni", "loss", ...)
    units(id, experiment, key, spec JSON, seed, status, reason, code_version, started, finished,
          n_values, generation)            UNIQUE (experiment, key)
        one row per unit of work (a net, a training run, a sweep member) holding its spec once;
        ``n_values`` is how many measurements it was recorded with
    measurements(unit, quantity, seq, layer, step, value)   PRIMARY KEY (unit, quantity, seq), WITHOUT ROWID
        one row per measured number: a few integers and one REAL (~20-30 bytes on disk)
    meta(name, value)
        free-form JSON: resolved configs, presets
    results (a view)
        measurements joined with their unit, experiment and quantity names, for SQL users:
        ``SELECT * FROM results WHERE json_extract(spec, '$.depth') = 50``

A unit and all its measurements are written in one transaction, so a killed
process leaves either the whole unit or none of it: re-running skips exactly the
finished units (:meth:`Store.done_keys`). A unit counts as finished only while all
its ``n_values`` measurements are present; :meth:`Store.check` (``depthscope
check``) reports units that lost them, and a resumed run redoes them. Stores of
schema version 1 (one table row per measurement repeating the unit's JSON key) are
migrated on the first writable open. Figures read only from here.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import sqlite3
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

DB_NAME = "results.sqlite"
SCHEMA_VERSION = 2

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS experiments (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
    "generation INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS quantities (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    # AUTOINCREMENT: a re-recorded unit never gets the id of the copy it replaced (ids of broken units are cached)
    """CREATE TABLE IF NOT EXISTS units (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        experiment INTEGER NOT NULL,
        key TEXT NOT NULL,
        spec TEXT NOT NULL,
        seed INTEGER,
        status TEXT NOT NULL,
        reason TEXT,
        code_version TEXT NOT NULL,
        started REAL,
        finished REAL NOT NULL,
        n_values INTEGER NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        UNIQUE (experiment, key))""",
    # WITHOUT ROWID + this key: a unit's rows of one quantity are contiguous, and no second index is needed
    """CREATE TABLE IF NOT EXISTS measurements (
        unit INTEGER NOT NULL,
        quantity INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        layer INTEGER,
        step INTEGER,
        value REAL,
        PRIMARY KEY (unit, quantity, seq)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE VIEW IF NOT EXISTS results AS
        SELECT e.name AS experiment, u.id AS unit, u.key AS key, q.name AS quantity, m.layer AS layer,
               m.step AS step, m.value AS value, u.spec AS spec, u.seed AS seed, u.status AS status,
               u.reason AS reason, u.code_version AS code_version, u.finished AS time
        FROM measurements m JOIN units u ON u.id = m.unit JOIN experiments e ON e.id = u.experiment
             JOIN quantities q ON q.id = m.quantity""",
]
_TABLES = ("experiments", "quantities", "units", "measurements", "meta")

#: "done" and "failed" are finished training outcomes; "error" means the code crashed (an exception): such a unit
#: is not finished (:meth:`Store.done_keys` leaves it out, so it is retried) and counts in no success statistic.
STATUSES = ("done", "failed", "error")
FINISHED = ("done", "failed")

#: The fixed columns of every export (CSV, Parquet) and of :meth:`Store.iter_all` rows, in order; one column per
#: spec field follows them (see :meth:`Store.export_columns`). ``unit`` is the unit's integer id, ``time`` its
#: finish time.
EXPORT_COLUMNS = ("experiment", "unit", "quantity", "layer", "step", "value", "seed", "status", "reason",
                  "code_version", "time")

_ROW_FIELDS = frozenset({"quantity", "layer", "step", "value"})  # where-filters decided per measurement row


class StoreError(ValueError):
    """A store that cannot be opened, read or written as asked; the message is one line naming the file."""


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
    """A unit read back from the store."""

    experiment: str
    key: str
    spec: dict
    seed: int | None
    status: str
    reason: str | None
    code_version: str
    started: float | None
    finished: float


@dataclass
class CheckReport:
    """What :meth:`Store.check` found. ``problems`` make a store untrustworthy; ``notes`` are informational."""

    path: Path
    schema_version: int
    experiments: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> counts by status, rows
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    broken: dict[str, list[str]] = field(default_factory=dict)  # experiment -> keys of units missing rows

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"path": str(self.path), "schema_version": self.schema_version, "ok": self.ok,
                "experiments": self.experiments, "problems": self.problems, "notes": self.notes,
                "broken": self.broken}


def _uri(path: Path, **params: str) -> str:
    return "file:" + urllib.parse.quote(str(path.resolve())) + "?" + urllib.parse.urlencode(params)


def _writable(path: Path) -> bool:
    # SQLite writes its -wal and -shm files beside the database: the directory must be writable too
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


class Store:
    """A results store in ``run_dir/results.sqlite``; safe to open from several processes.

    ``create=False`` refuses a run directory without a store (and opens it read-only when it is not
    writable); ``readonly=True`` never writes: no migration, no repair, and the run directory is left
    exactly as it was (``depthscope report`` and ``export`` open it so).
    """

    def __init__(self, run_dir: str | os.PathLike, *, create: bool = True, readonly: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise StoreError(f"{self.run_dir} is a file, not a run directory; pass the directory that holds "
                             f"{DB_NAME}")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"{self.path} is not a file; move it aside so the store can be written there")
        if not self.path.exists():
            if not create or readonly:
                raise FileNotFoundError(f"no results store at {self.path}; run an experiment into {self.run_dir} "
                                        "first")
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"cannot create the run directory {self.run_dir}: {e.strerror}") from None
            if not os.access(self.run_dir, os.W_OK):
                raise StoreError(f"cannot write a store into {self.run_dir}: the directory is not writable")
        elif not readonly and not _writable(self.path):
            if create:
                raise StoreError(f"cannot write to {self.path}: the file or its directory is read-only (report "
                                 "and export read it as it is; copy the run directory to add results)")
            readonly = True
        self.readonly = readonly
        self.migrated_from: int | None = None
        self._version: str | None = None
        self._qids: dict[str, int] = {}
        self._qnames: dict[int, str] = {}
        self._eids: dict[str, int] = {}
        self._broken: dict[int, set[int]] = {}  # experiment id -> ids of units missing measurements
        self._conn = self._connect()
        try:
            self.schema_version = self._prepare()
        except BaseException:
            self._conn.close()
            raise

    # -- opening ---------------------------------------------------------------
    def _damaged(self, e: Exception) -> StoreError:
        return StoreError(f"{self.path} is not a readable SQLite results store ({e}): restore it from a backup, "
                          f"or move it aside to start a new one (`sqlite3 {self.path} .recover` may salvage rows)")

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.DatabaseError as e:
                conn.close()
                raise self._damaged(e) from None
            return conn
        if _writable(self.path) and not self.path.with_name(DB_NAME + "-wal").exists():
            # A mode=ro reader of a WAL store must create its -wal and -shm files and cannot remove them: it
            # would leave both behind in the run directory. A connection that refuses every write
            # (query_only) removes them on close, as the last connection does, so reading leaves the
            # directory exactly as it was (byte for byte; mtimes too). When a -wal exists, a writer is
            # at work (or one was killed): mode=ro uses its files and changes nothing.
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            try:
                conn.execute("PRAGMA query_only=1")
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.DatabaseError as e:
                conn.close()
                raise self._damaged(e) from None
        # read-only: a WAL store needs its -shm file; in a read-only directory without one, open it immutable
        for params in ({"mode": "ro"}, {"mode": "ro", "immutable": "1"}):
            conn = sqlite3.connect(_uri(self.path, **params), uri=True, timeout=60.0, isolation_level=None)
            try:
                conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError as e:  # "unable to open", "attempt to write a readonly database"
                conn.close()
                if "immutable" in params:
                    raise self._damaged(e) from None
            except sqlite3.DatabaseError as e:
                conn.close()
                raise self._damaged(e) from None
        raise StoreError(f"cannot open {self.path} read-only")

    def _tables(self) -> dict[str, set[str]]:
        names = [r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: {r[1] for r in self._conn.execute(f"PRAGMA table_info('{n}')")} for n in names}

    def _has_view(self) -> bool:
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='view' AND name='results'").fetchone() \
            is not None

    def _prepare(self) -> int:
        """Check the schema version; create, repair (dropped tables) or migrate it when writable."""
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            tables = self._tables()
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None
        old = version == 0 and "units" in tables and "experiment" in tables["units"] and "id" not in tables["units"]
        if old:
            version = 1
        elif version == 0 and tables.keys() - {"sqlite_sequence"}:
            raise StoreError(f"{self.path} is an SQLite file but not a depthscope results store (tables: "
                             f"{', '.join(sorted(tables))}); move it aside or pick another run directory")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has store schema version {version}, newer than this depthscope reads "
                             f"({SCHEMA_VERSION}); upgrade depthscope")
        if self.readonly:
            if version == 1:
                what = "a writable copy" if not _writable(self.path) else "it"
                raise StoreError(f"{self.path} has store schema version 1 and is read-only here; migrate {what} "
                                 f"to version {SCHEMA_VERSION} with `depthscope check {self.run_dir}`")
            missing = [t for t in _TABLES if t not in tables]
            if missing:
                raise StoreError(f"{self.path} lacks table(s) {', '.join(missing)} (damaged); open it writable "
                                 f"(`depthscope check {self.run_dir}`) to recreate them and see which units lost rows")
            return SCHEMA_VERSION
        if version == SCHEMA_VERSION and all(t in tables for t in _TABLES) and self._has_view():
            return SCHEMA_VERSION  # nothing to write: opening a store never changes its bytes
        c = self._conn
        c.execute("BEGIN IMMEDIATE")  # one process creates or migrates; the others wait, then find it done
        try:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            tables = self._tables()
            if version == 0 and "units" in tables and "id" not in tables["units"]:
                _migrate_v1(c)
                self.migrated_from = 1
            for stmt in _SCHEMA:  # also recreates a dropped table: its units then show up as missing rows
                c.execute(stmt)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        if self.migrated_from is not None:
            try:  # give the freed pages back to the file system; another open connection may prevent it
                c.execute("VACUUM")
            except sqlite3.OperationalError:
                pass
        return SCHEMA_VERSION

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

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: committed when the block ends, rolled back on any exception (also Ctrl-C)."""
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only; copy the run directory to write to it")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    # -- ids -------------------------------------------------------------------
    def _experiment_id(self, name: str) -> int | None:
        if name not in self._eids:
            row = self._conn.execute("SELECT id FROM experiments WHERE name=?", (name,)).fetchone()
            if row is None:
                return None
            self._eids[name] = row[0]
        return self._eids[name]

    def _qname(self, qid: int) -> str:
        if qid not in self._qnames:  # interned by another process (or connection) since we last looked
            self._qnames = {i: n for i, n in self._conn.execute("SELECT id, name FROM quantities")}
            self._qids = {n: i for i, n in self._qnames.items()}
        return self._qnames[qid]

    def _qid(self, name: str) -> int | None:
        if name not in self._qids:
            row = self._conn.execute("SELECT id FROM quantities WHERE name=?", (name,)).fetchone()
            if row is None:
                return None
            self._qids[name], self._qnames[row[0]] = row[0], name
        return self._qids[name]

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
        rows = [_checked(v) for v in values]
        spec_json = json.dumps(dict(spec), sort_keys=True, default=str)
        c = self._conn
        with self._transaction():
            c.execute("INSERT OR IGNORE INTO experiments(name) VALUES (?)", (experiment,))
            eid, gen = c.execute("SELECT id, generation FROM experiments WHERE name=?", (experiment,)).fetchone()
            qids = {}
            for q in {r[0] for r in rows}:
                c.execute("INSERT OR IGNORE INTO quantities(name) VALUES (?)", (q,))
                qids[q] = c.execute("SELECT id FROM quantities WHERE name=?", (q,)).fetchone()[0]
            old = c.execute("SELECT id FROM units WHERE experiment=? AND key=?", (eid, key)).fetchone()
            if old is not None:
                c.execute("DELETE FROM measurements WHERE unit=?", old)
                c.execute("DELETE FROM units WHERE id=?", old)
            uid = c.execute(
                "INSERT INTO units (experiment, key, spec, seed, status, reason, code_version, started, finished, "
                "n_values, generation) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (eid, key, spec_json, seed, status, reason, self.code_version, started, time.time(), len(rows), gen),
            ).lastrowid
            c.executemany("INSERT INTO measurements (unit, quantity, seq, layer, step, value) VALUES (?,?,?,?,?,?)",
                          [(uid, qids[q], i, layer, step, value) for i, (q, layer, step, value) in enumerate(rows)])

    def clear(self, experiment: str) -> int:
        """Forget every unit of ``experiment`` at once; returns how many there were.

        ``--force`` does not use this (it replaces units one by one, see :meth:`begin_redo`).
        """
        c = self._conn
        with self._transaction():
            eid = self._experiment_id(experiment)
            n = 0
            if eid is not None:
                n = c.execute("SELECT COUNT(*) FROM units WHERE experiment=?", (eid,)).fetchone()[0]
                c.execute("DELETE FROM measurements WHERE unit IN (SELECT id FROM units WHERE experiment=?)", (eid,))
                c.execute("DELETE FROM units WHERE experiment=?", (eid,))
        return n

    def begin_redo(self, experiment: str) -> int:
        """Start a ``--force`` rerun of ``experiment``: every unit stored so far stops counting as done.

        Nothing is deleted: old units stay readable until each is replaced by its new copy (:meth:`record`),
        and :meth:`drop_superseded` removes the ones left over once the new run is complete. A killed forced
        run resumes as a forced run. Returns the new generation number.
        """
        c = self._conn
        with self._transaction():
            c.execute("INSERT OR IGNORE INTO experiments(name) VALUES (?)", (experiment,))
            c.execute("UPDATE experiments SET generation = generation + 1 WHERE name=?", (experiment,))
            gen = c.execute("SELECT generation FROM experiments WHERE name=?", (experiment,)).fetchone()[0]
        return gen

    def abandon_redo(self, experiment: str, generation: int) -> bool:
        """Undo :meth:`begin_redo` when no unit of ``generation`` was recorded (the forced run did nothing)."""
        c = self._conn
        with self._transaction():
            eid = self._experiment_id(experiment)
            cur = c.execute("SELECT generation FROM experiments WHERE id=?", (eid,)).fetchone()
            new = c.execute("SELECT COUNT(*) FROM units WHERE experiment=? AND generation>=?",
                            (eid, generation)).fetchone()[0]
            undone = cur is not None and cur[0] == generation and new == 0
            if undone:
                c.execute("UPDATE experiments SET generation=? WHERE id=?", (generation - 1, eid))
        return undone

    def redo_pending(self, experiment: str) -> bool:
        """Whether a ``--force`` rerun of ``experiment`` is under way: units of an earlier generation than the
        experiment's remain (:meth:`begin_redo`; they stop once :meth:`drop_superseded` has run)."""
        eid = self._experiment_id(experiment)
        return eid is not None and self._conn.execute(
            "SELECT 1 FROM units WHERE experiment=? AND generation<? LIMIT 1", (eid, self._generation(eid))
        ).fetchone() is not None

    def drop_superseded(self, experiment: str, keys: Iterable[str], *, keep_unlisted: bool = False) -> int:
        """After a forced run: if every one of ``keys`` is done in the current generation, delete the units of
        earlier generations (the old results the run replaced or no longer lists); returns how many.

        ``keep_unlisted`` keeps the old units whose key is not among ``keys`` (a sweep's grid is one part of
        its experiment: ``sweep --force`` retrains that grid and leaves other grids' runs as they were): they
        join the current generation and count as done again. Each unit of ``keys`` already replaced its old
        copy when it was recorded."""
        wanted = set(keys)
        eid = self._experiment_id(experiment)
        if eid is None or self.readonly or not self.redo_pending(experiment) \
                or not wanted <= self.done_keys(experiment):
            return 0
        c = self._conn
        with self._transaction():
            gen = c.execute("SELECT generation FROM experiments WHERE id=?", (eid,)).fetchone()[0]
            stale = "SELECT id FROM units WHERE experiment=? AND generation<?"
            if keep_unlisted:
                c.execute("UPDATE units SET generation=? WHERE experiment=? AND generation<?", (gen, eid, gen))
                n = 0
            else:
                n = c.execute(f"SELECT COUNT(*) FROM ({stale})", (eid, gen)).fetchone()[0]
                c.execute(f"DELETE FROM measurements WHERE unit IN ({stale})", (eid, gen))
                c.execute("DELETE FROM units WHERE experiment=? AND generation<?", (eid, gen))
        return n

    def set_meta(self, name: str, value: Any) -> None:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only; copy the run directory to write to it")
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (name, json.dumps(value, default=str)))

    def get_meta(self, name: str, default: Any = None) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return default if row is None else self._json(row[0], f"meta {name!r}")

    def _json(self, text: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise StoreError(f"{self.path}: {what} is not valid JSON ({e}: {str(text)[:40]!r}); "
                             f"run `depthscope check {self.run_dir}`") from None

    # -- reading ---------------------------------------------------------------
    def _generation(self, eid: int) -> int:
        return self._conn.execute("SELECT generation FROM experiments WHERE id=?", (eid,)).fetchone()[0]

    def _broken_ids(self, eid: int) -> set[int]:
        """Ids of finished units whose measurements are not all there (counted once per open store: rows only
        go missing by hand or damage, never through :meth:`record`, whose new copies get new ids)."""
        if eid not in self._broken:
            self._broken[eid] = {r[0] for r in self._conn.execute(
                "SELECT u.id FROM units u WHERE u.experiment=? AND u.n_values != "
                "(SELECT COUNT(*) FROM measurements m WHERE m.unit = u.id)", (eid,))}
        return self._broken[eid]

    def done_keys(self, experiment: str) -> set[str]:
        """Keys of every finished unit of ``experiment``: status done or failed, all measurements present,
        and not waiting to be redone by an unfinished ``--force``. Units with status "error" are not finished."""
        eid = self._experiment_id(experiment)
        if eid is None:
            return set()
        broken = self._broken_ids(eid)
        rows = self._conn.execute(
            "SELECT id, key FROM units WHERE experiment=? AND status IN ('done','failed') AND generation>=?",
            (eid, self._generation(eid)))
        return {k for i, k in rows if i not in broken}

    def is_done(self, experiment: str, key: str) -> bool:
        """Whether ``key`` is among :meth:`done_keys` (checked for this one unit)."""
        eid = self._experiment_id(experiment)
        if eid is None:
            return False
        row = self._conn.execute(
            "SELECT u.n_values = (SELECT COUNT(*) FROM measurements m WHERE m.unit=u.id) FROM units u "
            "WHERE u.experiment=? AND u.key=? AND u.status IN ('done','failed') AND u.generation>=?",
            (eid, key, self._generation(eid))).fetchone()
        return bool(row and row[0])

    def experiments(self) -> list[str]:
        """Names of the experiments that have units, sorted."""
        return [r[0] for r in self._conn.execute(
            "SELECT name FROM experiments e WHERE EXISTS (SELECT 1 FROM units u WHERE u.experiment=e.id) "
            "ORDER BY name")]

    def status_counts(self, experiment: str) -> dict[str, int]:
        """How many units of ``experiment`` have each status (done, failed, error): errors are counted apart."""
        out = dict.fromkeys(STATUSES, 0)
        eid = self._experiment_id(experiment)
        if eid is not None:
            for s, n in self._conn.execute("SELECT status, COUNT(*) FROM units WHERE experiment=? GROUP BY status",
                                           (eid,)):
                out[s] = n
        return out

    def recorded_since(self, experiment: str, since: float) -> set[str]:
        """Keys of the units of ``experiment`` recorded at or after time ``since`` (by any process)."""
        eid = self._experiment_id(experiment)
        if eid is None:
            return set()
        return {r[0] for r in self._conn.execute("SELECT key FROM units WHERE experiment=? AND finished>=?",
                                                 (eid, since))}

    def _unit_rows(self, experiment: str) -> list[tuple]:
        eid = self._experiment_id(experiment)
        if eid is None:
            return []
        return self._conn.execute(
            "SELECT id, key, spec, seed, status, reason, code_version, started, finished FROM units "
            "WHERE experiment=? ORDER BY id", (eid,)).fetchall()

    def units(self, experiment: str) -> list[Unit]:
        """Every unit of ``experiment`` in the order they were recorded."""
        return [Unit(experiment, r[1], self._json(r[2], f"the spec of unit {r[0]} of {experiment!r}"), *r[3:])
                for r in self._unit_rows(experiment)]

    def _measurements(self, unit_ids: list[int], qid: int | None) -> Iterator[tuple]:
        """(unit, quantity id, layer, step, value) of these units, in recording order."""
        chunk = 500
        for i in range(0, len(unit_ids), chunk):
            ids = unit_ids[i:i + chunk]
            sql = (f"SELECT unit, quantity, layer, step, value FROM measurements WHERE unit IN "
                   f"({','.join('?' * len(ids))})")
            args: list[Any] = list(ids)
            if qid is not None:
                sql += " AND quantity=?"
                args.append(qid)
            yield from self._conn.execute(sql + " ORDER BY unit, seq", args)

    def rows(self, experiment: str, quantity: str | None = None, **where: Any) -> list[dict]:
        """Measurements of ``experiment`` joined with their unit, spec fields flattened into each row.

        ``where`` filters on spec fields (``depth=50``) or on ``key``/``seed``/``status``/``layer``/``step``;
        a list value means "any of".
        """
        qid = None
        if quantity is not None:
            qid = self._qid(quantity)
            if qid is None:
                return []
        unit_where = {k: v for k, v in where.items() if k not in _ROW_FIELDS}
        row_where = {k: v for k, v in where.items() if k in _ROW_FIELDS}
        heads: dict[int, dict] = {}
        for uid, key, spec, seed, status, *_ in self._unit_rows(experiment):
            head = dict(self._json(spec, f"the spec of unit {uid} of {experiment!r}"))
            head.update(key=key, seed=seed, status=status)
            if all(_matches(head.get(k), v) for k, v in unit_where.items()):
                heads[uid] = head
        out = []
        for uid, q, layer, step, value in self._measurements(list(heads), qid):
            row = dict(heads[uid])
            row.update(quantity=self._qname(q), layer=layer, step=step, value=_nan_if_null(value))
            if all(_matches(row.get(k), v) for k, v in row_where.items()):
                out.append(row)
        return out

    # -- export ----------------------------------------------------------------
    def _export_units(self, experiment: str | None) -> list[tuple[str, tuple]]:
        if experiment is not None:
            known = self.experiments()
            if experiment not in known:
                raise StoreError(f"{self.path} has no experiment {experiment!r}; it holds: "
                                 f"{', '.join(known) or 'no experiments yet'}")
            names = [experiment]
        else:
            names = self.experiments()
        units = [(n, r) for n in names for r in self._unit_rows(n)]
        return sorted(units, key=lambda t: t[1][0])  # recording order across experiments

    def export_columns(self, experiment: str | None = None) -> list[str]:
        """Columns of an export: :data:`EXPORT_COLUMNS`, then one per spec field (sorted; a field named like
        a fixed column gets the prefix ``spec_``)."""
        return self._columns(self._export_units(experiment), experiment)[0]

    def _columns(self, units: list[tuple[str, tuple]], experiment: str | None) -> tuple[list[str], dict]:
        specs, fields = {}, set()
        for name, r in units:
            spec = self._json(r[2], f"the spec of unit {r[0]} of {name!r}")
            specs[r[0]] = spec
            fields.update(spec)
        rename = {f: (f"spec_{f}" if f in EXPORT_COLUMNS else f) for f in fields}
        return list(EXPORT_COLUMNS) + sorted(rename.values()), {"specs": specs, "rename": rename}

    def iter_all(self, experiment: str | None = None) -> Iterator[dict]:
        """Every measurement with full provenance, flat (for export): the columns of :meth:`export_columns`,
        spec fields one column each (lists and dicts as JSON text, absent fields None)."""
        units = self._export_units(experiment)
        yield from self._iter_flat(units, *self._columns(units, experiment))

    def _iter_flat(self, units, columns: list[str], info: dict) -> Iterator[dict]:
        by_id = {r[0]: (name, r) for name, r in units}
        blank = dict.fromkeys(columns)
        for uid, q, layer, step, value in self._measurements(list(by_id), None):
            name, (_, _key, _spec, seed, status, reason, version, _started, finished) = by_id[uid]
            row = dict(blank)
            for f, v in info["specs"][uid].items():
                row[info["rename"][f]] = json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
            row.update(experiment=name, unit=uid, quantity=self._qname(q), layer=layer,
                       step=step, value=_nan_if_null(value), seed=seed, status=status, reason=reason,
                       code_version=version, time=finished)
            yield row

    def export_csv(self, path: str | os.PathLike, experiment: str | None = None) -> int:
        """Write every measurement (with provenance, one column per spec field) to CSV; returns the row count.

        The file is replaced only once the export is complete; an unknown ``experiment`` touches nothing."""
        units = self._export_units(experiment)
        columns, info = self._columns(units, experiment)
        n = 0
        with _replacing(Path(path)) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for row in self._iter_flat(units, columns, info):
                w.writerow(row)
                n += 1
        return n

    def export_parquet(self, path: str | os.PathLike, experiment: str | None = None) -> int:
        """Write every measurement to Parquet (needs the optional ``pyarrow``); the columns of the CSV export."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("Parquet export needs pyarrow: pip install 'depthscope[parquet]'") from None
        units = self._export_units(experiment)
        columns, info = self._columns(units, experiment)
        rows = list(self._iter_flat(units, columns, info))
        table = pa.table({c: pa.array(_one_type([r[c] for r in rows]), type=_arrow_type(pa, c, rows))
                          for c in columns})
        with _replacing(Path(path)) as tmp:
            pq.write_table(table, tmp)
        return len(rows)

    # -- consistency -------------------------------------------------------------
    def check(self, *, integrity: bool = True) -> CheckReport:
        """Find what would make this store's results untrustworthy (read-only; ``depthscope check``).

        Problems: SQLite integrity errors, finished units missing some of their measurements (``broken``; a
        resumed run redoes them), measurements without a unit or quantity, unknown statuses, specs or meta
        values that are not JSON. Notes: units with status "error" (retried on resume), units of an
        unfinished ``--force`` rerun.
        """
        rep = CheckReport(self.path, self.schema_version)
        c = self._conn
        if integrity:
            bad = [r[0] for r in c.execute("PRAGMA quick_check")]
            if bad != ["ok"]:
                rep.problems.append(f"SQLite integrity check failed: {'; '.join(bad[:3])}")
        exp_names = dict(c.execute("SELECT id, name FROM experiments"))
        for eid, name in sorted(exp_names.items(), key=lambda t: t[1]):
            gen = self._generation(eid)
            counts = dict.fromkeys(STATUSES, 0)
            rows_total = stale = 0
            broken: list[str] = []
            for uid, key, spec, status, n_values, ugen, found in c.execute(
                    "SELECT u.id, u.key, u.spec, u.status, u.n_values, u.generation, "
                    "(SELECT COUNT(*) FROM measurements m WHERE m.unit=u.id) FROM units u WHERE u.experiment=? "
                    "ORDER BY u.id", (eid,)):
                counts[status] = counts.get(status, 0) + 1
                rows_total += found
                if status not in STATUSES:
                    rep.problems.append(f"{name}: unit {uid} has unknown status {status!r}")
                if found != n_values:
                    broken.append(key)
                    what = "missing" if found < n_values else "extra"
                    if len(broken) <= 3:
                        rep.problems.append(f"{name}: unit {uid} was recorded with {n_values} measurements but "
                                            f"has {found} ({what} rows; {key[:60]})")
                try:
                    json.loads(spec)
                except (json.JSONDecodeError, TypeError):
                    rep.problems.append(f"{name}: unit {uid} has a spec that is not JSON: {str(spec)[:40]!r}")
                if ugen < gen:
                    stale += 1
            if len(broken) > 3:
                rep.problems.append(f"{name}: {len(broken)} units in all lack or exceed their measurements")
            if broken:
                rep.broken[name] = broken
            if counts.get("error"):
                rep.notes.append(f"{name}: {counts['error']} units crashed (status error); a resumed run retries "
                                 "them")
            if stale:
                rep.notes.append(f"{name}: {stale} units predate an unfinished --force rerun; a resumed run "
                                 "redoes them")
            if any(counts.values()):
                rep.experiments[name] = {**counts, "rows": rows_total}
        units = {r[0] for r in c.execute("SELECT id FROM units")}
        orphans = [u for (u,) in c.execute("SELECT DISTINCT unit FROM measurements") if u not in units]
        if orphans:
            n = c.execute(f"SELECT COUNT(*) FROM measurements WHERE unit IN ({','.join('?' * len(orphans[:900]))})",
                          orphans[:900]).fetchone()[0]
            rep.problems.append(f"{n}+ measurement rows belong to no unit (unit ids {orphans[:5]})")
        qids = {r[0] for r in c.execute("SELECT id FROM quantities")}
        unknown_q = [q for (q,) in c.execute("SELECT DISTINCT quantity FROM measurements") if q not in qids]
        if unknown_q:
            rep.problems.append(f"measurement rows name unknown quantity ids {unknown_q[:5]}")
        for name, value in c.execute("SELECT name, value FROM meta"):
            try:
                json.loads(value)
            except (json.JSONDecodeError, TypeError):
                rep.problems.append(f"meta {name!r} is not JSON: {str(value)[:40]!r}")
        return rep


def check(run_dir: str | os.PathLike, *, integrity: bool = True) -> CheckReport:
    """:meth:`Store.check` of the store in ``run_dir`` (migrating a schema-1 store when it can write)."""
    with Store(run_dir, create=False) as st:
        return st.check(integrity=integrity)


class _replacing:
    """A temporary file beside ``path`` that replaces it on success and is removed on failure."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _one_type(values: list) -> list:
    """A column Arrow can hold: mixed kinds (a field that is a number in one experiment, text in another) as
    text; ints stay ints, ints among floats become floats."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int} or kinds <= {bool} or kinds <= {str}:
        return values
    if kinds <= {int, float}:
        return [None if v is None else float(v) for v in values]
    return [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values]


def _arrow_type(pa, column: str, rows: list[dict]):
    fixed = {"experiment": pa.string(), "unit": pa.int64(), "quantity": pa.string(), "layer": pa.int64(),
             "step": pa.int64(), "value": pa.float64(), "seed": pa.int64(), "status": pa.string(),
             "reason": pa.string(), "code_version": pa.string(), "time": pa.float64()}
    if column in fixed:
        return fixed[column]
    kinds = {type(r[column]) for r in rows if r[column] is not None}
    if not kinds or kinds <= {str} or not kinds <= {int, float, bool}:
        return pa.string()
    if kinds <= {bool}:
        return pa.bool_()
    return pa.int64() if kinds <= {int} else pa.float64()


def _migrate_v1(c: sqlite3.Connection) -> None:
    """Schema 1 -> 2 inside the caller's transaction: units and measurements get integer ids, names are
    interned, each unit's ``n_values`` is the count of rows it has now, recording order is kept."""
    c.execute("ALTER TABLE units RENAME TO units_v1")
    c.execute("ALTER TABLE measurements RENAME TO measurements_v1")
    for stmt in _SCHEMA:
        c.execute(stmt)
    c.execute("INSERT INTO experiments(name) SELECT DISTINCT experiment FROM units_v1 ORDER BY experiment")
    c.execute("INSERT INTO quantities(name) SELECT DISTINCT quantity FROM measurements_v1 ORDER BY quantity")
    c.execute("""INSERT INTO units (experiment, key, spec, seed, status, reason, code_version, started, finished,
                                    n_values, generation)
                 SELECT e.id, u.key, u.spec, u.seed, u.status, u.reason, u.code_version, u.started, u.finished,
                        (SELECT COUNT(*) FROM measurements_v1 m WHERE m.experiment=u.experiment AND m.key=u.key), 0
                 FROM units_v1 u JOIN experiments e ON e.name=u.experiment ORDER BY u.rowid""")
    c.execute("""INSERT INTO measurements (unit, quantity, seq, layer, step, value)
                 SELECT u.id, q.id, ROW_NUMBER() OVER (PARTITION BY m.experiment, m.key ORDER BY m.rowid) - 1,
                        m.layer, m.step, m.value
                 FROM measurements_v1 m JOIN experiments e ON e.name=m.experiment
                      JOIN units u ON u.experiment=e.id AND u.key=m.key JOIN quantities q ON q.name=m.quantity""")
    c.execute("DROP TABLE measurements_v1")
    c.execute("DROP TABLE units_v1")


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
