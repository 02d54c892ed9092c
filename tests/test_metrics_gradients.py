"""metrics/gradients.py and metrics/drift.py against brute force, on shapes that tell fan_in from fan_out."""
import math

import pytest
import torch

from conftest import compare
from depthscope.metrics import shared_variance, sigma_w2
from depthscope.metrics.drift import layer_mean, layer_quantiles, volume_layer_logdet


def test_sigma_w2_is_fan_in_times_the_weight_variance(gen):
    w = torch.randn(30, 120, generator=gen, dtype=torch.float64) * 0.2  # fan_out 30, fan_in 120
    n_out, n_in = w.shape
    mean = sum(float(v) for v in w.flatten()) / w.numel()
    var = sum((float(v) - mean) ** 2 for v in w.flatten()) / w.numel()  # population variance, by hand
    assert sigma_w2(w) == pytest.approx(n_in * var, rel=1e-12)
    assert sigma_w2(w.T.contiguous()) == pytest.approx(n_out * var, rel=1e-12)


def test_shared_variance_is_the_mean_population_variance_of_the_nodes(gen):
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64) * torch.arange(1, 6, dtype=torch.float64)
    s = x.shape[0]
    per_node = [sum((float(x[k, i]) - float(x[:, i].mean())) ** 2 for k in range(s)) / s for i in range(5)]
    assert shared_variance(x) == pytest.approx(sum(per_node) / 5, rel=1e-12)  # 1/S (eq. 4.2), not 1/(S-1)


def test_volume_layer_logdet_is_the_sum_over_units_of_log_abs_one_plus_diagonal(gen):
    h = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    w = torch.tril(torch.randn(6, 6, generator=gen, dtype=torch.float64))  # triangular, non-zero diagonal
    got = volume_layer_logdet("tanh", h, w)
    for k in range(4):
        jac = torch.eye(6, dtype=torch.float64) + torch.diag(1 - torch.tanh(h[k]) ** 2) @ w
        compare(got[k], torch.linalg.slogdet(jac).logabsdet, rtol=1e-10)
    with pytest.raises(ValueError, match="triangular"):
        volume_layer_logdet("tanh", h, torch.randn(6, 6, generator=gen, dtype=torch.float64))


def test_layer_mean_and_quantiles():
    f = torch.arange(101, dtype=torch.float32).reshape(1, 101)
    assert layer_mean(f) == 50.0
    assert layer_quantiles(f, (0.0, 0.25, 1.0)) == [0.0, 25.0, 100.0]
    assert math.isclose(layer_mean(torch.full((3, 3), 0.1)), 0.1, rel_tol=1e-7)
