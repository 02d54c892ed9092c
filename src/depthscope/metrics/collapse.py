"""Representation collapse beyond VNI: spectral ranks, dormant units and token collapse.

Pure functions of tensors already captured (a covariance, the rows of a layer, or the
(B, T, D) outputs of a sequence model); all arithmetic in float64. Definitions:

* effective rank (Roy & Vetterli 2007; RankMe, Garrido et al. 2023) of a spectrum
  s_1..s_N >= 0: exp(H(p)), p_k = s_k / sum_j s_j, H(p) = -sum_k p_k log p_k (0 log 0 = 0).
  :func:`effective_rank` takes the eigenvalues lambda_k of the covariance C;
  :func:`rankme` takes the singular values of the centred rows, sqrt(lambda_k) up to a
  factor, which is what RankMe computes on embeddings (without its epsilon). Both lie in
  [1, N]: 1 for a rank-one C, N for C proportional to the identity.
* stable rank: ||X_c||_F^2 / ||X_c||_2^2 of the centred rows X_c, equivalently
  tr(C) / lambda_max(C) = sum_k lambda_k / max_k lambda_k, in [1, rank C].
* tau-dormant fraction (Sokar et al. 2023): unit i is tau-dormant when
  s_i = E|x_i| / ((1/N) sum_k E|x_k|) <= tau, E the mean over the samples; the fraction of
  such units.
* token collapse (Dong et al. 2021, "Attention is not all you need"): for each sequence's
  token matrix X_b (T x D), the relative residual ||X_b - best rank-1 approximation||_F /
  ||X_b||_F = sqrt(sum_{k>=2} sigma_k^2 / sum_k sigma_k^2) (Eckart-Young), averaged over the
  batch: 0 when every token is a multiple of one vector. ``reference="mean"`` measures the
  residual from the mean token instead, ||X_b - 1 xbar_b^T||_F / ||X_b||_F (Dong et al.'s
  res(X) = X - 1 x^T with the Frobenius norm), 0 when all tokens are equal.

Degenerate inputs follow the VNI functions (:mod:`depthscope.metrics.vni`): a zero
spectrum (every node constant) or an inf/NaN gives NaN.
"""
from __future__ import annotations

import math

import torch


def _finite(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Whether every entry over the trailing axes ``dims`` (e.g. (-2, -1)) is finite."""
    return torch.isfinite(x).flatten(-len(dims)).all(-1)


def covariance_spectrum(c: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of a symmetric covariance C (..., N, N), float64, descending; those <= N 2^-52 lambda_max set to 0.

    The one eigendecomposition the spectral metrics share. C is divided by its largest
    |entry| first (the metrics are scale invariant; the spectrum is returned in that unit),
    so C of 1e+-300 neither overflows nor underflows. NaN where C holds an inf or NaN.
    """
    if c.ndim < 2 or c.shape[-1] != c.shape[-2] or c.shape[-1] < 1:
        raise ValueError(f"expected a square (N, N) covariance or a batch of them, got shape {tuple(c.shape)}")
    c = c.to(torch.float64)
    finite = _finite(c, (-2, -1))
    c = torch.where(finite[..., None, None], c, torch.zeros((), dtype=c.dtype, device=c.device))
    m = c.abs().amax((-2, -1), keepdim=True)
    c = c / torch.where(m > 0, m, torch.ones_like(m))
    lam = torch.linalg.eigvalsh((c + c.transpose(-2, -1)) / 2).flip(-1)
    # below N u lambda_max an eigenvalue is the eigensolver's rounding, not variance: 0, so a
    # rank-deficient C reads its rank (sqrt(1e-16) = 1e-8 would otherwise leak into rankme)
    tol = c.shape[-1] * 2.0**-52 * lam[..., :1].clamp_min(0.0)
    lam = torch.where(lam > tol, lam, torch.zeros_like(lam))
    return torch.where(finite[..., None], lam, torch.full_like(lam, math.nan))


def effective_rank(eigenvalues: torch.Tensor) -> torch.Tensor:
    """exp(-sum_k p_k log p_k), p_k = lambda_k / sum_j lambda_j, over the last axis: the effective rank of C.

    NaN when the spectrum is zero (every node constant) or not finite.
    """
    lam = eigenvalues.to(torch.float64).clamp_min(0.0)
    tot = lam.sum(-1, keepdim=True)
    p = lam / torch.where(tot > 0, tot, torch.ones_like(tot))
    h = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p)).sum(-1)
    ok = (tot.squeeze(-1) > 0) & _finite(eigenvalues, (-1,))
    return torch.where(ok, torch.exp(h), torch.full_like(h, math.nan))


def rankme(eigenvalues: torch.Tensor) -> torch.Tensor:
    """RankMe: exp(-sum_k p_k log p_k), p_k = sigma_k / sum_j sigma_j, sigma_k = sqrt(lambda_k) the singular values of X_c.

    Garrido et al. 2023 (without their epsilon of 1e-7 added to p_k); NaN on a zero spectrum.
    """
    return effective_rank(eigenvalues.to(torch.float64).clamp_min(0.0).sqrt())


def stable_rank(eigenvalues: torch.Tensor) -> torch.Tensor:
    """tr(C) / lambda_max(C) = ||X_c||_F^2 / ||X_c||_2^2 over the last axis; NaN on a zero spectrum."""
    lam = eigenvalues.to(torch.float64).clamp_min(0.0)
    top = lam.amax(-1)
    return torch.where(top > 0, lam.sum(-1) / torch.where(top > 0, top, torch.ones_like(top)),
                       torch.full_like(top, math.nan))


def spectral_collapse(c: torch.Tensor) -> dict[str, torch.Tensor]:
    """effective_rank, rankme and stable_rank of covariance(s) C (..., N, N) from one eigendecomposition.

    Also ``participation_ratio`` = (sum lambda)^2 / sum lambda^2 = 1/VNI (eq. 3.5), a check
    against :func:`depthscope.metrics.vni_from_covariance` from the same spectrum.
    """
    lam = covariance_spectrum(c)
    tot, sq = lam.sum(-1), (lam * lam).sum(-1)
    pr = torch.where(sq > 0, tot * tot / torch.where(sq > 0, sq, torch.ones_like(sq)), torch.full_like(sq, math.nan))
    return {"effective_rank": effective_rank(lam), "rankme": rankme(lam), "stable_rank": stable_rank(lam),
            "participation_ratio": pr}


def dormant_scores(x: torch.Tensor) -> torch.Tensor:
    """s_i = E|x_i| / ((1/N) sum_k E|x_k|) of each unit (last axis of x; every other axis is samples), float64.

    Sokar et al. 2023's neuron score. A layer whose every output is 0 has every score 0/0:
    returned as 0 (every unit dormant, as their code's +1e-9 makes it). NaN if x holds inf/NaN.
    """
    if x.ndim < 2 or x.shape[-1] < 1 or x.numel() == 0:
        raise ValueError(f"expected (samples..., units) with at least one sample and unit, got shape {tuple(x.shape)}")
    a = x.detach().to(torch.float64).reshape(-1, x.shape[-1])
    if not bool(torch.isfinite(a).all()):
        return torch.full((x.shape[-1],), math.nan, dtype=torch.float64, device=x.device)
    m = a.abs().amax()
    a = a / m if m > 0 else a  # scale invariant; the mean of |x| ~ 1e300 must not overflow
    e = a.abs().mean(0)
    layer = e.mean()
    return e / layer if layer > 0 else torch.zeros_like(e)


def dormant_fraction(x: torch.Tensor, tau: float = 0.0) -> float:
    """The fraction of tau-dormant units: #{i : s_i <= tau} / N, s_i = :func:`dormant_scores` (Sokar et al. 2023).

    tau = 0 counts units that are exactly 0 on every sample (dead units); Sokar et al. use
    tau = 0.025 or 0.1 for nearly-dead ones. NaN if x holds inf/NaN.
    """
    if not (tau >= 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    s = dormant_scores(x)
    if bool(torch.isnan(s).any()):
        return math.nan
    return float((s <= tau).to(torch.float64).mean())


def token_collapse_per_sequence(x: torch.Tensor, *, reference: str = "rank1") -> torch.Tensor:
    """||X_b - R_b||_F / ||X_b||_F for each sequence b of x (B, T, D), float64 (B,).

    R_b is the best rank-1 approximation of X_b (``reference="rank1"``): the residual is
    sqrt(sum_{k>=2} sigma_k^2 / sum_k sigma_k^2), from the eigenvalues of the smaller Gram
    (T x T or D x D) of X_b scaled to max|entry| 1 (absolute accuracy about sqrt(min(T, D) u)
    with u = 2^-53, so residuals below ~1e-7 read as ~1e-7 or 0). With ``reference="mean"``,
    R_b = 1 xbar_b^T, the mean token. NaN for an all-zero sequence (padding) or one holding inf/NaN.
    """
    if reference not in ("rank1", "mean"):
        raise ValueError(f"reference must be 'rank1' or 'mean', got {reference!r}")
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"expected (batch, tokens, features) outputs, got shape {tuple(x.shape)}")
    a = x.detach().to(torch.float64)
    finite = _finite(a, (-2, -1))
    a = torch.where(finite[:, None, None], a, torch.zeros((), dtype=a.dtype, device=a.device))
    m = a.abs().amax((-2, -1), keepdim=True)
    a = a / torch.where(m > 0, m, torch.ones_like(m))
    total = (a * a).sum((-2, -1))
    if reference == "mean":
        res = ((a - a.mean(-2, keepdim=True)) ** 2).sum((-2, -1))
    else:
        t, d = a.shape[-2:]
        g = a @ a.transpose(-2, -1) if t <= d else a.transpose(-2, -1) @ a
        lam = torch.linalg.eigvalsh(g).clamp_min(0.0)  # ascending: the last is sigma_1^2
        res = lam[..., :-1].sum(-1)
    ok = finite & (total > 0)
    r = torch.sqrt(res.clamp_min(0.0) / torch.where(ok, total, torch.ones_like(total)))
    return torch.where(ok, r, torch.full_like(r, math.nan))


def token_collapse(x: torch.Tensor, *, reference: str = "rank1") -> float:
    """The batch mean of :func:`token_collapse_per_sequence` over the sequences where it is defined (NaN if none).

    0 = every sequence's tokens are multiples of one vector (``rank1``) or all equal (``mean``):
    collapse that pooled-row VNI cannot see, since different sequences may still differ.
    A sequence holding inf/NaN makes the whole value NaN; all-zero (padding) sequences are skipped.
    """
    r = token_collapse_per_sequence(x, reference=reference)
    a = x.detach()
    if not bool(torch.isfinite(a).all()):
        return math.nan
    ok = ~torch.isnan(r)
    return float(r[ok].mean()) if bool(ok.any()) else math.nan
