"""Batch norm at init: the no-BN net equals build_net, and BN gradients grow towards the input with depth."""
import pytest
import torch

from depthscope.experiments.batchnorm import BNNet, init_gradient_norms
from depthscope.nets import NetSpec, build_net


# Tiny nets: intra-op threads only add contention on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_without_bn_equals_build_net():
    spec = NetSpec(depth=4, width=8, activation="tanh", out_features=3)
    x = torch.randn(5, 8)
    torch.testing.assert_close(BNNet(spec, 2, batchnorm=False)(x), build_net(spec, 2)(x))


def test_bn_gradients_explode_with_depth_relu():
    """Yang et al. 2019: with BN the first layer's gradient exceeds the last one's, more so when deeper."""
    ratios = {}
    for bn in (False, True):
        for d in (8, 32):
            spec = NetSpec(depth=d, width=64, activation="relu", out_features=4)
            g = torch.stack([init_gradient_norms(spec, s, bn, 64) for s in range(2)]).median(0).values
            ratios[(bn, d)] = float(g[0] / g[-1])
    assert ratios[(True, 32)] > 10 * ratios[(True, 8)]
    assert ratios[(True, 32)] > 100 * ratios[(False, 32)]


def test_bn_rate_claim_on_both_sides_of_its_tolerance():
    from depthscope.experiments.batchnorm import BN_RATE_RTOL, BN_RELU_RATE, bn_rate_claim

    inside, outside = BN_RELU_RATE * (1 + 0.99 * BN_RATE_RTOL), BN_RELU_RATE * (1 + 1.01 * BN_RATE_RTOL)
    assert bn_rate_claim({("relu", True): inside, ("relu", False): 0.98}, 50).verdict == "agree"
    assert bn_rate_claim({("relu", True): outside, ("relu", False): 0.98}, 50).verdict == "trend"
    assert bn_rate_claim({("relu", True): 0.97, ("relu", False): 0.98}, 50).verdict == "differs"
    assert bn_rate_claim({("tanh", True): 1.1}, 50).verdict == "not run"
