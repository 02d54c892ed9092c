"""The early-stop policy (depthscope.earlystop): its rule against a brute-force window, the engine's batched
fast path against one run at a time, the marks in the store, the replay, and the CLI's validation."""
from __future__ import annotations

import math
import random

import pytest
import torch

from depthscope.earlystop import (
    STOP_QUANTITY,
    EarlyStop,
    Trajectory,
    parse_early_stop,
    policy_grid,
    recommend,
    replay,
    stop_epoch,
    trajectories,
)
from depthscope.store import Store, unit_key
from depthscope.sweep import DataSpec, SweepSpec, execute, expand, run_sweep, stored_spec, synthetic_dataset
from depthscope.train import RunSpec, train_group, train_reference

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the rule ---------------------------------------------------------------------------------------------
def brute_stop_epoch(vni, acc, target, pol: EarlyStop, max_epochs):
    """The rule read literally: the first epoch t < max_epochs, before the first epoch that reached the target,
    whose window of the last pol.epochs epochs (all of them completed) has every VNI > pol.vni."""
    first_success = next((e for e, a in enumerate(acc, 1) if a >= target), math.inf)
    for t in range(1, len(vni) + 1):
        if t >= first_success or t >= max_epochs:
            return None
        window = vni[t - pol.epochs:t] if t >= pol.epochs else None
        if window is not None and all(v > pol.vni for v in window):
            return t
    return None


def test_stop_epoch_equals_the_brute_force_window_rule():
    rng = random.Random(7)
    hits = {"stopped": 0, "none": 0, "success_first": 0}
    for _ in range(3000):
        n = rng.randint(0, 12)
        max_epochs = rng.choice([n, n + 1, n + 5]) or 1
        # values near the thresholds, NaN (undefined VNI) and exact ties with the threshold
        vni = [rng.choice([0.5, 0.95, 0.99, 0.995, 1.0, float("nan"), rng.random()]) for _ in range(n)]
        acc = [rng.choice([0.1, 0.5, 0.89, 0.9, 0.95]) if rng.random() < 0.15 else rng.random() * 0.8
               for _ in range(n)]
        pol = EarlyStop(rng.choice([0.9, 0.99]), rng.randint(1, 4))
        got = stop_epoch(vni, acc, 0.9, pol, max_epochs)
        want = brute_stop_epoch(vni, acc, 0.9, pol, max_epochs)
        assert got == want, (vni, acc, pol, max_epochs)
        hits["stopped" if got else "none"] += 1
        hits["success_first"] += got is None and any(a >= 0.9 for a in acc)
    assert min(hits.values()) > 100  # every branch was exercised


def test_stop_epoch_worked_cases():
    pol = EarlyStop(0.99, 3)
    assert stop_epoch([0.995] * 3, [0.1] * 3, 0.9, pol, 10) == 3
    assert stop_epoch([0.995, 0.99, 0.995, 0.995, 0.995], [0.1] * 5, 0.9, pol, 10) == 5  # 0.99 is not > 0.99
    assert stop_epoch([0.995, float("nan"), 0.995, 0.995], [0.1] * 4, 0.9, pol, 10) is None  # NaN ends a streak
    assert stop_epoch([0.995] * 3, [0.1, 0.1, 0.95], 0.9, pol, 10) is None  # success first
    assert stop_epoch([0.995] * 3, [0.1] * 3, 0.9, pol, 3) is None  # the last epoch: nothing saved


@pytest.mark.parametrize("text, want", [("0.99:5", EarlyStop(0.99, 5)), (" 0.9:1 ", EarlyStop(0.9, 1)),
                                        ("off", None), (None, None), ({"vni": 0.999, "epochs": 2},
                                                                      EarlyStop(0.999, 2))])
def test_parse_early_stop(text, want):
    assert parse_early_stop(text) == want


@pytest.mark.parametrize("bad, msg", [("1.5:5", "in \\(0, 1\\)"), ("0:5", "in \\(0, 1\\)"), ("0.99:0", ">= 1"),
                                      ("0.99", "VNI:EPOCHS"), ("abc:3", "not a number"), ("0.9:2.5", "not an int"),
                                      ("nan:3", "VNI:EPOCHS"), (5, "VNI:EPOCHS"), ({"vni": 0.9}, "exactly")])
def test_parse_early_stop_refuses_bad_values_in_one_line(bad, msg):
    with pytest.raises(ValueError, match=msg) as e:
        parse_early_stop(bad)
    assert "\n" not in str(e.value)


# -- the engine ---------------------------------------------------------------------------------------------
def _blobs(n=200, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long() + 4 * (x[:, 2] > 0).long()
    return x - x.mean(0), y


def _out_vni(res) -> list[float]:
    """Output VNI after each completed epoch, from a result's trace (epoch e ends at step e x steps per epoch)."""
    L = res.spec.depth
    spe = res.steps // len(res.train_accuracy) if res.train_accuracy else 1
    at = {s: v for s, l, v in res.vni_trace if l == L}
    return [at[e * spe] for e in range(1, len(res.train_accuracy) + 1)]


def _same(fast, slow, tol=1e-5):
    assert fast.spec == slow.spec
    assert (fast.steps, fast.success, fast.epoch_of_success, fast.diverged, fast.early_stop_epoch, fast.reason) == \
        (slow.steps, slow.success, slow.epoch_of_success, slow.diverged, slow.early_stop_epoch, slow.reason)
    assert fast.train_accuracy == pytest.approx(slow.train_accuracy, abs=1e-12)
    assert fast.train_loss == pytest.approx(slow.train_loss, abs=tol, rel=tol)
    assert [t[:2] for t in fast.vni_trace] == [t[:2] for t in slow.vni_trace]
    assert [t[2] for t in fast.vni_trace] == pytest.approx([t[2] for t in slow.vni_trace], rel=1e-4, nan_ok=True)
    assert fast.vni_final == pytest.approx(slow.vni_final, rel=1e-4, nan_ok=True)


#: (lr, seed) of tanh nets on the blobs, 10 epochs, target 0.6 (their full-budget output VNI, measured): 0.02
#: learns slowly and runs out of epochs; 0.5 succeeds at epoch 4; 2.0/1 succeeds at epoch 9 after its VNI rose
#: to 0.77; 3.0/1, 3.0/0 and 4.0/0 pass 0.95 for 2 epochs in a row after epochs 3, 4 and 6 (3.0/1 then falls
#: back to 0.4); 6.0/1 never passes 0.6. vni_dense_steps 5 puts epoch 1's end inside the dense trace.
MIX = [(0.02, 0), (3.0, 1), (0.5, 0), (4.0, 0), (2.0, 1), (3.0, 0), (6.0, 1)]


def _specs(policy: EarlyStop | None, max_epochs=10, dense=5):
    stop = policy.spec_fields() if policy else {}
    return [RunSpec(6, 16, "tanh", "gaussian", "sgd", lr, seed, batch_size=50, max_epochs=max_epochs,
                    target_accuracy=0.6, vni_dense_steps=dense, **stop) for lr, seed in MIX]


def test_batched_engine_with_early_stops_equals_one_run_at_a_time():
    """Members of one ensemble stop at different epochs (others succeed or run out of epochs): each result
    equals the same run trained alone (bit for bit: stacking does not change a member's arithmetic). The
    torch.optim reference is not compared here: at these learning rates training is chaotic and its
    different summation order moves the trajectories apart within a few epochs (test_train_engine.py
    compares the two at stable rates; the next test checks the reference's own stops)."""
    x, y = _blobs()
    probe = x[:50]
    specs = _specs(EarlyStop(0.95, 2))
    fast = train_group(specs, x, y, probe, trace_steps=True)
    stops = [r.early_stop_epoch for r in fast]
    assert len({s for s in stops if s is not None}) >= 2, stops  # members leave the stack at different epochs
    assert any(r.success for r in fast) and any(s is None and not r.success for s, r in zip(stops, fast))
    for f, s in zip(fast, specs):
        _same(f, train_group([s], x, y, probe, trace_steps=True)[0], tol=0.0)


def test_engine_stops_where_the_rule_says_on_the_full_budget_trajectory():
    """The full-budget run (policy off) gives the trajectory; the run with the policy stops exactly at
    stop_epoch of that trajectory, after identical epochs, and carries the mark and the reason: for the
    engine and for the one-net reference trainer, each against its own full-budget runs."""
    x, y = _blobs()
    probe = x[:50]
    engine = lambda specs: train_group(specs, x, y, probe)  # noqa: E731
    reference = lambda specs: [train_reference(s, x, y, probe) for s in specs]  # noqa: E731
    # streaks that break must restart: 0.9:2 on the engine's 4.0/0 (VNI 0.84, 0.43, 0.93, 0.53, 1.0, 1.0, ...),
    # 0.6:2 on the reference's 3.0/0 (0.70, 0.47, 0.99, 0.95, ...)
    for trainer, pol in ((engine, EarlyStop(0.95, 1)), (engine, EarlyStop(0.95, 2)), (engine, EarlyStop(0.99, 3)),
                         (engine, EarlyStop(0.5, 1)), (engine, EarlyStop(0.9, 2)), (reference, EarlyStop(0.9, 2)),
                         (reference, EarlyStop(0.9, 1)), (reference, EarlyStop(0.6, 2))):
        full = trainer(_specs(None))
        stopped = trainer(_specs(pol))
        n_stopped = 0
        for f, s in zip(full, stopped):
            t = stop_epoch(_out_vni(f), f.train_accuracy, 0.6, pol, 10)
            assert s.early_stop_epoch == t
            if t is None:
                assert (s.steps, s.success, s.train_accuracy) == (f.steps, f.success, f.train_accuracy)
                continue
            n_stopped += 1
            assert not s.success and not s.diverged and s.steps == t * 4
            assert s.train_accuracy == f.train_accuracy[:t]
            assert s.reason.startswith(f"early stop after epoch {t} of 10: {pol.text()}")
        assert n_stopped >= 1


@pytest.mark.parametrize("trainer", ["engine", "reference"])
def test_no_stop_after_the_last_epoch(trainer):
    """3.0/0 passes 0.85 after epochs 3, 4 and 5 with either trainer (measured): with a 5-epoch budget it ends as
    a plain budget failure without the mark (stopping there saves nothing); with 6 epochs it stops after 5."""
    x, y = _blobs()
    pol = EarlyStop(0.85, 3)
    spec = _specs(pol, max_epochs=5)[5]
    assert spec.lr == 3.0 and spec.seed == 0
    seen = []  # what the engine reports as each run finishes (the sweep stores the first report)

    def train(s):
        if trainer == "reference":
            return train_reference(s, x, y, x[:50])
        seen.clear()
        out = train_group([s], x, y, x[:50], on_result=seen.append)[0]
        assert seen == [out]  # reported once, as returned
        return out

    last = train(spec)
    assert last.early_stop_epoch is None and last.steps == 20 and last.reason.endswith("after 5 epochs")
    assert all(v.quantity != STOP_QUANTITY for v in last.to_values())
    longer = train(_specs(pol, max_epochs=6)[5])
    assert longer.early_stop_epoch == 5 and longer.steps == 20
    assert any(v.quantity == STOP_QUANTITY and v.value == 5 for v in longer.to_values())


def test_policy_off_changes_nothing():
    """Without the policy the results are those of a spec that never heard of it (and no mark is written)."""
    x, y = _blobs()
    off = train_group(_specs(None), x, y, x[:50])
    never = train_group(_specs(EarlyStop(0.999999, 10)), x, y, x[:50])  # a policy that cannot fire in 10 epochs
    for a, b in zip(off, never):
        assert (a.steps, a.train_accuracy, a.early_stop_epoch) == (b.steps, b.train_accuracy, None)
        assert all(v.quantity != STOP_QUANTITY for v in a.to_values())


# -- the store -------------------------------------------------------------------------------------------
def test_policy_off_keeps_the_store_key_the_policy_changes_it():
    data = DataSpec("synthetic", "any", 100, 50)
    plain = RunSpec(4, 8, "tanh", "gaussian", "sgd", 0.1, 3)
    d, seed = stored_spec(plain, data)
    assert "early_stop_vni" not in d and "early_stop_epochs" not in d
    old = {"depth": 4, "width": 8, "activation": "tanh", "init": "gaussian", "optimizer": "sgd", "lr": 0.1,
           "batch_size": 100, "max_epochs": 100, "target_accuracy": 0.9, "sigma_w2": None, "vni_dense_steps": 10,
           "classes": 10, "dataset": "synthetic", "split": "any", "n_train": 100, "probe_size": 50}
    assert unit_key(d, seed) == unit_key(old, 3)  # the key a store written before the policy existed holds
    on = RunSpec(4, 8, "tanh", "gaussian", "sgd", 0.1, 3, early_stop_vni=0.99, early_stop_epochs=5)
    d2, _ = stored_spec(on, data)
    assert d2["early_stop_vni"] == 0.99 and d2["early_stop_epochs"] == 5
    assert unit_key(d2, seed) != unit_key(d, seed)
    with pytest.raises(ValueError, match="set together"):
        RunSpec(4, 8, "tanh", "gaussian", "sgd", 0.1, 3, early_stop_vni=0.99)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        RunSpec(4, 8, "tanh", "gaussian", "sgd", 0.1, 3, early_stop_vni=1.0, early_stop_epochs=2)


#: on the synthetic data (measured): lr 0.5 succeeds; 4.0 (both seeds) and 8.0/1 pass 0.95 for 2 epochs after
#: epochs 3-4; 2.0 and 8.0/0 fail without doing so
SWEEP = dict(name="es", depths=[6], widths=[16], lrs=[0.5, 2.0, 4.0, 8.0], optimizers=["sgd"], activations=["tanh"],
             inits=["gaussian"], seeds=2, dataset="synthetic", n_train=100, batch_size=50, epochs=8,
             target_accuracy=0.95, group_size=8, probe_size=50, vni_dense_steps=0)


def test_store_marks_each_stopped_run_and_the_replay_predicts_them(tmp_path):
    """A full-budget sweep and the same sweep under a policy, in one store: the replay of the rule on the
    full-budget trajectories names exactly the runs the policy stopped and the epochs; each stopped unit has
    the policy in its spec, the mark early_stop_epoch and a reason that says so; nothing else has them."""
    pol = EarlyStop(0.95, 2)
    with Store(tmp_path) as store:
        full = run_sweep(SweepSpec(**SWEEP), store, backend="inline", quiet=True)
        on = run_sweep(SweepSpec(**dict(SWEEP, name="es_on", early_stop="0.95:2")), store, backend="inline",
                       quiet=True)
        assert full.stopped == 0 and on.stopped == 3 and on.failed > on.stopped and on.success >= 1
        traj = {(t.spec["lr"], t.seed): t for t in trajectories(store, "es")}
        assert len(traj) == 8
        predicted = {k: stop_epoch(t.vni_out, t.accuracy, 0.95, pol, 8) for k, t in traj.items()}
        marks = {(r["lr"], r["seed"]): int(r["value"]) for r in store.rows("es_on", STOP_QUANTITY)}
        assert marks == {k: v for k, v in predicted.items() if v is not None}
        assert sum(v is not None for v in predicted.values()) == on.stopped
        for u in store.units("es_on"):
            assert (u.spec["early_stop_vni"], u.spec["early_stop_epochs"]) == (0.95, 2)
            stopped = (u.spec["lr"], u.seed) in marks
            assert (u.reason is not None and "early stop after epoch" in u.reason) == stopped
            if stopped:
                assert u.reason.startswith("collapsed: early stop after epoch")  # its failure kind comes first
        assert not store.rows("es", STOP_QUANTITY)
        assert all("early_stop_vni" not in u.spec for u in store.units("es"))
        assert trajectories(store, "es_on") == []  # runs under a policy are never replayed
        # the replay's counts on these runs, by brute force
        row = replay(traj.values(), [pol])[0]
        stops = [(t, predicted[k]) for k, t in traj.items() if predicted[k] is not None]
        assert row.stopped == len(stops) and row.false_stops == sum(t.success for t, _ in stops)
        assert row.steps_saved == sum(t.steps - e * 2 for t, e in stops)
        assert row.steps_total == sum(t.steps for t in traj.values())


def test_replay_counts_false_stops_and_savings_by_brute_force():
    rng = random.Random(3)
    runs = []
    for i in range(300):
        n_ep = rng.randint(1, 20)
        success = rng.random() < 0.4
        acc = [rng.random() * 0.85 for _ in range(n_ep - 1)] + [0.95 if success else 0.5]
        vni = [rng.choice([0.999, 0.995, 0.97, 0.5, float("nan")]) for _ in range(n_ep)]
        spec = {"depth": rng.choice([4, 16]), "width": 8, "batch_size": 10, "max_epochs": 20, "target_accuracy": 0.9}
        runs.append(Trajectory(str(i), spec, 0, vni, acc, success, False, n_ep * 5, 5))
    pols = policy_grid([0.97, 0.99], [1, 2, 3])
    rows = replay(runs, pols)
    for pol, row in zip(pols, rows):
        stops = [(r, brute_stop_epoch(r.vni_out, r.accuracy, 0.9, pol, 20)) for r in runs]
        stops = [(r, t) for r, t in stops if t is not None]
        assert row.stopped == len(stops)
        assert row.false_stops == sum(r.success for r, _ in stops) and row.false_stops > 0
        assert row.steps_saved == sum(r.steps - 5 * t for r, t in stops)
        assert row.flops_saved == pytest.approx(sum((r.steps - 5 * t) * r.step_flops() for r, t in stops))
        assert row.failed == sum(not r.success for r in runs)
    assert recommend(rows) is None  # every rule here stops some run that later succeeded


def test_recommend_takes_the_largest_saving_with_safe_neighbours():
    def row(v, e, false, saved):
        r = replay([], [EarlyStop(v, e)])[0]
        r.false_stops, r.flops_saved = false, saved
        return r

    rows = [row(0.9, 1, 1, 9.0), row(0.9, 2, 0, 8.0), row(0.99, 1, 0, 7.0), row(0.99, 2, 0, 6.0)]
    # (0.9, 2) and (0.99, 1) have no false stop, but each is one step from (0.9, 1), which has one
    assert recommend(rows).policy == EarlyStop(0.99, 2)
    rows[0].false_stops = 0
    assert recommend(rows).policy == EarlyStop(0.9, 1)


# -- fig5 and the CLI --------------------------------------------------------------------------------------
def test_fig5_is_off_by_default_and_its_figures_never_read_policy_runs(tmp_path):
    from depthscope.experiments import get_experiment

    exp = get_experiment("fig5")
    for preset in ("quick", "paper"):
        assert exp.params(preset)["early_stop"] == "off"
    tiny = {"depths": [6], "width": 16, "lrs": {"sgd": [0.5, 2.0, 8.0]}, "optimizers": ["sgd"], "activations": ["tanh"],
            "inits": ["gaussian"], "seeds": 2, "dataset": "synthetic", "split": "any", "n_train": 100, "epochs": 8,
            "batch_size": 50, "target_accuracy": 0.95, "group_size": 8, "probe_size": 50, "backend": "inline",
            "workers": 1}
    off = exp.params("quick", tiny)
    on = exp.params("quick", dict(tiny, early_stop="0.95:2"))
    assert all(u.spec.get("early_stop_vni") is None for u in exp.units(off))
    assert all(u.spec["early_stop_vni"] == 0.95 for u in exp.units(on))
    with Store(tmp_path) as store:
        for params in (on,):  # only the policy's runs are in the store
            for sw in exp.sweeps(params):
                execute(expand(sw), store, exp.name, sw.data, backend="inline", quiet=True)
        stopped = len(store.rows("fig5", STOP_QUANTITY))
        assert stopped == 1
        with pytest.warns(UserWarning, match="no runs"):  # the thesis' protocol has no run here
            assert exp.figures(store, tmp_path / "off", off) == []
        figs = exp.figures(store, tmp_path / "on", on)
        assert figs and all(f"early stop ON (not the thesis' protocol): output VNI > 0.95 for 2 consecutive "
                            f"epochs; {stopped} of the" in f.caption for f in figs if f.caption)


def test_cli_early_stop_is_validated_before_anything_is_written(tmp_path, capsys):
    from depthscope.cli import main

    for bad in ("1.5:5", "0.99", "0.99:0", "x:2"):
        run_dir = tmp_path / f"r{bad.replace(':', '_')}"
        assert main(["sweep", "--dataset", "synthetic", "--early-stop", bad, "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "early" in err and "Traceback" not in err, err
        assert not run_dir.exists()
    cfg = tmp_path / "bad.toml"
    cfg.write_text('early_stop = 0.99\n')
    assert main(["sweep", str(cfg), "--run-dir", str(tmp_path / "t")]) == 2
    assert "early_stop must be" in capsys.readouterr().err
    assert main(["reproduce", "fig5", "--set", "early_stop=2:1", "--run-dir", str(tmp_path / "f")]) == 2
    assert "in (0, 1)" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_cli_early_stop_runs_and_reports_the_stopped_runs(tmp_path, capsys):
    from depthscope.cli import main

    cfg = tmp_path / "es.toml"
    cfg.write_text('depths = [6]\nwidths = [16]\nlrs = [0.5, 4.0]\nseeds = 2\ndataset = "synthetic"\n'
                   'n_train = 100\nbatch_size = 50\nepochs = 8\ntarget_accuracy = 0.95\nprobe_size = 50\n'
                   'vni_dense_steps = 0\nearly_stop = {vni = 0.95, epochs = 2}\n')
    assert main(["sweep", str(cfg), "--backend", "inline", "--quiet", "--run-dir", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    with Store(tmp_path / "r") as store:
        n = len(store.rows("sweep", STOP_QUANTITY))
        assert store.get_meta("sweep:sweep")["early_stop"] == "0.95:2"
    assert n == 2 and f"{n} stopped early by the policy (0.95:2)" in err
    # a user's sweep report: its CSV has the policy's columns and the mark, and no made-up spec column
    import csv

    from depthscope.experiments.chapter5 import collect_runs
    from depthscope.experiments.sweeps import write_runs_csv

    with Store(tmp_path / "r") as store:
        path = write_runs_csv(collect_runs(store, "sweep"), tmp_path / "runs.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert "stopped" not in rows[0] and {"early_stop_vni", "early_stop_epochs", "early_stop_epoch"} <= set(rows[0])
    marked = [r for r in rows if r["early_stop_epoch"]]
    assert len(marked) == 2 and all(r["reason"].startswith("collapsed: early stop after epoch "
                                                           f"{r['early_stop_epoch']} of 8") for r in marked)
    # the flag overrides the file: off trains every run to its budget (other units: the spec differs)
    assert main(["sweep", str(cfg), "--early-stop", "off", "--backend", "inline", "--quiet", "--json",
                 "--run-dir", str(tmp_path / "r2")]) == 0
    import json

    doc = json.loads(capsys.readouterr().out)
    assert doc["stopped"] == 0 and doc["total"] == 4


def test_synthetic_data_helper_is_deterministic():
    """The store test above relies on the synthetic data being the same in both sweeps."""
    a, b = synthetic_dataset(50), synthetic_dataset(50)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_budget_fraction_and_bound_seconds_by_brute_force():
    from depthscope.earlystop import bound_seconds, budget_fraction

    # 7 failed runs, 3 of them stopped after epoch 4, 5 successful runs stopping after 2 epochs, budget 10
    epochs = [10] * 4 + [4] * 3 + [2] * 5
    assert budget_fraction(7, 5, 2, 10, 3 / 7, 4) == pytest.approx(sum(epochs) / (12 * 10))
    assert budget_fraction(7, 5, 2, 10) == pytest.approx((70 + 10) / 120)
    with pytest.raises(ValueError, match="stopped_share"):
        budget_fraction(7, 5, 2, 10, 1.5, 4)
    # exact linear step times give back t0, t1 and the sum over the depths
    secs, t0, t1 = bound_seconds({10: 0.003 + 10 * 0.002, 50: 0.003 + 50 * 0.002, 90: 0.003 + 90 * 0.002},
                                 [10, 20, 40], 7, 100)
    assert (t0, t1) == (pytest.approx(0.003), pytest.approx(0.002))
    assert secs == pytest.approx(7 * 100 * sum(0.003 + d * 0.002 for d in (10, 20, 40)))
    with pytest.raises(ValueError, match="two depths"):
        bound_seconds({10: 1.0}, [10], 1, 1)


def test_trajectories_on_a_whole_split_read_the_updates_per_epoch_off_the_runs(tmp_path):
    """n_train None (the paper preset): updates per epoch come from steps / epochs of a run that did not
    diverge, and a diverged run on the same data takes them from it."""
    from depthscope.store import Value

    spec = {"depth": 2, "width": 4, "batch_size": 10, "max_epochs": 5, "target_accuracy": 0.9, "n_train": None,
            "dataset": "mnist", "split": "train"}
    with Store(tmp_path) as store:
        # seed 0: 3 epochs of 7 updates, success at epoch 3; seed 1: diverged in its second epoch (update 9)
        for seed, steps, accs, diverged in [(0, 21, [0.1, 0.2, 0.95], False), (1, 9, [0.1], True)]:
            vals = [Value("success", float(not diverged)), Value("diverged", float(diverged)), Value("steps", steps)]
            vals += [Value("train_accuracy", a, step=e) for e, a in enumerate(accs, 1)]
            vals += [Value("vni", 0.5 + 0.1 * e, layer=2, step=7 * e) for e in range(1, 4)]  # the output layer
            vals += [Value("vni", 0.0, layer=1, step=7 * e) for e in range(1, 4)]
            store.record("x", unit_key(spec, seed), spec=spec, seed=seed, values=vals,
                         status="failed" if diverged else "done")
        got = {t.seed: t for t in trajectories(store, "x")}
    assert got[0].steps_per_epoch == 7 and got[1].steps_per_epoch == 7
    assert got[0].vni_out == pytest.approx([0.6, 0.7, 0.8]) and got[1].vni_out == pytest.approx([0.6])
    assert got[1].diverged and not got[1].success and got[0].success


def test_bound_flops_is_the_sum_over_runs_and_steps():
    from depthscope.earlystop import bound_flops

    per_step = {L: 6 * 100 * (784 * 500 + (L - 1) * 500 * 500 + 500 * 10) for L in (25, 500)}
    assert bound_flops([25, 500], 500, 3, 7) == 3 * 7 * (per_step[25] + per_step[500])
    # the paper preset (docs/training.md: 4.8e19 FLOP when every run trains 100 epochs)
    paper = bound_flops([25, 34, 46, 61, 83, 112, 151, 204, 275, 371, 500], 500, 2880, 60000)
    assert paper == pytest.approx(4.84e19, rel=1e-2)
