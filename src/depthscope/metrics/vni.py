"""The Vanishing Node Indicator and its relatives: pure functions of a samples x nodes matrix.

VNI (thesis eq. 3.4/3.5)::

    R_sq = sum_ij rho_ij^2 sigma_i^2 sigma_j^2 / sum_ij sigma_i^2 sigma_j^2 = tr(C C^T) / tr(C)^2

where C is the node covariance of a layer. R_sq lies in [1/N, 1]: 1/N when the
nodes are uncorrelated with equal variances, 1 when they are all collinear.

Degenerate inputs get one answer from every VNI function here (:func:`vni`,
:func:`vni_moments`, :func:`vni_from_covariance`, :class:`CovarianceAccumulator`,
:func:`depthscope.ensemble.batched_vni`, :func:`depthscope.metrics.jacobian_vni`):

* fewer than 2 samples, no node, or not a matrix: ``ValueError``;
* every node constant (all its samples equal, so tr C = 0): NaN. A node is constant
  when its samples are *exactly* equal; its centred values are then set to exactly 0,
  so the rounding of its mean cannot fake a variance (a constant layer used to read 1.0);
* any inf or NaN entry: NaN (the covariance is undefined; R_sq is never computed from
  the finite part). :func:`depthscope.metrics.vni_per_layer` refuses such inputs;
* any scale: R_sq is scale invariant, and every function rescales by a power of two
  (exact) before squaring, so finite values from 1e-300 to 1e300 (float64) or the whole
  float32 range give the same R_sq as values near 1, not inf/inf or 0/0.
"""
from __future__ import annotations

import math

import torch


def _check_shape(x: torch.Tensor) -> None:
    if x.ndim < 2:
        raise ValueError(f"expected a (samples, nodes) matrix or a batch of them, got shape {tuple(x.shape)}")
    if x.shape[-2] < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {x.shape[-2]}")
    if x.shape[-1] < 1:
        raise ValueError(f"need at least 1 node, got shape {tuple(x.shape)}")


def _constant_nodes(x: torch.Tensor) -> torch.Tensor:
    """(..., N) bool: nodes whose samples are all exactly equal (NaN is never equal: not constant)."""
    return (x == x[..., :1, :]).all(-2)


def _centred64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X_c in float64, finite (...)): x centred per node, exactly 0 for constant nodes, max|X_c| in [0.5, 1].

    The plain reference: divide by max|x| so the mean cannot overflow, centre twice (the
    second pass removes the rounding of the first mean), zero the constant nodes, divide
    by max|X_c| so the squares neither overflow nor underflow. Non-finite matrices are
    zeroed (their result is replaced by NaN by the caller).
    """
    x = x.to(torch.float64)
    finite = torch.isfinite(x).all(-1).all(-1)
    x = torch.where(finite[..., None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    const = _constant_nodes(x)
    m = x.abs().amax((-2, -1), keepdim=True)
    x = x / torch.where(m > 0, m, torch.ones_like(m))
    xc = x - x.mean(-2, keepdim=True)
    xc = xc - xc.mean(-2, keepdim=True)
    xc = xc.masked_fill(const[..., None, :], 0.0)
    mc = xc.abs().amax((-2, -1), keepdim=True)
    return xc / torch.where(mc > 0, mc, torch.ones_like(mc)), finite


def _nan_unless(finite: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.where(finite, r, torch.full_like(r, math.nan))


def vni(x: torch.Tensor) -> torch.Tensor:
    """R_sq = tr(C^2) / tr(C)^2 (eq. 3.5) of the nodes of x (samples S x nodes N), or of each matrix of (..., S, N).

    Computed through whichever Gram matrix is smaller: with X centred,
    tr(C^2) / tr(C)^2 = ||X^T X||_F^2 / tr(X^T X)^2 = ||X X^T||_F^2 / tr(X X^T)^2,
    so the cost is O(S N min(S, N)) and the normalisation (1/S or 1/(S-1)) cancels.
    Accumulated in float64, on a copy of x rescaled by its largest |centred entry| (R_sq is
    scale invariant). NaN when every node is constant or x holds an inf or NaN (see the
    module docstring for every degenerate case).
    """
    _check_shape(x)
    xc, finite = _centred64(x)
    n, s = xc.shape[-1], xc.shape[-2]
    gram = xc.transpose(-2, -1) @ xc if n <= s else xc @ xc.transpose(-2, -1)
    tr = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)
    return _nan_unless(finite, (gram * gram).sum((-2, -1)) / tr**2)


def debias_vni(r_sq: torch.Tensor | float, samples: int) -> torch.Tensor | float:
    """(R_hat - 1/m) / (1 + 1/m), m = S - 1: VNI with the first-order finite-sample excess of eq. 3.5 removed.

    The centred sample covariance of S Gaussian samples is Wishart with m = S - 1 degrees
    of freedom (one is spent on the mean), whose moments give
    E tr(C_hat^2) = (1 + 1/m) tr(C^2) + tr(C)^2 / m and E tr(C_hat) = tr(C), so the
    measured R_hat ~ R (1 + 1/m) + 1/m: 1000 samples of 200 independent nodes read 1.2/N,
    not 1/N. This inverts that excess. (For independent equal-variance nodes the exact mean
    is E R_hat = (m + 1 + N) / (m N + 2), which the tests check by Monte Carlo; it is what
    tells m = S - 1 from m = S at small S.)
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    m = samples - 1
    return (r_sq - 1.0 / m) / (1.0 + 1.0 / m)


def vni_from_covariance(c: torch.Tensor) -> torch.Tensor:
    """R_sq = ||C||_F^2 / tr(C)^2 of a symmetric covariance matrix C (eq. 3.5), or of each of (..., N, N).

    C is divided by its largest |entry| first (R_sq is scale invariant), so covariances of
    1e+-300 give the same R_sq; NaN when tr C = 0 or C holds an inf or NaN.
    """
    if c.ndim < 2 or c.shape[-1] != c.shape[-2] or c.shape[-1] < 1:
        raise ValueError(f"expected a square (N, N) covariance or a batch of them, got shape {tuple(c.shape)}")
    c = c.to(torch.float64)
    finite = torch.isfinite(c).all(-1).all(-1)
    c = torch.where(finite[..., None, None], c, torch.zeros((), dtype=c.dtype, device=c.device))
    m = c.abs().amax((-2, -1), keepdim=True)
    c = c / torch.where(m > 0, m, torch.ones_like(m))
    return _nan_unless(finite, (c * c).sum((-2, -1)) / torch.diagonal(c, dim1=-2, dim2=-1).sum(-1) ** 2)


def rho_squared(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """The N x N matrix of squared correlation coefficients rho_ij^2 (eq. 3.2).

    Constant nodes (samples exactly equal, or variance <= eps) get rho = 0 with every other
    node and 1 with themselves.
    """
    if x.ndim != 2:
        raise ValueError(f"expected a (samples, nodes) matrix, got shape {tuple(x.shape)}")
    _check_shape(x)
    x = x.to(torch.float64)
    const = _constant_nodes(x)
    xc = x - x.mean(dim=0, keepdim=True)
    xc = xc.masked_fill(const[None, :], 0.0)
    c = xc.T @ xc / (xc.shape[0] - 1)
    var = torch.diagonal(c)
    alive = var > eps
    denom = torch.where(alive, var, torch.ones_like(var))
    rho2 = c**2 / (denom[:, None] * denom[None, :])
    rho2 = torch.where(alive[:, None] & alive[None, :], rho2, torch.zeros_like(rho2))
    rho2.fill_diagonal_(1.0)
    return rho2


def effective_nodes(r_sq: torch.Tensor | float, width: int) -> torch.Tensor | float:
    """The thesis' effective number of nodes N (1 - R_sq) + 1 (section 3.3)."""
    return width * (1.0 - r_sq) + 1.0


def participation_ratio(r_sq: torch.Tensor | float) -> torch.Tensor | float:
    """1 / R_sq = tr(C)^2 / tr(C^2): the participation ratio of C's spectrum (delve's measure)."""
    return 1.0 / r_sq


def _pow2_scale(r: torch.Tensor, emax: int, safe: int) -> torch.Tensor:
    """2^-e with r 2^-e in [0.5, 1), e clamped to [-emax, emax], where r lies outside [2^-safe, 2^safe]; else 1.

    An exact rescaling, applied only where the squares could overflow or underflow, so
    ordinary activations are left as they are (and the rescaling pass can be skipped).
    """
    e = torch.frexp(r).exponent.clamp(-emax, emax).to(torch.float64)
    needed = torch.isfinite(r) & (r > 0) & ((r < 2.0**-safe) | (r > 2.0**safe))
    return torch.where(needed, torch.exp2(-e), torch.ones_like(r))


class CovarianceAccumulator:
    """Running float64 node covariance of a layer, fed batch by batch; VNI without storing samples.

    Uses the co-moment update (Chan et al.), so batches of any size merge exactly. The
    co-moments are kept divided by (2^k)^2, 2^k >= the largest |x| seen so far, so values
    of 1e+-200 neither overflow nor underflow; nodes whose every sample so far was the same
    number are exactly constant (zero rows of C), and a batch holding inf or NaN makes the
    VNI NaN from then on (see the module docstring).
    Memory O(N^2) per layer; for wide layers prefer :func:`vni` on a bounded sample.
    """

    def __init__(self, width: int, device: torch.device | str | None = None):
        self.n = 0
        self.mean = torch.zeros(width, dtype=torch.float64, device=device)  # divided by scale
        self.m2 = torch.zeros(width, width, dtype=torch.float64, device=device)  # divided by scale^2
        self.scale = 1.0  # a power of two
        self.seen_max = 0.0
        self.first = torch.zeros(width, dtype=torch.float64, device=device)
        self.varies = torch.zeros(width, dtype=torch.bool, device=device)
        self.finite = True

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected (batch, {self.mean.shape[0]}), got {tuple(x.shape)}")
        nb = x.shape[0]
        if nb == 0:
            return
        if not bool(torch.isfinite(x).all()):
            self.finite = False
            x = torch.zeros_like(x)
        if self.n == 0:
            self.first = x[0].clone()
        self.varies |= (x != self.first).any(0)
        big = float(x.abs().max())
        if big > 0.0 and (self.seen_max == 0.0 or big > self.scale):
            new = math.ldexp(1.0, min(math.frexp(big)[1], 1023))
            if self.seen_max > 0.0:  # a larger scale: the co-moments shrink with it (all zero otherwise)
                self.mean *= self.scale / new
                self.m2 *= (self.scale / new) ** 2
            self.scale = new
        self.seen_max = max(self.seen_max, big)
        x = x / self.scale
        mb = x.mean(0)
        xc = x - mb
        xc -= xc.mean(0)  # the rounding of mb, so a constant batch adds exactly nothing
        delta = mb - self.mean
        tot = self.n + nb
        self.m2 += xc.T @ xc + torch.outer(delta, delta) * (self.n * nb / tot)
        self.mean += delta * (nb / tot)
        self.n = tot

    def _m2(self) -> torch.Tensor:
        keep = self.varies.to(torch.float64)
        return self.m2 * keep[:, None] * keep[None, :]

    def covariance(self) -> torch.Tensor:
        """The unbiased (1/(n-1)) node covariance; NaN after a non-finite batch."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples, have {self.n}")
        if not self.finite:
            return torch.full_like(self.m2, math.nan)
        return self._m2() / (self.n - 1) * self.scale * self.scale

    def vni(self) -> torch.Tensor:
        """R_sq (eq. 3.5) of the samples seen so far."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples, have {self.n}")
        if not self.finite:
            return torch.tensor(math.nan, dtype=torch.float64, device=self.m2.device)
        return vni_from_covariance(self._m2())


def vni_moments(x: torch.Tensor, *, chunk: int = 512, overwrite: bool = False) -> torch.Tensor:
    """[R_sq, mean, shared variance] of x (samples S x nodes N) from a float32 Gram summed in float64.

    R_sq = ||G||_F^2 / tr(G)^2 (eq. 3.5, as :func:`vni`), mean = the mean of every entry of x,
    shared variance = tr(C)/N = tr(G)/(S N) (eq. 4.2, population variance), where G is the
    Gram of the centred x: X_c^T X_c when N <= S, else X_c X_c^T (same non-zero spectrum).
    A batch x of shape (..., S, N) gives (..., 3): one call for many layers of one shape.

    The fast path of :func:`vni` for a watch that runs every step: the products are
    float32 (about twice as fast as float64). Steps:
    (0) one min/max pass per node finds the exactly constant nodes (zeroed, as in :func:`vni`)
    and the largest node range r; where r lies outside [2^-40, 2^40] (float32; [2^-400, 2^400]
    for float64), x is multiplied by the power of two 2^-e that puts r in [1/2, 1) (exact),
    so |y| ~ 1e19 cannot overflow the float32 squares nor 1e-30 underflow them;
    (1) centring in two float32 passes: x - m with m the column mean is exact wherever x
    lies within a factor 2 of m (Sterbenz) and otherwise off by one rounding of the
    *centred* value; the residual column mean of those differences is subtracted too, so a
    large common offset costs no accuracy; (2) the contraction axis is cut into chunks
    of ``chunk`` whose float32 Grams are summed in float64, so the float32 error does not
    grow with S. The worst case, to first order in u = 2^-24:
    |G_ij - G*_ij| <= (chunk + 6) u sqrt(G*_ii G*_jj), hence |R_sq - R*_sq| <= 4 (chunk + 6) u
    (1.2e-4 at chunk = 512). Rounding errors are not worst-case aligned, and the error the
    code achieves is far smaller: :func:`vni_moments_error` states it,
    |R_sq - R*_sq| <= sqrt(chunk) u (1.35e-6 at chunk = 512; measured <= 0.16 of it on the
    ill-conditioned inputs of the tests and on 100 random ones), and the relative error of
    the shared variance is <= (sqrt(chunk) + 6) u (measured <= 0.42 sqrt(chunk) u).
    float64 input is computed in float64,
    half precision in float32. Returns float64 on x's device (no host sync). Degenerate
    inputs as :func:`vni`: R_sq is NaN when every node is constant; all three are NaN when
    x holds an inf or NaN. With ``overwrite``, a float32/float64 x is scaled and centred in
    place (x is left holding X_c, times 2^-e if rescaled): for a caller's scratch buffer, it saves an allocation
    of x's size, which on CPU costs more in page faults than the arithmetic.
    """
    _check_shape(x)
    s, n = x.shape[-2:]
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if x.dtype not in (torch.float32, torch.float64):
        x, overwrite = x.to(torch.float32), True  # a converted copy is ours to overwrite
    lo, hi = torch.aminmax(x, dim=-2)
    const = lo == hi
    lo64, hi64 = lo.to(torch.float64), hi.to(torch.float64)
    r = (hi64 - lo64).amax(-1)  # inf or NaN exactly when x holds an inf or NaN
    finite = torch.isfinite(r)
    f32 = x.dtype == torch.float32
    scale = _pow2_scale(r, 125 if f32 else 1020, 40 if f32 else 400)  # (...): 1 unless the range is extreme
    v = torch.where(const, torch.zeros((), dtype=scale.dtype, device=scale.device), scale[..., None])
    v = v.to(x.dtype).unsqueeze(-2)  # (..., 1, N): 2^-e, 0 on constant nodes
    # on CPU a check is free and saves a pass over x; on an accelerator it would be a host sync
    if x.device.type == "cpu" and not bool((v != 1).any()):
        xc = x if overwrite else x.clone()
    else:
        xc = x.mul_(v) if overwrite else x * v
    m1 = xc.sum(-2, keepdim=True).div_(s)
    xc.sub_(m1)
    d = xc.sum(-2, keepdim=True).div_(s)  # the residual mean, from (nearly) exact differences
    xc.sub_(d)
    col_mean = (m1.to(torch.float64) + d.to(torch.float64)).squeeze(-2) / scale[..., None]
    mean = torch.where(const, lo64, col_mean).mean(-1)
    a = xc if n <= s else xc.transpose(-2, -1)  # contract over the longer axis: G is min(S, N) square
    g = None
    for part in a.split(chunk, dim=-2):
        gp = (part.transpose(-2, -1) @ part).to(torch.float64)
        g = gp if g is None else g.add_(gp)
    tr = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)
    var = tr / (s * n) / scale / scale  # two divisions: scale^2 alone could overflow
    out = torch.stack([(g * g).sum((-2, -1)) / tr**2, mean, var], dim=-1)
    return torch.where(finite[..., None], out, torch.full_like(out, math.nan))


def vni_moments_error(chunk: int = 512) -> float:
    """sqrt(chunk) 2^-24: the bound on the |R_sq| error of :func:`vni_moments` for float32 input that the tests hold it to.

    Not the worst case (4 (chunk + 6) 2^-24, for rounding errors all of one sign) but the
    size float32 rounding reaches on real data, with a margin (measured at most 0.16 of it,
    see docs/testing.md): a change that makes the fast path several times less accurate,
    such as summing the chunk Grams in float32, fails the tests.
    """
    return math.sqrt(chunk) * 2.0**-24
