"""Table 3.1's Householder orthogonal sampler (depthscope.haar) against geqrf, haar_orthogonal and the nets."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from depthscope.data import gaussian
from depthscope.experiments.chapter3 import (_stream_step, check_sampler, householder_layer, stream_crossings,
                                             stream_vni)
from depthscope.haar import haar_apply, haar_matrix, haar_reflectors, reflectors_from_columns
from depthscope.inits import haar_orthogonal
from depthscope.metrics import vni
from depthscope.nets import NetSpec, apply_layer, layer_params


# small matrices: one thread (conftest.one_thread; on a loaded 2-core machine two threads' syncing costs ms per layer)
pytestmark = pytest.mark.usefixtures("one_thread")


def _reduced_columns(a: torch.Tensor, refl: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """z[k:, k] = (H_k-1 ... H_1 A)[k:, k]: the column geqrf reflects at step k, by applying its reflectors."""
    n = a.shape[0]
    z, m = torch.zeros_like(a), a.clone()
    for k in range(n):
        z[k:, k] = m[k:, k]
        v = torch.zeros(n, dtype=a.dtype)
        v[k] = 1.0
        v[k + 1:] = refl[k + 1:, k]
        m = m - tau[k] * torch.outer(v, v @ m)
    return z


@pytest.mark.parametrize("n", [1, 2, 7])
def test_reflectors_are_geqrfs_when_given_the_columns_geqrf_reflects(n):
    """The construction is LAPACK's (dlarfg): fed the columns geqrf reflected, it returns geqrf's reflectors,
    taus and the signs of R's diagonal, and Q D is haar_orthogonal's matrix for the same Gaussian draw."""
    g = torch.Generator().manual_seed(11)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    refl, tau = torch.geqrf(a)
    r = reflectors_from_columns(_reduced_columns(a, refl, tau))
    assert torch.allclose(torch.tril(r.a, -1), torch.tril(refl, -1), rtol=0, atol=1e-13)
    assert torch.allclose(r.tau, tau, rtol=0, atol=1e-13)
    assert torch.equal(r.signs, torch.sign(torch.diagonal(refl)))
    q = haar_orthogonal(n, n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert torch.allclose(haar_matrix(r), q, rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", [300, 1000])
def test_householder_weights_are_orthogonal_and_applied_without_forming_them(n):
    # measured: max |W W^T - I| 2.4e-7 (n = 300), 2.0e-7 (1000) in float32; |ormqr - x W^T| 3.1e-6 / 4.3e-6
    r = haar_reflectors(n, generator=torch.Generator().manual_seed(2))
    w = haar_matrix(r).double()
    assert (w @ w.T - torch.eye(n, dtype=torch.float64)).abs().max() < 1e-6
    x = torch.randn(64, n, generator=torch.Generator().manual_seed(3))
    assert (haar_apply(x, r, 1.5).double() - 1.5 * x.double() @ w.T).abs().max() < 1e-5


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def test_householder_sampler_is_haar():
    """2000 draws at n = 4 against Haar's exact moments (E tr Q = 0, E (tr Q)^2 = 1, E Q_11^2 = 1/n,
    E Q_11^4 = 3/(n(n+2)), P(det Q = +1) = 1/2, each within 4 standard errors) and against 2000 draws of the
    float64 QR sampler (two-sample KS on tr Q and Q_11, below the 0.1% critical value). Without the sign fix
    D, det Q = (-1)^(n-1) always."""
    n, k = 4, 2000
    g = torch.Generator().manual_seed(0)
    qs = torch.stack([haar_matrix(haar_reflectors(n, generator=g, dtype=torch.float64)) for _ in range(k)])
    g = torch.Generator().manual_seed(1)
    ref = torch.stack([haar_orthogonal(n, n, generator=g, dtype=torch.float64) for _ in range(k)])
    tr = torch.diagonal(qs, dim1=-2, dim2=-1).sum(-1).numpy()
    q11 = qs[:, 0, 0].numpy()
    det = torch.linalg.det(qs).numpy()
    for sample, mean in [(tr, 0.0), (tr**2, 1.0), (q11**2, 1 / n), (q11**4, 3 / (n * (n + 2))),
                         ((det > 0).astype(float), 0.5)]:
        se = sample.std(ddof=1) / math.sqrt(k)
        assert abs(sample.mean() - mean) < 4 * se, (sample.mean(), mean, se)
    crit = 1.95 * math.sqrt(2 / k)  # KS, alpha = 0.001
    assert _ks(tr, torch.diagonal(ref, dim1=-2, dim2=-1).sum(-1).numpy()) < crit
    assert _ks(q11, ref[:, 0, 0].numpy()) < crit


def test_householder_step_is_the_layer_with_the_formed_weights():
    """One layer of the stepped net (ormqr) equals apply_layer with W = sigma_w Q D formed, to float32
    rounding (measured 9e-7); Gaussian layers ignore the sampler (bit-identical)."""
    for act, sw2 in (("tanh", None), ("tanh", 1.7), ("relu", None)):
        spec = NetSpec(5, 64, act, "orthogonal", sigma_w2=sw2, sigma_b=0.3)
        x = gaussian(32, 64, 1.0, seed=1)
        y = _stream_step(spec, 0, 3, x, "cpu", "householder")
        r, b = householder_layer(spec, 0, 3)
        _, ref = apply_layer(spec, 3, x, haar_matrix(r) * math.sqrt(spec.resolved_sigma_w2), b)
        if act == "relu":  # the step rescales homogeneous activations to unit mean square
            ref = ref / ref.pow(2).mean().sqrt()
        assert (y - ref).abs().max() < 1e-5
        assert not torch.allclose(y, _stream_step(spec, 0, 3, x, "cpu", "qr"), atol=1e-2)  # other weights
    spec = NetSpec(5, 64, "tanh", "gaussian")
    assert torch.equal(_stream_step(spec, 0, 3, x, "cpu", "householder"), _stream_step(spec, 0, 3, x, "cpu", "qr"))
    w, b = layer_params(spec, 0, 3)
    assert torch.equal(_stream_step(spec, 0, 3, x, "cpu", "householder"), torch.tanh(x @ w.T + b))


@pytest.mark.parametrize("sampler", ["qr", "householder"])
def test_orthogonal_linear_net_keeps_the_inputs_r_sq(sampler):
    """R_sq is invariant under an orthogonal map, so a linear orthogonal net's R_sq is its input's at every
    depth; over 200 layers at width 128 it stays within 1e-6 relative (measured 7e-8 qr, 1.3e-7 householder)."""
    spec = NetSpec(200, 128, "linear", "orthogonal")
    x = gaussian(64, 128, 1.0, seed=5)
    r0 = float(vni(x))
    r, _ = stream_vni(spec, x, 5, sampler=sampler)
    assert len(r) == 200 and max(abs(v - r0) / r0 for v in r.values()) < 1e-6


def test_householder_and_qr_nets_agree_statistically():
    """Orthogonal relu and tanh nets (width 32, 64 samples), 16 seeds per sampler: the mean R_sq at depths
    10 and 40 and the mean first layer above 0.5 (relu) agree within 4 standard errors of the difference."""
    seeds = range(16)
    for act, depths in (("relu", (10, 40)), ("tanh", (10, 40))):
        spec = NetSpec(40, 32, act, "orthogonal")
        got = {}
        for sampler in ("qr", "householder"):
            got[sampler] = np.array([[stream_vni(spec, gaussian(64, 32, 1.0, seed=100 + s), s, measure=depths,
                                                 sampler=sampler)[0][l] for l in depths] for s in seeds])
        a, b = got["qr"], got["householder"]
        se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * se), (a.mean(0), b.mean(0), se)
    spec = NetSpec(200, 32, "relu", "orthogonal")
    cross = {}
    for sampler in ("qr", "householder"):
        cross[sampler] = np.array([stream_crossings(spec, gaussian(64, 32, 1.0, seed=100 + s), s, thresholds=(0.5,),
                                                    stop_above=0.5, sampler=sampler)[1][0.5] for s in seeds],
                                  dtype=float)
    a, b = cross["qr"], cross["householder"]
    assert abs(a.mean() - b.mean()) < 4 * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def test_check_sampler_refuses_what_it_does_not_cover():
    with pytest.raises(ValueError, match="unknown orthogonal sampler 'svd'"):
        check_sampler(NetSpec(3, 8, "tanh", "orthogonal"), "svd")
    for spec in (NetSpec(3, 8, "tanh", "orthogonal", arch="residual"), NetSpec(3, 8, "tanh", "orthogonal",
                                                                              in_features=5)):
        with pytest.raises(ValueError, match="square feed-forward orthogonal layers only"):
            stream_vni(spec, torch.zeros(4, spec.n_in), 0, sampler="householder")
    check_sampler(NetSpec(3, 8, "tanh", "gaussian", arch="residual"), "householder")  # Gaussian: no-op
