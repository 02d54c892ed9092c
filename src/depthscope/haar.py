"""Haar-orthogonal weights as Householder reflectors drawn directly, applied without forming the matrix.

W = Q D with Q = H_1 H_2 ... H_n, H_k = I - tau_k v_k v_k^T (LAPACK's geqrf layout), D = diag(sign R_kk):
the matrix :func:`depthscope.inits.haar_orthogonal` returns is exactly this, computed from the QR of a
Gaussian matrix A. Householder QR reduces A column by column; the column it reflects at step k is
z_k = (H_{k-1} ... H_1 A)[k:, k], and because A's columns are independent and rotation invariant,
z_1, ..., z_n are independent standard Gaussian vectors of lengths n, n-1, ..., 1 (Stewart 1980, "The
efficient generation of random orthogonal matrices"; Mezzadri 2007 for the sign fix D). So drawing the
z_k directly and building each reflector from its z_k as geqrf would gives a Q D of the same (Haar)
distribution, without the QR: the draw is O(n^2) and applying W to a batch (``ormqr``) costs about one
matmul, where the float64 QR of ``haar_orthogonal`` costs three to four. The matrices differ from
``haar_orthogonal``'s for the same generator (other draws, same distribution);
``tests/test_chapter3_sampler.py`` checks the construction against geqrf, orthogonality, Haar statistics
and the nets' R_sq.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["HaarReflectors", "haar_reflectors", "reflectors_from_columns", "haar_matrix", "haar_apply"]


@dataclass(frozen=True)
class HaarReflectors:
    """W = Q D, Q = H_1 ... H_n (H_k = I - tau_k v_k v_k^T, v_k = [0]*k + [1] + a[k+1:, k]), D = diag(signs).

    ``a`` holds the reflector vectors strictly below its diagonal (as geqrf returns them; its diagonal
    and upper triangle are ignored by ``ormqr`` and ``householder_product``), ``tau`` their scalars and
    ``signs`` the signs of R's diagonal (+-1)."""

    a: torch.Tensor
    tau: torch.Tensor
    signs: torch.Tensor


def reflectors_from_columns(z: torch.Tensor) -> HaarReflectors:
    """The reflectors geqrf builds when the column it reflects at step k is z[k:, k] (LAPACK's dlarfg).

    dlarfg on (alpha, x) = (z_kk, z[k+1:, k]): beta = -sign(alpha) sqrt(alpha^2 + |x|^2), v = [1, x / (alpha
    - beta)], tau = (beta - alpha) / beta, R_kk = beta; with x = 0 (the last column) tau = 0 and R_kk = alpha.
    The per-column scalars are computed in float64; v is stored in ``z``'s dtype, so each H_k is orthogonal
    to that dtype's rounding. Only the lower triangle of ``z`` is read.
    """
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise ValueError(f"z must be a square matrix, got shape {tuple(z.shape)}")
    # per-column scalars in float64 (n numbers); the n x n part stays in z's dtype, in few passes
    alpha = torch.diagonal(z).to(torch.float64)
    xnorm2 = z.pow(2).tril_(-1).sum(0, dtype=torch.float64)
    reflect = xnorm2 > 0
    beta = torch.where(reflect, -torch.copysign(torch.sqrt(alpha * alpha + xnorm2), alpha), alpha)
    denom = torch.where(reflect, alpha - beta, torch.ones_like(alpha))
    a = z / denom.to(z.dtype)  # its diagonal and upper triangle are never read
    tau = torch.where(reflect, (beta - alpha) / beta, torch.zeros_like(beta)).to(z.dtype)
    # sign(0) would be 0; a zero diagonal has probability zero, +1 keeps D orthogonal anyway
    signs = torch.where(beta < 0, -1.0, 1.0).to(z.dtype)
    return HaarReflectors(a, tau, signs)


def haar_reflectors(n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> HaarReflectors:
    """A Haar-distributed n x n orthogonal matrix, as reflectors: z_k = the lower triangle of one n x n
    standard Gaussian draw (columns k, rows k..n-1: independent N(0, I) vectors of lengths n..1)."""
    if isinstance(n, bool) or not hasattr(n, "__index__") or int(n) < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return reflectors_from_columns(torch.randn(int(n), int(n), generator=generator, dtype=dtype))


def haar_matrix(r: HaarReflectors) -> torch.Tensor:
    """W = Q D formed (O(n^3)): the reference that :func:`haar_apply` is tested against."""
    return torch.linalg.householder_product(r.a, r.tau) * r.signs.unsqueeze(0)


def haar_apply(x: torch.Tensor, r: HaarReflectors, scale: float = 1.0) -> torch.Tensor:
    """x (scale W)^T = scale x D Q^T for a batch x (S, n), without forming W (``ormqr``: about one matmul)."""
    if x.ndim != 2 or x.shape[1] != r.a.shape[0]:
        raise ValueError(f"x must be (samples, {r.a.shape[0]}), got shape {tuple(x.shape)}")
    y = torch.ormqr(r.a, r.tau, x * r.signs.to(x.dtype), left=False, transpose=True)
    return y * scale if scale != 1.0 else y

