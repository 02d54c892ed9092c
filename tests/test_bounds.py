"""Seed 001's gradient bound: autograd vs hand-written backprop, and bound >= measured on random nets."""
import itertools

import pytest
import torch

from depthscope.metrics.bounds import (backprop_reference, gamma, gradient_norms, layer_gradients,
                                       net_parameters)
from depthscope.nets import NetSpec, build_net



# Tiny nets: intra-op threads only add contention on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


ACTS = ["sigmoid", "tanh", "relu", "linear", "hard_tanh"]


def _net_data(act, depth, width, seed, sigma_w2=None, n=6):
    net = build_net(NetSpec(depth=depth, width=width, activation=act, sigma_w2=sigma_w2, sigma_b=0.5),
                    seed, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g, dtype=torch.float64) * 1.5
    y = torch.rand(n, width, generator=g, dtype=torch.float64)
    return net, x, y


@pytest.mark.parametrize("act", ACTS)
def test_autograd_matches_handwritten_backprop_per_sample(act):
    net, x, y = _net_data(act, depth=5, width=7, seed=3, sigma_w2=1.5, n=3)  # explicit: skips the slow critical-sigma_w^2 search
    w, b, a = net_parameters(net)
    gb, gw = gradient_norms(w, b, a, x, y)
    for i in range(x.shape[0]):
        ref_b, ref_w = backprop_reference(w, b, a, x[i], y[i])
        # the full per-sample gradient by autograd on that sample alone, parameter by parameter
        net.zero_grad()
        (0.5 * ((net(x[i:i + 1]) - y[i:i + 1]) ** 2).sum()).backward()
        for l, lin in enumerate(net.hidden):
            assert torch.allclose(lin.bias.grad, ref_b[l], rtol=1e-10, atol=1e-12)
            assert torch.allclose(lin.weight.grad, ref_w[l], rtol=1e-10, atol=1e-12)
            assert torch.allclose(gb[i, l], ref_b[l].norm(), rtol=1e-10, atol=1e-12)
            assert torch.allclose(gw[i, l], ref_w[l].norm(), rtol=1e-10, atol=1e-12)


def test_gamma_values_from_seed():
    assert gamma("sigmoid") == 0.25  # seed 001: "In case sigma is the sigmoid function, gamma = 0.25"
    assert gamma("tanh") == 1.0
    from depthscope.activations import register_activation

    register_activation("_scaled_tanh_for_test", lambda t: 0.5 * torch.tanh(t), smooth=True, overwrite=True)
    assert gamma("_scaled_tanh_for_test") == pytest.approx(0.5, rel=0.02)
    assert gamma("_scaled_tanh_for_test") >= 0.5


GRID = list(itertools.product(ACTS, [1, 3, 12], [4, 16], [0.5, 1.0, 4.0]))


@pytest.mark.parametrize("act,depth,width,sigma_w2", GRID,
                         ids=[f"{a}-L{d}-N{w}-sw{s}" for a, d, w, s in GRID])
def test_bound_holds_on_every_layer_and_sample(act, depth, width, sigma_w2):
    """A theorem: any measured > bound (beyond float64 rounding) is a bug."""
    for seed in range(2):
        net, x, y = _net_data(act, depth, width, seed, sigma_w2)
        w, b, a = net_parameters(net)
        r = layer_gradients(w, b, a, x, y)
        tol = 1 + 1e-9
        assert r.grad_b.shape == (x.shape[0], depth)
        assert (r.grad_b <= r.bound_b_local * tol + 1e-300).all()
        assert (r.bound_b_local <= r.bound_b * tol + 1e-300).all()
        assert (r.grad_b <= r.bound_b * tol + 1e-300).all()
        assert (r.grad_w <= r.bound_w * tol + 1e-300).all()


def test_bound_is_tight_for_one_linear_layer():
    """L = 1, linear: ||delta^1|| = ||a^1 - y|| = gamma^1 ||a^1 - y|| exactly, so the check has teeth."""
    net, x, y = _net_data("linear", depth=1, width=5, seed=0)
    r = layer_gradients(*net_parameters(net), x, y)
    assert torch.allclose(r.grad_b, r.bound_b, rtol=1e-12, atol=0)


def test_a_wrong_bound_is_caught():
    """Dropping one gamma factor for sigmoid (gamma^(L-l) instead of gamma^(L-l+1)) must fail somewhere."""
    net, x, y = _net_data("sigmoid", depth=3, width=4, seed=1, sigma_w2=1.0)
    r = layer_gradients(*net_parameters(net), x, y, gamma_value=0.25 * 0.25)
    assert (r.grad_b > r.bound_b).any()


def test_rejects_nets_outside_the_theorem():
    net = build_net(NetSpec(depth=3, width=4, out_features=2), 0)
    with pytest.raises(ValueError, match="out_features"):
        net_parameters(net)
    net = build_net(NetSpec(depth=3, width=4), 0)
    with pytest.raises(ValueError, match="features"):
        gradient_norms(*net_parameters(net), torch.zeros(2, 4), torch.zeros(2, 3))
