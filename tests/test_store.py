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
from depthscope.experiments import run_experiment
from depthscope.store import Store, Value, code_version, unit_key

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["experiment", "key", "quantity", "layer", "step", "value", "spec", "seed", "status", "reason",
           "code_version", "time"]  # written out here, not imported: the export format is a promise to readers


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
        assert (q["experiment"], q["key"], q["seed"], q["layer"], q["step"]) == ("exp-b", "theory", None, 1, 0)
        assert json.loads(q["spec"]) == {"activation": "tanh", "widths": [1, 2]}
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
        if sql.startswith("INSERT OR REPLACE INTO units"):
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
        assert real.execute("SELECT COUNT(*) FROM measurements WHERE key='new'").fetchone()[0] == 0


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
        counts = dict(st._conn.execute("SELECT key, COUNT(*) FROM measurements GROUP BY key"))
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
    assert (tmp_path / "e.csv").read_text().strip().split(",") == COLUMNS


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

