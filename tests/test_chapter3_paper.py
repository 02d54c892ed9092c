"""Chapter 3 at the paper preset: the fast Table 3.1 path against the every-layer reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from depthscope.data import gaussian
from depthscope.experiments.chapter3 import (Table31, stream_crossings, stream_vni, table31_cost_rank,
                                             table31_unit, table31_unit_reference)
from depthscope.nets import NetSpec

_BASE = {"width": 16, "n": 32, "max_depth": 300, "residual_scale": 0.1, "input_variance": 1.0}


def _spec(arch, init, act, branch=None, **kw):
    return {**_BASE, "arch": arch, "init": init, "activation": act, **({"branch": branch} if branch else {}), **kw}


# every row kind of Table 3.1; at width 16 the relu, linear and tanh Gaussian rows cross 0.5, 0.9 and 0.99
# within 300 layers, the orthogonal tanh and residual ones do not
_SPECS = [_spec("feedforward", "gaussian", a) for a in ("relu", "linear", "tanh")] + [
    _spec("feedforward", "orthogonal", a) for a in ("relu", "tanh")] + [
    _spec("residual", "gaussian", "relu", "one"), _spec("residual", "gaussian", "tanh", "two"),
    _spec("feedforward", "gaussian", "linear", stop_above=0.9),
    _spec("feedforward", "orthogonal", "relu", stop_above=0.9)] + [
    # the paper preset's orthogonal rows: weights drawn as Householder reflectors (depthscope.haar)
    _spec("feedforward", "orthogonal", a, stop_above=0.9, orthogonal_sampler="householder") for a in ("relu", "tanh")]


# small matrices: one thread (conftest.one_thread; on a loaded 2-core machine two threads' syncing costs ms per layer)
pytestmark = pytest.mark.usefixtures("one_thread")


def _without_cost(vals):
    return [v for v in vals if v.quantity not in ("cpu_seconds", "layers_computed")]


@pytest.mark.parametrize("every,dense_until", [(7, 0), (40, 3)])
@pytest.mark.parametrize("s", _SPECS, ids=lambda s: f"{s['arch']}-{s['init']}-{s['activation']}-{s.get('branch', '')}-"
                         f"{s.get('stop_above', '')}-{s.get('orthogonal_sampler', '')}")
def test_table31_fast_path_equals_every_layer_reference(s, every, dense_until):
    params = {"threshold": 0.9, "vni_every": every, "dense_until": dense_until}
    ref = table31_unit_reference(s, 1, params)
    fast = table31_unit(s, 1, params)
    assert _without_cost(fast) == ref  # the same layers, bit-identical values, the same max depths


def test_table31_fast_path_crossings_really_cross_at_these_sizes():
    """The comparison above is only worth something if crossings happen between measurements."""
    params = {"threshold": 0.9, "vni_every": 50, "dense_until": 3}
    depths = {s["activation"] + s["init"]: {v.quantity: v.value for v in table31_unit(s, 1, params)}
              for s in _SPECS[:3]}
    for d in depths.values():
        assert math.isfinite(d["max_depth@0.5"]) and math.isfinite(d["max_depth@0.9"])
        assert d["max_depth@0.5"] % 50 != 49 or d["max_depth@0.9"] % 50 != 49  # not on a measured layer


def test_stream_crossings_without_guard_refines_to_the_first_layer():
    """guard = 0 leaves every crossing to the refinement (the guard band off); the first layers still match."""
    spec = NetSpec(300, 64, "relu", "gaussian")
    x = gaussian(64, 64, 1.0, seed=3)
    ref, _ = stream_vni(spec, x, 3, stop_above=0.99)
    r, first, last = stream_crossings(spec, x, 3, thresholds=(0.3, 0.5, 0.9), stop_above=0.99, every=25,
                                      dense_until=0, guard=0.0)
    for t in (0.3, 0.5, 0.9, 0.99):
        assert first[t] == next(l for l, v in ref.items() if v > t)
    assert last == max(ref)
    assert all(r[l] == ref[l] for l in r)
    assert len(r) < len(ref) - 50  # it did skip layers


def test_stream_crossings_rejects_bad_settings():
    spec = NetSpec(5, 4, "tanh", "gaussian")
    with pytest.raises(ValueError, match="every must be >= 1"):
        stream_crossings(spec, torch.zeros(3, 4), 0, thresholds=(0.5,), stop_above=0.9, every=0)


def test_table31_cost_rank_orders_cheap_rows_first():
    ranks = {(u.spec["arch"], u.spec["init"], u.spec["activation"], u.spec.get("branch")): table31_cost_rank(u.spec)
             for u in Table31().units(Table31().params("paper"))}
    assert ranks[("feedforward", "gaussian", "relu", None)] == 0
    assert ranks[("residual", "gaussian", "relu", "one")] == 0
    assert ranks[("residual", "gaussian", "relu", "two")] == 4
    assert ranks[("feedforward", "orthogonal", "tanh", None)] == 3


def _stored(store):
    return sorted((r["key"], r["arch"], r["init"], r["activation"], r.get("branch"), r["seed"],
                   r["quantity"], r["layer"], r["value"]) for r in store.rows("table3.1")
                  if r["quantity"] not in ("cpu_seconds", "layers_computed"))


def test_table31_two_workers_store_what_one_stores(tmp_path):
    """Seeds on two spawned processes record the same rows as the serial loop, every unit once."""
    from depthscope.experiments.base import run_experiment
    from depthscope.store import Store

    over = {"width": 8, "n": 16, "max_depth": 60, "seeds": 2}
    got = {}
    for workers in (1, 2):
        with Store(tmp_path / f"w{workers}") as st:
            counts = run_experiment("table3.1", st, "quick", overrides={**over, "workers": workers}, quiet=True)
            assert counts["ran"] == 24 and counts["total"] == 24
            got[workers] = _stored(st)
            assert run_experiment("table3.1", st, "quick", overrides={**over, "workers": workers},
                                  quiet=True)["ran"] == 0  # resumed: nothing to redo
    assert got[1] == got[2] and got[1]


def test_median_decided_needs_a_majority_of_uncrossed_seeds():
    from depthscope.experiments.chapter3 import median_decided

    inf = math.inf
    assert median_decided([inf, inf, inf], 5)
    assert not median_decided([inf, inf], 5)
    assert not median_decided([inf, inf, 40.0], 5)
    assert median_decided([inf, inf], 3) and not median_decided([inf], 3)
    assert median_decided([inf, inf, inf, 7.0], 6) is False and median_decided([inf] * 4, 6)
    import numpy as np

    for depths in ([inf, inf, inf, 1.0, 2.0], [inf, inf, inf, inf, 3.0], [inf] * 5):
        assert median_decided(depths[:3], 5) and math.isinf(float(np.median(depths)))  # what "decided" promises


def test_table31_decided_median_skips_only_seeds_that_cannot_move_the_median(tmp_path):
    """Five seeds, nets too shallow to cross: the rows run to the cap stop at three seeds, the table's
    medians are the same as with all five, and the relu / Gaussian rows keep every seed."""
    from depthscope.experiments.base import run_experiment
    from depthscope.store import Store

    over = {"width": 8, "n": 16, "max_depth": 4, "seeds": 5}
    medians = {}
    for decided in (True, False):
        with Store(tmp_path / str(decided)) as st:
            counts = run_experiment("table3.1", st, "quick", overrides={**over, "decided_median": decided},
                                    quiet=True)
            rows, seeds = {}, {}
            for r in st.rows("table3.1", "max_depth@0.9"):
                k = (r["arch"], r["init"], r["activation"], r.get("branch"))
                rows.setdefault(k, []).append(r["value"])
                seeds.setdefault(k, set()).add(r["seed"])
            medians[decided] = {k: float(np.median(v)) for k, v in rows.items()}
            n_seeds = {k: len(v) for k, v in seeds.items()}
            if decided:
                assert counts["decided"] == 14 and counts["ran"] == 60 - 14
                assert n_seeds[("feedforward", "orthogonal", "tanh", None)] == 3
                assert n_seeds[("residual", "gaussian", "relu", "two")] == 3
                assert n_seeds[("feedforward", "gaussian", "tanh", None)] == 5
                assert n_seeds[("residual", "gaussian", "relu", "one")] == 5
            else:
                assert counts["ran"] == 60 and set(n_seeds.values()) == {5}
    assert medians[True] == medians[False]


def test_table31_row_claims_judge_each_row_against_the_thesis():
    from depthscope.experiments.chapter3 import THESIS_TABLE, table31_row_claims

    inf = math.inf
    params = {"threshold": 0.9, "max_depth": 10000, "width": 1000, "seeds": 5, "n": 1000}
    per_seed = {("feedforward", "gaussian", "relu"): {0: 250.0, 1: 262.0, 2: 240.0, 3: 270.0, 4: 255.0},
                ("feedforward", "orthogonal", "relu"): {0: 440.0, 1: 450.0, 2: 460.0},  # 450 vs 325: +38%
                ("feedforward", "orthogonal", "tanh"): {0: inf, 1: inf, 2: inf},
                ("residual", "gaussian", "relu"): {0: 90.0, 1: inf, 2: 95.0, 3: inf, 4: 80.0}}
    claims = {c.claim.split(":")[0]: c for c in table31_row_claims(per_seed, params)}
    assert len(claims) == len(THESIS_TABLE) == 9
    g = claims["Table 3.1, feedforward gaussian relu"]
    assert g.verdict == "agree" and g.thesis == "262" and g.ours.startswith("255 (seeds: 240, 250, 255, 262, 270)")
    assert "width 1000 (the comparison assumes the thesis' width ≈ 1000), 5 of 5 seeds" in g.scale
    o = claims["Table 3.1, feedforward orthogonal relu"]
    assert o.verdict == "differs" and "ours / thesis = 1.38" in o.why and "3 of 5 seeds" in o.scale
    assert claims["Table 3.1, feedforward orthogonal tanh"].verdict == "agree"
    r = claims["Table 3.1, residual gaussian relu (two-layer branch)"]
    assert r.verdict == "differs" and r.ours.startswith("95 ")
    assert claims["Table 3.1, feedforward gaussian tanh"].verdict == "not run"
    # the same numbers under a cap below the thesis' 10000, at another width
    small = table31_row_claims(per_seed, {**params, "max_depth": 5000, "width": 64})
    small = {c.claim.split(":")[0]: c for c in small}
    assert small["Table 3.1, feedforward orthogonal tanh"].verdict == "trend"
    assert "below the thesis' 10000" in small["Table 3.1, feedforward orthogonal tanh"].why
    assert "width 64, not 1000" in small["Table 3.1, feedforward orthogonal relu"].why
    assert small["Table 3.1, feedforward gaussian relu"].verdict == "agree"  # a number is a number
    # within 25%: 262 * 1.25 = 327.5 agrees, 328 does not
    edge = table31_row_claims({("feedforward", "gaussian", "relu"): {0: 327.0}}, params)
    assert edge[2].verdict == "agree"
    edge = table31_row_claims({("feedforward", "gaussian", "relu"): {0: 328.0}}, params)
    assert edge[2].verdict == "differs"


def _fake_curve(monkeypatch, curve):
    """R_sq(layer) = curve(layer): each 'layer' adds 1 to a scalar, the fake R_sq reads it back."""
    import depthscope.experiments.chapter3 as ch3

    monkeypatch.setattr(ch3, "_stream_step", lambda spec, seed, l, x, device, sampler="qr": x + 1)
    monkeypatch.setattr(ch3, "vni", lambda x: torch.tensor(curve(int(round(float(x.flatten()[0]))))))


def test_stream_crossings_guard_band_sees_a_spike_between_measurements(monkeypatch):
    """A curve that pokes above 0.5 at layer 37 only and falls back: the every-layer reference's first
    crossing is 37. With the guard band (R_sq within 0.1 of the threshold at layer 30) the fast path
    measures every layer from 31 and finds it; without it the spike falls between measurements."""
    def curve(l):
        return 0.6 if l == 37 else (0.3 + 0.4 * l / 100 if l < 45 else 0.46 + 0.01 * (l - 45))

    _fake_curve(monkeypatch, curve)
    spec = NetSpec(200, 4, "tanh", "gaussian")
    ref = next(l for l in range(1, 201) if curve(l) > 0.5)
    assert ref == 37
    kw = dict(thresholds=(0.5,), stop_above=0.99, every=10, dense_until=0, device="cpu")
    _, first, _ = stream_crossings(spec, torch.zeros(2, 4), 0, guard=0.1, **kw)
    assert first[0.5] == 37
    _, first, _ = stream_crossings(spec, torch.zeros(2, 4), 0, guard=0.0, **kw)
    assert first[0.5] == 50  # layer 50 is the first *measured* one above 0.5: refinement of (40, 50] finds 50


def test_stream_crossings_refines_a_jump_past_the_guard(monkeypatch):
    """A jump from 0.1 to 0.95 between two measurements (no guard can see it coming): the refinement
    redoes the layers in between and returns the first one above each threshold."""
    _fake_curve(monkeypatch, lambda l: 0.1 if l < 43 else (0.7 if l < 46 else 0.995))
    spec = NetSpec(200, 4, "tanh", "gaussian")
    r, first, last = stream_crossings(spec, torch.zeros(2, 4), 0, thresholds=(0.5, 0.9), stop_above=0.99,
                                      every=10, dense_until=0, guard=0.05)
    assert first == {0.5: 43, 0.9: 46, 0.99: 46} and last == 46
    assert sorted(r) == [10, 20, 30, 40, 41, 42, 43, 44, 45, 46]


def test_table31_partial_run_reads_not_run_not_differs(tmp_path):
    """A run stopped after the relu rows: the claims that need the other rows say "not run" (with what is
    missing), the relu row is judged on its own."""
    from depthscope.experiments.chapter3 import Table31
    from depthscope.store import Store, Value

    params = Table31().params("paper")
    with Store(tmp_path / "run") as st:
        for u in Table31().units(params):
            if u.spec["activation"] == "relu" and u.spec["arch"] == "feedforward" and u.spec["init"] == "gaussian":
                st.record("table3.1", u.key, spec=u.spec, seed=u.seed,
                          values=[Value("vni", 0.1, layer=1), Value("vni", 0.95, layer=250 + u.seed),
                                  Value("max_depth@0.9", 249.0 + u.seed)])
        figs = {f.name: f for f in Table31().figures(st, tmp_path / "out", params)}
    fig37 = figs["fig3.7"].claims[0]
    assert fig37.verdict == "not run" and "feedforward" not in fig37.why and "tanh, linear" in fig37.why
    claims = {c.claim: c for c in figs["table3.1"].claims}
    assert claims["Table 3.1's three orderings"].verdict == "not run"
    relu = claims["Table 3.1, feedforward gaussian relu: max depth before VNI > 0.9"]
    assert relu.verdict == "agree" and relu.ours.startswith("251 ")
    assert claims["Table 3.1, feedforward gaussian tanh: max depth before VNI > 0.9"].verdict == "not run"


@pytest.mark.parametrize("key,value", [("workers", 0), ("vni_every", 0), ("dense_until", -1), ("workers", 1.5),
                                       ("stop_above", 0.8), ("stop_above", 1.0), ("orthogonal_sampler", "svd")])
def test_table31_bad_speed_settings_refused_before_anything_is_written(tmp_path, key, value):
    from depthscope.experiments.base import run_experiment
    from depthscope.store import Store

    with Store(tmp_path / "run") as st:
        with pytest.raises(ValueError, match=f"{key}"):
            run_experiment("table3.1", st, "quick", overrides={key: value}, quiet=True)
        assert not st.done_keys("table3.1")


def test_table31_paper_units_carry_their_stop_and_quick_ones_keep_their_keys():
    from depthscope.experiments.chapter3 import Table31

    t = Table31()
    assert all(u.spec["stop_above"] == 0.9 for u in t.units(t.params("paper")))
    assert all("stop_above" not in u.spec for u in t.units(t.params("quick")))  # stores made before resume
    s = _spec("feedforward", "gaussian", "relu", stop_above=0.9)
    vals = table31_unit(s, 1, {"threshold": 0.9})
    last = max(v.layer for v in vals if v.quantity == "vni")
    md = next(v.value for v in vals if v.quantity == "max_depth@0.9")
    assert last == md + 1  # stopped at the first layer above 0.9


def test_fig33_scale_names_the_images_used_not_the_images_asked(tmp_path):
    from depthscope.experiments.chapter3 import _images_used
    from depthscope.store import Store

    with Store(tmp_path / "run") as st:
        assert _images_used(st, "fig3.3", 50000) == 50000  # no note: what was asked
        st.set_meta("note:fig3.3", "first 10000 of 10000 mnist test images, center")
        assert _images_used(st, "fig3.3", 50000) == 10000


def test_table31_paper_units_carry_their_sampler_and_samples_and_quick_ones_keep_their_keys():
    """The paper preset's orthogonal units name their sampler, its other units do not (Gaussian weights are
    the same under both); every paper unit has n = 500, so none shares a key with the 1000-sample units of
    a store made before; quick units are as before (no sampler key: their stores resume)."""
    t = Table31()
    paper = t.units(t.params("paper"))
    assert len(paper) == 60 and all(u.spec["n"] == 500 for u in paper)
    assert all(u.spec.get("orthogonal_sampler") == ("householder" if u.spec["init"] == "orthogonal" else None)
               for u in paper)
    old = t.units({**t.params("paper"), "n": 1000, "orthogonal_sampler": "qr"})
    assert not {u.key for u in old} & {u.key for u in paper}
    assert all("orthogonal_sampler" not in u.spec for u in old + t.units(t.params("quick")))


def test_table31_figures_read_only_the_units_of_their_params(tmp_path):
    """A store holding the previous paper preset's units (1000 samples, qr orthogonal weights) beside the
    current ones: the table and its row claims are the current units' alone, and reading it with the
    previous params gives the previous units' alone (never pooled)."""
    from depthscope.experiments.chapter3 import table31_filter
    from depthscope.store import Store, Value

    t = Table31()
    new = t.params("paper")
    old = {**new, "n": 1000, "orthogonal_sampler": "qr"}
    with Store(tmp_path / "run") as st:
        for params, depth in ((old, 100.0), (new, 300.0)):
            for u in t.units(params):
                if u.spec["activation"] == "relu" and u.spec["arch"] == "feedforward":
                    st.record("table3.1", u.key, spec=u.spec, seed=u.seed,
                              values=[Value("vni", 0.95, layer=int(depth) + 1), Value("max_depth@0.9", depth + u.seed)])
        assert len(st.rows("table3.1", "max_depth@0.9", init="orthogonal")) == 10
        assert len(st.rows("table3.1", "max_depth@0.9", init="orthogonal", **table31_filter(new, "orthogonal"))) == 5
        for params, med in ((new, "302 "), (old, "102 ")):
            claims = {c.claim: c for f in t.figures(st, tmp_path / "out", params) if f.name == "table3.1"
                      for c in f.claims}
            for init in ("gaussian", "orthogonal"):
                c = claims[f"Table 3.1, feedforward {init} relu: max depth before VNI > 0.9"]
                assert c.ours.startswith(med) and f"5 of 5 seeds, {params['n']} inputs" in c.scale


def test_table31_unit_draws_with_the_sampler_its_spec_names():
    """A unit's orthogonal_sampler reaches the net: the householder unit's R_sq is stream_vni's with that
    sampler, not the qr net's."""
    s = _spec("feedforward", "orthogonal", "tanh", max_depth=30)
    params = {"threshold": 0.9}
    spec = NetSpec(30, 16, "tanh", "orthogonal")
    x = gaussian(32, 16, 1.0, seed=10_001)
    for sampler in ("qr", "householder"):
        vals = table31_unit({**s, "orthogonal_sampler": sampler}, 1, params)
        ref, _ = stream_vni(spec, x, 1, sampler=sampler)
        assert [(v.layer, v.value) for v in vals if v.quantity == "vni"] == [(l, ref[l]) for l in sorted(ref)
                                                                            if l in {v.layer for v in vals}]
    assert table31_unit(s, 1, params)[5].value != table31_unit({**s, "orthogonal_sampler": "householder"}, 1,
                                                               params)[5].value
