"""The fast path of a recorded step's VNI and moments: modules whose kept rows share a shape, computed as one.

:func:`moments` is :func:`depthscope.metrics.vni.vni_moments` (the slow reference, which the
tests compare it with) for a batch (G, S, N) of row matrices held in one preallocated
slab, in place, with two changes that leave every number within vni_moments' stated
bound (``vni_moments_error``: sqrt(chunk) 2^-24 on R_sq):

* the per-node minimum and maximum are ``amin``/``amax`` over a (S/k, k N) view of the
  rows instead of ``torch.aminmax(x, dim=-2)``: the same exact values (a minimum does not
  round), but torch 2.13's CPU ``aminmax`` over the sample axis is 20-60x slower than two
  plain reductions (0.4-2 ms per 1024 x 64 matrix, more than its Gram), and ``amin`` over
  a narrow axis (N < 32) is slow too, which the k-fold wider view avoids;
* the float32 chunk Grams of all G matrices are one ``bmm`` each (``@`` on the batch),
  summed in float64 as there.

The float64 Grams of a batch are formed :func:`group_size` matrices at a time, so the
float64 temporaries of one batch stay within ``GRAM_BATCH_ENTRIES`` entries (or one
matrix's Gram, when that is larger): the memory bound (quantities.extra_memory_bound)
counts them that way.
"""
from __future__ import annotations

import math

import torch

from ..metrics.vni import _check_shape, _pow2_scale

#: float64 Gram entries one batched computation may hold at once (8 MiB per Gram-sized temporary).
GRAM_BATCH_ENTRIES = 1 << 18

#: The row width a narrow matrix is viewed at for its per-node minimum and maximum.
_MINMAX_WIDTH = 64


def group_size(count: int, side: int) -> int:
    """How many of ``count`` same-shape matrices with a ``side`` x ``side`` Gram are computed together:
    at most GRAM_BATCH_ENTRIES Gram entries, and at least one matrix."""
    return max(1, min(int(count), GRAM_BATCH_ENTRIES // max(int(side) ** 2, 1)))


def col_minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of each node (last axis) over the samples (axis -2) of x (..., S, N): ``torch.aminmax(x, dim=-2)``.

    Exactly its values (NaN where a node holds a NaN). A contiguous narrow x (N < 64) is
    read as (..., S // k, k N) with k N >= 64, reduced, then its k node groups reduced: one
    pass over x at the speed of a wide reduction; the last S mod k rows are reduced apart.
    """
    s, n = x.shape[-2:]
    k = -(-_MINMAX_WIDTH // n) if 0 < n < _MINMAX_WIDTH else 1
    if k == 1 or s < 2 * k or not x.is_contiguous():
        return x.amin(-2), x.amax(-2)
    lead = x.shape[:-2]
    q = s // k
    head = x[..., : q * k, :].reshape(*lead, q, k * n)
    lo = head.amin(-2).reshape(*lead, k, n).amin(-2)
    hi = head.amax(-2).reshape(*lead, k, n).amax(-2)
    if q * k < s:
        tail = x[..., q * k:, :]
        lo, hi = torch.minimum(lo, tail.amin(-2)), torch.maximum(hi, tail.amax(-2))
    return lo, hi


def moments(x: torch.Tensor, *, chunk: int = 512) -> torch.Tensor:
    """[R_sq, mean, shared variance] (eq. 3.5, eq. 4.2) of each (S, N) matrix of float32/float64 x (..., S, N), float64 (..., 3).

    ``vni_moments(x, chunk=chunk, overwrite=True)`` step for step (see its docstring and the
    module docstring for the two differences), within its stated bound of it: x is
    overwritten with X_c (times 2^-e where rescaled). No host sync except on CPU, where
    the check that spares the rescaling pass is free.
    """
    _check_shape(x)
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"moments works in place on float32 or float64 rows, got {x.dtype}")
    s, n = x.shape[-2:]
    lo, hi = col_minmax(x)
    const = lo == hi
    lo64, hi64 = lo.to(torch.float64), hi.to(torch.float64)
    r = (hi64 - lo64).amax(-1)
    finite = torch.isfinite(r)
    f32 = x.dtype == torch.float32
    scale = _pow2_scale(r, 125 if f32 else 1020, 40 if f32 else 400)
    v = torch.where(const, torch.zeros((), dtype=scale.dtype, device=scale.device), scale[..., None])
    v = v.to(x.dtype).unsqueeze(-2)
    if x.device.type != "cpu" or bool((v != 1).any()):
        x.mul_(v)
    m1 = x.sum(-2, keepdim=True).div_(s)
    x.sub_(m1)
    d = x.sum(-2, keepdim=True).div_(s)
    x.sub_(d)
    col_mean = (m1.to(torch.float64) + d.to(torch.float64)).squeeze(-2) / scale[..., None]
    mean = torch.where(const, lo64, col_mean).mean(-1)
    a = x if n <= s else x.transpose(-2, -1)
    g = None
    for part in a.split(chunk, dim=-2):
        gp = (part.transpose(-2, -1) @ part).to(torch.float64)
        g = gp if g is None else g.add_(gp)
    tr = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)
    var = tr / (s * n) / scale / scale
    out = torch.stack([(g * g).sum((-2, -1)) / tr**2, mean, var], dim=-1)
    return torch.where(finite[..., None], out, torch.full_like(out, math.nan))


def slab_moments(slab: torch.Tensor, *, chunk: int = 512) -> torch.Tensor:
    """:func:`moments` of every matrix of a slab (G, S, N), :func:`group_size` matrices at a time: (G, 3) float64."""
    step = group_size(slab.shape[0], min(slab.shape[-2:]))
    return torch.cat([moments(slab[i: i + step], chunk=chunk) for i in range(0, slab.shape[0], step)])
