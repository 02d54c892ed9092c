"""A user's own sweep in the report (issue 14 section 4): the study's figures for whatever axes the grid
holds, a CSV with one column per spec field, errors left out; drawn from the store only."""
from __future__ import annotations

import csv
from html import escape as html_escape
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from depthscope.experiments.chapter5 import collect_runs, success_grid
from depthscope.experiments.sweeps import spec_fields, sweep_figures, user_sweeps
from depthscope.report import write_report
from depthscope.store import Store
from depthscope.sweep import SweepSpec, run_sweep

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def _fake_sweep(run_dir: Path, name: str = "mine", **over) -> SweepSpec:
    from sweep_fake import fake_train_group

    grid = dict(name=name, depths=[2, 5, 20], lrs=[0.01, 0.1, 2.0], optimizers=["sgd", "adam"],
                activations=["tanh", "relu"], inits=["gaussian", "orthogonal"], seeds=2, dataset="synthetic",
                n_train=100, probe_size=50)
    grid.update(over)
    s = SweepSpec(**grid)
    with Store(run_dir) as store:
        run_sweep(s, store, backend="inline", trainer=fake_train_group, quiet=True)
    return s


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_draws_a_users_sweep(tmp_path):
    """Was: 'No figure could be drawn ... skipped'. Now every figure of the study, for this grid."""
    s = _fake_sweep(tmp_path)
    # an experiment that is neither a module's nor a sweep stays a skipped orphan
    with Store(tmp_path) as store:
        store.record("other", "k", spec={"a": 1}, seed=0, values=[("x", 1.0)])
    html = write_report(tmp_path, quiet=True).read_text()
    assert "No figure could be drawn" not in html
    assert html_escape("experiment 'other' has stored results but no module defines it (skipped)") in html
    names = {f"mine-success-{o}-w64" for o in s.optimizers} | {"mine-vni", "mine-failures", "mine-sigma"}
    for n in names:
        assert f'data-figure="{n}"' in html, n
        assert (tmp_path / "figures" / f"{n}.png").stat().st_size > 1000
    assert "mine-runs.csv" in html


def test_runs_csv_has_a_column_per_spec_field_and_matches_the_store(tmp_path):
    s = _fake_sweep(tmp_path)
    with Store(tmp_path) as store:
        figs = sweep_figures(store, "mine", tmp_path / "figs")
        units = {u.key: u for u in store.units("mine")}
        success = {r["key"]: r["value"] for r in store.rows("mine", "success")}
    rows = _csv(tmp_path / "figs" / "mine-runs.csv")
    assert len(rows) == s.n_runs() == len(units)
    spec_keys = set(next(iter(units.values())).spec)
    header = set(rows[0])
    assert spec_keys <= header and {"depth", "lr", "optimizer", "activation", "init", "width", "dataset"} <= header
    assert "spec" not in header and "key" not in header  # flat columns, no JSON blob
    by_spec = {(u.spec["optimizer"], u.spec["activation"], u.spec["init"], u.spec["depth"], u.spec["lr"], u.seed): k
               for k, u in units.items()}
    for r in rows:
        k = by_spec[(r["optimizer"], r["activation"], r["init"], int(r["depth"]), float(r["lr"]), int(r["seed"]))]
        assert int(r["success"]) == int(success[k] >= 0.5 and units[k].status == "done")
        assert r["status"] == units[k].status
        assert (r["failure"] == "diverged") == (units[k].status == "failed")
    assert figs[0].paths[-1].name == "mine-runs.csv"


def test_success_figure_numbers_are_the_fraction_of_seeds(tmp_path):
    """The success grid the figure shows, checked against counting the stored runs by hand."""
    _fake_sweep(tmp_path)
    with Store(tmp_path) as store:
        runs = collect_runs(store, "mine")
        succ = {(r["key"]): r["value"] for r in store.rows("mine", "success")}
        units = store.units("mine")
    sub = [r for r in runs if r["optimizer"] == "sgd" and r["activation"] == "tanh" and r["init"] == "gaussian"]
    grid = success_grid(sub, [2, 5, 20], [0.01, 0.1, 2.0])
    for i, d in enumerate([2, 5, 20]):
        for j, lr in enumerate([0.01, 0.1, 2.0]):
            keys = [u.key for u in units if u.spec["depth"] == d and u.spec["lr"] == lr
                    and (u.spec["optimizer"], u.spec["activation"], u.spec["init"]) == ("sgd", "tanh", "gaussian")]
            assert len(keys) == 2
            # fake trainer: success iff lr * depth < 1 and not diverged
            assert grid[i, j] == np.mean([succ[k] for k in keys]) == float(lr * d < 1)


def test_any_axes_one_depth_one_lr_many_widths(tmp_path):
    """A grid that varies only width (one depth, one lr) still gets every figure, one success figure per width."""
    _fake_sweep(tmp_path, name="w", depths=[3], lrs=[0.1], optimizers=["sgd"], activations=["tanh"],
                inits=["gaussian"], widths=[16, 32], seeds=3)
    with Store(tmp_path) as store:
        figs = sweep_figures(store, "w", tmp_path / "figs")
    assert [f.name for f in figs] == ["w-success-sgd-w16", "w-success-sgd-w32", "w-vni", "w-failures", "w-sigma"]
    rows = _csv(tmp_path / "figs" / "w-runs.csv")
    assert sorted({int(r["width"]) for r in rows}) == [16, 32] and len(rows) == 6


def test_errors_are_left_out_of_the_report(tmp_path):
    """Runs stored as errors (crashes) appear in no figure and no CSV row."""
    _fake_sweep(tmp_path, name="c", depths=[2, 3], lrs=[0.01, 0.777], optimizers=["sgd"], activations=["tanh"],
                inits=["gaussian"], seeds=1, group_size=1)
    with Store(tmp_path) as store:
        assert sorted(u.status for u in store.units("c")) == ["done", "done", "error", "error"]
        figs = sweep_figures(store, "c", tmp_path / "figs")
    rows = _csv(tmp_path / "figs" / "c-runs.csv")
    assert len(rows) == 2 and {r["lr"] for r in rows} == {"0.01"}
    fail = next(f for f in figs if f.name == "c-failures")
    assert fail.verdict.startswith("2 of 2 runs reached the target")


def test_only_sweeps_are_adapted(tmp_path):
    _fake_sweep(tmp_path, name="s1", depths=[2], lrs=[0.01], optimizers=["sgd"], activations=["tanh"],
                inits=["gaussian"], seeds=1)
    with Store(tmp_path) as store:
        store.record("plain", "k", spec={"depth": 2}, seed=0, values=[("x", 1.0)])
        found = user_sweeps(store, ["s1", "plain"])
        assert list(found) == ["s1"] and found["s1"].presets["sweep"]["name"] == "s1"
        assert "depth" in spec_fields(collect_runs(store, "s1"))


def test_cli_report_on_a_real_engine_sweep(tmp_path):
    """End to end with the real engine: `depthscope sweep` then `depthscope report` on its directory."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    sweep = [sys.executable, "-m", "depthscope", "sweep", "--dataset", "synthetic", "--n-train", "60",
             "--depths", "1,2", "--widths", "8", "--lrs", "0.05,1e38", "--seeds", "2", "--epochs", "2",
             "--batch-size", "20", "--target-accuracy", "0.5", "--backend", "inline", "--quiet",
             "--run-dir", str(tmp_path)]
    res = subprocess.run(sweep, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "depthscope", "report", str(tmp_path), "--quiet"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    html = (tmp_path / "report.html").read_text()
    assert "No figure could be drawn" not in html
    for n in ("sweep-success-sgd-w8", "sweep-vni", "sweep-failures", "sweep-sigma"):
        assert f'data-figure="{n}"' in html
    rows = _csv(tmp_path / "figures" / "sweep-runs.csv")
    assert len(rows) == 8 and {r["failure"] for r in rows if float(r["lr"]) > 1} == {"diverged"}
    assert all(r["final_accuracy"] != "" for r in rows if float(r["lr"]) < 1)
