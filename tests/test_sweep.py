"""Sweep mechanics: grid spec, grouping, store records, resume after killing a worker or the driver,
backends. The trainer here is tests/sweep_fake.py (deterministic, no torch work); the real engine's
numbers are tested with the engine."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from depthscope.store import Store
from depthscope.sweep import (
    SweepSpec,
    execute,
    expand,
    make_groups,
    parse_range,
    run_sweep,
)

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
FAKE = "sweep_fake:fake_train_group"


def _env(delay: float = 0.0) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE)])
    env["DEPTHSCOPE_FAKE_DELAY"] = str(delay)
    return env


def _sweep_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "depthscope", "sweep", "--dataset", "synthetic", "--n-train", "200",
            "--run-dir", str(run_dir), "--trainer", FAKE, "--quiet", "--json", *extra]


def _finished(run_dir: Path, exp: str = "sweep") -> dict[str, float]:
    with Store(run_dir) as s:
        return {u.key: u.finished for u in s.units(exp)}


# -- the grid spec ------------------------------------------------------------
def test_parse_range_log_uniform_and_lists():
    assert parse_range("1e-4:1e-2:3") == pytest.approx([1e-4, 1e-3, 1e-2])
    depths = parse_range("25:500:11", integer=True)
    assert depths[0] == 25 and depths[-1] == 500 and len(depths) == 11
    assert all(b > a for a, b in zip(depths, depths[1:]))
    assert parse_range("1:2:5", integer=True) == [1, 2]  # rounded, duplicates dropped
    assert parse_range("25,50", integer=True) == [25, 50]
    for bad in ("1e-2:1e-4:3", "0:1:3", "a:b:c", "1:2"):
        with pytest.raises(ValueError):
            parse_range(bad)


def test_spec_rejects_unknown_keys_and_bad_types():
    with pytest.raises(ValueError, match="unknown sweep key 'depth'.*valid keys: .*depths"):
        SweepSpec.from_dict({"depth": [3]})
    with pytest.raises(ValueError, match="depths must hold integers"):
        SweepSpec.from_dict({"depths": [2.5]})
    with pytest.raises(ValueError, match="lrs must be finite numbers > 0"):
        SweepSpec.from_dict({"lrs": [-1e-3]})
    with pytest.raises(ValueError, match="unknown optimizer 'sgdd'.*momentum"):
        SweepSpec.from_dict({"optimizers": "sgdd"})
    with pytest.raises(ValueError, match="unknown init"):
        SweepSpec.from_dict({"inits": ["xavier"]})
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        SweepSpec.from_dict({"epochs": "10"})
    with pytest.raises(ValueError, match="target_accuracy"):
        SweepSpec.from_dict({"target_accuracy": 90})


def test_toml_then_overrides(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[sweep]\nname = "t"\ndepths = "10:40:3"\nlrs = {min = 1e-3, max = 1e-1, count = 3}\n'
                   'optimizers = ["sgd", "adam"]\nseeds = 4\ndataset = "synthetic"\n')
    s = SweepSpec.from_toml(cfg, {"seeds": [7]})
    assert s.name == "t" and s.depths == [10, 20, 40] and s.lrs == pytest.approx([1e-3, 1e-2, 1e-1])
    assert s.optimizers == ["sgd", "adam"] and s.seeds == [7]
    assert s.n_runs() == len(expand(s)) == 3 * 3 * 2
    assert SweepSpec.from_toml(cfg).seeds == [0, 1, 2, 3]
    cfg.write_text('depths = [3]\nbogus = 1\n')
    with pytest.raises(ValueError, match="unknown sweep key 'bogus'"):
        SweepSpec.from_toml(cfg)


def test_groups_share_group_key_and_respect_size():
    s = SweepSpec(depths=[2, 5], lrs=[0.1, 0.2, 0.3], inits=["gaussian", "orthogonal"], seeds=3,
                  dataset="synthetic")
    runs = expand(s)
    groups = make_groups(runs, 4)
    assert sorted(id(r) for g in groups for r in g) == sorted(id(r) for r in runs)  # each run exactly once
    for g in groups:
        assert 1 <= len(g) <= 4 and len({r.group_key() for r in g}) == 1
    assert groups[0][0].depth == 5  # costliest first


# -- recording and resume (in-process backend) ----------------------------------
def test_inline_records_success_divergence_and_crash(tmp_path):
    from sweep_fake import fake_train_group

    s = SweepSpec(depths=[2, 20], lrs=[0.01, 0.2, 2.0], seeds=2, dataset="synthetic", n_train=100,
                  probe_size=50)
    with Store(tmp_path) as store:
        summ = run_sweep(s, store, backend="inline", trainer=fake_train_group, quiet=True)
        assert summ.total == summ.ran == 12 and summ.skipped == 0
        units = {(u.spec["depth"], u.spec["lr"], u.seed): u for u in store.units("sweep")}
        assert len(units) == 12
        # trained to the end without reaching the target: a finished unit with success = 0
        assert units[(20, 0.2, 0)].status == "done"
        succ = {(r["depth"], r["lr"], r["seed"]): r["value"] for r in store.rows("sweep", "success")}
        assert succ[(20, 0.2, 0)] == 0.0 and succ[(2, 0.2, 0)] == 1.0
        # divergence: failed with its reason
        assert units[(2, 2.0, 1)].status == "failed" and "nan" in units[(2, 2.0, 1)].reason
        # failed = did not reach the target (the thesis' meaning), diverged runs included
        assert summ.failed == 6 and summ.diverged == 4 and summ.success == 2 * 2 + 2
        assert units[(2, 0.01, 0)].spec["dataset"] == "synthetic"
        before = {u.key: u.finished for u in store.units("sweep")}
        again = run_sweep(s, store, backend="inline", trainer=fake_train_group, quiet=True)
        assert again.ran == 0 and again.skipped == 12
        assert {u.key: u.finished for u in store.units("sweep")} == before
        assert store.get_meta("sweep:sweep")["lrs"] == [0.01, 0.2, 2.0]
        # a crashing group: every member stored as an error with the exception; the sweep goes on
        crash = SweepSpec(name="crash", depths=[2, 3], lrs=[0.777], seeds=2, dataset="synthetic", n_train=100)
        summ = run_sweep(crash, store, backend="inline", trainer=fake_train_group, quiet=True)
        assert summ.ran == 0 and summ.errors == 4 and summ.failed == 0 and summ.pending == 4
        assert {(u.status, u.reason) for u in store.units("crash")} == {("error", "crash: RuntimeError: boom")}


def test_failed_runs_keep_how_they_failed(tmp_path):
    """The real engine, inline: a run below target is a done unit whose reason starts with its
    failure kind, the same kind chapter 5 recomputes from the stored numbers; a diverged one is failed."""
    from depthscope.experiments.chapter5 import collect_runs

    s = SweepSpec(depths=[2], widths=[8], lrs=[1e-4, 1e38], seeds=1, dataset="synthetic", n_train=60, probe_size=20,
                  epochs=3, batch_size=20, target_accuracy=1.0)
    with Store(tmp_path) as store:
        run_sweep(s, store, backend="inline", quiet=True)
        units = {u.spec["lr"]: u for u in store.units("sweep")}
        runs = {r["lr"]: r for r in collect_runs(store, "sweep")}
    slow = units[1e-4]
    assert slow.status == "done" and slow.reason.startswith(runs[1e-4]["failure"] + ": training accuracy")
    assert runs[1e-4]["failure"] in ("slow", "stuck") and len(runs[1e-4]["acc"]) == 3
    assert units[1e38].status == "failed" and units[1e38].reason.startswith("diverged: non-finite loss")
    assert runs[1e38]["failure"] == "diverged"


def test_duplicate_runs_rejected(tmp_path):
    from sweep_fake import fake_train_group

    s = SweepSpec(depths=[2, 2], dataset="synthetic")
    with Store(tmp_path) as store, pytest.raises(ValueError, match="same run twice"):
        execute(expand(s), store, "x", s.data, backend="inline", trainer=fake_train_group, quiet=True)


# -- a crash is not a result (issue 11 section 6) ---------------------------------
class _CrashFirstCall:
    """fake_train_group that raises MemoryError on its first call (an allocation failure), then trains."""

    def __init__(self):
        self.calls = 0

    def __call__(self, specs, *a, **kw):
        from sweep_fake import fake_train_group

        self.calls += 1
        if self.calls == 1:
            raise MemoryError("CUDA out of memory")
        return fake_train_group(specs, *a, **kw)


def test_crash_is_stored_as_error_kept_out_of_statistics_and_retried(tmp_path):
    from depthscope.experiments.chapter5 import collect_runs
    from sweep_fake import fake_train_group

    s = SweepSpec(depths=[2, 3], lrs=[0.01], seeds=2, dataset="synthetic", n_train=100, probe_size=50)
    trainer = _CrashFirstCall()
    with Store(tmp_path) as store:
        first = run_sweep(s, store, backend="inline", trainer=trainer, quiet=True)
        units = {u.key: u for u in store.units("sweep")}
        errors = [u for u in units.values() if u.status == "error"]
        # the costliest group (depth 3, both seeds) crashed: errors, no measurements, not done
        assert [(u.spec["depth"], u.reason) for u in errors] == [(3, "crash: MemoryError: CUDA out of memory")] * 2
        assert not [r for r in store.rows("sweep") if units[r["key"]].status == "error"]
        assert all(not store.is_done("sweep", u.key) for u in errors)
        # kept out of every statistic: the summary's and chapter 5's
        assert (first.ran, first.success, first.failed, first.errors, first.pending) == (2, 2, 0, 2, 2)
        assert {r["depth"] for r in collect_runs(store, "sweep")} == {2}
        # retried (only they) on the next invocation, and then stored as results
        depth2 = {u.key: u.finished for u in units.values() if u.status == "done"}
        second = run_sweep(s, store, backend="inline", trainer=trainer, quiet=True)
        assert (second.skipped, second.ran, second.errors, second.pending, second.success) == (2, 2, 0, 0, 4)
        after = {u.key: u for u in store.units("sweep")}
        assert {u.status for u in after.values()} == {"done"}
        assert all(after[k].finished == t for k, t in depth2.items())
        assert trainer.calls == 3
        # the same numbers as a run that never crashed
        with Store(tmp_path / "clean") as clean:
            run_sweep(s, clean, backend="inline", trainer=fake_train_group, quiet=True)
            assert _rows(store) == _rows(clean)


def test_crash_in_a_local_worker_is_an_error_not_a_stuck_sweep(tmp_path):
    """The local backend: a group whose trainer raises is stored as errors (the driver does not take
    them for unfinished runs and give up), and the next invocation retries them."""
    s = SweepSpec(depths=[2], lrs=[0.01, 0.777], seeds=1, dataset="synthetic", n_train=100, probe_size=50,
                  group_size=1)
    with Store(tmp_path) as store:
        summ = run_sweep(s, store, backend="local", workers=1, trainer=FAKE, quiet=True)
        assert (summ.ran, summ.errors, summ.pending, summ.restarts) == (1, 1, 1, 0)
        err = [u for u in store.units("sweep") if u.status == "error"]
        t = err[0].finished
        again = run_sweep(s, store, backend="local", workers=1, trainer=FAKE, quiet=True)
        assert (again.skipped, again.ran, again.errors) == (1, 0, 1)
        assert [u.finished > t for u in store.units("sweep") if u.status == "error"] == [True]  # retried


def test_resumed_summary_counts_the_whole_sweep(tmp_path):
    """`sweep --json` on a resumed run: success counts every stored run of the grid (it was 0), split
    into this invocation and before."""
    from sweep_fake import fake_train_group

    small = SweepSpec(depths=[2], lrs=[0.01, 2.0], seeds=2, dataset="synthetic", n_train=100, probe_size=50)
    full = SweepSpec(depths=[2, 20], lrs=[0.01, 2.0], seeds=2, dataset="synthetic", n_train=100, probe_size=50)
    with Store(tmp_path) as store:
        run_sweep(small, store, backend="inline", trainer=fake_train_group, quiet=True)
        again = run_sweep(small, store, backend="inline", trainer=fake_train_group, quiet=True)
        assert (again.ran, again.skipped, again.success, again.failed, again.diverged) == (0, 4, 2, 2, 2)
        assert again.before == {"runs": 4, "success": 2, "failed": 2, "diverged": 2}
        assert again.this_invocation == {"runs": 0, "success": 0, "failed": 0, "diverged": 0}
        grown = run_sweep(full, store, backend="inline", trainer=fake_train_group, quiet=True)
        # depth 20: lr 0.01 x 20 < 1 succeeds, lr 2.0 diverges
        assert (grown.total, grown.ran, grown.skipped, grown.success, grown.failed) == (8, 4, 4, 4, 4)
        assert grown.this_invocation == {"runs": 4, "success": 2, "failed": 2, "diverged": 2}
        assert grown.before == again.before


def test_cli_resumed_json_reports_the_whole_sweep(tmp_path):
    grid = ["--depths", "2", "--lrs", "0.01,2.0", "--seeds", "2", "--workers", "1"]
    docs = []
    for _ in range(2):
        res = subprocess.run(_sweep_cmd(tmp_path, *grid), env=_env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        docs.append(json.loads(res.stdout))
    assert docs[0]["success"] == docs[1]["success"] == 2 and docs[1]["ran"] == 0 and docs[1]["skipped"] == 4
    assert docs[1]["before"]["success"] == 2 and docs[1]["this_invocation"]["runs"] == 0


def _interrupt_after(n: int):
    """fake_train_group that raises KeyboardInterrupt (Ctrl-C: not caught as a crash) after n runs."""
    from sweep_fake import fake_train_group

    state = {"runs": 0}

    def on_result_wrapper(specs, x, y, probe, device="cpu", on_result=None):
        def counted(res):
            if state["runs"] >= n:
                raise KeyboardInterrupt
            state["runs"] += 1
            on_result(res)
        return fake_train_group(specs, x, y, probe, device=device, on_result=counted)

    return on_result_wrapper


def test_force_checks_first_then_replaces_each_run_as_its_new_result_lands(tmp_path):
    from sweep_fake import fake_train_group

    s = SweepSpec(depths=[2, 3], lrs=[0.01, 0.02], seeds=1, dataset="synthetic", n_train=100, probe_size=50,
                  group_size=1)
    with Store(tmp_path) as store:
        run_sweep(s, store, backend="inline", trainer=fake_train_group, quiet=True)
        want = _rows(store)
        old = {u.key: u.finished for u in store.units("sweep")}
        # bad input under --force deletes nothing and writes nothing
        for kwargs, err in (({"trainer": "nope:nothing"}, "cannot load trainer"),
                            ({"device": "tpu"}, "device must be"),
                            ({"backend": "slurm"}, "unknown backend")):
            with pytest.raises(ValueError, match=err):
                run_sweep(s, store, **{"backend": "inline", "trainer": fake_train_group, **kwargs}, force=True,
                          quiet=True)
        mnist = SweepSpec(**{**s.to_dict(), "dataset": "mnist"})
        with pytest.raises(Exception, match="(?i)mnist|idx|no such|not found"):
            execute(expand(mnist), store, "sweep", mnist.data, backend="inline", trainer=fake_train_group,
                    data_dir=str(tmp_path / "empty"), force=True, quiet=True)
        assert {u.key: u.finished for u in store.units("sweep")} == old and _rows(store) == want
        assert not store.redo_pending("sweep") and store.get_meta("force:sweep") is None
        # a forced rerun interrupted after 2 runs: the others keep their old results
        with pytest.raises(KeyboardInterrupt):
            run_sweep(s, store, backend="inline", trainer=_interrupt_after(2), force=True, quiet=True)
        mid = {u.key: u.finished for u in store.units("sweep")}
        replaced = {k for k in old if mid[k] != old[k]}
        assert len(mid) == 4 and len(replaced) == 2 and _rows(store) == want
        # resuming (without --force) finishes the forced rerun: only the 2 old runs are retrained
        summ = run_sweep(s, store, backend="inline", trainer=fake_train_group, quiet=True)
        assert (summ.skipped, summ.ran, summ.forced) == (2, 2, True)
        end = {u.key: u.finished for u in store.units("sweep")}
        assert all(end[k] == mid[k] for k in replaced) and all(end[k] != old[k] for k in old)
        assert not store.redo_pending("sweep") and _rows(store) == want
        assert store.get_meta("force:sweep") is None  # one force mechanism: the store's generations, no meta mark
        # done: a plain rerun skips everything again; a new --force retrains all
        assert run_sweep(s, store, backend="inline", trainer=fake_train_group, quiet=True).skipped == 4
        again = run_sweep(s, store, backend="inline", trainer=fake_train_group, force=True, quiet=True)
        assert (again.ran, again.skipped) == (4, 0)


def test_force_again_after_an_interrupted_force_resumes_it(tmp_path):
    """A second --force while a forced rerun is under way resumes it (the runs it already redid are not
    retrained again), as the help says; the store's generation is raised once."""
    from sweep_fake import fake_train_group

    s = SweepSpec(depths=[2, 3], lrs=[0.01, 0.02], seeds=1, dataset="synthetic", n_train=100, probe_size=50,
                  group_size=1)
    with Store(tmp_path) as store:
        run_sweep(s, store, backend="inline", trainer=fake_train_group, quiet=True)
        with pytest.raises(KeyboardInterrupt):
            run_sweep(s, store, backend="inline", trainer=_interrupt_after(1), force=True, quiet=True)
        gen = store._conn.execute("SELECT generation FROM experiments WHERE name='sweep'").fetchone()[0]
        again = run_sweep(s, store, backend="inline", trainer=fake_train_group, force=True, quiet=True)
        assert (again.ran, again.skipped, again.forced) == (3, 1, True)
        assert store._conn.execute("SELECT generation FROM experiments WHERE name='sweep'").fetchone()[0] == gen
        assert not store.redo_pending("sweep") and len(store.done_keys("sweep")) == 4


def test_cli_force(tmp_path):
    grid = ["--depths", "2", "--lrs", "0.01", "--seeds", "2", "--workers", "1"]
    res = subprocess.run(_sweep_cmd(tmp_path, *grid), env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    old = _finished(tmp_path)
    bad = subprocess.run(_sweep_cmd(tmp_path, *grid, "--force", "--trainer", "nope:x"), env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot load trainer" in bad.stderr and "Traceback" not in bad.stderr
    assert _finished(tmp_path) == old
    res = subprocess.run(_sweep_cmd(tmp_path, *grid, "--force"), env=_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["ran"] == 2 and doc["skipped"] == 0 and doc["forced"]
    new = _finished(tmp_path)
    assert new.keys() == old.keys() and all(new[k] > old[k] for k in old)


# -- kills ---------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmd = (d / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid and b"spawn_main" in cmd:
                out.append(int(d.name))
    return out


def _wait_units(run_dir: Path, n: int, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    """Wait on the store's state (n units), however slow the machine; the timeout only bounds a hang."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if (run_dir / "results.sqlite").exists() and len(_finished(run_dir)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended early: {proc.stderr.read()}")
        time.sleep(0.1)
    raise AssertionError("sweep made no progress")


GRID = ["--depths", "2,3", "--lrs", "0.01,0.02,0.03", "--seeds", "4", "--group-size", "3", "--workers", "2"]
N_GRID = 2 * 3 * 4


def _alive_workers(pids: list[int]) -> list[int]:
    out = []
    for w in pids:
        try:
            if b"spawn_main" in Path(f"/proc/{w}/cmdline").read_bytes():
                out.append(w)
        except OSError:
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find worker processes")
def test_kill_a_worker_then_the_driver_then_resume(tmp_path):
    """Killing a worker: the driver restarts the pool and finishes. Killing the driver (SIGKILL): its
    workers stop by themselves, and rerunning the command finishes the rest. Nothing finished is lost
    or redone (its `finished` timestamp never changes), and the result equals an uninterrupted run."""
    from sweep_fake import fake_train_group

    run_dir = tmp_path / "killed"
    # 0.5 s per run: after the second wait at least 20 runs (5 s of two workers' time) remain to kill into
    proc = subprocess.Popen(_sweep_cmd(run_dir, *GRID), env=_env(0.5), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_units(run_dir, 2, proc)
        workers = _children(proc.pid)
        assert workers, "no worker processes found"
        before_worker_kill = _finished(run_dir)
        os.kill(workers[0], signal.SIGKILL)
        # the pool is restarted: wait for new workers to make progress, then kill the driver
        _wait_units(run_dir, len(before_worker_kill) + 2, proc)
        assert proc.poll() is None
        new_workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    t0 = time.time()
    while _alive_workers(new_workers) and time.time() - t0 < 10:
        time.sleep(0.1)
    assert not _alive_workers(new_workers), "workers outlived their driver"
    before = _finished(run_dir)
    assert len(before_worker_kill) + 2 <= len(before) < N_GRID
    assert all(before[k] == t for k, t in before_worker_kill.items())
    res = subprocess.run(_sweep_cmd(run_dir, *GRID), env=_env(0.0), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["skipped"] == len(before) and doc["ran"] == N_GRID - len(before) and doc["restarts"] == 0
    after = _finished(run_dir)
    assert len(after) == N_GRID and all(after[k] == t for k, t in before.items())
    # the same units and values as one uninterrupted in-process run
    s = SweepSpec(depths=[2, 3], lrs=[0.01, 0.02, 0.03], seeds=4, dataset="synthetic", n_train=200,
                  group_size=3)
    with Store(tmp_path / "clean") as clean, Store(run_dir) as killed:
        run_sweep(s, clean, backend="inline", trainer=fake_train_group, quiet=True)
        want = sorted((r["key"], r["quantity"], r["layer"], r["value"]) for r in clean.rows("sweep"))
        got = sorted((r["key"], r["quantity"], r["layer"], r["value"]) for r in killed.rows("sweep"))
        assert got == want
        assert [u.status for u in killed.units("sweep")] == ["done"] * N_GRID


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find worker processes")
def test_kill_a_forced_sweep_midway_loses_nothing_old(tmp_path):
    """`sweep --force` uses the store's one force mechanism (generations, as `reproduce --force`). Killed
    (SIGKILL) midway, held deterministically at a gate: every old run is still stored with all its rows, the
    two redone ones replaced in place, the runs of another grid under the same name untouched; resuming
    without --force finishes the forced rerun, and only then do the old runs count as done again."""
    run_dir = tmp_path / "run"
    grid = ["--depths", "2,3", "--lrs", "0.01,0.02", "--seeds", "2", "--group-size", "2", "--workers", "2"]
    other = ["--depths", "4", "--lrs", "0.01", "--seeds", "2", "--workers", "1"]  # another grid, same name
    for g in (other, grid):
        res = subprocess.run(_sweep_cmd(run_dir, *g), env=_env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    old = _finished(run_dir)
    with Store(run_dir) as st:
        want = _rows(st)
        other_keys = {u.key for u in st.units("sweep") if u.spec["depth"] == 4}
    assert len(old) == 10 and len(other_keys) == 2
    gate = tmp_path / "gate"
    env = {**_env(), "DEPTHSCOPE_FAKE_GATE": str(gate)}  # each group stores its first run, then waits
    proc = subprocess.Popen(_sweep_cmd(run_dir, *grid, "--force"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while sum(t != old[k] for k, t in _finished(run_dir).items()) < 2:  # 2 workers: 2 groups held at the gate
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() - t0 < 600, "the forced sweep made no progress"
            time.sleep(0.1)
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    t0 = time.time()
    while _alive_workers(workers) and time.time() - t0 < 30:
        time.sleep(0.1)
    assert not _alive_workers(workers), "workers outlived their driver"
    mid = _finished(run_dir)
    redone = {k for k in old if mid[k] != old[k]}
    assert mid.keys() == old.keys() and len(redone) == 2 and not redone & other_keys
    with Store(run_dir) as st:
        assert _rows(st) == want and st.check().ok  # every old run whole, beside the two new ones
        assert st.redo_pending("sweep") and st.done_keys("sweep") == redone
        assert st.get_meta("force:sweep") is None  # no second force mechanism
    res = subprocess.run(_sweep_cmd(run_dir, *grid), env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert (doc["ran"], doc["skipped"], doc["forced"]) == (6, 2, True)
    end = _finished(run_dir)
    assert end.keys() == old.keys()
    assert all(end[k] == mid[k] for k in redone) and all(end[k] != old[k] for k in set(old) - other_keys)
    assert all(end[k] == old[k] for k in other_keys)  # the other grid was never retrained
    with Store(run_dir) as st:
        assert _rows(st) == want and st.check().ok and not st.check().notes
        assert not st.redo_pending("sweep") and st.done_keys("sweep") == set(old)


# -- CLI and backends ------------------------------------------------------------
def test_cli_errors_and_dry_run(tmp_path):
    from depthscope.cli import main

    cfg = tmp_path / "bad.toml"
    cfg.write_text("depths = [3]\nwidth = 4\n")
    assert main(["sweep", str(cfg), "--run-dir", str(tmp_path)]) == 2
    assert main(["sweep", "--lrs", "1e-2:1e-4:3", "--run-dir", str(tmp_path)]) == 2
    assert main(["sweep", "--backend", "inline", "--device", "tpu", "--run-dir", str(tmp_path)]) == 2


def test_cli_dry_run_json(capsys):
    from depthscope.cli import main

    assert main(["sweep", "--depths", "25:500:11", "--lrs", "1e-4:1e-2:9", "--seeds", "20", "--optimizers",
                 "sgd", "--activations", "tanh,relu", "--inits", "gaussian,orthogonal", "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"] == 11 * 9 * 20 * 4  # the thesis' 1980 runs per (activation, init), 4 of them


def _rows(store: Store, exp: str = "sweep") -> list[tuple]:
    """Every stored number of an experiment, ignoring wall-clock quantities (seconds)."""
    return sorted((r["key"], r["quantity"], r["layer"], r["step"], r["value"]) for r in store.rows(exp)
                  if r["quantity"] != "seconds")


def test_ray_backend_on_local_ray(tmp_path, monkeypatch):
    """Each group a Ray task on a local Ray (2 CPUs, loopback only, no dashboard, no usage report):
    the fake trainer and the real engine store exactly what the local backend stores, failures
    included, and a second run resumes (skips everything)."""
    ray = pytest.importorskip("ray", reason="the ray backend needs Ray (pip install -e '.[test]' installs it)")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), str(HERE)]))  # Ray workers import the fake
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no usage report over the network
    fake = SweepSpec(depths=[2, 3], lrs=[0.01, 2.0], seeds=2, dataset="synthetic", n_train=100, probe_size=50,
                     group_size=2)
    # the real engine: two shapes; lr 1e38 overflows float32 (divergence), lr 0.05 trains 2 epochs
    real = SweepSpec(name="real", depths=[1, 2], widths=[8], lrs=[0.05, 1e38], seeds=2, dataset="synthetic",
                     n_train=60, probe_size=20, epochs=2, batch_size=20, target_accuracy=1.0, group_size=4,
                     vni_dense_steps=1)
    with Store(tmp_path / "local") as local:
        run_sweep(fake, local, backend="local", workers=2, trainer=FAKE, quiet=True)
        run_sweep(real, local, backend="local", workers=2, quiet=True)
        want_fake, want_real = _rows(local), _rows(local, "real")
        want_status = sorted((u.key, u.status, u.reason) for u in local.units("real"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")  # "local": a new instance, never another process's cluster
    try:
        with Store(tmp_path / "ray") as store:
            summ = run_sweep(fake, store, backend="ray", trainer=FAKE, quiet=True)
            assert summ.ran == 8 and summ.failed == 4
            assert len(store.units("sweep")) == 8
            again = run_sweep(fake, store, backend="ray", trainer=FAKE, quiet=True)
            assert again.skipped == 8 and again.ran == 0
            summ = run_sweep(real, store, backend="ray", quiet=True)
            # target 100%: no run reaches it; lr 1e38 diverges (recorded as status failed)
            assert summ.ran == 8 and summ.failed == 8 and summ.diverged == 4
            assert _rows(store) == want_fake
            assert _rows(store, "real") == want_real
            assert sorted((u.key, u.status, u.reason) for u in store.units("real")) == want_status
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


def test_ray_cluster_of_three_nodes_loses_a_node_mid_sweep(tmp_path, monkeypatch):
    """A simulated multi-node Ray cluster on loopback (a head without CPUs, where the driver and the
    sink live, and two one-CPU worker nodes). Every group trains its first run and then waits at a
    gate, so while no task can have returned the store must already hold one run per worker node
    (results stream as runs finish). Then a worker node is removed mid-task: its task is retried on
    the other node, skips the run already delivered, and the sweep ends with every run stored once,
    none trained twice, the same numbers as an uninterrupted run."""
    import collections
    import threading

    ray = pytest.importorskip("ray", reason="the ray backend needs Ray (pip install -e '.[test]' installs it)")
    from ray.cluster_utils import Cluster
    from sweep_fake import fake_train_group

    gate, log = tmp_path / "gate", tmp_path / "trained.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), str(HERE)]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # loopback only (nodes and driver agree on 127.0.0.1), and a private temp dir: the cluster's address
    # file never points another process's ray.init() at this cluster
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    ray_tmp = tempfile.mkdtemp(prefix="dsray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("DEPTHSCOPE_FAKE_GATE", str(gate))
    monkeypatch.setenv("DEPTHSCOPE_FAKE_LOG", str(log))
    s = SweepSpec(depths=[2, 3], lrs=[0.01, 0.02, 2.0], seeds=2, dataset="synthetic", n_train=100, probe_size=50,
                  group_size=3)  # 12 runs in 4 groups of 3
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    # the workers declare a (pretend) GPU each, the head none: device "auto" must follow the cluster
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    out: dict = {}
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, _node_ip_address="127.0.0.1")

        def drive() -> None:
            try:
                with Store(tmp_path / "ray") as store:
                    out["summary"] = run_sweep(s, store, backend="ray", trainer=FAKE, quiet=True)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                out["error"] = e

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        t0 = time.time()
        while len(_finished(tmp_path / "ray") if (tmp_path / "ray" / "results.sqlite").exists() else {}) < 2:
            assert driver.is_alive(), out
            assert time.time() - t0 < 300, "no run reached the store while its task was running"
            time.sleep(0.1)
        # both tasks are held at the gate: these two results came while their tasks ran
        assert len(_finished(tmp_path / "ray")) == 2
        cluster.remove_node(nodes[1], allow_graceful=False)  # a node lost mid-task
        gate.touch()
        driver.join(timeout=300)
        assert not driver.is_alive() and "error" not in out, out
    finally:
        gate.touch()
        ray.shutdown()
        cluster.shutdown()  # removes this cluster's own nodes (never `ray stop`)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    summ = out["summary"]
    assert (summ.total, summ.ran, summ.pending, summ.errors) == (12, 12, 0, 0)
    assert summ.device == "cuda"  # from the cluster's resources, though this driver has no GPU
    trained = collections.Counter(log.read_text().splitlines())
    assert max(trained.values()) == 1, trained  # repeats nothing: no run trained twice
    with Store(tmp_path / "ray") as got, Store(tmp_path / "clean") as clean:
        run_sweep(s, clean, backend="inline", trainer=fake_train_group, quiet=True)
        assert len(got.units("sweep")) == 12 and _rows(got) == _rows(clean)  # loses nothing


def test_example_ray_cluster_yaml_is_valid():
    """examples/ray-cluster.yaml (docs/cluster.md) passes Ray's own cluster-config schema, as `ray up` checks it."""
    pytest.importorskip("ray", reason="needs Ray")
    yaml = pytest.importorskip("yaml", reason="Ray's cluster launcher needs PyYAML")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((HERE.parent / "examples" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] == "g5.xlarge"
    assert any("--num-cpus=0" in c for c in config["head_start_ray_commands"])  # the head trains nothing


def test_ray_device_is_checked_by_name_not_by_the_drivers_gpu(monkeypatch):
    """A Ray head without a GPU drives GPU workers: `--backend ray --device cuda` must not be refused
    because the driver's torch sees no CUDA; cuda:N is refused (Ray assigns each task its GPU)."""
    import torch

    from depthscope.sweep import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("cuda", "ray") == "cuda" and check_device("auto", "ray") == "auto"
    with pytest.raises(ValueError, match="torch sees no CUDA"):
        check_device("cuda", "local")
    with pytest.raises(ValueError, match="with the ray backend the device must be auto, cpu or cuda"):
        check_device("cuda:1", "ray")


def test_resolve_device_checks_names_and_cuda_indices(monkeypatch):
    import torch

    from depthscope.sweep import resolve_device

    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        resolve_device("gpu")
    # a machine with two GPUs, as torch would report it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    for bad in ("cuda:2", "cuda:x", "cuda:-1"):
        with pytest.raises(ValueError, match=rf"--device {bad}: torch sees 2 CUDA device\(s\), cuda:0..cuda:1"):
            resolve_device(bad)
