"""The results store directly: provenance, WAL, atomic units, resume and --force, CSV/Parquet export, bad input."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthscope.cli import main
from depthscope.errors import InputError
from depthscope.experiments import run_experiment
from depthscope.store import Store, Value, code_version, unit_key

ROOT = Path(__file__).resolve().parents[1]
FIXED = ["experiment", "unit", "quantity", "layer", "step", "value", "seed", "status", "reason", "code_version",
         "time"]  # written out here, not imported: the export format is a promise to readers
COLUMNS = FIXED + ["activation", "depth", "width", "widths"]  # then one column per spec field of _fill's units


def _fill(st: Store) -> None:
    """Two experiments, units with and without seeds, layers and steps, a failed unit, inf and NaN values."""
    st.record("exp-a", unit_key({"depth": 3, "width": 8}, 0), spec={"depth": 3, "width": 8}, seed=0,
              values=[Value("vni", 0.125 * l, layer=l) for l in (1, 2, 3)] + [Value("loss", 2.5, step=7)],
              started=100.0)
    st.record("exp-a", unit_key({"depth": 3, "width": 8}, 1), spec={"depth": 3, "width": 8}, seed=1,
              values=[("vni", 1 / 3, 3), ("max_depth", math.inf)], status="failed", reason="diverged at step 4")
    st.record("exp-b", "theory", spec={"activation": "tanh", "widths": [1, 2]}, seed=None,
              values=[Value("q", 0.1, layer=1, step=0), Value("nan_is_kept", math.nan)])


# ----------------------------------------------------------------------------- provenance
def test_rows_carry_their_provenance(tmp_path):
    t0 = time.time()
    with Store(tmp_path) as st:
        _fill(st)
    t1 = time.time()
    with Store(tmp_path, create=False) as st:  # read back through a fresh connection
        assert st.experiments() == ["exp-a", "exp-b"]
        units = st.units("exp-a")
        assert [(u.seed, u.status, u.reason) for u in units] == [(0, "done", None), (1, "failed", "diverged at step 4")]
        assert units[0].spec == {"depth": 3, "width": 8} and units[0].started == 100.0
        assert all(u.code_version == code_version() and t0 <= u.finished <= t1 for u in units)
        rows = st.rows("exp-a", "vni", seed=0)
        assert [(r["layer"], r["value"], r["depth"], r["width"], r["step"]) for r in rows] == [
            (1, 0.125, 3, 8, None), (2, 0.25, 3, 8, None), (3, 0.375, 3, 8, None)]
        assert st.rows("exp-a", "loss")[0]["step"] == 7
        assert [r["seed"] for r in st.rows("exp-a", "vni", layer=3)] == [0, 1]
        assert st.rows("exp-a", "vni", seed=[1, 5], layer=3)[0]["status"] == "failed"
        assert st.rows("exp-a", "max_depth")[0]["value"] == math.inf
        assert st.rows("exp-a", "vni", depth=4) == []
        every = list(st.iter_all())
        assert len(every) == 8 and all(list(r) == COLUMNS for r in every)
        q = next(r for r in every if r["quantity"] == "q")
        assert (q["experiment"], q["unit"], q["seed"], q["layer"], q["step"]) == ("exp-b", 3, None, 1, 0)
        assert (q["activation"], json.loads(q["widths"]), q["depth"], q["width"]) == ("tanh", [1, 2], None, None)
        assert math.isnan(next(r for r in every if r["quantity"] == "nan_is_kept")["value"])
        assert [r["experiment"] for r in st.iter_all("exp-b")] == ["exp-b", "exp-b"]


def test_nan_values_read_back_as_nan_not_none(tmp_path):
    """Regression: SQLite turns a NaN REAL into NULL, which came back as None (and broke np.mean in figures)."""
    with Store(tmp_path) as st:
        st.record("e", "k", spec={}, seed=0, values=[Value("vni", math.nan, layer=1), Value("vni", 0.5, layer=2)])
        vals = [r["value"] for r in st.rows("e", "vni")]
        assert math.isnan(vals[0]) and vals[1] == 0.5
        assert math.isnan(next(st.iter_all())["value"])


def test_code_version_names_the_checkout():
    v = code_version()
    from depthscope import __version__

    assert v.startswith(__version__)
    if (ROOT / ".git").exists():  # a checkout (worktrees have a .git file): version + commit
        assert "+g" in v


def test_unit_key_is_canonical():
    assert unit_key({"b": 1, "a": [1, 2]}, 3) == unit_key({"a": [1, 2], "b": 1}, 3)
    assert unit_key({"a": 1}, 0) != unit_key({"a": 1}, 1) != unit_key({"a": 1}, None)


def test_meta_round_trip_and_rerecord_replaces(tmp_path):
    with Store(tmp_path) as st:
        st.set_meta("params:x", {"preset": "quick", "params": {"n": [1, 2]}})
        assert st.get_meta("params:x") == {"preset": "quick", "params": {"n": [1, 2]}}
        assert st.get_meta("missing", default="d") == "d"
        for v in (1.0, 2.0):  # recording a key again replaces the unit and its rows, never duplicates
            st.record("e", "k", spec={}, seed=None, values=[Value("v", v, layer=1)])
        assert [r["value"] for r in st.rows("e")] == [2.0] and len(st.units("e")) == 1


# ----------------------------------------------------------------------------- WAL, concurrency
def test_store_uses_wal_and_a_second_process_reads_while_it_is_open(tmp_path):
    with Store(tmp_path) as st:
        _fill(st)
        assert st._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (tmp_path / "results.sqlite-wal").exists()
        con = sqlite3.connect(tmp_path / "results.sqlite")  # another connection sees committed units at once
        try:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL is persistent in the file
            assert con.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 3
        finally:
            con.close()


# ----------------------------------------------------------------------------- atomic units
class _FailingConnection:
    """A sqlite3 connection that raises once the unit row is about to be written (measurements already in)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql, *args):
        if sql.startswith("INSERT INTO units"):
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_a_unit_failing_midway_leaves_nothing_half_written(tmp_path):
    with Store(tmp_path) as st:
        st.record("e", "k", spec={"n": 1}, seed=0, values=[Value("v", 1.0, layer=1)])
        st.record("e", "other", spec={"n": 2}, seed=0, values=[Value("v", 5.0, layer=1)])
        real = st._conn
        st._conn = _FailingConnection(real)
        with pytest.raises(sqlite3.OperationalError, match="simulated"):
            st.record("e", "k", spec={"n": 1}, seed=0, values=[Value("v", float(i), layer=i) for i in range(50)])
        with pytest.raises(sqlite3.OperationalError, match="simulated"):
            st.record("e", "new", spec={"n": 3}, seed=0, values=[Value("v", 9.0, layer=1)])
        st._conn = real
        # the earlier copy of "k" survives whole; "new" left neither a unit nor a measurement
        assert [(r["key"], r["value"]) for r in st.rows("e")] == [("k", 1.0), ("other", 5.0)]
        assert st.done_keys("e") == {"k", "other"}
        assert real.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 2  # no stray rows of "new"


_WRITER = """
import sys
from depthscope.store import Store, Value
with Store(sys.argv[1]) as st:
    for i in range(100000):
        st.record("e", f"u{i}", spec={"i": i}, seed=i, values=[Value("v", float(j), layer=j) for j in range(3000)])
        print(i, flush=True)
"""


def test_killed_writer_leaves_only_whole_units(tmp_path):
    """SIGKILL a process that writes units of 3000 rows back to back: every unit in the store is complete."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(3):  # at least three units committed, the writer busy with the next one
            assert proc.stdout.readline(), "writer died"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    with Store(tmp_path) as st:
        counts = dict(st._conn.execute("SELECT u.key, COUNT(*) FROM measurements m JOIN units u ON u.id=m.unit "
                                       "GROUP BY u.key"))
        assert st._conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 3000 * len(counts)
        done = st.done_keys("e")
    assert len(done) >= 3 and set(counts) == done
    assert set(counts.values()) == {3000}


# ----------------------------------------------------------------------------- resume and --force
TINY = {"widths": [6, 8], "depth": 4, "n": 40, "seeds": 2}


def _finished(run_dir: Path) -> dict[str, float]:
    with Store(run_dir) as st:
        return {u.key: u.finished for u in st.units("effective-nodes")}


def test_rerun_reuses_stored_units_and_force_recomputes(tmp_path):
    with Store(tmp_path) as st:
        first = run_experiment("effective-nodes", st, overrides=TINY, quiet=True)
        assert first["ran"] == first["total"] == 6 and first["skipped"] == 0
        assert st.get_meta("params:effective-nodes")["params"]["widths"] == [6, 8]
    stamps = _finished(tmp_path)
    with Store(tmp_path) as st:
        again = run_experiment("effective-nodes", st, overrides=TINY, quiet=True)
    assert again["ran"] == 0 and again["skipped"] == 6 and _finished(tmp_path) == stamps
    with Store(tmp_path) as st:  # a preset grown by one width runs only the new units
        grown = run_experiment("effective-nodes", st, overrides={**TINY, "widths": [6, 8, 10]}, quiet=True)
    assert grown["ran"] == 3 and grown["skipped"] == 6
    with Store(tmp_path) as st:
        forced = run_experiment("effective-nodes", st, overrides=TINY, quiet=True, force=True)
        assert forced["ran"] == 6 and forced["skipped"] == 0
        assert len(st.units("effective-nodes")) == 6  # --force forgot the extra width's units too
    after = _finished(tmp_path)
    assert set(after) == set(stamps) and all(after[k] > stamps[k] for k in stamps)


def test_cli_force_flag(tmp_path, capsys):
    argv = ["reproduce", "effective-nodes", "--run-dir", str(tmp_path), "--quiet", "--no-report", "--device", "cpu"]
    argv += sum((["--set", f"{k}={json.dumps(v)}"] for k, v in TINY.items()), [])
    assert main(argv) == 0
    stamps = _finished(tmp_path)
    assert main(argv) == 0 and _finished(tmp_path) == stamps
    assert main([*argv, "--force"]) == 0
    after = _finished(tmp_path)
    assert set(after) == set(stamps) and all(after[k] > stamps[k] for k in stamps)


def test_clear_counts_and_forgets_one_experiment(tmp_path):
    with Store(tmp_path) as st:
        _fill(st)
        assert st.clear("exp-a") == 2 and st.clear("exp-a") == 0
        assert st.experiments() == ["exp-b"] and st.rows("exp-a") == [] and len(st.rows("exp-b")) == 2


# ----------------------------------------------------------------------------- export
def _as_exported(row: dict) -> dict:
    """A store row as the CSV module writes it: None -> '', numbers by repr (exact for floats)."""
    return {k: "" if v is None else str(v) for k, v in row.items()}


def test_csv_export_round_trip(tmp_path):
    with Store(tmp_path) as st:
        _fill(st)
        expected = list(st.iter_all())
        assert st.export_csv(tmp_path / "all.csv") == 8
        assert st.export_csv(tmp_path / "b.csv", experiment="exp-b") == 2
    with open(tmp_path / "all.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        got = list(reader)
    assert got == [_as_exported(r) for r in expected]
    # numbers parse back exactly (inf, nan included)
    vals = [float(r["value"]) for r in got]
    assert vals[:3] == [0.125, 0.25, 0.375] and vals[5] == math.inf and math.isnan(vals[7])
    assert vals[4] == 1 / 3
    with open(tmp_path / "b.csv", newline="") as f:
        assert {r["experiment"] for r in csv.DictReader(f)} == {"exp-b"}


def test_csv_export_of_an_empty_store_is_the_header(tmp_path):
    with Store(tmp_path) as st:
        assert st.export_csv(tmp_path / "e.csv") == 0
    assert (tmp_path / "e.csv").read_text().strip().split(",") == FIXED


def test_parquet_export_round_trip_matches_the_store_and_the_csv(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the test extra) not installed")
    with Store(tmp_path) as st:
        _fill(st)
        expected = list(st.iter_all())
    assert main(["export", str(tmp_path), str(tmp_path / "all.parquet")]) == 0
    assert main(["export", str(tmp_path), str(tmp_path / "all.csv")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"8 rows -> {tmp_path / 'all.parquet'}",
                                                    f"8 rows -> {tmp_path / 'all.csv'}"]
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column_names == COLUMNS
    got = table.to_pylist()
    # the same rows as the store, types kept (ints, None, floats, inf); NaN compared separately
    nan_row = next(i for i, r in enumerate(expected) if r["quantity"] == "nan_is_kept")
    assert math.isnan(got[nan_row].pop("value")) and math.isnan(expected[nan_row].pop("value"))
    assert got == expected
    assert str(table.schema.field("layer").type) == "int64" and str(table.schema.field("value").type) == "double"
    # ... and the same rows as the CSV export
    with open(tmp_path / "all.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    for i, r in enumerate(got):
        if i == nan_row:
            r = {**r, "value": math.nan}
        assert _as_exported(r) == csv_rows[i]


def test_parquet_export_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with Store(tmp_path) as st, pytest.raises(RuntimeError, match=r"Parquet export needs pyarrow"):
        st.export_parquet(tmp_path / "x.parquet")
    assert main(["export", str(tmp_path), str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Parquet export needs pyarrow: pip install" in err[0]
    assert not (tmp_path / "x.parquet").exists()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,needle", [
    ({"status": "running"}, "status must be one of ('done', 'failed', 'error'), got 'running'"),
    ({"values": [Value("vni", "high")]}, "value of 'vni' must be a number, got 'high'"),
    ({"values": [Value("vni", None)]}, "value of 'vni' must be a number, got None"),
    ({"values": [Value("vni", 0.5, layer=1.5)]}, "layer of 'vni' must be an integer or None, got 1.5"),
    ({"values": [Value("vni", 0.5, step="3")]}, "step of 'vni' must be an integer or None, got '3'"),
    ({"values": [Value("", 0.5)]}, "quantity must be a non-empty string, got ''"),
    ({"values": [0.5]}, "a measurement is Value(quantity, value, layer=None, step=None)"),
    ({"values": [("vni",)]}, "a measurement is Value(quantity, value, layer=None, step=None)"),
])
def test_bad_measurements_are_one_line_errors_and_write_nothing(tmp_path, kwargs, needle):
    args = {"spec": {}, "seed": 0, "values": [Value("vni", 0.5, layer=1)], **kwargs}
    with Store(tmp_path) as st:
        with pytest.raises(ValueError) as e:
            st.record("e", "k", **args)
        assert needle in str(e.value) and "\n" not in str(e.value)
        assert st.done_keys("e") == set() and st.rows("e") == []


def test_bad_store_and_export_arguments(tmp_path, capsys):
    with Store(tmp_path) as st, pytest.raises(ValueError, match="experiment and key must be non-empty strings"):
        st.record("", "k", spec={}, seed=None, values=[])
    with pytest.raises(FileNotFoundError, match=r"no results store at .*results.sqlite; run an experiment"):
        Store(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()
    assert main(["export", str(tmp_path), str(tmp_path / "out.xlsx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["depthscope export: error: OUTPUT must end in .csv or .parquet, got 'out.xlsx'"]
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "o.csv")]) == 2
    assert "no results store" in capsys.readouterr().err



# ============================================================================= issue 11: nothing lost
import numpy as np  # noqa: E402

from depthscope import data  # noqa: E402
from depthscope.params import check_override  # noqa: E402
from depthscope.store import SCHEMA_VERSION, StoreError, check  # noqa: E402

RUN = ["--quiet", "--no-report", "--device", "cpu"]


def _sets(over: dict) -> list[str]:
    return sum((["--set", f"{k}={json.dumps(v)}"] for k, v in over.items()), [])


def _snapshot(run_dir: Path) -> tuple:
    """Everything a user could lose: the store's bytes, and its units and meta as read back."""
    with Store(run_dir, create=False) as st:
        meta = st._conn.execute("SELECT name, value FROM meta ORDER BY name").fetchall()
        units = [(u.experiment, u.key, u.finished) for e in st.experiments() for u in st.units(e)]
    return (run_dir / "results.sqlite").read_bytes(), units, meta


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def stored(tmp_path, capsys):
    """A run directory holding effective-nodes' six TINY units."""
    run_dir = tmp_path / "run"
    assert main(["reproduce", "effective-nodes", "--run-dir", str(run_dir), *RUN, *_sets(TINY)]) == 0
    capsys.readouterr()
    return run_dir


@pytest.mark.parametrize("bad,needle", [
    ("widths=[0]", "--set widths: experiment 'effective-nodes' counts something: integers >= 1, got [0]"),
    ('seeds="2"', "--set seeds: experiment 'effective-nodes' takes an integer like 2; got a string '2'"),
    ('widths="abc"', "--set widths: experiment 'effective-nodes' takes a list of integers like [25, 50, 100, 200]; "
     "got a string 'abc'"),
    ("seeds=-1", "--set seeds: experiment 'effective-nodes' counts something: integers >= 1, got -1"),
    ("seeds=NaN", "--set seeds: experiment 'effective-nodes' takes finite numbers, got nan"),
    ("input_variance=NaN", "--set input_variance: experiment 'effective-nodes' takes finite numbers, got nan"),
    ("seeds=null", "--set seeds: experiment 'effective-nodes' takes an integer like 2; got null"),
    ("activation=nope", "'nope' is not one, got 'nope'"),  # the list of known names grows as tests register more
    ("widths=[]", "--set widths: experiment 'effective-nodes' takes a non-empty list, got []"),
])
@pytest.mark.parametrize("force", [True, False])
def test_force_with_bad_set_deletes_nothing_and_writes_no_meta(stored, capsys, bad, needle, force):
    """Regression (issue 11): `reproduce --force --set 'widths=[0]'` printed the error after deleting the stored
    units; `seeds="2"` was a traceback; `widths="abc"` wrote the bad parameters into the meta first."""
    before = _snapshot(stored)
    argv = ["reproduce", "effective-nodes", "--run-dir", str(stored), *RUN, "--set", bad] + (["--force"] if force else [])
    assert main(argv) == 2
    assert needle in _one_line_error(capsys)
    assert _snapshot(stored) == before  # byte for byte


def test_a_failure_after_validation_keeps_units_and_meta(stored, monkeypatch, capsys):
    """Whatever slips past validation and fails in the first unit leaves the old units done and the meta as it was."""
    from depthscope.experiments.chapter3 import EffectiveNodes

    def boom(self, u, ctx):
        raise InputError("width 6 is not allowed here (simulated)")

    _, units, meta = _snapshot(stored)
    monkeypatch.setattr(EffectiveNodes, "run_unit", boom)
    argv = ["reproduce", "effective-nodes", "--run-dir", str(stored), *RUN, *_sets({**TINY, "seeds": 1}), "--force"]
    assert main(argv) == 2 and "simulated" in _one_line_error(capsys)
    _, units_after, meta_after = _snapshot(stored)
    assert units_after == units and meta_after == meta
    with Store(stored) as st:
        assert len(st.done_keys("effective-nodes")) == 6  # the abandoned --force left them done


def test_force_interrupted_keeps_old_units_until_replaced_and_resume_finishes_it(stored, monkeypatch):
    from depthscope.experiments.chapter3 import EffectiveNodes

    real = EffectiveNodes.run_unit
    calls = []

    def flaky(self, u, ctx):
        calls.append(u.key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, u, ctx)

    stamps = _finished(stored)
    with Store(stored) as st:
        n_vni = len(st.rows("effective-nodes", "vni"))
    monkeypatch.setattr(EffectiveNodes, "run_unit", flaky)
    with Store(stored) as st, pytest.raises(KeyboardInterrupt):
        run_experiment("effective-nodes", st, overrides=TINY, quiet=True, force=True)
    mid = _finished(stored)
    assert set(mid) == set(stamps)  # nothing deleted
    redone = {k for k in stamps if mid[k] > stamps[k]}
    assert len(redone) == 2
    with Store(stored) as st:
        assert st.done_keys("effective-nodes") == redone  # the rest still waits for the forced rerun
        assert len(st.rows("effective-nodes", "vni")) == n_vni  # old rows still readable beside the new
    monkeypatch.setattr(EffectiveNodes, "run_unit", real)
    with Store(stored) as st:  # resumed without --force: it finishes the forced rerun
        c = run_experiment("effective-nodes", st, overrides=TINY, quiet=True)
        assert c["ran"] == 4 and c["skipped"] == 2
    after = _finished(stored)
    assert set(after) == set(stamps) and all(after[k] > stamps[k] for k in stamps)


def _tiny_mnist(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data.write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (120, 28, 28), dtype=np.uint8))
    data.write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 120, dtype=np.uint8))
    return d


def test_force_without_mnist_exits_2_and_keeps_the_units_it_cannot_redo(tmp_path, monkeypatch, capsys):
    """Regression (issue 11): `reproduce fig3.3 --force` without MNIST exited 0 and deleted the stored units."""
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "mnist": {**data.DATASETS["mnist"], "mirrors": ()}})
    monkeypatch.setenv("DEPTHSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEPTHSCOPE_DATA", raising=False)
    over = {"row_a": {"width": 12, "depths": [3, 5]}, "row_b": {"depth": 4, "widths": [5, 8]}, "n": 60, "pool": 6}
    run_dir = tmp_path / "run"
    base = ["reproduce", "fig3.3", "--run-dir", str(run_dir), *RUN, *_sets(over)]
    assert main([*base, "--data-dir", str(_tiny_mnist(tmp_path / "mnist"))]) == 0
    capsys.readouterr()
    before = _snapshot(run_dir)
    assert len(before[1]) == 3
    assert main([*base, "--force", "--data-dir", str(_empty(tmp_path / "none"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--force incomplete: fig3.3: 3 units could not be redone (3 need mnist; see --data-dir)" in err[-1]
    assert "earlier results are kept" in err[-1]
    assert _snapshot(run_dir) == before  # byte for byte: nothing was rewritten, not even the same parameters
    with Store(run_dir) as st:
        assert len(st.done_keys("fig3.3")) == 3 and st.rows("fig3.3", "rho2_size")


def _lose_rows(run_dir: Path, sql: str) -> None:
    con = sqlite3.connect(run_dir / "results.sqlite")
    con.execute(sql)
    con.commit()
    con.close()


@pytest.mark.parametrize("damage,lost", [
    ("DELETE FROM measurements WHERE unit IN (2, 3)", 2),
    ("DROP TABLE measurements", 6),
])
def test_lost_measurements_are_not_reported_complete_and_resume_redoes_them(stored, capsys, damage, lost):
    """Regression (issue 11): a store whose rows were deleted (or whose table was dropped) was reported complete:
    report/export exited 0 with nothing, resume redid nothing."""
    _lose_rows(stored, damage)
    assert main(["check", str(stored)]) == 1
    out = capsys.readouterr().out
    assert "was recorded with" in out and f"{lost} problem" in out or "in all lack" in out
    assert main(["export", str(stored), str(stored / "x.csv")]) == 1
    err = capsys.readouterr().err
    assert "is incomplete" in err and "depthscope check" in err
    with Store(stored) as st:
        assert len(st.done_keys("effective-nodes")) == 6 - lost
        assert st.check().broken["effective-nodes"]
        c = run_experiment("effective-nodes", st, overrides=TINY, quiet=True)
        assert c["ran"] == lost and c["skipped"] == 6 - lost
    assert main(["check", str(stored)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")


def test_report_of_a_store_missing_rows_exits_1(stored, capsys):
    _lose_rows(stored, "DELETE FROM measurements WHERE unit = 2")
    assert main(["report", str(stored), "--quiet"]) == 1
    assert "is incomplete" in capsys.readouterr().err


def test_is_done_needs_every_measurement(tmp_path):
    with Store(tmp_path) as st:
        st.record("e", "k", spec={}, seed=0, values=[Value("v", 1.0, layer=l) for l in (1, 2, 3)])
        st.record("e", "k2", spec={}, seed=0, values=[])  # a unit recorded with no rows is whole
    _lose_rows(tmp_path, "DELETE FROM measurements WHERE layer = 3")
    with Store(tmp_path) as st:
        assert not st.is_done("e", "k") and st.is_done("e", "k2") and st.done_keys("e") == {"k2"}
        st.record("e", "k", spec={}, seed=0, values=[Value("v", 1.0, layer=1)])  # redone: whole again
        assert st.is_done("e", "k") and st.done_keys("e") == {"k", "k2"}


def test_check_reports_every_kind_of_damage(tmp_path, capsys):
    with Store(tmp_path) as st:
        _fill(st)
        st.set_meta("ok", [1])
    assert main(["check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "exp-a: 1 done, 1 failed, 0 error, 6 rows" in out and out.strip().endswith("ok")
    con = sqlite3.connect(tmp_path / "results.sqlite")
    con.execute("INSERT INTO measurements VALUES (99, 1, 0, NULL, NULL, 1.0)")  # a row of no unit
    con.execute("INSERT INTO measurements VALUES (3, 77, 9, NULL, NULL, 1.0)")  # an unknown quantity (and extra)
    con.execute("UPDATE units SET spec='{oops' WHERE id=1")
    con.execute("UPDATE units SET status='running' WHERE id=2")
    con.execute("INSERT INTO meta VALUES ('bad', 'not json')")
    con.commit()
    con.close()
    assert main(["check", str(tmp_path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    probs = "\n".join(doc["problems"])
    assert doc["ok"] is False and doc["schema_version"] == SCHEMA_VERSION
    for needle in ("belong to no unit", "unknown quantity ids [77]", "unit 1 has a spec that is not JSON",
                   "unknown status 'running'", "meta 'bad' is not JSON", "recorded with 2 measurements but has 3"):
        assert needle in probs, needle


def test_error_status_is_retried_and_counted_apart(tmp_path):
    """The agreed third status: a crash is not a result (not done, so retried; in no success statistic)."""
    with Store(tmp_path) as st:
        st.record("e", "ok", spec={}, seed=0, values=[Value("success", 1.0)])
        st.record("e", "bad", spec={}, seed=1, values=[], status="error", reason="RuntimeError: out of memory")
        st.record("e", "lost", spec={}, seed=2, values=[Value("success", 0.0)], status="failed")
        assert st.done_keys("e") == {"ok", "lost"} and not st.is_done("e", "bad")
        assert st.status_counts("e") == {"done": 1, "failed": 1, "error": 1}
        assert "1 units crashed" in " ".join(st.check().notes)
        st.record("e", "bad", spec={}, seed=1, values=[Value("success", 1.0)])
        assert st.done_keys("e") == {"ok", "lost", "bad"}


def test_corrupt_store_is_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "results.sqlite").write_bytes(b"this is not a database, just some text " * 100)
    for argv in (["check", str(tmp_path)], ["report", str(tmp_path)], ["export", str(tmp_path), str(tmp_path / "o.csv")],
                 ["reproduce", "effective-nodes", "--run-dir", str(tmp_path), *RUN, *_sets(TINY)]):
        assert main(argv) == 2
        line = _one_line_error(capsys)
        assert str(tmp_path / "results.sqlite") in line and "move it aside" in line and ".recover" in line
    assert not (tmp_path / "o.csv").exists()


def test_paths_that_are_files_or_directories_the_wrong_way_round(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a run directory"):
        Store(tmp_path / "afile")
    (tmp_path / "d" / "results.sqlite").mkdir(parents=True)
    with pytest.raises(StoreError, match="is not a file; move it aside"):
        Store(tmp_path / "d")
    with Store(tmp_path / "s") as st:
        _fill(st)
    assert main(["export", str(tmp_path / "s"), str(tmp_path)]) == 2
    assert "is a directory, expected a file name" in _one_line_error(capsys)
    (tmp_path / "dir.csv").mkdir()
    assert main(["export", str(tmp_path / "s"), str(tmp_path / "dir.csv")]) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert main(["export", str(tmp_path / "s"), str(tmp_path / "no" / "o.csv")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_bad_json_in_the_store_names_the_file_and_the_unit(tmp_path, capsys):
    with Store(tmp_path) as st:
        _fill(st)
        st.set_meta("params:exp-a", {"p": 1})
    _lose_rows(tmp_path, "UPDATE units SET spec='{oops' WHERE id=2")
    assert main(["export", str(tmp_path), str(tmp_path / "o.csv")]) == 2
    line = _one_line_error(capsys)
    assert "results.sqlite: the spec of unit 2 of 'exp-a' is not valid JSON" in line and "depthscope check" in line
    _lose_rows(tmp_path, "UPDATE meta SET value='{' WHERE name='params:exp-a'")
    with Store(tmp_path) as st, pytest.raises(StoreError, match=r"meta 'params:exp-a' is not valid JSON"):
        st.get_meta("params:exp-a")


def test_export_of_an_unknown_experiment_is_an_error_and_keeps_the_file(tmp_path, capsys):
    """Regression (issue 11): `export ... --experiment nope` overwrote the file with 0 rows."""
    with Store(tmp_path) as st:
        _fill(st)
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")
    assert main(["export", str(tmp_path), str(out), "--experiment", "nope"]) == 2
    assert _one_line_error(capsys).endswith("has no experiment 'nope'; it holds: exp-a, exp-b")
    assert out.read_text() == "precious\n" and [p.name for p in tmp_path.glob(".keep*")] == []


def test_export_has_one_flat_column_per_spec_field(tmp_path):
    """Issue 11 §2: no JSON blob per row; spec fields are columns (lists as JSON text, a clash prefixed)."""
    with Store(tmp_path) as st:
        st.record("w", "run:3", spec={"run": "r", "step": 3, "lr": 0.1, "widths": [1, 2]}, seed=0,
                  values=[Value("vni", 0.5, layer=1, step=3)])
        st.record("x", "k", spec={"depth": 50, "lr": "1e-3"}, seed=None, values=[Value("loss", 2.0)])
        assert st.export_columns() == FIXED + ["depth", "lr", "run", "spec_step", "widths"]
        assert st.export_csv(tmp_path / "a.csv") == 2
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["spec_step"] == "3" and rows[0]["step"] == "3" and rows[0]["widths"] == "[1, 2]"
    assert rows[0]["depth"] == "" and rows[1]["depth"] == "50" and rows[1]["unit"] == "2"
    assert not any("{" in v for r in rows for v in r.values())
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the test extra) not installed")
    with Store(tmp_path) as st:
        st.export_parquet(tmp_path / "a.parquet")
    t = pq.read_table(tmp_path / "a.parquet")
    assert t.column_names == FIXED + ["depth", "lr", "run", "spec_step", "widths"]
    assert str(t.schema.field("depth").type) == "int64" and str(t.schema.field("lr").type) == "string"
    assert t.column("lr").to_pylist() == ["0.1", "1e-3"]  # a number in one experiment, text in another


# ----------------------------------------------------------------------------- schema versions and migration
V1_DDL = """
CREATE TABLE units (experiment TEXT NOT NULL, key TEXT NOT NULL, spec TEXT NOT NULL, seed INTEGER,
    status TEXT NOT NULL, reason TEXT, code_version TEXT NOT NULL, started REAL, finished REAL NOT NULL,
    PRIMARY KEY (experiment, key));
CREATE TABLE measurements (experiment TEXT NOT NULL, key TEXT NOT NULL, quantity TEXT NOT NULL, layer INTEGER,
    step INTEGER, value REAL);
CREATE INDEX measurements_by_quantity ON measurements (experiment, quantity);
CREATE INDEX measurements_by_unit ON measurements (experiment, key);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _v1_store(run_dir: Path) -> None:
    """A schema-1 store as depthscope wrote it before (units interleaved, a unit re-recorded, NaN as NULL)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(run_dir / "results.sqlite")
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(V1_DDL)
    units = [("a", "k1", {"depth": 3}, 0, "done", None, [("vni", 1, None, 0.5), ("vni", 2, None, 0.25),
                                                          ("loss", None, 7, 2.0)]),
             ("b", "k1", {"w": [1]}, None, "failed", "diverged", [("q", 1, 0, None)]),
             ("a", "k2", {"depth": 4}, 1, "done", None, [("vni", 1, None, 0.75), ("loss", None, 1, 1.0)])]
    for exp, key, spec, seed, status, reason, vals in units:
        con.executemany("INSERT INTO measurements VALUES (?,?,?,?,?,?)", [(exp, key, *v) for v in vals])
        con.execute("INSERT OR REPLACE INTO units VALUES (?,?,?,?,?,?,?,?,?)",
                    (exp, key, json.dumps(spec), seed, status, reason, "0.0.9", 1.0, 2.0))
    con.execute("INSERT INTO meta VALUES ('params:a', '{\"preset\": \"quick\"}')")
    con.commit()
    con.close()


def test_schema1_store_is_migrated_with_every_row_in_order(tmp_path, capsys):
    _v1_store(tmp_path)
    with Store(tmp_path) as st:
        assert st.migrated_from == 1
        assert st._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert st.experiments() == ["a", "b"] and st.done_keys("a") == {"k1", "k2"}
        assert [(r["key"], r["quantity"], r["layer"], r["step"], r["value"], r["depth"]) for r in st.rows("a")] == [
            ("k1", "vni", 1, None, 0.5, 3), ("k1", "vni", 2, None, 0.25, 3), ("k1", "loss", None, 7, 2.0, 3),
            ("k2", "vni", 1, None, 0.75, 4), ("k2", "loss", None, 1, 1.0, 4)]
        (b,) = st.units("b")
        assert (b.key, b.spec, b.seed, b.status, b.reason, b.code_version, b.finished) == (
            "k1", {"w": [1]}, None, "failed", "diverged", "0.0.9", 2.0)
        assert math.isnan(st.rows("b", "q")[0]["value"])
        assert st.get_meta("params:a") == {"preset": "quick"}
        assert st.check().ok
        tables = {r[0] for r in st._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not {"units_v1", "measurements_v1"} & tables
    with Store(tmp_path) as st:
        assert st.migrated_from is None  # once


def test_schema1_store_opened_read_only_is_refused_naming_its_version(tmp_path):
    _v1_store(tmp_path)
    with pytest.raises(StoreError, match=r"has store schema version 1 and is read-only here; migrate"):
        Store(tmp_path, readonly=True)


def test_a_store_from_a_newer_depthscope_is_refused(tmp_path):
    with Store(tmp_path) as st:
        _fill(st)
    _lose_rows(tmp_path, "PRAGMA user_version=7")
    with pytest.raises(StoreError, match=r"has store schema version 7, newer than this depthscope reads \(2\)"):
        Store(tmp_path)


def test_an_sqlite_file_of_something_else_is_refused(tmp_path):
    _lose_rows(tmp_path, "CREATE TABLE photos (id INTEGER)")
    with pytest.raises(StoreError, match=r"an SQLite file but not a depthscope results store \(tables: photos\)"):
        Store(tmp_path)


def test_opening_a_store_writes_nothing(tmp_path):
    with Store(tmp_path) as st:
        _fill(st)
    before = (tmp_path / "results.sqlite").read_bytes()
    with Store(tmp_path) as st:
        st.rows("exp-a")
        st.done_keys("exp-a")
    assert (tmp_path / "results.sqlite").read_bytes() == before


def test_the_results_view_joins_for_sql_users(tmp_path):
    with Store(tmp_path) as st:
        _fill(st)
        got = st._conn.execute("SELECT experiment, quantity, layer, value FROM results "
                               "WHERE json_extract(spec, '$.depth') = 3 AND quantity = 'vni' ORDER BY unit, layer")
        assert got.fetchall() == [("exp-a", "vni", 1, 0.125), ("exp-a", "vni", 2, 0.25), ("exp-a", "vni", 3, 0.375),
                                  ("exp-a", "vni", 3, 1 / 3)]


# ----------------------------------------------------------------------------- read-only run directories
_READER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("store_alone", sys.argv[1])
s = importlib.util.module_from_spec(spec); sys.modules["store_alone"] = s; spec.loader.exec_module(s)
st = s.Store(sys.argv[2], create=False)
print(st.readonly, len(st.rows("exp-a")), st.check().ok, st.export_csv(sys.argv[3]))
for write in (lambda: st.set_meta("x", 1), lambda: s.Store(sys.argv[2])):
    try:
        write()
    except s.StoreError as e:
        print(e)
"""


def test_a_read_only_run_directory_is_read_and_exported(tmp_path):
    """Issue 11 §3: report and export must work in a read-only run directory (the store opens read-only, and
    immutable when SQLite cannot make its -shm file there)."""
    import shutil
    import tempfile

    root = os.geteuid() == 0
    if root:  # root ignores permissions: read as "nobody" with the system Python (store.py needs only the stdlib)
        py, setpriv = Path("/usr/bin/python3"), shutil.which("setpriv")
        if not (py.exists() and setpriv):
            pytest.skip("running as root without setpriv and /usr/bin/python3 to drop privileges")
        base = Path(tempfile.mkdtemp())  # pytest's tmp_path is private to root
        os.chmod(base, 0o755)
    else:
        base = tmp_path
    run_dir, out = base / "ro", base / "out"
    try:
        with Store(run_dir) as st:
            _fill(st)
        assert not (run_dir / "results.sqlite-shm").exists()
        out.mkdir()
        os.chmod(out, 0o777)
        os.chmod(run_dir / "results.sqlite", 0o444)
        os.chmod(run_dir, 0o555)
        args = [str(ROOT / "src" / "depthscope" / "store.py"), str(run_dir), str(out / "o.csv")]
        if root:
            r = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(py), "-c", _READER,
                                *args], capture_output=True, text=True, timeout=120)
        else:
            r = subprocess.run([sys.executable, "-c", _READER, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == "True 6 True 8"
        assert "is open read-only" in lines[1] and "cannot write to" in lines[2]
        assert len((out / "o.csv").read_text().splitlines()) == 9
        assert sorted(p.name for p in run_dir.iterdir()) == ["results.sqlite"]
    finally:
        if run_dir.exists():
            os.chmod(run_dir, 0o755)
        if root:
            shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------------- --set validation
@pytest.mark.parametrize("name,value,preset,needle", [
    ("width", 0, 64, "counts something: integers >= 1, got 0"),
    ("width", 6.5, 64, "takes an integer like 64; got a number 6.5"),
    ("width", True, 64, "takes an integer like 64; got a boolean True"),
    ("seed", -1, 0, "takes numbers >= 0, got -1"),
    ("lr", 0, 0.5, "takes numbers > 0, got 0"),
    ("lr", math.inf, 0.5, "takes finite numbers, got inf"),
    ("lrs", [0.1, -1], [0.001, 0.01], "takes numbers > 0, got [0.1, -1]"),
    ("depths", [10, "x"], [10, 100], "takes a list of integers like [10, 100]; got a list of integers and strings"),
    ("activations", ["relu", "nope"], ["relu", "tanh"], "takes known activations (linear, tanh"),
    ("inits", ["qr"], ["gaussian"], "takes known inits (gaussian, uniform, orthogonal): 'qr' is not one"),
    ("row_a", {"width": 0, "depths": [5]}, {"width": 200, "depths": [5, 50]},
     "counts something: integers >= 1 (its width), got {'width': 0, 'depths': [5]}"),
    ("row_a", {"height": 3}, {"width": 200, "depths": [5, 50]}, "takes a table with keys depths, width: 'height' is "
     "not one"),
    ("row_a", {"width": 3}, {"width": 200, "depths": [5, 50]}, "takes a table with keys depths, width: 'depths' "
     "missing"),
    ("settings", {"x": [2, 32]}, {"a": (2, 32, 0.05)}, "takes records of 3 items like [2, 32, 0.05]"),
    ("lrs", {"sgd": [0.01, -0.2]}, {"sgd": "3e-2:3e-1:3"}, "takes numbers > 0"),
    ("dataset", "", "mnist", "takes a non-empty string, got ''"),
    ("flag", 1, True, "takes a boolean like True; got an integer 1"),
    ("widths", [], [4, 8], "takes a non-empty list, got []"),
    ("widths", [[25]], [4, 8], "takes a list of integers like [4, 8]; got a list of lists [[25]]"),
    ("configs", [["tanh"]], [["sigmoid", None], ["sigmoid", 1.0]], "takes records of 2 items"),
])
def test_overrides_are_checked_against_the_preset(name, value, preset, needle):
    """The one --set validator (depthscope.params), one message per kind of misfit, each one line naming the key,
    the experiment, what is allowed and the value."""
    with pytest.raises(ValueError) as e:
        check_override("exp", name, value, [preset])
    assert f"--set {name}: experiment 'exp' {needle}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,value,preset", [
    ("lr", 1, 0.5), ("bias_value", -2, -2.0), ("lrs", {"sgd": "1e-3:1e-2:3", "new": "1:2:2"}, {"sgd": "3e-2:3e-1:3"}),
    ("settings", {"y": [4, 8, 0.1]}, {"a": (2, 32, 0.05)}), ("n_train", 500, None), ("n_train", None, None),
    ("configs", [["tanh", 2.0]], [["sigmoid", None], ["sigmoid", 1.0]]), ("input_variance", 0.5, 0.1),
    ("lrs", {"sgd": [0.01, 0.2]}, {"sgd": "3e-2:3e-1:3"}),  # a range parameter given as its values
])
def test_overrides_of_the_preset_shape_pass(name, value, preset):
    check_override("exp", name, value, [preset])


def test_every_preset_passes_its_own_check(monkeypatch):
    from depthscope import memory
    from depthscope.experiments import registry
    from depthscope.experiments.base import resolve

    # a paper preset needs a paper machine (dvcnn's: ~16 GB); the memory check has its own tests
    monkeypatch.setattr(memory, "machine_memory", lambda: (1 << 40, 1 << 40))
    for name, exp in registry().items():
        for preset, p in exp.presets.items():
            resolve(name, preset, p)  # every value overridden by itself


def test_partial_force_keeps_the_old_units_it_could_not_redo(tmp_path, monkeypatch, capsys):
    """fig3.2 --force without MNIST redoes its theory and i.i.d. units; the MNIST units' old results stay."""
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "mnist": {**data.DATASETS["mnist"], "mirrors": ()}})
    monkeypatch.setenv("DEPTHSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEPTHSCOPE_DATA", raising=False)
    over = {"widths": [20], "depths": [4], "seeds": 1, "n_iid": 50, "n_mnist": 50}
    run_dir = tmp_path / "run"
    base = ["reproduce", "fig3.2", "--run-dir", str(run_dir), *RUN, *_sets(over)]
    assert main([*base, "--data-dir", str(_tiny_mnist(tmp_path / "mnist"))]) == 0
    with Store(run_dir) as st:
        old = {u.key: u.finished for u in st.units("fig3.2")}
    assert len(old) == 4
    capsys.readouterr()
    assert main([*base, "--force", "--data-dir", str(_empty(tmp_path / "none"))]) == 2
    assert "fig3.2: 2 units could not be redone (2 need mnist" in capsys.readouterr().err
    with Store(run_dir) as st:
        new = {u.key: u.finished for u in st.units("fig3.2")}
        assert set(new) == set(old)  # nothing dropped
        assert sum(new[k] > old[k] for k in old) == 2  # theory and i.i.d. redone, the MNIST units kept
        assert len(st.done_keys("fig3.2")) == 2  # the kept ones wait for a run with the data
    assert main([*base, "--data-dir", str(tmp_path / "mnist")]) == 0  # ... which finishes the forced rerun
    with Store(run_dir) as st:
        assert len(st.done_keys("fig3.2")) == 4 and len(st.units("fig3.2")) == 4


def test_a_failing_export_leaves_the_old_file(tmp_path, monkeypatch):
    with Store(tmp_path) as st:
        _fill(st)
    out = tmp_path / "keep.csv"
    out.write_text("precious\n")

    def broken(self, *a):
        yield {c: None for c in FIXED}
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Store, "_iter_flat", broken)
    with Store(tmp_path) as st, pytest.raises(OSError, match="simulated"):
        st.export_csv(out)
    assert out.read_text() == "precious\n" and sorted(p.name for p in tmp_path.glob("*keep*")) == ["keep.csv"]


def _empty(path: Path) -> Path:
    """An existing directory without MNIST: --data-dir must exist (cli checks it), the data must be missing."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_rerecording_a_unit_leaves_no_orphan_rows(tmp_path):
    """Recording a unit again replaces its rows: the old ones are deleted, not left behind unseen (the join hides
    them; `depthscope check` and the file size would not)."""
    key = unit_key({"depth": 2}, 0)
    with Store(tmp_path) as st:
        for v in (1.0, 2.0):
            st.record("e", key, spec={"depth": 2}, seed=0, values=[Value("vni", v, layer=l) for l in (1, 2)])
        assert [r["value"] for r in st.rows("e", "vni")] == [2.0, 2.0]
    con = sqlite3.connect(tmp_path / "results.sqlite")
    try:
        assert con.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 2
    finally:
        con.close()
    assert check(tmp_path).ok


@pytest.mark.parametrize("bad", [True, False, "1", 1.5])
def test_a_layer_or_step_that_is_not_an_integer_is_refused(tmp_path, bad):
    """layer=True would be stored as layer 1 (bool is an int in Python): refused with the value named."""
    with Store(tmp_path) as st:
        with pytest.raises(ValueError, match="layer"):
            st.record("e", "k", spec={}, seed=None, values=[Value("vni", 0.5, layer=bad)])
        assert st.units("e") == []


def test_report_out_draws_real_figures_and_leaves_the_run_dir_as_it_was(stored, tmp_path, capsys):
    """`depthscope report RUN_DIR --out DIR` with an experiment's figures: the store is opened read-only (no -wal
    or -shm left behind, no migration), figures and report.html go to DIR, and every file under RUN_DIR keeps
    its bytes and mtime."""
    def tree(d: Path) -> dict:
        return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))
                if p.is_file()}

    before = tree(stored)
    out = tmp_path / "rep"
    assert main(["report", str(stored), "--quiet", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "report.html")
    assert any(p.suffix == ".png" for p in (out / "figures").iterdir())
    html = (out / "report.html").read_text()
    assert 'href="figures/' in html and "data:image/png;base64," in html  # links relative to DIR
    assert tree(stored) == before
