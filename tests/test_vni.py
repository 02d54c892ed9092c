"""VNI (eq. 3.4/3.5) against its brute-force double sum, and its limits."""
import math

import pytest
import torch

from conftest import compare
from depthscope.metrics import (
    CovarianceAccumulator,
    debias_vni,
    effective_nodes,
    participation_ratio,
    rho_squared,
    vni,
    vni_from_covariance,
)


def vni_double_sum(x: torch.Tensor) -> float:
    """Eq. 3.4 literally: sum_ij rho_ij^2 s_i^2 s_j^2 / sum_ij s_i^2 s_j^2, with explicit loops."""
    x = x.to(torch.float64)
    n = x.shape[1]
    mean = x.mean(0)
    var = [float(((x[:, i] - mean[i]) ** 2).mean()) for i in range(n)]
    num = den = 0.0
    for i in range(n):
        for j in range(n):
            cov = float(((x[:, i] - mean[i]) * (x[:, j] - mean[j])).mean())
            rho2 = cov**2 / (var[i] * var[j])
            num += rho2 * var[i] * var[j]
            den += var[i] * var[j]
    return num / den


@pytest.mark.parametrize("samples,nodes", [(50, 7), (7, 50), (30, 30), (2, 5)], ids=["tall", "wide", "square", "two-samples"])
def test_vni_equals_double_sum(samples, nodes, gen):
    mix = torch.randn(nodes, nodes, generator=gen, dtype=torch.float64)
    x = torch.randn(samples, nodes, generator=gen, dtype=torch.float64) @ mix
    compare(vni(x), vni_double_sum(x), rtol=1e-10)


def test_vni_limits(gen):
    # Collinear nodes: R_sq = 1.
    z = torch.randn(100, 1, generator=gen, dtype=torch.float64)
    scales = torch.linspace(0.5, 3.0, 8, dtype=torch.float64)
    compare(vni(z * scales), 1.0, rtol=1e-12)
    # Independent equal-variance nodes, many samples: R_sq -> 1/N (+ 1/S sampling excess).
    x = torch.randn(20000, 10, generator=gen, dtype=torch.float64)
    assert abs(float(vni(x)) - 0.1) < 2e-3
    assert float(vni(x)) >= 0.1 - 1e-12


def test_vni_is_scale_and_shift_invariant(gen):
    x = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    compare(vni(3.0 * x + 7.0), vni(x), rtol=1e-12)


def test_rho_squared_matches_corrcoef_and_reweights_to_vni(gen):
    x = torch.randn(60, 5, generator=gen, dtype=torch.float64) @ torch.randn(5, 5, generator=gen, dtype=torch.float64)
    r2 = rho_squared(x)
    compare(r2, torch.corrcoef(x.T) ** 2, rtol=1e-10)
    v = x.var(0)
    compare((r2 * v[:, None] * v[None, :]).sum() / (v.sum() ** 2), vni(x), rtol=1e-10)


def test_rho_squared_constant_node_is_uncorrelated(gen):
    x = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    x[:, 1] = 2.0
    r2 = rho_squared(x)
    assert r2[1, 0] == 0 and r2[0, 1] == 0 and r2[1, 1] == 1


def test_accumulator_matches_batch_vni(gen):
    x = torch.randn(257, 12, generator=gen, dtype=torch.float64) @ torch.randn(12, 12, generator=gen, dtype=torch.float64)
    acc = CovarianceAccumulator(12)
    for chunk in torch.split(x, [1, 100, 56, 100]):
        acc.update(chunk)
    compare(acc.covariance(), torch.cov(x.T), rtol=1e-10)
    compare(acc.vni(), vni(x), rtol=1e-10)
    compare(vni_from_covariance(torch.cov(x.T)), vni(x), rtol=1e-10)


def test_debias_vni_removes_the_wishart_excess(gen):
    # Independent nodes: the raw estimate reads ~1/N + 1/S, the debiased one ~1/N.
    raw = torch.stack([vni(torch.randn(100, 40, generator=gen, dtype=torch.float64)) for _ in range(200)]).mean()
    assert float(raw) == pytest.approx(1 / 40 + 1 / 100, rel=0.05)
    assert float(debias_vni(raw, 100)) == pytest.approx(1 / 40, rel=0.05)


def test_effective_nodes_and_participation_ratio():
    assert effective_nodes(1.0, 50) == 1.0
    assert math.isclose(effective_nodes(1 / 50, 50), 50.0)
    assert participation_ratio(0.25) == 4.0


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.zeros(1, 4)], ids=["1d", "one-sample"])
def test_vni_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="sample|matrix"):
        vni(bad)


# -- vni_moments: the float32 fast path of the watch, against the float64 reference -------------------------
def _ill_conditioned(name: str) -> torch.Tensor:
    """float32 activations that break naive float32 covariances; each named after what makes it hard."""
    g = torch.Generator().manual_seed(7)
    if name == "offset-1e4":  # a common offset 10^4 times the spread: E[x^2] - E[x]^2 loses every digit
        return (1e4 + torch.randn(3000, 24, generator=g)).float()
    if name == "scales-1e-4..1e4":  # node variances over 16 decades
        return torch.randn(2000, 30, generator=g) * torch.logspace(-4, 4, 30)
    if name == "collinear":  # rank one plus 1e-3 noise: VNI ~ 1 - 1e-6
        return torch.randn(2500, 1, generator=g) * torch.randn(1, 40, generator=g) + 1e-3 * torch.randn(2500, 40, generator=g)
    if name == "wide-offset":  # nodes > samples: the row-Gram path, with an offset
        return 50.0 + torch.randn(60, 700, generator=g) @ torch.randn(700, 700, generator=g) / 30
    if name == "tall-mixed":  # many rows (16 chunks), correlated nodes, offset and a constant node
        x = torch.randn(8192, 16, generator=g) @ torch.randn(16, 16, generator=g) + 300.0
        x[:, 3] = 7.0
        return x
    raise KeyError(name)


ILL = ["offset-1e4", "scales-1e-4..1e4", "collinear", "wide-offset", "tall-mixed"]


@pytest.mark.parametrize("chunk", [7, 512, 10**6], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("name", ILL)
def test_vni_moments_float32_within_its_stated_bound_of_the_float64_reference(name, chunk):
    from depthscope.metrics.vni import vni_moments, vni_moments_error

    x = _ill_conditioned(name)
    assert x.dtype == torch.float32
    r, mean, var = vni_moments(x, chunk=chunk).tolist()
    xd = x.double()  # the reference sees exactly the same float32 numbers
    ref_r = float(vni(x))
    ref_var = float(xd.var(0, unbiased=False).mean())  # eq. 4.2's shared variance
    # the stated first-order bounds, with a chunk of the whole matrix for chunk=10**6
    k = min(chunk, max(x.shape))
    compare(r, ref_r, rtol=0, atol=vni_moments_error(k), what="R_sq")
    compare(var, ref_var, rtol=(k + 6) * 2.0**-24, what="shared variance")
    compare(mean, float(xd.mean()), rtol=0, atol=2.0**-24 * float((xd - xd.mean(0)).abs().max()) + 1e-12, what="mean")


def test_vni_moments_bound_is_not_vacuous():
    """The bound is tight enough to reject the naive float32 covariance E[x x^T] - m m^T that it replaces."""
    from depthscope.metrics.vni import vni_moments_error

    x = _ill_conditioned("offset-1e4")
    m = x.mean(0)
    c = x.T @ x / x.shape[0] - torch.outer(m, m)  # all in float32
    naive = float((c.double() ** 2).sum() / torch.diagonal(c.double()).sum() ** 2)
    assert abs(naive - float(vni(x))) > 100 * vni_moments_error(512)


def test_vni_moments_float64_and_half_inputs(gen):
    from depthscope.metrics.vni import vni_moments

    x = torch.randn(300, 20, generator=gen, dtype=torch.float64) @ torch.randn(20, 20, generator=gen, dtype=torch.float64)
    r, mean, var = vni_moments(x).tolist()  # float64 in, float64 arithmetic: the reference to rounding
    compare([r, mean, var], [float(vni(x)), float(x.mean()), float(x.var(0, unbiased=False).mean())], rtol=1e-12)
    h = x.to(torch.bfloat16)
    compare(vni_moments(h)[0], vni(h), rtol=0, atol=1e-5)
    assert math.isnan(float(vni_moments(torch.ones(5, 3))[0]))  # every node constant
    with pytest.raises(ValueError, match="at least 2 samples"):
        vni_moments(torch.ones(1, 3))
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        vni_moments(x, chunk=0)


def test_vni_moments_of_a_batch_equals_one_call_per_matrix(gen):
    from depthscope.metrics.vni import vni_moments

    xs = [torch.randn(200, 12, generator=gen) @ torch.randn(12, 12, generator=gen) + 3.0 * k for k in range(4)]
    batched = vni_moments(torch.stack(xs))
    assert batched.shape == (4, 3) and batched.dtype == torch.float64
    compare(batched, torch.stack([vni_moments(x) for x in xs]), rtol=1e-6)
    compare(batched[:, 0], torch.stack([vni(x) for x in xs]), rtol=1e-6)
    wide = torch.randn(2, 3, 5, 40, generator=gen)  # any leading batch shape, row-Gram path
    compare(vni_moments(wide)[1, 2, 0], vni(wide[1, 2]), rtol=1e-6)


def test_vni_moments_overwrite_centres_in_place_with_the_same_numbers(gen):
    from depthscope.metrics.vni import vni_moments

    x = torch.randn(3, 100, 7, generator=gen) + 5.0
    keep = x.clone()
    ref = vni_moments(x)
    assert torch.equal(x, keep)  # the default leaves the input alone
    got = vni_moments(x, overwrite=True)
    assert torch.equal(got, ref)
    compare(x, keep - keep.mean(1, keepdim=True), rtol=0, atol=1e-5)  # x now holds X_c
    h = keep.to(torch.bfloat16)
    h_copy = h.clone()
    vni_moments(h, overwrite=True)  # not float32/64: converted, and the input is left alone
    assert torch.equal(h, h_copy)
