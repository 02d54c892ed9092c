"""Issue 14 §7: the verdict rows of the training experiments read correctly for paper-preset data, also while
the paper runs are still filling their store (their parameters are saved only when a run ends)."""
from __future__ import annotations

import math

import pytest

from depthscope.experiments import get_experiment
from depthscope.experiments.base import RunContext
from depthscope.store import Store, Value


# ---------------------------------------------------------------------------------------------------------------
# the report: which preset a store's units were run at
# ---------------------------------------------------------------------------------------------------------------
def test_infer_preset_picks_the_preset_whose_units_the_store_holds():
    from depthscope.report import infer_preset

    exp = get_experiment("batchnorm")
    paper = [u.key for u in exp.units(exp.params("paper"))]
    quick = [u.key for u in exp.units(exp.params("quick"))]
    assert infer_preset(exp, set(paper[:3])) == "paper"
    assert infer_preset(exp, set(quick[:3])) == "quick"
    assert infer_preset(exp, set(paper[:1]) | set(quick[:2])) == "quick"  # the most shared keys win
    assert infer_preset(exp, {"no such key"}) is None
    assert infer_preset(exp, set()) is None


def test_report_judges_an_unfinished_paper_run_as_paper(tmp_path):
    """A paper run still going has no params:NAME meta; the report used the quick preset's parameters for it
    (its verdict row said 'preset quick')."""
    from depthscope.report import _collect, _verdict_table

    exp = get_experiment("batchnorm")
    p = exp.params("paper")
    store = Store(tmp_path / "run")
    units = [u for u in exp.units(p) if u.spec["depth"] == 10 and u.spec["activation"] == "relu" and u.seed < 2]
    assert len(units) == 4  # with and without BN, 2 seeds
    for u in units:
        store.record(exp.name, u.key, spec=u.spec, seed=u.seed,
                     values=exp.run_unit(u, RunContext(store=store, preset="paper", params=p)))
    assert store.get_meta("params:batchnorm") is None
    sections, _ = _collect(store, tmp_path / "out", quiet=True)
    (sec,) = sections
    assert sec.preset == "paper (inferred)"
    assert any("judged as preset 'paper'" in n for n in sec.notes)
    rows = "\n".join(_verdict_table(sections))
    assert "preset paper (inferred); L=10, N=512, batch 512, 2 seeds with BN, 2 without" in rows


# ---------------------------------------------------------------------------------------------------------------
# batchnorm: the claim's scale is what the store holds, at the deepest ReLU depth
# ---------------------------------------------------------------------------------------------------------------
def _bn_rows(depth: int, bn: bool, seeds: int, rate: float, act: str = "relu") -> list[dict]:
    return [{"activation": act, "batchnorm": bn, "depth": depth, "width": 512, "batch": 512, "seed": s,
             "layer": l, "value": rate ** (depth - l)} for s in range(seeds) for l in range(1, depth + 1)]


def test_relu_claim_reads_the_deepest_relu_depth_and_counts_the_stored_seeds():
    from depthscope.experiments.batchnorm import BN_RELU_RATE, growth_rate, relu_claim

    rows = (_bn_rows(50, True, 3, BN_RELU_RATE) + _bn_rows(50, False, 2, 0.98)
            + _bn_rows(10, True, 4, 2.0)  # a shallower depth with another rate: not the one judged
            + _bn_rows(100, True, 1, 0.5, act="tanh"))  # deeper, but not ReLU
    assert growth_rate(_bn_rows(20, True, 2, 1.3)) == pytest.approx(1.3, rel=1e-12)
    c = relu_claim(rows)
    assert c.scale == "L=50, N=512, batch 512, 3 seeds with BN, 2 without"
    assert c.verdict == "agree" and c.ours == f"x{BN_RELU_RATE:.3g} per layer with BN, x0.98 without"
    assert relu_claim(_bn_rows(50, True, 2, 1.5) + _bn_rows(50, False, 2, 0.98)).verdict == "trend"
    assert relu_claim(_bn_rows(50, False, 2, 0.98)).verdict == "not run"


# ---------------------------------------------------------------------------------------------------------------
# gradients: seed 001's sigmoid claim and the scale
# ---------------------------------------------------------------------------------------------------------------
def test_sigmoid_shrink_claim_on_both_sides_of_its_threshold():
    from depthscope.experiments.gradient_bound import SHRINK, sigmoid_shrink_claim

    assert sigmoid_shrink_claim({"a": 1e-60, "b": SHRINK * 0.99}, 100, "s").verdict == "trend"
    assert sigmoid_shrink_claim({"a": 1e-60, "b": SHRINK * 1.01}, 100, "s").verdict == "differs"
    assert sigmoid_shrink_claim({}, 100, "s").verdict == "not run"


def test_bound_scale_counts_units_seeds_and_sizes():
    from depthscope.experiments.gradient_bound import bound_scale

    def row(key, act, sw2, depth, seed):
        return {"key": key, "activation": act, "sigma_w2": sw2, "depth": depth, "width": 100, "steps": 2000,
                "seed": seed}

    rows = [row("a", "sigmoid", None, 5, 0), row("a", "sigmoid", None, 5, 0), row("b", "sigmoid", None, 5, 1),
            row("c", "sigmoid", 1.0, 100, 0), row("d", "tanh", None, 100, 0)]
    assert bound_scale(rows) == ("L=5, 100, N=100, 3 activation/init settings, up to 2 seeds each, 2000 SGD steps "
                                 "(float64); 4 units")


# ---------------------------------------------------------------------------------------------------------------
# fig3.5: judged at the thesis' lr 1e-2, with the seeds stored
# ---------------------------------------------------------------------------------------------------------------
def test_thesis_lr_maps_widths_and_refuses_far_rates():
    from depthscope.experiments.training_dynamics import thesis_lr

    assert thesis_lr([1e-3, 1e-2], 500, 1e-2) == 1e-2
    assert thesis_lr([1e-2, 1e-3], 500, 1e-2) == 1e-2  # not the last one
    assert thesis_lr([7.8125e-3, 7.8125e-2], 64, 1e-2) == 7.8125e-2
    assert thesis_lr([1e-3], 500, 1e-2) is None
    assert thesis_lr([1.0], 64, 1e-2) is None  # 0.13 at N=500
    assert thesis_lr([], 500, 1e-2) is None


def _fig35_record(store, exp, p, lr, seeds, high_share):
    """fig3.5 units of the paper preset at ``lr``: every layer's VNI 0.3 at init; after update 10 the top
    ``high_share`` of the layers at 0.95, the rest at 0.5."""
    L, T = p["depth"], p["vni_dense_steps"]
    for u in exp.units(p):
        if u.spec["lr"] != lr or u.seed not in seeds:
            continue
        vals = []
        for l in range(1, L + 1):
            high = l > L * (1 - high_share)
            for t in range(T + 1):
                v = 0.3 if t == 0 else (0.95 if high else 0.5) if t == T else 0.3 + (0.6 if high else 0.0) * t / T
                vals.append(Value("vni", v, l, t))
        store.record(exp.name, u.key, spec=u.spec, seed=u.seed, values=vals)


def test_fig35_is_judged_at_lr_1e_2_never_at_the_largest_lr_stored(tmp_path):
    exp = get_experiment("fig3.5")
    p = exp.params("paper")
    store = Store(tmp_path / "run")
    _fig35_record(store, exp, p, 1e-3, {0, 1}, 0.9)  # a paper run still in its lr 1e-3 half
    (fig,) = exp.figures(store, tmp_path / "out", p)
    assert [c.verdict for c in fig.claims] == ["not run", "not run"]
    assert "no run at lr 0.01" in fig.claims[0].why

    _fig35_record(store, exp, p, 1e-2, {0, 1, 2}, 0.4)
    (fig,) = exp.figures(store, tmp_path / "out", p)
    share, first = fig.claims
    assert share.ours == "40%" and share.verdict == "differs"
    assert share.scale == "paper: L=100, N=500, 3 seeds (of the preset's 50), lr 0.01 (at N=500: 0.01)"
    assert first.verdict == "trend"
    # the saved parameters are a smaller earlier run's (--set seeds=2) while a larger one is still adding seeds
    (fig,) = exp.figures(store, tmp_path / "out", exp.params("paper", {"seeds": 2}))
    assert "L=100, N=500, 3 seeds (the saved parameters name 2: a run adding seeds has not ended)" in fig.claims[0].scale


# ---------------------------------------------------------------------------------------------------------------
# xor: seed 004's "VNI = 1 cannot learn XOR"
# ---------------------------------------------------------------------------------------------------------------
def test_xor_vni_claim_counts_the_nets_at_vni_one():
    from depthscope.experiments.xor import VNI_ONE, xor_vni_claim

    vni = {"a": VNI_ONE, "b": 0.999, "c": 0.5, "d": 0.2}
    c = xor_vni_claim(vni, {"a": False, "b": False, "c": True, "d": False}, "s")
    assert (c.verdict, c.ours) == ("agree", "0 of 2 such nets fit; below it 1 of 2 fit")
    assert xor_vni_claim(vni, {"a": True, "b": False, "c": True, "d": False}, "s").verdict == "differs"
    assert xor_vni_claim({"a": VNI_ONE - 1e-9}, {"a": False}, "s").verdict == "not judged"
    assert math.isclose(VNI_ONE, 0.99)


def test_xor_scale_names_settings_nets_and_steps():
    from depthscope.experiments.xor import xor_scale

    rows = [{"key": f"k{i}", "setting": s, "depth": d, "width": 4, "lr": 0.05, "steps": 10000}
            for i, (s, d) in enumerate([("a", 2), ("a", 2), ("b", 16)])]
    rows.append(dict(rows[0]))  # a second measurement of unit k0
    assert xor_scale(rows) == "a L=2, N=4, lr 0.05: 2 nets; b L=16, N=4, lr 0.05: 1 nets; 10000 full-batch steps"


def test_bound_scale_names_the_units_that_diverged():
    from depthscope.experiments.gradient_bound import bound_scale

    rows = [{"key": "a", "activation": "sigmoid", "sigma_w2": 1.0, "depth": 5, "width": 100, "steps": 2000, "seed": 0}]
    failed = [{"activation": "relu", "sigma_w2": None, "depth": d} for d in (50, 100, 100)]
    assert bound_scale(rows, failed).endswith("1 units; 3 more diverged in training (not counted): relu (critical "
                                              "sigma_w^2) at L=50, 100")
    assert bound_scale(rows, []) == bound_scale(rows)
