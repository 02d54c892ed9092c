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
