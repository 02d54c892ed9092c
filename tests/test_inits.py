"""Weight initializations (inits.py): each distribution checked against its definition, on non-square shapes."""
import math

import numpy as np
import pytest
import torch

from conftest import compare
from depthscope.inits import check_init, haar_orthogonal, init_weight

SHAPES = [(64, 64), (32, 80), (80, 32)]  # square, wide (fan_out < fan_in), tall (fan_out > fan_in)
SHAPE_IDS = ["square", "wide", "tall"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_orthogonal_init_is_scaled_isometry(shape, gen):
    w = init_weight(*shape, "orthogonal", 2.0, generator=gen, dtype=torch.float64)
    n_out, n_in = shape
    if n_out <= n_in:  # orthonormal rows times sigma_w
        compare(w @ w.T, 2.0 * torch.eye(n_out), rtol=0, atol=1e-10)
    else:  # orthonormal columns, rescaled so each unit sees sigma_w^2 Var[x]
        compare(w.T @ w, 2.0 * n_out / n_in * torch.eye(n_in), rtol=0, atol=1e-10)


@pytest.mark.parametrize("init", ["gaussian", "uniform", "orthogonal"])
@pytest.mark.parametrize("shape", [(400, 400), (120, 480), (480, 120)], ids=SHAPE_IDS)
def test_init_variance_is_sigma_w2_over_fan_in(init, shape, gen):
    """Var[W_ij] = sigma_w^2 / fan_in, fan_in = shape[1]: a non-square matrix tells fan_in from fan_out (4x apart)."""
    fan_out, fan_in = shape
    w = init_weight(fan_out, fan_in, init, 1.7, generator=gen, dtype=torch.float64)
    assert w.shape == shape
    assert float(w.var()) * fan_in == pytest.approx(1.7, rel=0.02)
    assert abs(float(w.mean())) < 4 * math.sqrt(1.7 / fan_in / w.numel())  # zero mean: 4 standard errors


def test_uniform_init_is_uniform_on_its_whole_interval(gen):
    """U(-a, a), a = sqrt(3 sigma_w^2 / fan_in): reaches both ends, and its CDF is the uniform one."""
    fan_out, fan_in = 100, 300
    w = init_weight(fan_out, fan_in, "uniform", 1.0, generator=gen, dtype=torch.float64).flatten()
    a = math.sqrt(3.0 / fan_in)
    assert float(w.max()) <= a and float(w.min()) >= -a
    assert float(w.max()) > a * (1 - 1e-3) and float(w.min()) < -a * (1 - 1e-3)  # 30,000 draws: both ends reached
    u = np.sort((w.numpy() + a) / (2 * a))
    ks = np.max(np.abs(u - np.arange(1, u.size + 1) / u.size))  # Kolmogorov-Smirnov distance to U(0, 1)
    assert ks < 1.63 / math.sqrt(u.size)  # the 1% critical value
    assert float(w.var()) * fan_in == pytest.approx(1.0, rel=0.03)


def test_gaussian_init_is_gaussian(gen):
    w = init_weight(150, 200, "gaussian", 2.0, generator=gen, dtype=torch.float64).flatten().numpy()
    z = np.sort(w / math.sqrt(2.0 / 200))
    from math import erf

    cdf = np.array([0.5 * (1 + erf(v / math.sqrt(2))) for v in z])
    ks = np.max(np.abs(cdf - np.arange(1, z.size + 1) / z.size))
    assert ks < 1.63 / math.sqrt(z.size)


def test_orthogonal_draws_are_haar():
    """Haar: Q and Q D (D = diag(+-1)) are equally likely, so E[Q_ii] = 0 and E[Q_ij^2] = 1/n.

    QR without the sign fix makes R's diagonal positive, biasing Q's diagonal (mean -0.42 at 4x4,
    about 200 standard errors of this mean).
    """
    g = torch.Generator().manual_seed(0)
    qs = torch.stack([haar_orthogonal(4, 4, generator=g, dtype=torch.float64) for _ in range(4000)])
    diag = torch.diagonal(qs, dim1=1, dim2=2)
    se = math.sqrt(1 / 4 / diag.numel())
    assert abs(float(diag.mean())) < 4 * se
    compare((qs**2).mean(0), torch.full((4, 4), 0.25), rtol=0, atol=0.03)
    # a fixed vector is sent uniformly over the sphere: its image's first coordinate has mean 0 whatever the vector
    v = torch.tensor([1.0, 2.0, -0.5, 0.3], dtype=torch.float64)
    v = v / v.norm()
    assert abs(float((qs @ v)[:, 0].mean())) < 4 * math.sqrt(1 / 4 / qs.shape[0])
    for n, m in [(3, 6), (6, 3)]:  # rectangular draws: the same symmetry
        rect = torch.stack([haar_orthogonal(n, m, generator=g, dtype=torch.float64) for _ in range(3000)])
        assert abs(float(torch.diagonal(rect, dim1=1, dim2=2).mean())) < 4 * math.sqrt(1 / max(n, m) / (3000 * min(n, m)))


def test_inits_are_reproducible_from_the_generator_and_differ_across_seeds():
    for init in ("gaussian", "uniform", "orthogonal"):
        a = init_weight(5, 7, init, 1.0, generator=torch.Generator().manual_seed(3))
        b = init_weight(5, 7, init, 1.0, generator=torch.Generator().manual_seed(3))
        c = init_weight(5, 7, init, 1.0, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.dtype == torch.float32


def test_bad_init_arguments_name_the_value():
    with pytest.raises(ValueError, match="unknown init 'xavier'; expected one of: gaussian, uniform, orthogonal"):
        check_init("xavier")
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="sigma_w2 must be a finite number >= 0"):
            init_weight(3, 3, "gaussian", bad, generator=torch.Generator())
    assert torch.equal(init_weight(3, 4, "uniform", 0.0, generator=torch.Generator()), torch.zeros(3, 4))
