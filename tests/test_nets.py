"""Networks, inits, streaming, Jacobians."""
import math

import numpy as np
import pytest
import torch

from conftest import compare
from depthscope.metrics import (
    input_output_jacobian,
    jacobian_vni,
    jjt_moments,
    sigma_w2_mu1_per_layer,
    variance_propagation,
    vni,
    vni_per_layer,
)
from depthscope.nets import NetSpec, build_net, stream_layers


# The init tests live in test_inits.py.


def test_streaming_equals_materialised_and_stored():
    spec = NetSpec(depth=12, width=24, activation="tanh", init="orthogonal", in_features=10)
    x = torch.randn(300, 10, generator=torch.Generator().manual_seed(3))
    net = build_net(spec, seed=5)
    stored = [xl.detach().clone() for _, _, xl in net.layers(x)]
    streamed = list(stream_layers(spec, x, seed=5))
    assert len(streamed) == 12
    for (_, _, xs), xm in zip(streamed, stored):
        compare(xs, xm, rtol=1e-5, atol=1e-6)
    # Streaming per-layer VNI == VNI of stored activations, for a spec and for a net.
    expected = torch.stack([vni(a) for a in stored])
    compare(vni_per_layer(spec, x, 5), expected, rtol=1e-5)
    compare(vni_per_layer(net, x), expected, rtol=1e-12)
    part = vni_per_layer(spec, x, 5, layers=[3])
    assert torch.isnan(part[0]) and not torch.isnan(part[2])


# test_streaming_handles_deep_nets_in_bounded_memory lives in test_metrics_layers.py (it measures the memory now).


def test_depth_zero_is_identity():
    net = build_net(NetSpec(depth=0, width=5), 0)
    x = torch.randn(3, 5)
    assert torch.equal(net(x), x)


@pytest.mark.parametrize("arch", ["feedforward", "residual", "volume"])
def test_jacobian_product_matches_autograd(arch):
    spec = NetSpec(depth=6, width=9, activation="tanh", arch=arch, init="gaussian", sigma_b=0.3)
    net = build_net(spec, 2, dtype=torch.float64)
    x0 = torch.randn(9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    auto = torch.autograd.functional.jacobian(lambda z: net.features(z[None])[0], x0)
    compare(input_output_jacobian(net, x0).jacobian, auto, rtol=1e-10, atol=1e-12)
    compare(input_output_jacobian(spec, x0, 2).jacobian, auto, rtol=1e-10, atol=1e-12)


def test_jjt_moments_match_eigenvalues(gen):
    j = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    eig = torch.linalg.eigvalsh(j @ j.T)
    m1, m2 = jjt_moments(j)
    compare(m1, eig.mean(), rtol=1e-10)
    compare(m2, (eig**2).mean(), rtol=1e-10)
    compare(jacobian_vni(j), (eig**2).sum() / eig.sum() ** 2, rtol=1e-10)


def test_volume_net_log_det_is_zero_at_depth_200():
    spec = NetSpec(depth=200, width=20, activation="tanh", arch="volume", init="gaussian", sigma_w2=1.0, sigma_b=0.5)
    x0 = torch.randn(20, generator=torch.Generator().manual_seed(0))
    res = input_output_jacobian(spec, x0, 0)
    assert float(res.layer_logdet.abs().max()) < 1e-5
    assert abs(float(torch.linalg.slogdet(res.jacobian).logabsdet)) < 1e-5


def test_volume_net_trained_weights_keep_det_one():
    net = build_net(NetSpec(depth=4, width=6, activation="sigmoid", arch="volume", sigma_w2=1.0), 0, torch.float64)
    with torch.no_grad():
        for lin in net.hidden:
            lin.weight.add_(1.0)  # an update that touches the masked entries too
    x0 = torch.randn(6, dtype=torch.float64)
    assert abs(float(torch.linalg.slogdet(input_output_jacobian(net, x0).jacobian).logabsdet)) < 1e-10


def test_sigma_w2_mu1_is_one_for_critical_linear_net():
    net = build_net(NetSpec(depth=5, width=300, activation="linear", init="orthogonal"), 0)
    compare(sigma_w2_mu1_per_layer(net, torch.randn(50, 300)), np.ones(5), rtol=1e-3)


def test_relu_critical_net_sigma_w2_mu1_near_one():
    net = build_net(NetSpec(depth=5, width=400, activation="relu"), 0)
    v = sigma_w2_mu1_per_layer(net, torch.randn(500, 400))
    assert np.all(np.abs(v.numpy() - 1.0) < 0.1)


def test_variance_propagation_eq_4_4_for_critical_linear_net():
    # sigma_w^2 mu1 = 1: forward and backward variances stay at sigma_x^2 and sigma_y^2 (eq. 4.4).
    net = build_net(NetSpec(depth=20, width=256, activation="linear", init="orthogonal"), 0)
    x = torch.randn(2000, 256, generator=torch.Generator().manual_seed(0)) * math.sqrt(0.1)
    vp = variance_propagation(net, x, grad_variance=2.0, generator=torch.Generator().manual_seed(1))
    compare(vp.forward, np.full(20, 0.1), rtol=0.05)
    compare(vp.backward, np.full(20, 2.0), rtol=0.05)
    # eq. 4.5: Var[dC/dW_l] is the same at every layer (here the sum over samples scales it).
    assert float(vp.weight_grad.max() / vp.weight_grad.min()) < 1.3


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=-1, width=3), "depth"),
    (dict(depth=2, width=0), "width"),
    (dict(depth=2.5, width=3), "depth"),
    (dict(depth=2, width=3, activation="swish"), "activation"),
    (dict(depth=2, width=3, init="he"), "init"),
    (dict(depth=2, width=3, arch="densenet"), "arch"),
    (dict(depth=2, width=3, sigma_w2=-1.0), "sigma_w2"),
])
def test_netspec_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NetSpec(**kwargs)
