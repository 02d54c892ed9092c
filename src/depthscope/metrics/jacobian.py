"""The input-output Jacobian J = d x_L / d x_0 and its spectrum's moments.

For eq. 3.1, J = prod_l D_l W_l with D_l = diag(phi'(h_l)) (thesis section 3.1);
a residual layer contributes I + alpha D_l W_l and a volume-conserving one
I + D_l (M_l * W_l), which is triangular with unit diagonal (det = 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..activations import derivative
from ..nets import Net, NetSpec, apply_layer, layer_params, triangular_mask


def layer_jacobian(spec: NetSpec, layer: int, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d x_l / d x_{l-1} at one input: D_l W_l, I + alpha D_l W_l, or I + D_l (M_l * W_l).

    ``h`` is the pre-activation vector (fan_out,), ``w`` the unmasked weight.
    """
    d = derivative(spec.activation, h)
    if spec.arch == "volume":
        w = w * triangular_mask(spec.width, layer, w.dtype)
    a = d[:, None] * w
    if spec.arch == "feedforward":
        return a
    scale = spec.residual_scale if spec.arch == "residual" else 1.0
    return torch.eye(w.shape[0], dtype=w.dtype) + scale * a


@dataclass
class JacobianResult:
    """J itself and, per layer l (element l-1), log|det d x_l/d x_{l-1}|."""

    jacobian: torch.Tensor
    layer_logdet: torch.Tensor


@torch.no_grad()
def input_output_jacobian(
    net_or_spec: Net | NetSpec, x0: torch.Tensor, seed: int = 0, *, logdet: bool = True
) -> JacobianResult:
    """J = prod_l (layer Jacobian) at one input x0 (a vector), accumulated in float64.

    Also returns log|det| of every square layer Jacobian (NaN for a non-square
    first layer). The input projection of residual/volume nets, if any, is included in J.
    """
    if x0.ndim != 1:
        raise ValueError(f"x0 must be one input vector, got shape {tuple(x0.shape)}")
    if isinstance(net_or_spec, Net):
        spec = net_or_spec.spec
        params = [(lin.weight.detach(), lin.bias.detach()) for lin in net_or_spec.hidden]
        proj = None if net_or_spec.input_projection is None else net_or_spec.input_projection.weight.detach()
    else:
        spec = net_or_spec
        params = None
        proj = layer_params(spec, seed, 0)[0] if spec.has_input_projection else None
    x = x0.detach().to(torch.float64)[None, :]
    jac = torch.eye(x.shape[1], dtype=torch.float64)
    if proj is not None:
        proj = proj.to(torch.float64)
        x = x @ proj.T
        jac = proj @ jac
    logdets = torch.full((spec.depth,), float("nan"), dtype=torch.float64)
    for l in range(1, spec.depth + 1):
        w, b = params[l - 1] if params is not None else layer_params(spec, seed, l)
        w, b = w.to(torch.float64), b.to(torch.float64)
        mask = triangular_mask(spec.width, l, torch.float64) if spec.arch == "volume" else None
        h, x_next = apply_layer(spec, l, x, w, b, mask)
        a = layer_jacobian(spec, l, h[0], w)
        if logdet and a.shape[0] == a.shape[1]:
            logdets[l - 1] = torch.linalg.slogdet(a).logabsdet
        jac = a @ jac
        x = x_next
    return JacobianResult(jac, logdets)


def jjt_moments(jac: torch.Tensor) -> tuple[float, float]:
    """(m1, m2): the first two moments of the eigenvalues of J J^T, tr(JJ^T)/N and tr((JJ^T)^2)/N (eq. 3.6).

    Traces only, no eigendecomposition: tr((JJ^T)^2) = ||J^T J||_F^2.
    """
    j = jac.to(torch.float64)
    g = j @ j.T
    n = g.shape[0]
    return float(torch.diagonal(g).sum() / n), float((g * g).sum() / n)


def jacobian_vni(jac: torch.Tensor) -> float:
    """tr(JJ^T JJ^T) / tr(JJ^T)^2 = m2 / (N m1^2): VNI predicted from J alone (eq. 3.6).

    J is divided by its largest |entry| first (the ratio is scale invariant), so the J of a
    deep net at 1e+-200 does not overflow m2; NaN for J = 0 or a J holding an inf or NaN,
    as every VNI function (:mod:`depthscope.metrics.vni`).
    """
    j = jac.to(torch.float64)
    if j.ndim != 2 or j.numel() == 0:
        raise ValueError(f"expected a non-empty (N, M) Jacobian, got shape {tuple(jac.shape)}")
    if not bool(torch.isfinite(j).all()):
        return math.nan
    m = float(j.abs().max())
    if m == 0.0:
        return math.nan
    m1, m2 = jjt_moments(j / m)
    return m2 / (jac.shape[0] * m1**2)
