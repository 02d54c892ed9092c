"""DVCNN: a 1,000-layer volume-conserving net runs forward/backward with log|det J_l| = 0 on every layer."""
import pytest
import torch

from depthscope.metrics.drift import layer_mean, layer_quantiles, volume_layer_logdet
from depthscope.nets import NetSpec, build_net


# Tiny nets: intra-op threads only add contention on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_thousand_layer_dvcnn_forward_backward_logdet_zero():
    spec = NetSpec(depth=1000, width=16, activation="sigmoid", sigma_w2=1.0, bias_value=-2.0, arch="volume",
                   out_features=3)
    net = build_net(spec, 0)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    logdets = []
    a = x
    for l, h, a in net.layers(x):
        mw = net.hidden[l - 1].weight * net.mask(l)
        logdets.append(volume_layer_logdet("sigmoid", h, mw))
    out = net.readout(a)
    out.square().sum().backward()
    ld = torch.stack(logdets)
    assert ld.shape == (1000, 8)
    assert torch.equal(ld, torch.zeros_like(ld))  # exact: the triangular diagonal is 0
    grads = torch.stack([lin.weight.grad.norm() for lin in net.hidden])
    assert torch.isfinite(grads).all() and (grads > 0).any()
    # drift: the mean of f grows from its bias value towards the top layers
    with torch.no_grad():
        fs = [net.phi(h) for _, h, _ in net.layers(x)]
    assert layer_mean(fs[-1]) > layer_mean(fs[0]) + 0.1
    assert layer_quantiles(fs[0])[0] <= layer_quantiles(fs[0])[-1]


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_full_jacobian_slogdet_matches_autograd_small_net(act):
    spec = NetSpec(depth=12, width=6, activation=act, sigma_w2=1.0, arch="volume")
    net = build_net(spec, 1, dtype=torch.float64)
    x0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x0)
    sign, logabs = torch.linalg.slogdet(jac)
    assert float(sign) == 1.0 and abs(float(logabs)) < 1e-10
    # per-layer: the exact triangular formula agrees with slogdet of the layer's autograd Jacobian
    a = x0[None]
    for l, h, x_next in net.layers(x0[None]):
        lin = net.hidden[l - 1]
        jl = torch.autograd.functional.jacobian(
            lambda v: v + net.phi(torch.nn.functional.linear(v, lin.weight * net.mask(l), lin.bias)), a[0])
        assert abs(float(torch.linalg.slogdet(jl)[1]) - float(volume_layer_logdet(act, h, lin.weight * net.mask(l))[0])) < 1e-10
        a = x_next


def test_logdet_detects_a_broken_mask():
    w = torch.eye(4) * 0.5 + torch.tril(torch.ones(4, 4), -1)
    ld = volume_layer_logdet("linear", torch.zeros(1, 4), w)
    assert float(ld[0]) == pytest.approx(4 * torch.log(torch.tensor(1.5)).item())
    with pytest.raises(ValueError, match="triangular"):
        volume_layer_logdet("linear", torch.zeros(1, 4), torch.ones(4, 4))
