"""Residual nets: the two branch families (nets.py), their first-order theory (theory_residual.py), the CLI."""
import json
import math

import numpy as np
import pytest
import torch

from depthscope.activations import get_activation, register_activation
from depthscope.cli import main
from depthscope.metrics import vni_per_layer
from depthscope.nets import NetSpec, branch_weight, build_net, layer_params, stream_layers
from depthscope.theory_residual import branch_growth, branch_moments, predict_residual


# ------------------------------------------------------------------------------------------- NetSpec
def test_alpha_and_its_old_name_are_one_setting():
    assert NetSpec(3, 4, arch="residual", residual_scale=0.1).alpha == 0.1
    assert NetSpec(3, 4, arch="residual", alpha=0.2).residual_scale == 0.2
    assert NetSpec(3, 4, arch="residual").alpha == 1.0
    assert NetSpec(3, 4, arch="residual", alpha=0.3, residual_scale=0.3).alpha == 0.3
    with pytest.raises(ValueError, match="alpha=0.3 and residual_scale=0.1"):
        NetSpec(3, 4, arch="residual", alpha=0.3, residual_scale=0.1)
    s = NetSpec(3, 4, arch="residual", residual_scale=0.1)
    assert s.with_(alpha=0.5).alpha == 0.5 and s.with_(residual_scale=0.4).alpha == 0.4


def test_old_stored_spec_loads_and_new_one_round_trips():
    old = {"depth": 3, "width": 4, "activation": "tanh", "init": "gaussian", "sigma_w2": None, "sigma_b": 0.0,
           "bias_value": 0.0, "arch": "residual", "residual_scale": 0.1, "in_features": None, "out_features": None}
    s = NetSpec(**old)
    assert (s.alpha, s.branch) == (0.1, "one")
    t = NetSpec(3, 4, arch="residual", branch="two", alpha=0.25)
    assert NetSpec(**t.to_dict()) == t


@pytest.mark.parametrize("kw,msg", [({"branch": "three"}, "unknown residual branch 'three'"),
                                    ({"alpha": float("nan")}, "alpha must be a finite number"),
                                    ({"alpha": "0.1"}, "alpha must be a finite number")])
def test_bad_branch_settings_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        NetSpec(3, 4, arch="residual", **kw)


# ------------------------------------------------------------------------------------------- the nets
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_two_layer_branch_is_x_plus_alpha_v_phi_wx(act):
    spec = NetSpec(4, 6, act, arch="residual", branch="two", alpha=0.3, sigma_b=0.2)
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = x.clone()
    phi = get_activation(act)
    for l in range(1, 5):  # the slow, obvious reference, one matrix product at a time
        w, b = layer_params(spec, 7, l, torch.float64)
        v = branch_weight(spec, 7, l, torch.float64)
        ref = ref + 0.3 * phi(ref @ w.T + b) @ v.T
    streamed = list(stream_layers(spec, x, 7))[-1][2]
    net = build_net(spec, 7, torch.float64)
    torch.testing.assert_close(streamed, ref)
    torch.testing.assert_close(net.features(x), ref)
    # W_l is the one-layer branch's W_l: the families differ only by V
    w1, _ = layer_params(spec.with_(branch="one"), 7, 2)
    torch.testing.assert_close(w1, layer_params(spec, 7, 2)[0])
    # V has variance 1/N
    v = torch.cat([branch_weight(NetSpec(1, 200, arch="residual", branch="two"), s, 1).flatten() for s in range(3)])
    assert float(v.var()) * 200 == pytest.approx(1.0, rel=0.02)


def test_one_layer_branch_uses_alpha():
    spec = NetSpec(2, 5, "tanh", arch="residual", alpha=0.4)
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = x.clone()
    for l in (1, 2):
        w, b = layer_params(spec, 0, l, torch.float64)
        ref = ref + 0.4 * torch.tanh(ref @ w.T + b)
    torch.testing.assert_close(list(stream_layers(spec, x, 0))[-1][2], ref)


# ------------------------------------------------------------------------------------------- theory
def test_branch_growth_matches_the_moments_of_m_transpose_m():
    # linear one-layer Gaussian branch: g = (2a + a^2)/(1 + a)^2 = 2 alpha^2 - 3 alpha^4 + ... (sigma_w^2 = 1)
    alpha = 0.05
    assert branch_growth(alpha**2, 2.0) == pytest.approx(2 * alpha**2 - 3 * alpha**4, rel=1e-4)
    # against the moments of M^T M of sampled matrices, N = 600: one matrix (k = 2) and V W (k = 3)
    n, a = 600, 0.5
    g = torch.Generator().manual_seed(3)
    for k, p in ((2.0, torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)),
                 (3.0, (torch.randn(n, n, generator=g, dtype=torch.float64) @
                        torch.randn(n, n, generator=g, dtype=torch.float64)) / n)):
        m = torch.eye(n, dtype=torch.float64) + math.sqrt(a) * p
        mtm = m.T @ m
        m1, m2 = float(torch.diagonal(mtm).mean()), float((mtm * mtm).sum() / n)
        assert branch_growth(a, k) == pytest.approx(m2 / m1**2 - 1.0, rel=0.02)  # measured 0.3-0.6% off


@pytest.mark.parametrize("branch,init,k", [("one", "gaussian", 2.0), ("two", "gaussian", 3.0),
                                             ("one", "orthogonal", 1.0), ("two", "orthogonal", 1.0)])
def test_linear_layer_adds_exactly_its_growth(branch, init, k):
    # linear phi, infinitely many samples: no psi part, v_0 = 0, so N R_1 - 1 = g(alpha^2, k) and v adds per layer
    th = predict_residual(3, 50, "linear", init, branch=branch, alpha=0.7, input_variance=1.0)
    g = branch_growth(0.49, k)
    np.testing.assert_allclose(th.vni * 50 - 1.0, [g, 2 * g, 3 * g], rtol=1e-12)


def _dense_reference(q_c, q_o, n=2001):
    """The five node averages of relu(o + h) by a plain 2-D midpoint rule (an independent, slow reference)."""
    z = np.linspace(-10, 10, n)
    w = np.exp(-0.5 * z**2)
    w /= w.sum()
    o = math.sqrt(q_o) * z[:, None] if q_o > 0 else np.zeros((1, 1))
    wo = w if q_o > 0 else np.ones(1)
    h = math.sqrt(q_c) * z[None, :]
    f = np.maximum(o + h, 0.0)
    k0, k1 = f @ w, (f * h) @ w / q_c
    vp = (f * f) @ w - k0**2 - k1**2 * q_c
    return {"k0": wo @ k0, "k0_sq": wo @ k0**2, "k1_sq": wo @ k1**2, "k1_4": wo @ k1**4, "var_psi": wo @ vp}


def test_relu_moments_match_a_dense_reference():
    # closed form (relu) and the generic grid (a registered copy of relu) against a plain 2-D rule;
    # the generic grid is checked where the offsets stay within a few sample spreads (it is coarse beyond)
    register_activation("relu_copy_for_test", torch.relu, overwrite=True)
    for q_c, q_o in ((1.0, 0.0), (0.7, 2.5), (0.1, 30.0)):
        ref = _dense_reference(q_c, q_o)
        a = branch_moments("relu", q_c, q_o)
        b = branch_moments("relu_copy_for_test", q_c, q_o) if q_o / q_c < 10 else None
        for f, r in ref.items():
            assert getattr(a, f) == pytest.approx(r, rel=2e-4, abs=1e-9), (q_c, q_o, f)
            if b is not None:
                assert getattr(b, f) == pytest.approx(r, rel=5e-3, abs=1e-6), (q_c, q_o, f)


@pytest.mark.parametrize("act,branch,depth,alpha,tol", [
    # measured here (2 seeds): linear/one 1.5%, tanh/two 0.5%, relu/two 4.3% at the last layer
    ("linear", "one", 100, 0.1, 0.03), ("tanh", "two", 100, 0.1, 0.02), ("relu", "two", 100, 0.1, 0.07)])
def test_theory_matches_simulation(act, branch, depth, alpha, tol):
    width, n = 64, 256
    runs = []
    for s in range(2):
        x = torch.randn(n, width, generator=torch.Generator().manual_seed(1000 + s))
        spec = NetSpec(depth, width, act, arch="residual", branch=branch, alpha=alpha)
        runs.append(vni_per_layer(spec, x, s, layers=[depth]))
    measured = float(torch.stack(runs)[:, depth - 1].mean())
    th = predict_residual(depth, width, act, branch=branch, alpha=alpha, input_variance=1.0, samples=n)
    assert th.covered
    assert th.vni[-1] == pytest.approx(measured, rel=tol)
    assert th.vni[-1] > 1.5 / width  # and the net has moved well away from 1/N: the test sees the growth


def test_one_layer_relu_branch_is_marked_not_covered():
    assert not predict_residual(5, 64, "relu", branch="one", alpha=0.1).covered
    assert predict_residual(5, 64, "tanh", branch="one", alpha=0.1).covered


# ------------------------------------------------------------------------------------------- CLI
def test_theory_residual_json(capsys):
    assert main(["theory", "--arch", "residual", "--branch", "two", "--alpha", "0.1", "--depth", "20",
                 "--width", "64", "--activation", "tanh", "--samples", "256", "--input-variance", "1",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    th = predict_residual(20, 64, "tanh", branch="two", alpha=0.1, input_variance=1.0, samples=256)
    assert doc["branch"] == "two" and doc["alpha"] == 0.1 and doc["covered"] is True
    assert doc["vni"] == pytest.approx(th.vni.tolist())


@pytest.mark.parametrize("argv,msg", [
    (["theory", "--depth", "3", "--width", "4", "--alpha", "0.1"], "--alpha applies to --arch residual only"),
    (["vni", "--depth", "3", "--width", "4", "--branch", "two"], "--branch applies to --arch residual only"),
    (["theory", "--depth", "3", "--width", "4", "--arch", "residual", "--alpha", "inf"], "--alpha must be a finite")])
def test_residual_flags_are_checked(capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_vni_two_layer_branch_beside_its_theory(capsys):
    assert main(["vni", "--arch", "residual", "--branch", "two", "--alpha", "0.2", "--depth", "30", "--width", "32",
                 "--samples", "128", "--seeds", "2", "--input-variance", "1", "--quiet", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    th = predict_residual(30, 32, "tanh", branch="two", alpha=0.2, input_variance=1.0, samples=128)
    assert doc["vni_theory"] == pytest.approx(th.vni.tolist())
    assert np.isclose(doc["vni_mean"][-1], th.vni[-1], rtol=0.05)  # measured 1% off


# ------------------------------------------------------------------------------------------- table3.1
def test_table31_measures_both_families_with_the_branch_in_the_net():
    from depthscope.experiments.chapter3 import JUDGED_BRANCH, Table31, stream_vni

    exp = Table31()
    units = exp.units(exp.params("quick", {"seeds": 1}))
    res = {(u.spec["activation"], u.spec.get("branch")) for u in units if u.spec["arch"] == "residual"}
    assert res == {(a, b) for a in ("tanh", "linear", "relu") for b in ("one", "two")} and JUDGED_BRANCH == "two"
    assert all("branch" not in u.spec for u in units if u.spec["arch"] == "feedforward")  # their keys unchanged
    spec = NetSpec(30, 16, "relu", arch="residual", branch="two", alpha=0.3)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    got, _ = stream_vni(spec, x, 5, measure=[10, 30])
    ref = vni_per_layer(spec, x, 5, layers=[10, 30])
    assert got[10] == pytest.approx(float(ref[9]), rel=1e-4) and got[30] == pytest.approx(float(ref[29]), rel=1e-4)
