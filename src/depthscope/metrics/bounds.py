"""||dC/db^l|| <= gamma^(L-l+1) prod_{r=l+1..L} ||W^r||_2 ||a^L - y|| (seed 001, bound (**)).

Seed 001 (Nielsen's notation, quadratic cost per training example): with
C = 1/2 ||y - a^L||^2, z^l = W^l a^(l-1) + b^l, a^l = sigma(z^l) on *every* layer
including the output, and delta^l = dC/dz^l,

* (30)  delta^L = sigma'(z^L) * (a^L - y)
* (34)  delta^l = sigma'(z^l) * (W^(l+1))^T delta^(l+1)
* (BP3) dC/db^l = delta^l,   (BP4) dC/dW^l = delta^l (a^(l-1))^T

and with induced (spectral) norms and gamma = sup sigma',

    ||dC/db^l|| <= prod_{r=l..L} ||Sigma'(z^r)|| prod_{r=l+1..L} ||W^r|| ||a^L - y||    (local form)
               <= gamma^(L-l+1) prod_{r=l+1..L} ||W^r|| ||a^L - y||                     (**)
    ||dC/dW^l|| <= ||dC/db^l|| ||a^(l-1)||                                              (*)

The statement is per training example, so everything here is per sample. In
depthscope's indexing (hidden layers 1..L of a feed-forward :class:`~depthscope.nets.Net`
with no readout, a^0 = the input) the formulas read the same: Nielsen's layer l+1
is our layer l and both exponents shift together. dC/dW^l is rank one, so its
Frobenius and spectral norms are equal (both ||delta^l|| ||a^(l-1)||) and (*) is
an equality; the bound on W is the (**) bound times ||a^(l-1)||.

Two independent computations of the gradients: :func:`gradient_norms` (autograd,
per sample through the pre-activations) and :func:`backprop_reference` (the
equations above written out by hand). Tests compare them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..activations import Activation, derivative, get_activation

#: sup_x phi'(x) of the built-in activations (seed 001: gamma = 0.25 for sigmoid).
GAMMA = {"linear": 1.0, "tanh": 1.0, "hard_tanh": 1.0, "relu": 1.0, "sigmoid": 0.25}


def gamma(activation: str | Activation) -> float:
    """gamma = sup_x phi'(x) (seed 001): exact for built-ins, a dense-grid estimate (+1% margin) otherwise."""
    act = get_activation(activation)
    if act.name in GAMMA:
        return GAMMA[act.name]
    grid = torch.linspace(-50.0, 50.0, 200_001, dtype=torch.float64)
    return float(derivative(act, grid).max()) * 1.01


def _check(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    if len(weights) != len(biases) or not weights:
        raise ValueError(f"need one bias per weight and at least one layer, got {len(weights)} weights, "
                         f"{len(biases)} biases")
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must be (samples, features) with the same number of samples, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if y.shape[1] != weights[-1].shape[0]:
        raise ValueError(f"y has {y.shape[1]} features but the last layer has {weights[-1].shape[0]} units")


def net_parameters(net) -> tuple[list[torch.Tensor], list[torch.Tensor], str]:
    """(weights, biases, activation name) of a feed-forward depthscope Net without readout."""
    spec = net.spec
    if spec.arch != "feedforward" or net.readout is not None or spec.depth < 1:
        raise ValueError("the seed-001 bound is stated for a feed-forward net whose last layer is activated: "
                         f"need arch='feedforward', out_features=None, depth >= 1 (got arch={spec.arch!r}, "
                         f"out_features={spec.out_features}, depth={spec.depth})")
    return [lin.weight for lin in net.hidden], [lin.bias for lin in net.hidden], spec.activation


@dataclass
class LayerGradients:
    """Per-sample, per-layer quantities; every tensor is (samples, L), column l-1 is layer l."""

    grad_b: torch.Tensor  # ||dC/db^l|| = ||delta^l||
    grad_w: torch.Tensor  # ||dC/dW^l||_F (= spectral: rank one)
    bound_b: torch.Tensor  # gamma^(L-l+1) prod_{r>l} ||W^r||_2 ||a^L - y||          (**)
    bound_w: torch.Tensor  # bound_b * ||a^(l-1)||                                  (*)+(**)
    bound_b_local: torch.Tensor  # prod_{r>=l} max|sigma'(z^r)| prod_{r>l} ||W^r||_2 ||a^L - y||
    cost: torch.Tensor  # (samples,) C = 1/2 ||a^L - y||^2


def gradient_norms(weights, biases, activation, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ||dC/db^l|| and ||dC/dW^l||_F by autograd, C = 1/2 ||a^L - y||^2 (seed 001 BP3/BP4).

    delta^l of each sample is the gradient of sum_samples C w.r.t. that sample's
    z^l (samples do not interact), and dC/dW^l = delta^l (a^(l-1))^T has
    Frobenius norm ||delta^l|| ||a^(l-1)||. Returns two (samples, L) tensors.
    """
    _check(weights, biases, x, y)
    phi = get_activation(activation)
    ws = [w.detach() for w in weights]
    bs = [b.detach() for b in biases]
    with torch.enable_grad():
        a = x.detach()
        zs, inputs = [], []
        for w, b in zip(ws, bs):
            inputs.append(a)
            z = a @ w.T + b
            if not z.requires_grad:
                z.requires_grad_(True)
            zs.append(z)
            a = phi(z)
        cost = 0.5 * ((a - y) ** 2).sum()
        deltas = torch.autograd.grad(cost, zs)
    gb = torch.stack([d.norm(dim=1) for d in deltas], dim=1)
    gw = torch.stack([d.norm(dim=1) * a_prev.detach().norm(dim=1) for d, a_prev in zip(deltas, inputs)], dim=1)
    return gb, gw


def backprop_reference(weights, biases, activation, x: torch.Tensor, y: torch.Tensor):
    """Hand-written backprop for ONE sample x (features,): lists dC/db^l = delta^l and dC/dW^l (eqs. 30, 34, BP3, BP4)."""
    phi = get_activation(activation)
    a = x.detach()
    zs, acts = [], [a]
    for w, b in zip(weights, biases):
        z = w.detach() @ a + b.detach()
        a = phi(z)
        zs.append(z)
        acts.append(a)
    delta = derivative(activation, zs[-1]) * (acts[-1] - y)  # (30)
    deltas = [delta]
    for l in range(len(weights) - 2, -1, -1):
        delta = derivative(activation, zs[l]) * (weights[l + 1].detach().T @ delta)  # (34)
        deltas.append(delta)
    deltas.reverse()
    grad_b = deltas  # BP3
    grad_w = [torch.outer(d, acts[l]) for l, d in enumerate(deltas)]  # BP4
    return grad_b, grad_w


def layer_gradients(weights, biases, activation, x: torch.Tensor, y: torch.Tensor,
                    gamma_value: float | None = None) -> LayerGradients:
    """Measured per-sample gradient norms beside seed 001's bounds (**), (*) and the local form, per layer."""
    _check(weights, biases, x, y)
    act = get_activation(activation)
    g = gamma(act) if gamma_value is None else float(gamma_value)
    gb, gw = gradient_norms(weights, biases, act, x, y)
    ws = [w.detach() for w in weights]
    L = len(ws)
    with torch.no_grad():
        spec_norms = torch.stack([torch.linalg.matrix_norm(w.to(torch.float64), ord=2) for w in ws])
        # forward once more for a^(l-1), a^L and max |sigma'(z^r)| per sample
        a = x.detach()
        in_norms, max_dphi = [], []
        for w, b in zip(ws, biases):
            in_norms.append(a.norm(dim=1))
            z = a @ w.T + b.detach()
            max_dphi.append(derivative(act, z).abs().max(dim=1).values)
            a = act(z)
        resid = (a - y).to(torch.float64).norm(dim=1)  # ||a^L - y||
        cost = 0.5 * resid**2
        # suffix products: prod_{r=l+1..L} ||W^r||, l = 1..L  (empty product = 1 at l = L)
        log_w = torch.log(spec_norms)
        suffix_w = torch.stack([log_w[l + 1:].sum() for l in range(L)])
        dphi = torch.stack(max_dphi, dim=1).to(torch.float64)  # (samples, L)
        log_dphi = torch.log(dphi)
        suffix_dphi = torch.flip(torch.cumsum(torch.flip(log_dphi, [1]), 1), [1])  # sum_{r>=l}
        exps = torch.arange(L, 0, -1, dtype=torch.float64)  # L-l+1 for l = 1..L
        log_resid = torch.log(resid)[:, None]
        bound_b = torch.exp(exps * math.log(g) + suffix_w[None, :] + log_resid) if g > 0 else \
            torch.zeros(x.shape[0], L, dtype=torch.float64)
        bound_local = torch.exp(suffix_dphi + suffix_w[None, :] + log_resid)
        in_n = torch.stack(in_norms, dim=1).to(torch.float64)
        bound_w = bound_b * in_n
    return LayerGradients(gb.to(torch.float64), gw.to(torch.float64), bound_b, bound_w,
                          torch.nan_to_num(bound_local, nan=0.0), cost)
