"""Drift (seed 003 section 2.2): the mean of the non-linearity f(h_l) = phi(h_l) per layer, and
exact per-layer log|det J| of volume-conserving layers.

* :func:`layer_mean`: mean_{samples, units} phi(h_l)  (seed 003 Fig. 2, "average value of the
  non-linearity f across all units of each layer").
* :func:`layer_quantiles`: quantiles of phi(h_l) over samples and units (seed 003 Fig. 3).
* :func:`volume_layer_logdet`: log|det(I + diag(phi'(h)) (M * W))| = sum_i log|1 + phi'(h_i) (M*W)_ii|,
  exact because the masked matrix is strictly triangular (its diagonal is 0), so the sum is 0
  by construction; computed from the actual diagonal so a broken mask shows up.
"""
from __future__ import annotations

import torch

from ..activations import derivative


def layer_mean(f: torch.Tensor) -> float:
    """mean over samples and units of f = phi(h_l) (seed 003 Fig. 2), in float64."""
    return float(f.to(torch.float64).mean())


def layer_quantiles(f: torch.Tensor, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> list[float]:
    """Quantiles of phi(h_l) over samples and units (seed 003 Fig. 3)."""
    flat = f.detach().to(torch.float64).flatten()
    return [float(v) for v in torch.quantile(flat, torch.tensor(qs, dtype=torch.float64))]


def volume_layer_logdet(activation: str, h: torch.Tensor, masked_w: torch.Tensor) -> torch.Tensor:
    """log|det(I + diag(phi'(h)) (M*W))| per sample, h (samples, N), for triangular M*W (seed 003 sec. 2.1).

    A triangular matrix's determinant is the product of its diagonal, so this is
    sum_i log|1 + phi'(h_i) (M*W)_ii|; raises if ``masked_w`` is not triangular.
    """
    if not (torch.equal(torch.tril(masked_w), masked_w) or torch.equal(torch.triu(masked_w), masked_w)):
        raise ValueError("masked_w must be triangular (a volume layer's M * W)")
    d = derivative(activation, h.detach()).to(torch.float64)
    diag = torch.diagonal(masked_w.detach()).to(torch.float64)
    return torch.log(torch.abs(1.0 + d * diag[None, :])).sum(dim=1)
