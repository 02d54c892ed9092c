"""Signal propagation (issue 12 section 3): closed forms (relu arc-cosine, erf arcsine), Monte Carlo, simulated nets."""
import math

import numpy as np
import pytest
import torch

from depthscope import activations, signal, theory
from depthscope.activations import register_activation
from depthscope.nets import NetSpec, stream_layers



@pytest.fixture(autouse=True, scope="module")
def _erf_activation():
    # registered for this module only: other tests see the built-in registry
    register_activation("test_erf", torch.erf, smooth=True, overwrite=True)
    yield
    activations._REGISTRY.pop("test_erf", None)


@pytest.mark.parametrize("c", [-0.9, -0.3, 0.0, 0.4, 0.8, 0.99])
def test_relu_c_map_is_the_arc_cosine_map(c):
    ref = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
    assert signal.correlation_map("relu", c, 2.0, 0.0, q=0.7) == pytest.approx(ref, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("c", [-0.7, 0.0, 0.5, 0.95])
def test_erf_pair_expectation_closed_form(c):
    # Williams (1997): E[erf(u1) erf(u2)] = (2/pi) arcsin(2 q c / (1 + 2 q))
    for q in (0.3, 2.0):
        ref = 2 / math.pi * math.asin(2 * q * c / (1 + 2 * q))
        assert signal.pair_expectation("test_erf", q, c) == pytest.approx(ref, rel=1e-10, abs=1e-13)


def test_pair_expectations_against_monte_carlo():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 2_000_000, generator=g, dtype=torch.float64)
    q, c = 1.3, 0.6
    u1 = math.sqrt(q) * z[0]
    u2 = math.sqrt(q) * (c * z[0] + math.sqrt(1 - c * c) * z[1])
    for act, f, df in [("tanh", torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
                       ("hard_tanh", torch.nn.functional.hardtanh, lambda x: (x.abs() < 1).double())]:
        for deriv, fn in ((False, f), (True, df)):
            prod = fn(u1) * fn(u2)
            se = float(prod.std() / math.sqrt(len(prod)))
            assert signal.pair_expectation(act, q, c, deriv) == pytest.approx(float(prod.mean()), abs=4 * se)


def test_phases_and_depth_scales():
    o = signal.signal("tanh", 0.8, 0.0)
    assert o.phase == "ordered" and o.c_star == 1.0 and o.q_star == 0.0
    ch = signal.signal("tanh", 2.5, 0.1)
    assert ch.phase == "chaotic" and 0 < ch.c_star < 1 and ch.chi_1 > 1 > ch.chi_c
    assert signal.correlation_map("tanh", ch.c_star, 2.5, 0.1) == pytest.approx(ch.c_star, abs=1e-10)
    assert ch.xi_c == pytest.approx(-1 / math.log(ch.chi_c))
    # xi_q: the variance map's slope at q* (finite differences) is chi_1 + sigma_w^2 E[phi'' phi]
    eps = 1e-5 * ch.q_star
    slope = (theory.variance_map("tanh", ch.q_star + eps, 2.5, 0.1)
             - theory.variance_map("tanh", ch.q_star - eps, 2.5, 0.1)) / (2 * eps)
    assert ch.xi_q == pytest.approx(-1 / math.log(slope), rel=1e-6)
    # relu with a bias: q' = (sigma_w^2/2) q + sigma_b^2, so xi_q = -1/log(sigma_w^2/2); c* = 1 below 2
    r = signal.signal("relu", 1.5, 0.1)
    assert r.xi_q == pytest.approx(-1 / math.log(0.75), rel=1e-10) and r.phase == "ordered"
    assert signal.signal("tanh", 1.0, 0.0).phase == "critical"


def test_c_converges_to_c_star_at_rate_xi_c():
    ch = signal.signal("tanh", 2.5, 0.1)
    cs = signal.correlation_trajectory("tanh", ch.c_star + 1e-3, 25, 2.5, 0.1)  # start in the linear regime
    gap = np.abs(cs - ch.c_star)
    rate = -np.log(gap[24] / gap[4]) / 20
    assert 1 / rate == pytest.approx(ch.xi_c, rel=1e-3)


def test_correlation_through_a_simulated_net_follows_the_c_map():
    # N = 1000 tanh net at (2.5, 0.1), inputs scaled so layer 1 starts at q* with correlation 0.2: the
    # cosine between the pre-activations of two inputs against the c-map, mean over 16 pairs and 2 seeds.
    sw2, sb2, n, depth = 2.5, 0.1, 1000, 12
    ch = signal.signal("tanh", sw2, sb2)
    var = (ch.q_star - sb2) / sw2
    cs = signal.correlation_trajectory("tanh", 0.2, depth, sw2, sb2)
    got = np.zeros(depth)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(16, n, generator=g, dtype=torch.float64)
        e = torch.randn(16, n, generator=g, dtype=torch.float64)
        # the shared bias adds sigma_b^2 to layer 1's covariance: inputs at c_in give it correlation 0.2
        c_in = (0.2 * ch.q_star - sb2) / (sw2 * var)
        # e orthogonal to a and of its norm: each input pair has cosine c_in exactly
        e = e - (e * a).sum(1, keepdim=True) / (a * a).sum(1, keepdim=True) * a
        e = e * a.norm(dim=1, keepdim=True) / e.norm(dim=1, keepdim=True)
        x = torch.cat([a, c_in * a + math.sqrt(1 - c_in**2) * e]) * math.sqrt(var)
        spec = NetSpec(depth=depth, width=n, activation="tanh", sigma_w2=sw2, sigma_b=math.sqrt(sb2))
        for l, h, _ in stream_layers(spec, x, seed):
            ha, hb = h[:16], h[16:]
            got[l - 1] += float(((ha * hb).sum(1) / (ha.norm(dim=1) * hb.norm(dim=1))).mean()) / 2
    np.testing.assert_allclose(got, cs, atol=0.02)


def test_phase_diagram(tmp_path):
    d = signal.phase_diagram("tanh", [0.5, 1.0, 2.0], [0.0, 0.2], depth=20, width=100)
    assert d["chi_1"].shape == (2, 3) and d["vni"].shape == (2, 3)
    assert d["chi_1"][0, 0] < 1 and d["chi_1"][0, 1] == pytest.approx(1.0) and d["chi_1"][0, 2] > 1
    assert np.all(d["vni"] >= 1 / 100)
    signal.draw_phase_diagram(d, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_cli_signal_and_phase_diagram(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "pd.png"
    p = subprocess.run([sys.executable, "-m", "depthscope", "theory", "--depth", "2", "--width", "10", "--activation",
                        "relu", "--signal", "--json", "--phase-diagram", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["signal"]["phase"] == "critical" and doc["signal"]["chi_1"] == pytest.approx(1.0)
    assert out.stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "depthscope", "theory", "--depth", "2", "--width", "10",
                          "--phase-diagram", str(tmp_path / "x.txt")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_c_map_off_the_fixed_point_is_normalised_by_the_next_variance():
    # identical inputs stay identical at any q (the map divides by q_next, not q)
    for q in (0.3, 2.0):
        assert signal.correlation_map("tanh", 1.0, 2.5, 0.1, q=q) == pytest.approx(1.0, abs=1e-12)
        qn = theory.variance_map("tanh", q, 2.5, 0.1)
        ref = (2.5 * signal.pair_expectation("tanh", q, 0.4) + 0.1) / qn
        assert signal.correlation_map("tanh", 0.4, 2.5, 0.1, q=q) == pytest.approx(ref, rel=1e-12)


def test_odd_phi_without_bias_has_c_star_zero_in_chaos():
    # C(-1) = -1 is a fixed point without biases (anti-correlated inputs stay so) but an unstable one, like c = 1;
    # the stable one is 0 (C is odd), where the slope is sigma_w^2 E[phi']^2 (u_1, u_2 independent):
    # hard_tanh: E phi'(u) = P(|u| < 1) = erf(1 / sqrt(2 q*))
    s = signal.signal("hard_tanh", 2.0, 0.0)
    assert s.phase == "chaotic" and s.c_star == pytest.approx(0.0, abs=1e-9)
    assert s.chi_c == pytest.approx(2.0 * math.erf(1 / math.sqrt(2 * s.q_star)) ** 2, rel=1e-9)
    assert s.xi_c == pytest.approx(-1 / math.log(s.chi_c)) and math.isfinite(s.xi_c)


def test_xi_c_measured_on_simulated_nets_ordered_phase():
    # ordered tanh (0.8, 0.05): 1 - c_l from 0.9 on N = 200 nets, 16 pairs x 6 nets (0.5 s). Measured 2.288 +- 0.017
    # against xi_c = 2.295 (-0.3%): the fitted depth scale within 2% (3 se)
    f = signal.measure_xi_c("tanh", 0.8, 0.05, 200, delta=0.1, pairs=16, nets=6)
    assert f.c_star == 1.0 and f.first == 1 and f.last - f.first >= 10  # relative noise stays O(1/sqrt N)
    assert f.se < 0.01 * f.xi_c
    assert f.xi == pytest.approx(f.xi_c, rel=0.02)


def test_xi_c_measured_on_simulated_nets_chaotic_phase():
    # chaotic hard_tanh (2.0, 0.05), c* = 0.319: two trajectories from c* -/+ 0.1 on the same N = 200 nets
    # (32 pairs x 16 nets, ~2 s). Measured 7.40 +- 0.34 against xi_c = 7.67 (-3.5%, 0.8 se): within 3 se and 10%
    f = signal.measure_xi_c("hard_tanh", 2.0, 0.05, 200, delta=0.1, pairs=32, nets=16)
    assert 0.3 < f.c_star < 0.33 and f.first == 1 and f.last >= 10
    assert f.se < 0.05 * f.xi_c
    assert abs(f.xi - f.xi_c) <= 3 * f.se and f.xi == pytest.approx(f.xi_c, rel=0.10)
    assert f.xi_map == pytest.approx(f.xi_c, rel=0.01)  # the range is past the c-map's transient


def test_asymptotic_onset_skips_the_transient():
    # relu's map is 1 - C = chi (1 - c) + O((1 - c)^{3/2}) near 1: the local depth scale approaches xi_c only like
    # sqrt(1 - c), so the fit starts late (layer 24 for delta = 0.1); tanh's (analytic) map is within 1% from layer 1
    assert signal.asymptotic_onset("tanh", 0.8, 0.05, 0.1) == 1
    first = signal.asymptotic_onset("relu", 1.5, 0.1, 0.1)
    assert 15 <= first <= 35
    s = signal.signal("relu", 1.5, 0.1)
    g = 1 - signal.correlation_trajectory("relu", 0.9, first + 10, 1.5, 0.1)
    local = -1 / np.log(g[1:] / g[:-1])
    assert np.all(np.abs(local[first - 1:] / s.xi_c - 1) <= 0.01) and abs(local[first - 3] / s.xi_c - 1) > 0.01
