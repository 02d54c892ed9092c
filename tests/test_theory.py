"""Theory against Monte Carlo and closed forms."""
import math

import numpy as np
import pytest
import torch

from depthscope import theory
from depthscope.activations import derivative, get_activation, register_activation

ACTS = ["linear", "tanh", "hard_tanh", "relu", "sigmoid"]


def mc_mu(act, q, k, n=400_000, seed=0):
    z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return float((derivative(act, math.sqrt(q) * z) ** (2 * k)).mean())


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("q", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("k", [1, 2])
def test_mu_matches_monte_carlo(act, q, k):
    # 4e5 samples: the MC standard error is < 0.3% of these moments.
    assert theory.mu(act, q, k) == pytest.approx(mc_mu(act, q, k), rel=1e-2, abs=1e-4)


def test_mu_closed_forms():
    assert theory.mu("linear", 0.7, 2) == pytest.approx(1.0, abs=1e-12)
    assert theory.mu("relu", 2.0, 1) == pytest.approx(0.5, abs=1e-12)
    for q in (0.2, 1.0, 4.0):  # hard_tanh: P(|sqrt(q) z| < 1)
        assert theory.mu("hard_tanh", q, 1) == pytest.approx(math.erf(1 / math.sqrt(2 * q)), abs=2e-4)


def test_variance_map_matches_monte_carlo():
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for act in ACTS:
        mc = float((get_activation(act)(math.sqrt(0.8) * z) ** 2).mean())
        assert theory.variance_map(act, 0.8, 1.5, 0.1) == pytest.approx(1.5 * mc + 0.1, rel=1e-2)


@pytest.mark.parametrize("act,expected", [("linear", 1.0), ("tanh", 1.0), ("hard_tanh", 1.0), ("relu", 2.0)])
def test_critical_sigma_w2(act, expected):
    assert theory.critical_sigma_w2(act) == expected
    q = theory.fixed_point(act, expected, q0=0.3)
    assert theory.chi(act, expected, q) == pytest.approx(1.0, abs=1e-3)


def test_sigmoid_critical_constant_matches_bisection():
    # The precomputed constant must be what the numeric search finds.
    assert theory._critical_numeric("sigmoid", 0.0) == pytest.approx(theory.critical_sigma_w2("sigmoid"), rel=1e-6)


def test_user_activation_gets_a_critical_value_by_bisection():
    name = "test_scaled_tanh"
    register_activation(name, lambda x: 2.0 * torch.tanh(x), smooth=True, overwrite=True)
    # phi'(0)^2 = 4, q* = 0 at criticality: sigma_w^2 = 1/4.
    assert theory.critical_sigma_w2(name) == pytest.approx(0.25, rel=1e-3)


def test_fixed_points():
    assert theory.fixed_point("tanh", 1.0) == 0.0  # contracts to 0
    assert theory.fixed_point("linear", 1.0, q0=0.37) == 0.37  # every q is fixed
    q = theory.fixed_point("tanh", 2.0)
    assert q > 0 and theory.variance_map("tanh", q, 2.0) == pytest.approx(q, rel=1e-6)
    assert math.isinf(theory.fixed_point("linear", 1.5))


def test_eq_3_7_special_cases():
    r = theory.predict(40, 200, "linear", "gaussian", input_variance=1.0)
    # Linear, Gaussian: mu2/mu1^2 = 1, s1 = -1, so R = (1 + L)/N.
    np.testing.assert_allclose(r.vni_asymptotic, (1 + np.arange(1, 41)) / 200)
    np.testing.assert_allclose(r.vni_finite, r.vni_asymptotic)
    # Orthogonal linear: isometry, R = 1/N at every depth.
    r = theory.predict(40, 200, "linear", "orthogonal")
    np.testing.assert_allclose(r.vni_finite, 1 / 200)
    np.testing.assert_allclose(r.m1, 1.0)


def test_jacobian_form_equals_asymptotic_when_started_at_q_star():
    # relu at sigma_w^2 = 2 keeps q fixed, so every layer sits at q*.
    r = theory.predict(30, 100, "relu", "gaussian", input_variance=0.5)
    np.testing.assert_allclose(r.vni_jacobian, r.vni_asymptotic, rtol=1e-9)
    # (mu2/mu1^2 - 1 - s1) = (0.5/0.25 - 1 + 1) = 2 per layer.
    assert r.vni_jacobian[-1] == pytest.approx(1 / 100 + 30 * 2 / 100)


def test_m1_m2_pennington_form_at_fixed_point():
    r = theory.predict(25, 100, "relu", "orthogonal", input_variance=1.0)
    L = np.arange(1, 26)
    chi = 2.0 * 0.5
    np.testing.assert_allclose(r.m1, chi**L)
    np.testing.assert_allclose(r.m2, chi ** (2 * L) * L * (r.mu2 / r.mu1**2 + 1 / L - 1 - r.s1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=-1, width=10), "depth"),
    (dict(depth=3, width=0), "width"),
    (dict(depth=3, width=10, init="xavier"), "init"),
    (dict(depth=3, width=10, activation="gelu"), "activation"),
])
def test_predict_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        theory.predict(**kwargs)


# q*, chi_1 = sigma_w^2 mu1(q*) and the variance map's q at layer 8 from q_1 = 0.7 sigma_w^2 + sigma_b^2, at the
# points of neural-tangents' mean-field tables, tabulated to 20 digits (mpmath, 30-digit tanh-sinh quadrature and
# findroot: tests/test_theory_exact.py recomputes them when mpmath is installed; this table needs nothing)
NT_TABLE = {
    ("tanh", 1.5, 0.05): (0.41803720053347786017, 0.93863626819885115122, 0.42298611404421119722),
    ("tanh", 2.5, 0.0): (0.97357410719457291742, 1.1729703986310130464, 0.97578920930914930045),
    ("erf", 2.0, 0.1): (1.0462553601214325529, 1.1183167661184480966, 1.0465250713848284411),
    ("relu", 1.6, 0.2): (1.0000000000000002776, 0.80000000000000004441, 1.0671088640000002608),
}


@pytest.mark.parametrize("point", list(NT_TABLE))
def test_mean_field_quantities_against_the_tabulated_values(point):
    from depthscope import activations
    from depthscope.activations import register_activation

    act, sw2, sb2 = point
    q_star, chi1, q8 = NT_TABLE[point]
    name = act
    if act == "erf":
        name = "test_erf_tab"
        register_activation(name, torch.erf, smooth=True, overwrite=True)
    try:
        assert theory.fixed_point(name, sw2, sb2) == pytest.approx(q_star, rel=1e-13)
        assert theory.chi(name, sw2, q_star) == pytest.approx(chi1, rel=1e-13)
        assert theory.variance_trajectory(name, 8, sw2, 0.7, sb2)[-1] == pytest.approx(q8, rel=1e-13)
    finally:
        activations._REGISTRY.pop("test_erf_tab", None)
