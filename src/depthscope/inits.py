"""Weight initializations: gaussian, uniform, orthogonal, all of variance sigma_w^2 / fan_in.

* ``gaussian``   W_ij ~ N(0, sigma_w^2 / fan_in)                       (s1 = -1)
* ``uniform``    W_ij ~ U(-a, a), a = sqrt(3 sigma_w^2 / fan_in)        (s1 = -1)
* ``orthogonal`` W = sigma_w Q, Q Haar-distributed (QR of a Gaussian with
  the signs of R's diagonal fixed), so W^T W = sigma_w^2 I for square W (s1 = 0).
  A rectangular W gets orthonormal rows (fan_out <= fan_in) or columns,
  rescaled by sqrt(fan_out / fan_in) in the second case so every unit still sees
  variance sigma_w^2 * Var[x].

sigma_w^2 defaults to :func:`depthscope.theory.critical_sigma_w2` of the activation.
Randomness always comes from an explicit ``torch.Generator``.
"""
from __future__ import annotations

import math

import torch

INITS = ("gaussian", "uniform", "orthogonal")


def check_init(init: str) -> str:
    """Return ``init`` if known, else raise naming the valid ones."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of: {', '.join(INITS)}")
    return init


def haar_orthogonal(n: int, m: int, *, generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """An n x m matrix with orthonormal rows (n <= m) or columns (n > m), Haar distributed."""
    big, small = max(n, m), min(n, m)
    a = torch.randn(big, small, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    # Without the sign fix QR is not Haar (Mezzadri 2007).
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    q = q if n >= m else q.T
    return q.to(dtype)


def init_weight(
    fan_out: int,
    fan_in: int,
    init: str,
    sigma_w2: float,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A (fan_out, fan_in) weight matrix drawn from ``init`` with variance sigma_w^2 / fan_in."""
    check_init(init)
    if sigma_w2 < 0 or not math.isfinite(sigma_w2):
        raise ValueError(f"sigma_w2 must be a finite number >= 0, got {sigma_w2}")
    if init == "gaussian":
        return torch.randn(fan_out, fan_in, generator=generator, dtype=dtype) * math.sqrt(sigma_w2 / fan_in)
    if init == "uniform":
        a = math.sqrt(3.0 * sigma_w2 / fan_in)
        return (torch.rand(fan_out, fan_in, generator=generator, dtype=dtype) * 2.0 - 1.0) * a
    q = haar_orthogonal(fan_out, fan_in, generator=generator, dtype=dtype)
    return q * math.sqrt(sigma_w2 * max(1.0, fan_out / fan_in))
