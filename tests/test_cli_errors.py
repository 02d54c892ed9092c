"""Every error is one line and exit 2, never a traceback, and never touches the store (issue 11, section 3).

The table runs every subcommand with bad values of its flags (wrong type, negative,
zero, huge, NaN, empty, a missing path, a file where a directory belongs and the
reverse) in-process through ``depthscope.cli.main`` and asserts: exit 2, exactly
one line on stderr, no traceback, and results.sqlite (and its -wal) byte-identical
to before. A handful of cases run through the real entry point (``python -m
depthscope``) to show it behaves the same. The regression tests below the table
pin each reproducer of the issue.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import depthscope
from depthscope.cli import build_parser, main
from depthscope.store import Store, Value

ENV = {**os.environ, "PYTHONPATH": str(Path(depthscope.__file__).resolve().parents[1])}
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """A run directory holding a small real store, a plain file, a missing path, and bad config files."""
    base = tmp_path_factory.mktemp("cli_errors")
    run = base / "run"
    with Store(run) as s:
        for i in range(3):
            s.record("demo", f"k{i}", spec={"width": 4, "depth": 2}, seed=i,
                     values=[Value("vni", 0.5 + i / 10, 1, 0), Value("vni", 0.6, 2, 0)])
        s.set_meta("params:demo", {"preset": "quick", "params": {"width": 4}})
    (base / "afile").write_text("not a directory\n")
    (base / "bad_utf8.toml").write_bytes(b'name = "\xff\xfe"\n')
    (base / "bad_syntax.toml").write_text("[sweep\ndepths = 3\n")
    (base / "huge_seeds.toml").write_text("[sweep]\nseeds = 100000000\n")
    (base / "neg_seeds.toml").write_text("[sweep]\nseeds = -1\n")
    (base / "outdir").mkdir()
    corrupt = base / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.sqlite").write_bytes(b"this is not a SQLite database" * 100)
    badjson = base / "badjson"
    with Store(badjson) as s:
        s.record("demo", "k0", spec={"width": 4}, seed=0, values=[Value("vni", 0.5, 1, 0)])
    con = sqlite3.connect(badjson / "results.sqlite")
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for t in tables:  # corrupt every JSON text column we can find (the schema is the store helper's)
        cols = [r[1] for r in con.execute(f"PRAGMA table_info({t})") if r[2].upper() == "TEXT"]
        for c in cols:
            con.execute(f"UPDATE {t} SET {c} = '{{not json' WHERE {c} LIKE '{{%'")
    con.commit()
    con.close()
    return {"run": str(run), "file": str(base / "afile"), "missing": str(base / "missing"),
            "outdir": str(base / "outdir"), "bad_utf8": str(base / "bad_utf8.toml"),
            "bad_syntax": str(base / "bad_syntax.toml"), "huge_seeds": str(base / "huge_seeds.toml"),
            "neg_seeds": str(base / "neg_seeds.toml"), "corrupt": str(corrupt), "badjson": str(badjson),
            "base": str(base)}


def store_hashes(run_dir: str | Path) -> dict[str, str | None]:
    out = {}
    for name in ("results.sqlite", "results.sqlite-wal"):
        p = Path(run_dir) / name
        out[name] = hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None
    return out


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """main(argv) in this process: (exit code, stderr); argparse's exits are SystemExit."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    return rc, capsys.readouterr().err


def assert_one_line(rc: int, err: str, needle: str | None = None) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}, stderr: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{err}"
    if needle is not None:
        assert needle in lines[0], lines[0]


# ----------------------------------------------------------------------------- the table
T, V, RP, RE, EX, SW, WR = "theory", "vni", "reproduce", "report", "export", "sweep", "watch-report"
NET = ["--depth", "3", "--width", "5"]
VNI = ["--depth", "2", "--width", "5", "--samples", "20", "--seeds", "2", "--quiet"]
DRY = ["--dry-run", "--dataset", "synthetic", "--run-dir", "{base}/sweep-run"]

CASES = [
    # theory: every flag, bad values
    (T, ["--depth", "ten", "--width", "5"], "--depth"),
    (T, ["--depth", "-1", "--width", "5"], "--depth"),
    (T, ["--depth", "", "--width", "5"], "--depth"),
    (T, ["--depth", "nan", "--width", "5"], "--depth"),
    (T, ["--depth", "1000000000", "--width", "5"], "needs about"),
    (T, ["--depth", "3", "--width", "0"], "--width"),
    (T, ["--depth", "3", "--width", "-4"], "--width"),
    (T, ["--depth", "3", "--width", "1.5"], "--width"),
    (T, ["--depth", "3"], "--width"),
    (T, [*NET, "--sigma-w2", "nan"], "--sigma-w2"),
    (T, [*NET, "--sigma-w2", "-1"], "--sigma-w2"),
    (T, [*NET, "--sigma-w2", "inf"], "--sigma-w2"),
    (T, [*NET, "--sigma-w2", "1e308"], "--sigma-w2"),
    (T, [*NET, "--sigma-w2", ""], "--sigma-w2"),
    (T, [*NET, "--sigma-b", "1e308"], "--sigma-b"),
    (T, [*NET, "--sigma-b", "nan"], "--sigma-b"),
    (T, [*NET, "--sigma-b", "-0.5"], "--sigma-b"),
    (T, [*NET, "--input-variance", "-1"], "--input-variance"),
    (T, [*NET, "--input-variance", "nan"], "--input-variance"),
    (T, [*NET, "--input-variance", "1e999"], "--input-variance"),
    (T, [*NET, "--activation", "swish"], "unknown activation"),
    (T, [*NET, "--activation", ""], "activation"),
    (T, [*NET, "--init", "he"], "unknown init"),
    (T, [*NET, "--layer", "0"], "--layer"),
    (T, [*NET, "--layer", "4"], "--layer"),
    (T, [*NET, "--form", "exact"], "--form"),
    # vni
    (V, ["--depth", "2", "--width", "1000000", "--samples", "10", "--seeds", "1"], "needs about"),
    (V, [*VNI, "--samples", "0"], "--samples"),
    (V, [*VNI, "--samples", "1"], "--samples"),
    (V, [*VNI, "--samples", "abc"], "--samples"),
    (V, [*VNI, "--seeds", "0"], "--seeds"),
    (V, [*VNI, "--seeds", "-1"], "--seeds"),
    (V, [*VNI, "--seeds", "nan"], "--seeds"),
    (V, [*VNI, "--sigma-b", "1e308"], "--sigma-b"),
    (V, [*VNI, "--inputs", "cifar"], "--inputs"),
    (V, [*VNI, "--inputs", ""], "--inputs"),
    (V, [*VNI, "--inputs", "mnist", "--preprocess", "zca"], "--preprocess"),
    (V, [*VNI, "--arch", "conv"], "arch"),
    (V, [*VNI, "--inputs", "mnist", "--data-dir", "{file}"], "is a file, expected a directory"),
    (V, [*VNI, "--inputs", "mnist", "--data-dir", "{missing}"], "does not exist"),
    (V, [*VNI, "--inputs", "mnist", "--data-dir", ""], "--data-dir"),
    # reproduce (with the real store as its run directory)
    (RP, ["nope", "--run-dir", "{run}"], "unknown experiment"),
    (RP, ["fig3.1", "--preset", "huge", "--run-dir", "{run}"], "no preset"),
    (RP, ["fig3.1", "--run-dir", "{file}"], "is a file, expected a directory"),
    (RP, ["fig3.1", "--run-dir", "{file}/sub"], "is a file, not a directory"),
    (RP, ["fig3.1", "--run-dir", ""], "--run-dir"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "widths"], "KEY=VALUE"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "widths=NaN"], "finite"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "widths=null"], "got null"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", 'widths="abc"'], "widths"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "widths=[0]"], "integers >= 1"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "widths=[-5]"], "integers >= 1"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "widths=[1.5]"], "widths"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "n=1e400"], "finite"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "seed=-1"], ">= 0"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--set", "bogus=1"], "no parameter 'bogus'"),
    (RP, ["effective-nodes", "--run-dir", "{run}", "--set", "widths=[0]"], "integers >= 1"),
    (RP, ["effective-nodes", "--run-dir", "{run}", "--set", 'seeds="2"'], "seeds"),
    (RP, ["effective-nodes", "--run-dir", "{run}", "--set", "seeds=-1"], "integers >= 1"),
    (RP, ["effective-nodes", "--run-dir", "{run}", "--set", "seeds=0"], "integers >= 1"),
    (RP, ["fig5", "--run-dir", "{run}", "--set", "seeds=-1"], "integers >= 1"),
    (RP, ["effective-nodes", "--run-dir", "{run}", "--set", "widths=[25,25]"], "takes distinct values (25 is"),
    (RP, ["fig3.2", "--run-dir", "{run}", "--set", "depths=[10,20,10]"], "takes distinct values (10 is repeated)"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--device", "tpu"], "tpu"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--data-dir", "{file}"], "is a file, expected a directory"),
    (RP, ["fig3.1", "--run-dir", "{run}", "--data-dir", "{missing}"], "does not exist"),
    # report
    (RE, ["{missing}"], "does not exist"),
    (RE, ["{file}"], "is a file, expected a directory"),
    (RE, [""], "RUN_DIR"),
    (RE, ["{outdir}"], "no results store"),
    pytest.param(RE, ["{corrupt}"], "results.sqlite", id="report-corrupt-store"),
    # export
    (EX, ["{missing}", "{outdir}/o.csv"], "does not exist"),
    (EX, ["{file}", "{outdir}/o.csv"], "is a file, expected a directory"),
    (EX, ["{run}", "{outdir}"], "is a directory, expected a file"),
    (EX, ["{run}", "{file}/o.csv"], "is a file, not a directory"),
    (EX, ["{run}", "{missing}/o.csv"], "does not exist"),
    (EX, ["{run}", "{outdir}/o.txt"], ".csv or .parquet"),
    (EX, ["{run}", ""], "OUTPUT"),
    pytest.param(EX, ["{run}", "{outdir}/nope.csv", "--experiment", "nope"], "nope",
                 id="export-unknown-experiment"),
    pytest.param(EX, ["{corrupt}", "{outdir}/c.csv"], "results.sqlite", id="export-corrupt"),
    pytest.param(EX, ["{badjson}", "{outdir}/j.csv"], "results.sqlite", id="export-bad-json"),
    # sweep (dry runs: nothing would train even if a check slipped)
    (SW, ["{missing}", *DRY], "does not exist"),
    (SW, ["{outdir}", *DRY], "is a directory, expected a file"),
    (SW, ["{bad_utf8}", *DRY], "not UTF-8"),
    (SW, ["{bad_syntax}", *DRY], "not valid TOML"),
    (SW, ["{huge_seeds}", *DRY], "needs about"),
    (SW, ["{neg_seeds}", *DRY], "seeds"),
    (SW, ["--depths", "abc", *DRY], "depths"),
    (SW, ["--depths", "0", *DRY], "depths"),
    (SW, ["--depths", "-5", *DRY], "depths"),
    (SW, ["--depths", "nan", *DRY], "depths"),
    (SW, ["--depths", "", *DRY], "depths"),
    (SW, ["--depths", "1000000000", *DRY], "needs about"),
    (SW, ["--widths", "0", *DRY], "widths"),
    (SW, ["--widths", "100000000", *DRY], "needs about"),
    (SW, ["--lrs", "nan", *DRY], "lrs"),
    (SW, ["--lrs", "0", *DRY], "lrs"),
    (SW, ["--lrs", "-1e-3", *DRY], "lrs"),
    (SW, ["--lrs", "abc", *DRY], "lrs"),
    (SW, ["--optimizers", "lbfgs", *DRY], "optimizer"),
    (SW, ["--activations", "swish", *DRY], "activation"),
    (SW, ["--inits", "he", *DRY], "init"),
    (SW, ["--seeds", "0", *DRY], "seeds"),
    (SW, ["--seeds", "-1", *DRY], "seeds"),
    (SW, ["--seeds", "abc", *DRY], "seeds"),
    (SW, ["--seeds", "0,0", *DRY], "twice"),
    (SW, ["--seeds", "0,-1", *DRY], "seeds"),
    (SW, ["--name", "../escaped", *DRY], "sweep name"),
    (SW, ["--name", "", *DRY], "sweep name"),
    (SW, [*DRY, "--dataset", "cifar"], "dataset"),
    (SW, ["--split", "val", *DRY], "split"),
    (SW, ["--n-train", "0", *DRY], "--n-train"),
    (SW, ["--n-train", "abc", *DRY], "--n-train"),
    (SW, ["--epochs", "0", *DRY], "--epochs"),
    (SW, ["--batch-size", "-1", *DRY], "--batch-size"),
    (SW, ["--target-accuracy", "nan", *DRY], "target_accuracy"),
    (SW, ["--target-accuracy", "2", *DRY], "target_accuracy"),
    (SW, ["--group-size", "0", *DRY], "--group-size"),
    (SW, ["--workers", "-1", *DRY], "--workers"),
    (SW, ["--workers", "abc", *DRY], "--workers"),
    (SW, ["--backend", "slurm", *DRY], "--backend"),
    (SW, ["--device", "tpu", *DRY], "tpu"),
    (SW, ["--dry-run", "--dataset", "synthetic", "--run-dir", "{file}"], "is a file, expected a directory"),
    (SW, ["--dry-run", "--dataset", "synthetic", "--run-dir", "{file}/x"], "is a file, not a directory"),
    (SW, ["--dry-run", "--dataset", "synthetic", "--run-dir", "{run}", "--data-dir", "{file}"], "is a file"),
    (SW, ["--dataset", "synthetic", "--run-dir", "{run}", "--depths", "2", "--trainer", "nope:nothing",
          "--backend", "inline", "--quiet"], "trainer"),
    # watch-report
    (WR, ["{missing}"], "does not exist"),
    (WR, ["{file}"], "is a file, expected a directory"),
    (WR, ["{run}"], "no depthscope.watch run"),
    (WR, ["{run}", "--quantity", "colour"], "quantity"),
    (WR, ["{run}", "--out", "{file}"], "is a file, expected a directory"),
    (WR, ["{run}", "--out", "{file}/x"], "is a file, not a directory"),
    (WR, ["{run}", "--out", ""], "--out"),
]


def _case_id(c) -> str:
    if hasattr(c, "id") and c.id:
        return c.id
    cmd, argv, _ = c
    return f"{cmd}:" + " ".join(a.replace("{", "").replace("}", "") for a in argv)[:60]


def _expand(argv: list[str], places: dict[str, str]) -> list[str]:
    return [a.format(**places) for a in argv]


@pytest.mark.parametrize("cmd,argv,needle", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_value_is_one_line_exit_2_and_the_store_is_untouched(cmd, argv, needle, places, capsys):
    before = store_hashes(places["run"])
    rc, err = run_cli([cmd, *_expand(argv, places)], capsys)
    assert_one_line(rc, err, needle)
    assert store_hashes(places["run"]) == before
    assert not (Path(places["base"]) / "sweep-run").exists(), "a dry run or a refused sweep made its run dir"


def test_every_subcommand_is_in_the_table():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    covered = {c.values[0] if hasattr(c, "values") else c[0] for c in CASES} | {"check"}
    missing = set(sub.choices) - covered
    assert not missing, f"subcommands without bad-input cases: {sorted(missing)}"


@pytest.mark.parametrize("argv,needle", [(["{missing}"], "does not exist"), (["{file}"], "is a file")])
def test_check_subcommand_bad_paths(argv, needle, places, capsys):
    rc, err = run_cli(["check", *_expand(argv, places)], capsys)
    assert_one_line(rc, err, needle)


def tree(directory: str | Path) -> dict[str, tuple]:
    """Every file under ``directory``: relative path -> (bytes' sha256, mtime in ns)."""
    out = {}
    for p in sorted(Path(directory).rglob("*")):
        if p.is_file():
            out[str(p.relative_to(directory))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


@pytest.mark.skipif(ROOT, reason="root writes into read-only directories (the tests below stand in for this)")
@pytest.mark.parametrize("cmd", ["report", "export"])
def test_read_only_run_dir_report_and_export_work(cmd, places, tmp_path, capsys):
    import shutil

    ro = tmp_path / "ro"
    shutil.copytree(places["run"], ro)
    ro.chmod(0o555)
    try:
        before = tree(ro)
        if cmd == "report":  # without --out there is nowhere to write: one line that says to use it
            rc, err = run_cli(["report", str(ro), "--quiet"], capsys)
            assert_one_line(rc, err, "pass --out DIR")
            argv = ["report", str(ro), "--quiet", "--out", str(tmp_path / "rep")]
        else:
            argv = ["export", str(ro), str(tmp_path / "o.csv")]
        rc, err = run_cli(argv, capsys)
        assert rc == 0, err
        assert tree(ro) == before
    finally:
        ro.chmod(0o755)
    if cmd == "report":
        assert (tmp_path / "rep" / "report.html").is_file()


def test_report_and_export_leave_the_run_dir_as_it_was(places, tmp_path, capsys):
    """Works as root too: report --out and export only read (the store opens read-only): every file under the
    run directory keeps its bytes and mtime, and no file (no -wal, -shm, figures/, report.html) appears there."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(places["run"], run)
    before = tree(run)
    out = tmp_path / "elsewhere"
    rc, err = run_cli(["report", str(run), "--quiet", "--out", str(out)], capsys)
    assert rc == 0, err
    assert (out / "report.html").is_file() and (out / "figures").is_dir()
    rc, err = run_cli(["export", str(run), str(tmp_path / "o.csv")], capsys)
    assert rc == 0, err
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 7
    assert tree(run) == before


def test_report_into_an_unwritable_run_dir_says_to_use_out(places, tmp_path, capsys, monkeypatch):
    """The not-writable branch, as root too (root may write anywhere): the writability check says no."""
    import shutil

    from depthscope import report

    run = tmp_path / "run"
    shutil.copytree(places["run"], run)
    before = tree(run)
    monkeypatch.setattr(report, "writable_dir", lambda p: Path(p) != run)
    rc, err = run_cli(["report", str(run), "--quiet"], capsys)
    assert_one_line(rc, err, "is not writable; pass --out DIR")
    assert tree(run) == before
    rc, err = run_cli(["report", str(run), "--quiet", "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    assert tree(run) == before


def test_report_out_bad_paths(places, capsys):
    for out, needle in (("{file}", "is a file, expected a directory"), ("{file}/x", "is a file, not a directory"),
                        ("", "--out")):
        before = store_hashes(places["run"])
        rc, err = run_cli(["report", places["run"], "--quiet", "--out", out.format(**places)], capsys)
        assert_one_line(rc, err, needle)
        assert store_hashes(places["run"]) == before


@pytest.mark.skipif(not ROOT, reason="only root can write where a chmod forbids it; elsewhere tested above")
def test_unwritable_directory_is_one_line(tmp_path, capsys, monkeypatch):
    """As root nothing is unwritable by permission, so stand in a read-only file system (os.access says no)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if "locked" in str(p) and mode & os.W_OK
                        else real(p, mode, **kw))
    (tmp_path / "locked").mkdir()
    for argv in (["sweep", "--dry-run", "--dataset", "synthetic", "--run-dir", str(tmp_path / "locked" / "r")],
                 ["export", str(Path(tmp_path).parent), str(tmp_path / "locked" / "o.csv")]):
        rc, err = run_cli(argv, capsys)
        assert_one_line(rc, err, "writable")


@pytest.mark.skipif(ROOT, reason="root writes into read-only directories")
def test_unwritable_directory_is_one_line_by_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc, err = run_cli(["sweep", "--dry-run", "--dataset", "synthetic", "--run-dir", str(locked / "r")], capsys)
        assert_one_line(rc, err, "not writable")
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- the real entry point
@pytest.mark.parametrize("argv,needle", [
    (["theory", "--depth", "3", "--width", "5", "--sigma-b", "1e308"], "--sigma-b"),
    (["report", "{file}"], "is a file, expected a directory"),
    (["sweep", "{bad_utf8}", "--dry-run", "--run-dir", "{base}/sweep-run"], "not UTF-8"),
    (["reproduce", "effective-nodes", "--run-dir", "{run}", "--set", "widths=[0]"], "integers >= 1"),
    (["export", "{run}", "{file}/x.csv"], "is a file, not a directory"),
], ids=["sigma-b-overflow", "report-file", "toml-utf8", "set-widths-0", "export-under-file"])
def test_real_entry_point_behaves_the_same(argv, needle, places):
    before = store_hashes(places["run"])
    proc = subprocess.run([sys.executable, "-m", "depthscope", *_expand(argv, places)], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert_one_line(proc.returncode, proc.stderr, needle)
    assert store_hashes(places["run"]) == before


# ----------------------------------------------------------------------------- the mechanism
def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only bad input is one line: a genuine bug (here a KeyError, and a ValueError from inside numpy) propagates."""
    import numpy as np

    from depthscope.commands import core

    def buggy(args):
        raise KeyError("a bug")

    monkeypatch.setattr(core, "cmd_theory", buggy)
    with pytest.raises(KeyError):
        main(["theory", "--depth", "1", "--width", "1"])

    def numpy_misuse(args):
        np.ones(3).reshape(2, 2)

    monkeypatch.setattr(core, "cmd_theory", numpy_misuse)
    with pytest.raises(ValueError, match="reshape"):
        main(["theory", "--depth", "1", "--width", "1"])


def test_debug_env_shows_the_traceback_of_one_line_errors(monkeypatch):
    monkeypatch.setenv("DEPTHSCOPE_DEBUG", "1")
    with pytest.raises(ValueError, match="--layer"):
        main(["theory", "--depth", "3", "--width", "5", "--layer", "4"])


def test_user_message_classifies():
    from depthscope.errors import InputError, user_message

    assert user_message(InputError("bad\nvalue")) == "bad; value"
    assert user_message(NotADirectoryError(20, "Not a directory", "a/b")) == "a/b: Not a directory"
    assert user_message(MemoryError()) is not None
    assert user_message(KeyError("x")) is None
    assert user_message(RuntimeError("x")) is None
    try:
        int("abc")  # raised by a builtin called from a test file: not depthscope's code
    except ValueError as e:
        assert user_message(e) is None


# ----------------------------------------------------------------------------- regression tests by reproducer
def test_sweep_seeds_comma_form_works_and_zero_or_negative_is_refused(capsys, tmp_path):
    """`--seeds 0,1` (shown in the docs) failed with "must hold integers"; `--seeds 0` ran 0 runs silently."""
    argv = ["sweep", "--dry-run", "--dataset", "synthetic", "--depths", "2", "--json", "--run-dir", str(tmp_path)]
    assert main([*argv, "--seeds", "0,1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["sweep"]["seeds"] == [0, 1] and doc["runs"] == 2
    assert main([*argv, "--seeds", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["sweep"]["seeds"] == [0, 1, 2]
    for bad in ("0", "-1"):
        rc, err = run_cli([*argv, "--seeds", bad], capsys)
        assert_one_line(rc, err, "count n >= 1")
        assert "integers" not in err


def test_sweep_spec_seeds_from_python():
    from depthscope.sweep import SweepSpec

    assert SweepSpec(seeds="0,2").seeds == [0, 2]
    assert SweepSpec(seeds=2).seeds == [0, 1]
    assert SweepSpec(seeds=[5]).seeds == [5]
    for bad in (0, -1, "0", "-1", [-1], [], "x"):
        with pytest.raises(ValueError, match="seeds"):
            SweepSpec(seeds=bad)


def test_huge_seed_count_is_refused_before_the_list_is_made(monkeypatch):
    """`seeds = 100000000` with --dry-run spent minutes and gigabytes building the grid."""
    import time

    from depthscope.errors import TooBig
    from depthscope.sweep import SweepSpec

    t0 = time.perf_counter()
    with pytest.raises(TooBig, match=r"seeds = 100000000 .* needs about 200\.0 GB .* available"):
        SweepSpec(seeds=100_000_000)
    assert time.perf_counter() - t0 < 5  # refused from the count alone (the list would take ~10 s and 4 GB)


def test_vni_width_100000_is_refused_naming_both_memories(monkeypatch, capsys):
    """`depthscope vni --width 100000` died in torch's allocator (a 40 GB weight) with a traceback."""
    from depthscope import memory

    monkeypatch.setattr(memory, "machine_memory", lambda: (8_000_000_000, 16_000_000_000))
    rc, err = run_cli(["vni", "--depth", "2", "--width", "100000", "--samples", "1000", "--seeds", "1"], capsys)
    assert_one_line(rc, err, "needs about 83.6 GB of memory, but only 8.0 GB is available on this machine "
                             "(of 16.0 GB)")


def test_sweep_depth_1e9_is_refused_even_in_a_dry_run(monkeypatch, capsys, tmp_path):
    from depthscope import memory

    monkeypatch.setattr(memory, "machine_memory", lambda: (8_000_000_000, 16_000_000_000))
    rc, err = run_cli(["sweep", "--dry-run", "--depths", "1000000000", "--dataset", "synthetic",
                       "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line(rc, err, "depth up to 1000000000")
    assert "TB of memory" in err and not (tmp_path / "r").exists()


def test_netspec_refuses_nan_and_overflowing_sigma_b():
    from depthscope.nets import NetSpec

    for kw, needle in ((dict(sigma_b=float("nan")), "sigma_b"), (dict(sigma_b=1e308), "sigma_b"),
                       (dict(sigma_b="0.1"), "sigma_b"), (dict(sigma_w2=float("nan")), "sigma_w2"),
                       (dict(bias_value=float("inf")), "bias_value"), (dict(residual_scale=float("nan")),
                                                                       "residual_scale"),
                       (dict(in_features=2.5), "in_features")):
        with pytest.raises(ValueError, match=needle):
            NetSpec(depth=2, width=3, **kw)
    assert NetSpec(depth=2, width=3, sigma_w2=1.0, sigma_b=1e150).sigma_b == 1e150  # large but squarable: allowed


def test_theory_predict_refuses_negative_input_variance():
    from depthscope import theory

    for kw in (dict(input_variance=-1), dict(input_variance=float("nan")), dict(sigma_b=1e308)):
        with pytest.raises(ValueError, match="finite number >= 0"):
            theory.predict(3, 5, **kw)


def test_toml_not_utf8_names_the_file():
    from depthscope.sweep import SweepSpec

    with pytest.raises(ValueError, match=r"bad\.toml: not UTF-8 text \(byte 0xff at offset 8\)"):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "bad.toml"
            p.write_bytes(b'name = "\xff"\n')
            SweepSpec.from_toml(p)


def test_set_wrong_type_never_reaches_the_store(places, capsys):
    """`--set 'widths="abc"'` used to write the bad parameters into the store's meta before failing."""
    with Store(places["run"], create=False) as s:
        meta_before = s.get_meta("params:fig3.1")
    for bad in ('widths="abc"', "widths=NaN", "widths=null", "seed=-1"):
        rc, err = run_cli(["reproduce", "fig3.1", "--run-dir", places["run"], "--set", bad], capsys)
        assert_one_line(rc, err)
    with Store(places["run"], create=False) as s:
        assert s.get_meta("params:fig3.1") == meta_before


def test_check_override_shapes_and_ranges():
    from depthscope.errors import InputError
    from depthscope.params import check_override, check_overrides

    presets = {"quick": {"depths": [8, 16], "lrs": {"sgd": "1e-3:1e-2:3"}, "n_train": 1000, "seeds": 2},
               "paper": {"depths": "25:500:11", "lrs": {"sgd": "1e-4:1e-2:9"}, "n_train": None, "seeds": 20}}
    check_overrides("x", presets, {"depths": [3], "n_train": None, "seeds": 1, "lrs": {"sgd": "1e-3:1e-2:2"}})
    check_overrides("x", presets, {"depths": "10:100:3"})
    check_overrides("x", presets, {"lrs": {"sgd": [0.1, 0.2]}})  # a range in the presets: its values fit too
    check_overrides("x", presets, {"depths": [4, 8]})
    for bad in ({"depths": [0]}, {"depths": [2.5]}, {"depths": None}, {"seeds": -1}, {"seeds": True},
                {"lrs": [0.1]}, {"seeds": float("nan")}, {"nope": 1}):
        with pytest.raises(InputError):
            check_overrides("x", presets, bad)
    with pytest.raises(InputError, match="finite"):
        check_override("x", "lr", float("inf"), [0.1])
    with pytest.raises(InputError, match="> 0"):
        check_override("x", "lr", 0.0, [0.1])


ONE_VALIDATOR = [
    ("effective-nodes", "quick", {"widths": [0]}),
    ("effective-nodes", "paper", {"seeds": "2"}),
    ("effective-nodes", "quick", {"activation": "swish"}),
    ("fig3.3", "quick", {"row_a": {"width": 0, "depths": [5]}}),
    ("fig3.3", "quick", {"row_b": {"depth": 4}}),
    ("fig5", "quick", {"lrs": {"sgd": [0.1, -1.0]}}),
    ("fig5", "paper", {"depths": []}),
    ("xor", "quick", {"settings": {"a": [2, 32]}}),
    ("gradients", "quick", {"configs": [["tanh"]]}),
    ("fig3.4", "quick", {"target_accuracy": 0}),
    ("fig3.1", "quick", {"seed": -1}),
]


@pytest.mark.parametrize("name,preset,over", ONE_VALIDATOR, ids=[f"{n}-{list(o)[0]}" for n, _, o in ONE_VALIDATOR])
def test_one_set_validator_on_every_path(name, preset, over, places, capsys):
    """One --set validator (depthscope.params): the library's check, Experiment.params, resolve and the CLI
    refuse the same override with the same one line, and the runner module keeps no second copy."""
    import depthscope.experiments.base as base
    from depthscope.errors import InputError
    from depthscope.experiments import get_experiment
    from depthscope.params import check_overrides

    exp = get_experiment(name)
    with pytest.raises(InputError) as direct:
        check_overrides(name, exp.presets, over, preset)
    msg = str(direct.value)
    for call in (lambda: exp.params(preset, over), lambda: base.resolve(name, preset, over)):
        with pytest.raises(InputError) as e:
            call()
        assert str(e.value) == msg
    (key, value), = over.items()
    rc, err = run_cli(["reproduce", name, "--preset", preset, "--run-dir", places["run"], "--no-report", "--quiet",
                       "--set", f"{key}={json.dumps(value)}"], capsys)
    assert_one_line(rc, err)
    assert err.strip() == f"depthscope reproduce: error: {msg}"
    assert not [n for n in vars(base) if "check_override" in n or n in ("_check_like", "_POSITIVE")]


TOO_BIG = [  # (experiment, --set, the size that cannot fit); the machine is pinned at 8 GB available
    ("fig3.4", "width=100000", "width 100000"),
    ("fig3.5", "depth=1000000000", "depth 1000000000"),
    ("fig3.6", "batch=1000000000", "samples 1000000000"),
    ("fig5", "width=100000", "width 100000"),
    ("fig5", "seeds=100000000", "units"),
    ("fig5", 'depths="25:100000000:3"', "depth 100000000"),
    ("effective-nodes", "widths=[100000]", "width 100000"),
    ("effective-nodes", "n=1000000000", "samples 1000000000"),
    ("effective-nodes", "depth=1000000000", "depth 1000000000"),
    ("effective-nodes", "seeds=100000000", "units"),
    ("fig3.1", "n=1000000000", "samples 1000000000"),
    ("fig3.2", "n_iid=1000000000", "samples 1000000000"),
    ("fig3.3", 'row_a={"width": 100000, "depths": [5]}', "width 100000"),
    ("table3.1", "width=100000", "width 100000"),
    ("gradients", "width=100000", "width 100000"),
    ("gradients", "n_train=1000000000", "training rows 1000000000"),
    ("batchnorm", "width=100000", "width 100000"),
    ("dvcnn", "width=100000", "width 100000"),
    ("xor", "seeds=100000000000", "units"),
]


@pytest.mark.parametrize("name,override,size", TOO_BIG, ids=[f"{n}-{o.split('=')[0]}" for n, o, _ in TOO_BIG])
@pytest.mark.parametrize("force", [False, True])
def test_set_sizes_that_cannot_fit_are_refused_before_allocating(name, override, size, force, places, capsys,
                                                                 monkeypatch):
    """Issue 11 §3: sizes entering through --set are memory-checked like the flags: refused before anything is
    allocated (the units are not even listed: seeds=1e8 would build 1e8 of them), with the estimate and the
    machine's memory, exit 2, one line, the store byte-identical (also under --force)."""
    from depthscope import memory

    monkeypatch.setattr(memory, "machine_memory", lambda: (8 * 10**9, 16 * 10**9))
    before = tree(places["run"])
    argv = ["reproduce", name, "--run-dir", places["run"], "--no-report", "--quiet", "--device", "cpu",
            "--set", override] + (["--force"] if force else [])
    rc, err = run_cli(argv, capsys)
    assert_one_line(rc, err, "needs about")
    line = err.strip()
    assert f"with --set {override.split('=')[0]}=" in line and size in line
    assert "but only 8.0 GB is available on this machine (of 16.0 GB)" in line
    assert tree(places["run"]) == before


def test_set_sizes_that_fit_are_not_refused(monkeypatch):
    """The other side of the check: the quick presets, and each quick preset with a size doubled, pass on a
    machine pinned at 8 GB (the estimate refuses only what cannot fit)."""
    from depthscope import memory
    from depthscope.experiments import registry
    from depthscope.experiments.base import resolve

    monkeypatch.setattr(memory, "machine_memory", lambda: (8 * 10**9, 16 * 10**9))
    for name, exp in registry().items():
        quick = exp.presets["quick"]
        resolve(name, "quick")
        for key in ("width", "n", "depth", "seeds"):
            if isinstance(quick.get(key), int) and not isinstance(quick[key], bool):
                resolve(name, "quick", {key: 2 * quick[key]})


NAMES_OK = ("fig3.1", "my-sweep_2", "a+b", "watch", "watch-2", "run-17", "x" * 100, "effective-nodes", "A.b_c+d-e")
NAMES_BAD = ("", "..", ".", "../x", "a/b", "a\\b", "a b", "x" * 101, None, "-lead", ".hidden", "_x", "a:b", "é",
             "a\nb", 3, "x/../../../escaped")


def test_names_and_confined_paths(tmp_path):
    from depthscope.errors import InputError, check_name, confined

    for ok in NAMES_OK:
        assert check_name(ok) == ok
    for bad in NAMES_BAD:
        with pytest.raises(InputError):
            check_name(bad)
    assert confined(tmp_path, "a.png") == tmp_path / "a.png"
    for bad in ("../a.png", "x/../../a", "/etc/passwd", "", ".."):
        with pytest.raises(InputError):
            confined(tmp_path, bad)


def test_parameters_listing_a_unit_twice_are_refused(monkeypatch):
    """Whatever slips past the --set check and lists one unit twice (it would run twice and mean nothing more)
    is refused before anything runs."""
    from depthscope.errors import InputError
    from depthscope.experiments.base import resolve
    from depthscope.experiments.chapter3 import EffectiveNodes

    real = EffectiveNodes.units
    monkeypatch.setattr(EffectiveNodes, "units", lambda self, p: real(self, p) + real(self, p)[:1])
    with pytest.raises(InputError, match="list the same unit twice"):
        resolve("effective-nodes", "quick")


def test_one_name_rule_for_experiments_sweeps_and_watch_runs():
    """errors.check_name and watch's check_run_name were twins (100 characters with '+', 64 without): one rule
    now. Both accept and refuse the same names with the same words, and a fresh watch run name (run-2, ...)
    made from the longest allowed name still passes it."""
    from depthscope.errors import NAME_MAX, InputError, check_name
    from depthscope.sweep import SweepSpec
    from depthscope.watch.writers import RUN_NAME, check_run_name, fresh_run_name

    for name in NAMES_OK:
        assert check_run_name(name) == check_name(name) == name and RUN_NAME.fullmatch(name)
    for name in NAMES_BAD:
        with pytest.raises(InputError) as a:
            check_run_name(name)
        with pytest.raises(InputError) as b:
            check_name(name, "run name")
        assert str(a.value) == str(b.value) and f"1 to {NAME_MAX} letters" in str(a.value)
    long = "r" * NAME_MAX
    assert fresh_run_name(long, [long]) == "r" * (NAME_MAX - 2) + "-2"
    assert check_run_name(fresh_run_name(long, [long, "r" * (NAME_MAX - 2) + "-2"])) == "r" * (NAME_MAX - 2) + "-3"
    assert SweepSpec.from_dict({"name": "a+b"}).name == "a+b"
    with pytest.raises(InputError, match="sweep name 'x/y' is not allowed"):
        SweepSpec.from_dict({"name": "x/y"})


def test_measure_vni_lives_in_the_library():
    """DESIGN.md's room that grew: measure_vni/load_inputs are library functions (commands only re-export)."""
    import depthscope.commands.core as core
    import depthscope.measure as measure
    from depthscope.nets import NetSpec

    assert core.measure_vni is measure.measure_vni and core.load_inputs is measure.load_inputs
    assert depthscope.measure_vni is measure.measure_vni
    v = measure.measure_vni(NetSpec(depth=3, width=8, activation="linear"), "gaussian", 50, 2, 0.1)
    assert v.shape == (2, 3) and (v > 0).all() and (v <= 1).all()
    with pytest.raises(ValueError, match="samples"):
        measure.measure_vni(NetSpec(depth=3, width=8), "gaussian", 1, 2, 0.1)


DYING_TRAINER = textwrap.dedent("""
    import os, signal

    def die(specs, x, y, probe, device="cpu", on_result=None):
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.slow
def test_four_worker_deaths_end_in_one_line_naming_the_cause_and_the_log(tmp_path):
    """A local sweep whose workers die four times ended in a RuntimeError traceback saying nothing of why."""
    (tmp_path / "dying_trainer.py").write_text(DYING_TRAINER)
    env = {**ENV, "PYTHONPATH": ENV["PYTHONPATH"] + os.pathsep + str(tmp_path)}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "depthscope", "sweep", "--dataset", "synthetic", "--depths", "2",
                           "--widths", "4", "--epochs", "1", "--n-train", "20", "--workers", "1", "--quiet",
                           "--trainer", "dying_trainer:die", "--run-dir", str(run)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "died 4 times (4 x killed by signal 9 (SIGKILL))" in last, last
    assert str(run / "logs" / "workers.log") in last and (run / "logs" / "workers.log").is_file()


def test_vni_size_is_refused_before_the_inputs_are_loaded(monkeypatch, capsys, tmp_path):
    """The CLI refuses the size before it reads any dataset (an empty data dir would be a different error)."""
    from depthscope import memory

    monkeypatch.setattr(memory, "machine_memory", lambda: (8_000_000_000, 16_000_000_000))
    monkeypatch.setenv("DEPTHSCOPE_CACHE", str(tmp_path / "cache"))
    rc, err = run_cli(["vni", "--depth", "2", "--width", "100000", "--inputs", "mnist", "--data-dir", str(tmp_path),
                       "--samples", "100", "--seeds", "1"], capsys)
    assert_one_line(rc, err, "--width 100000 with --samples 100 needs about")


def test_measure_vni_refuses_sizes_that_cannot_fit(monkeypatch):
    from depthscope import memory
    from depthscope.errors import TooBig
    from depthscope.measure import measure_vni
    from depthscope.nets import NetSpec

    monkeypatch.setattr(memory, "machine_memory", lambda: (1_000_000, 2_000_000))
    with pytest.raises(TooBig, match="measuring the VNI at width 300 on 1000 samples needs about"):
        measure_vni(NetSpec(depth=1, width=300), "gaussian", 1000, 1, 0.1)


def test_sweep_ray_backend_without_ray_leaves_the_store_alone(places, capsys, monkeypatch):
    """Without Ray the sweep used to open the store and write its config before the import failed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    before = store_hashes(places["run"])
    rc, err = run_cli(["sweep", "--dataset", "synthetic", "--run-dir", places["run"], "--depths", "2", "--backend",
                       "ray", "--quiet"], capsys)
    assert_one_line(rc, err, "needs Ray")
    assert store_hashes(places["run"]) == before
