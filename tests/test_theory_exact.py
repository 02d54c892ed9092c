"""Theory against independent high-precision references (issue 12 section 4, issue 11 sections 4 and 7).

The references use mpmath (30 digits, tanh-sinh quadrature split at the integrand's kinks and scales) and
closed-form derivatives written here, not depthscope's activations or quadrature. neural-tangents is not
installed, so its q*, chi_1 and per-layer q are recomputed here to 30 digits the same way (its own tables agree
with these to 1e-13: they are the same integrals).
"""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from depthscope import activations, theory
from depthscope.activations import register_activation

mp = pytest.importorskip("mpmath").mp
mp.dps = 30



@pytest.fixture(autouse=True, scope="module")
def _erf_activation():
    # registered for this module only: other tests see the built-in registry
    register_activation("test_erf", torch.erf, smooth=True, overwrite=True)
    yield
    activations._REGISTRY.pop("test_erf", None)

# phi and phi' in mpmath, independent of torch and autograd
REF = {
    "tanh": (mp.tanh, lambda h: mp.sech(h) ** 2),
    "test_erf": (mp.erf, lambda h: 2 / mp.sqrt(mp.pi) * mp.exp(-h * h)),
    "sigmoid": (lambda h: 1 / (1 + mp.exp(-h)), lambda h: mp.exp(-h) / (1 + mp.exp(-h)) ** 2),
    "relu": (lambda h: h if h > 0 else mp.mpf(0), lambda h: mp.mpf(1) if h > 0 else mp.mpf(0)),
    "hard_tanh": (lambda h: max(min(h, 1), -1), lambda h: mp.mpf(1) if abs(h) < 1 else mp.mpf(0)),
}
KINKS = {"relu": [0], "hard_tanh": [-1, 1]}


def ref_expect(f, q, kinks=()):
    """E_z[f(sqrt(q) z)] by mpmath's adaptive tanh-sinh quadrature, split at kinks and at the scale of phi."""
    s = mp.sqrt(mp.mpf(q))
    pts = {mp.mpf(0)} | {mp.mpf(k) / s for k in kinks}
    for k in (1, 4, 16):  # phi varies on |h| ~ 1: |z| ~ 1/sqrt(q)
        if k / s < 40:
            pts |= {k / s, -k / s}
    edges = [-mp.inf] + sorted(pts) + [mp.inf]
    g = lambda z: f(s * z) * mp.exp(-z * z / 2) / mp.sqrt(2 * mp.pi)
    return mp.quad(g, edges)


QS = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 3.0, 3.99, 10.0, 100.0, 1e3, 1e4]


@pytest.mark.parametrize("act", list(REF))
@pytest.mark.parametrize("k", [1, 2])
def test_mu_matches_adaptive_quadrature_to_1e_12(act, k):
    # The issue asks for 1e-10; the code achieves 5e-16 (measured), so the test holds it to 1e-12.
    # mu2 is checked for smooth activations too: mu2 = mu1 only for relu, hard_tanh and linear.
    d = REF[act][1]
    for q in QS:
        ref = ref_expect(lambda h: d(h) ** (2 * k), q, KINKS.get(act, ()))
        assert theory.mu(act, q, k) == pytest.approx(float(ref), rel=1e-12), (act, k, q)


def test_a_kink_nobody_declared_is_found_by_the_adaptive_splitting():
    # relu(h - 0.3): its kink is not in theory._KINKS, so only the panel halving can resolve it.
    register_activation("test_shifted_relu", lambda x: torch.relu(x - 0.3), overwrite=True)
    try:
        for q in (0.01, 1.0, 100.0):
            ref = 0.5 * math.erfc(0.3 / math.sqrt(2 * q))  # P(sqrt(q) z > 0.3)
            assert theory.mu("test_shifted_relu", q, 1) == pytest.approx(ref, rel=1e-12)
    finally:
        activations._REGISTRY.pop("test_shifted_relu", None)


def test_mu2_differs_from_mu1_for_smooth_activations():
    for act in ("tanh", "test_erf", "sigmoid"):
        mu1, mu2 = theory.mu(act, 1.0, 1), theory.mu(act, 1.0, 2)
        ref2 = float(ref_expect(lambda h: REF[act][1](h) ** 4, 1.0))
        assert mu2 == pytest.approx(ref2, rel=1e-10) and abs(mu2 - mu1) > 0.05 * mu1


def test_large_q_where_a_midpoint_rule_was_9_percent_off():
    for q in (1e5, 1e8):
        ref = ref_expect(lambda h: mp.sech(h) ** 4, q)
        assert theory.mu("tanh", q, 1) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("act", ["tanh", "test_erf", "relu", "hard_tanh"])
def test_variance_map_matches_adaptive_quadrature(act):
    phi = REF[act][0]
    for q in (1e-3, 0.3, 2.0, 50.0):
        ref = 1.3 * ref_expect(lambda h: phi(h) ** 2, q, KINKS.get(act, ())) + 0.05
        assert theory.variance_map(act, q, 1.3, 0.05) == pytest.approx(float(ref), rel=1e-12)


def ref_fixed_point(act, sw2, sb2, q0):
    phi = REF[act][0]
    return mp.findroot(lambda q: sw2 * ref_expect(lambda h: phi(h) ** 2, q, KINKS.get(act, ())) + sb2 - q, q0)


# (activation, sigma_w^2, sigma_b^2): points of neural-tangents' mean-field tables (Poole et al.'s setting)
NT_CASES = [("tanh", 1.5, 0.05), ("tanh", 2.5, 0.0), ("test_erf", 2.0, 0.1), ("relu", 1.6, 0.2)]


@pytest.mark.parametrize("act,sw2,sb2", NT_CASES)
def test_q_star_chi_and_layer_q_match_a_30_digit_table(act, sw2, sb2):
    phi, d = REF[act]
    kinks = KINKS.get(act, ())
    qstar = ref_fixed_point(act, sw2, sb2, 1.0) if act != "relu" else mp.mpf(sb2) / (1 - mp.mpf(sw2) / 2)
    chi = sw2 * ref_expect(lambda h: d(h) ** 2, qstar, kinks)
    assert theory.fixed_point(act, sw2, sb2) == pytest.approx(float(qstar), rel=1e-13)
    assert theory.chi(act, sw2, float(qstar)) == pytest.approx(float(chi), rel=1e-13)
    q, qs = sw2 * mp.mpf("0.7") + sb2, []
    for _ in range(8):
        qs.append(q)
        q = sw2 * ref_expect(lambda h: phi(h) ** 2, q, kinks) + sb2
    got = theory.variance_trajectory(act, 8, sw2, 0.7, sb2)
    np.testing.assert_allclose(got, [float(v) for v in qs], rtol=1e-13)


def test_fixed_point_tolerance_is_tight():
    # A "no change" threshold 1000x looser would call these every-q-fixed (returning q0) or 0.
    assert math.isinf(theory.fixed_point("linear", 1.0005))
    assert math.isinf(theory.fixed_point("linear", 1.0 + 1e-8))
    assert theory.fixed_point("linear", 1.0, q0=0.37) == 0.37
    ref = ref_fixed_point("tanh", 1.001, 0.0, 5e-4)
    assert theory.fixed_point("tanh", 1.001) == pytest.approx(float(ref), rel=1e-9)
    assert float(ref) == pytest.approx(5.0e-4, rel=1e-2)


def test_limits_at_q_zero_and_infinity():
    assert theory.mu("relu", 0.0, 1) == 0.5 and theory.mu("relu", 0.0, 2) == 0.5  # q -> 0+, not relu'(0) = 0
    assert theory.mu("tanh", 0.0, 1) == 1.0
    assert theory.mu("tanh", math.inf, 1) == 0.0 and theory.mu("relu", math.inf, 1) == 0.5
    r = theory.predict(0, 10, "relu", sigma_w2=3.0, input_variance=0.0)
    assert r.chi == pytest.approx(1.5)  # sigma_w^2 / 2


def test_relu_ordered_phase_returns_predictions():
    # sigma_w^2 < 2, no bias: q* = 0, mu_k = 1/2 in the limit; eq. 3.7 is 1/N + 2 L/N (gaussian).
    r = theory.predict(5, 10, "relu", "gaussian", sigma_w2=1.5)
    assert r.q_star == 0.0 and r.mu1 == 0.5 and r.mu2 == 0.5 and r.chi == pytest.approx(0.75)
    np.testing.assert_allclose(r.vni_asymptotic, (1 + 2 * np.arange(1, 6)) / 10)
    assert np.all(np.isfinite(r.vni_finite))
    # relu is positively homogeneous: the finite-width form does not depend on sigma_w^2
    np.testing.assert_allclose(r.vni_finite, theory.predict(5, 10, "relu", "gaussian").vni_finite)


@pytest.mark.parametrize("cmd", ["theory", "vni"])
def test_cli_relu_below_critical_does_not_crash(cmd):
    extra = ["--seeds", "2", "--samples", "20", "--quiet"] if cmd == "vni" else []
    p = subprocess.run([sys.executable, "-m", "depthscope", cmd, "--depth", "3", "--width", "8", "--activation",
                        "relu", "--sigma-w2", "1.5", "--json", *extra], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr


def test_predict_rejects_negative_input_variance():
    with pytest.raises(ValueError, match="input_variance"):
        theory.predict(3, 10, input_variance=-1.0)
