"""Forward and backward variance propagation per layer (thesis eq. 4.2-4.5) and sigma_w^2 mu_1.

Var[x_l] and Var[dC/dx_l] are "shared scalar variances": the average over the
N nodes of each node's variance over samples (eq. 4.2/4.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..activations import derivative
from ..nets import Net


def shared_variance(x: torch.Tensor) -> float:
    """Var[x] = E[(x - mean)^T (x - mean)] / N: mean over nodes of the per-node sample variance (eq. 4.2)."""
    xd = x.detach().to(torch.float64)
    return float(xd.var(dim=0, unbiased=False).mean())


@dataclass
class VariancePropagation:
    """Per layer l (element l-1): Var[x_l], Var[dC/dx_l], Var[dC/dW_l] (eq. 4.4, 4.5)."""

    forward: torch.Tensor
    backward: torch.Tensor
    weight_grad: torch.Tensor


def variance_propagation(
    net: Net, x: torch.Tensor, *, grad_variance: float = 1.0, generator: torch.Generator | None = None
) -> VariancePropagation:
    """Measure eq. 4.4/4.5 on a net: forward Var[x_l], backward Var[dC/dx_l] and Var[dC/dW_l].

    The output gradient dC/dx_L is drawn i.i.d. N(0, grad_variance) per sample
    and node, the assumption of eq. 4.1.
    """
    if net.spec.depth == 0:
        raise ValueError("depth must be >= 1 to propagate variances")
    xs: list[torch.Tensor] = []
    inputs = x
    with torch.enable_grad():
        params = [lin.weight for lin in net.hidden]
        for _, _, xl in net.layers(inputs):
            xl.retain_grad()
            xs.append(xl)
        g = torch.randn(xs[-1].shape, generator=generator, dtype=xs[-1].dtype) * grad_variance**0.5
        wgrads = torch.autograd.grad(xs[-1], params + xs, grad_outputs=g, allow_unused=True)
    dw, dx = wgrads[: len(params)], wgrads[len(params):]
    fwd = torch.tensor([shared_variance(t) for t in xs], dtype=torch.float64)
    bwd = torch.tensor([shared_variance(t) if t is not None else float("nan") for t in dx], dtype=torch.float64)
    # dx of the last layer is its own gradient g.
    bwd[-1] = shared_variance(g)
    wv = torch.tensor([float(t.detach().to(torch.float64).var(unbiased=False)) for t in dw], dtype=torch.float64)
    return VariancePropagation(fwd, bwd, wv)


def sigma_w2(weight: torch.Tensor) -> float:
    """sigma_w^2 = fan_in * Var[W_ij] (thesis section 4.1: sigma_w^2 = N Var[W_ij])."""
    w = weight.detach().to(torch.float64)
    return float(w.shape[1] * w.var(unbiased=False))


@torch.no_grad()
def sigma_w2_mu1_per_layer(net: Net, x: torch.Tensor) -> torch.Tensor:
    """sigma_w^2 mu_1 of every layer (eq. 4.4's per-layer factor), measured on any net, trained or not.

    sigma_w^2 = fan_in Var[W_l] of the layer's current weights; mu_1 = mean over the
    samples of x and the nodes of phi'(h_l)^2. Gradients neither vanish nor explode
    when it stays near 1 (thesis Fig. 5.5/5.6).
    """
    out = []
    for l, h, _ in net.layers(x):
        mu1 = float(derivative(net.spec.activation, h).to(torch.float64).pow(2).mean())
        out.append(sigma_w2(net.hidden[l - 1].weight) * mu1)
    return torch.tensor(out, dtype=torch.float64)
