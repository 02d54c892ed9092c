"""fig3.4-3.6: tiny runs through the real engine (synthetic data), figures from the store."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from depthscope.experiments import get_experiment, run_experiment
from depthscope.experiments.training_dynamics import heat_mean, mean_rho2, quartile_series
from depthscope.metrics.vni import rho_squared
from depthscope.store import Store

TINY = {"depth": 3, "width": 8, "seeds": 2, "epochs": 2, "dataset": "synthetic", "n_train": 100,
        "batch_size": 50, "group_size": 4, "probe_size": 50, "backend": "inline"}


def test_mean_rho2_brute_force():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xs = x.numpy()
    pairs = [np.corrcoef(xs[:, i], xs[:, j])[0, 1] ** 2 for i in range(5) for j in range(5) if i != j]
    assert mean_rho2(x) == pytest.approx(np.mean(pairs), rel=1e-9)
    assert rho_squared(x).shape == (5, 5)


def test_quartiles_and_heat_mean():
    per_seed = {0: {(2, 0): 0.1, (2, 1): 0.5}, 1: {(2, 0): 0.3, (2, 1): float("nan")}, 2: {(2, 0): 0.2}}
    steps, q = quartile_series(per_seed, 2)
    assert list(steps) == [0, 1] and q[0, 1] == pytest.approx(0.2) and q[1, 1] == pytest.approx(0.5)
    h = heat_mean(per_seed, depth=2, steps=1)
    assert np.isnan(h[0, 0]) and h[1, 0] == pytest.approx(0.2) and h[1, 1] == pytest.approx(0.5)


@pytest.mark.parametrize("name,extra", [("fig3.4", {"lrs": [1e-3, 1e-1]}),
                                        ("fig3.5", {"lrs": [1e-3, 1e-1], "vni_dense_steps": 3})])
def test_engine_runs_to_figures(tmp_path, name, extra):
    exp = get_experiment(name)
    with Store(tmp_path) as store:
        counts = run_experiment(name, store, "quick", overrides={**TINY, **extra}, quiet=True)
        assert counts["ran"] == 4 and counts["total"] == 4
        again = run_experiment(name, store, "quick", overrides={**TINY, **extra}, quiet=True)
        assert again["ran"] == 0 and again["skipped"] == 4
        params = exp.params("quick", {**TINY, **extra})
        figs = exp.figures(store, tmp_path / "f", params)
    assert len(figs) == 1 and all(p.exists() for p in figs[0].paths)
    assert "lr 0.1" in figs[0].verdict


def test_fig36_gaussian_gradients(tmp_path):
    exp = get_experiment("fig3.6")
    over = {"depth": 3, "width": 6, "seeds": 2, "steps": 4, "every": 2, "batch": 64}
    with Store(tmp_path) as store:
        assert run_experiment("fig3.6", store, "quick", overrides=over, quiet=True)["ran"] == 2
        rows = store.rows("fig3.6", "rho2_mean")
        assert {r["step"] for r in rows} == {0, 1, 2, 4} and {r["layer"] for r in rows} == {1, 2, 3}
        figs = exp.figures(store, tmp_path / "f", exp.params("quick", over))
    assert figs[0].name == "fig3.6" and "Mean rho^2" in figs[0].verdict
    with pytest.raises(ValueError, match="reduction must be mean or sum"):
        exp.units(exp.params("quick", {**over, "reduction": "avg"}))


def test_fig36_workers_store_the_serial_values(tmp_path):
    # the pool (base.Experiment.run, workers > 1) against the serial loop: same units, bit-identical values
    over = {"depth": 3, "width": 6, "seeds": 3, "steps": 3, "every": 1, "batch": 32}

    def stored(d, workers):
        with Store(d) as store:
            c = run_experiment("fig3.6", store, "quick", overrides={**over, "workers": workers}, quiet=True)
            rows = store.rows("fig3.6")
        return c, sorted((r["seed"], r["quantity"], r["layer"], r["step"], r["value"]) for r in rows)

    c1, serial = stored(tmp_path / "a", 1)
    c2, pooled = stored(tmp_path / "b", 2)
    assert c1 == c2 == {"total": 3, "skipped": 0, "ran": 3, "failed": 0}
    assert len(serial) == 3 * 3 * 4 * 2 and pooled == serial
    # and each seed's values are that seed's (a unit recorded under another unit's key would pass the above)
    from depthscope.experiments.training_dynamics import gaussian_gradient_run

    for seed in range(3):
        ref = gaussian_gradient_run(3, 6, seed, steps=3, lr=1e-2, batch=32, variance=0.1, every=1, reduction="sum")
        assert sorted((seed, v.quantity, v.layer, v.step, v.value) for v in ref) == \
            [r for r in pooled if r[0] == seed]
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        get_experiment("fig3.6").validate({**over, "workers": 0})


def test_onset_updates_and_vni_course():
    from depthscope.experiments.training_dynamics import onset_updates, vni_course

    # layer 3 (the output side) rises first, layer 2 later, layer 1 never; a NaN start never counts
    m = np.array([[0.1, 0.1, 0.2, 0.25], [0.1, 0.2, 0.35, 0.9], [0.1, 0.5, 0.9, 1.0], [np.nan, 1.0, 1.0, 1.0]])
    assert list(onset_updates(m)) == [4, 2, 1, 4]
    assert list(onset_updates(m, rise=0.05)) == [2, 1, 1, 4]
    assert vni_course(np.array([0.4, 0.8, 0.6, 0.5]))["rise_then_settle"]
    assert not vni_course(np.array([0.4, 0.8, 0.9, 1.0]))["rise_then_settle"]  # no decrease: rises to 1
    assert not vni_course(np.array([0.4, 0.8, 0.5, 0.38]))["rise_then_settle"]  # ends below its start
    assert not vni_course(np.array([0.4, 0.42, 0.41]))["rise_then_settle"]  # never rose by the margin
    c = vni_course(np.array([np.nan, 0.3, 0.9]))
    assert (c["start"], c["peak"], c["final"]) == (0.3, 0.9, 0.9)
