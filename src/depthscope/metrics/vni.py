"""The Vanishing Node Indicator and its relatives: pure functions of a samples x nodes matrix.

VNI (thesis eq. 3.4/3.5)::

    R_sq = sum_ij rho_ij^2 sigma_i^2 sigma_j^2 / sum_ij sigma_i^2 sigma_j^2 = tr(C C^T) / tr(C)^2

where C is the node covariance of a layer. R_sq lies in [1/N, 1]: 1/N when the
nodes are uncorrelated with equal variances, 1 when they are all collinear.
"""
from __future__ import annotations

import torch


def _centered(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"expected a (samples, nodes) matrix, got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {x.shape[0]}")
    return x - x.mean(dim=0, keepdim=True)


def vni(x: torch.Tensor) -> torch.Tensor:
    """R_sq = tr(C^2) / tr(C)^2 (eq. 3.5) of the nodes of x (samples S x nodes N).

    Computed through whichever Gram matrix is smaller: with X centred,
    tr(C^2) / tr(C)^2 = ||X^T X||_F^2 / tr(X^T X)^2 = ||X X^T||_F^2 / tr(X X^T)^2,
    so the cost is O(S N min(S, N)) and the normalisation (1/S or 1/(S-1)) cancels.
    Accumulated in float64. Returns NaN when every node is constant (tr C = 0).
    """
    xc = _centered(x).to(torch.float64)
    gram = xc.T @ xc if xc.shape[1] <= xc.shape[0] else xc @ xc.T
    tr = torch.diagonal(gram).sum()
    return (gram * gram).sum() / tr**2


def debias_vni(r_sq: torch.Tensor | float, samples: int) -> torch.Tensor | float:
    """(R_hat - 1/S) / (1 + 1/S): VNI with the first-order finite-sample excess of eq. 3.5 removed.

    For Gaussian nodes the sample covariance of S samples has
    E tr(C_hat^2) ~ (1 + 1/S) tr(C^2) + tr(C)^2 / S (Wishart moments) and
    E tr(C_hat) = tr(C), so the measured R_hat ~ R (1 + 1/S) + 1/S: 1000 samples
    of 200 independent nodes read 1.2/N, not 1/N. This inverts that excess.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    return (r_sq - 1.0 / samples) / (1.0 + 1.0 / samples)


def vni_from_covariance(c: torch.Tensor) -> torch.Tensor:
    """R_sq = ||C||_F^2 / tr(C)^2 of a symmetric covariance matrix C (eq. 3.5)."""
    c = c.to(torch.float64)
    return (c * c).sum() / torch.diagonal(c).sum() ** 2


def rho_squared(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """The N x N matrix of squared correlation coefficients rho_ij^2 (eq. 3.2).

    Constant nodes (variance <= eps) get rho = 0 with every other node and 1 with themselves.
    """
    xc = _centered(x).to(torch.float64)
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
    """1 / R_sq = tr(C)^2 / tr(C^2): the participation ratio of C's spectrum.

    Not delve's measure: delve reports saturation, the share of eigendirections needed to explain 99% of the
    variance, a count where this is a ratio of spectral moments.
    """
    return 1.0 / r_sq


class CovarianceAccumulator:
    """Running float64 node covariance of a layer, fed batch by batch; VNI without storing samples.

    Uses the co-moment update (Chan et al.), so batches of any size merge exactly.
    Memory O(N^2) per layer; for wide layers prefer :func:`vni` on a bounded sample.
    """

    def __init__(self, width: int, device: torch.device | str | None = None):
        self.n = 0
        self.mean = torch.zeros(width, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(width, width, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected (batch, {self.mean.shape[0]}), got {tuple(x.shape)}")
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0)
        xc = x - mb
        delta = mb - self.mean
        tot = self.n + nb
        self.m2 += xc.T @ xc + torch.outer(delta, delta) * (self.n * nb / tot)
        self.mean += delta * (nb / tot)
        self.n = tot

    def covariance(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError(f"need at least 2 samples, have {self.n}")
        return self.m2 / (self.n - 1)

    def vni(self) -> torch.Tensor:
        return vni_from_covariance(self.m2)


def vni_moments(x: torch.Tensor, *, chunk: int = 512, overwrite: bool = False) -> torch.Tensor:
    """[R_sq, mean, shared variance] of x (samples S x nodes N) from a float32 Gram summed in float64.

    R_sq = ||G||_F^2 / tr(G)^2 (eq. 3.5, as :func:`vni`), mean = the mean of every entry of x,
    shared variance = tr(C)/N = tr(G)/(S N) (eq. 4.2, population variance), where G is the
    Gram of the centred x: X_c^T X_c when N <= S, else X_c X_c^T (same non-zero spectrum).
    A batch x of shape (..., S, N) gives (..., 3): one call for many layers of one shape.

    The fast path of :func:`vni` for a watch that runs every step: the products are
    float32 (about twice as fast as float64) and the error is bounded by
    (1) centring in two float32 passes: x - m with m the column mean is exact wherever x
    lies within a factor 2 of m (Sterbenz) and otherwise off by one rounding of the
    *centred* value; the residual column mean of those differences is subtracted too, so a
    large common offset costs no accuracy; and (2) cutting the contraction axis into chunks
    of ``chunk`` whose float32 Grams are summed in float64, so the float32 error does not
    grow with S. To first order in the float32 unit roundoff u = 2^-24:
    |G_ij - G*_ij| <= (chunk + 6) u sqrt(G*_ii G*_jj), hence |R_sq - R*_sq| <= 4 (chunk + 6) u
    (:func:`vni_moments_error`: 1.2e-4 at chunk = 512; about 1e-8 on typical activations)
    and the relative error of the shared variance is <= (chunk + 6) u. float64 input is
    computed in float64, half precision in float32. Returns float64 on x's device (no host
    sync); R_sq is NaN when every node is constant. With ``overwrite``, a float32/float64 x
    is centred in place (x is left holding X_c): for a caller's scratch buffer, it saves an
    allocation of x's size, which on CPU costs more in page faults than the arithmetic.
    """
    if x.ndim < 2:
        raise ValueError(f"expected a (samples, nodes) matrix or a batch of them, got shape {tuple(x.shape)}")
    s, n = x.shape[-2:]
    if s < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {s}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if x.dtype not in (torch.float32, torch.float64):
        x, overwrite = x.to(torch.float32), True  # a converted copy is ours to overwrite
    m1 = x.sum(-2, keepdim=True).div_(s)
    xc = x.sub_(m1) if overwrite else x - m1
    d = xc.sum(-2, keepdim=True).div_(s)  # the residual mean, from (nearly) exact differences
    xc.sub_(d)
    mean = (m1.to(torch.float64) + d.to(torch.float64)).mean((-2, -1))
    a = xc if n <= s else xc.transpose(-2, -1)  # contract over the longer axis: G is min(S, N) square
    g = None
    for part in a.split(chunk, dim=-2):
        gp = (part.transpose(-2, -1) @ part).to(torch.float64)
        g = gp if g is None else g.add_(gp)
    tr = torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)
    return torch.stack([(g * g).sum((-2, -1)) / tr**2, mean, tr / (s * n)], dim=-1)


def vni_moments_error(chunk: int = 512) -> float:
    """4 (chunk + 6) 2^-24: the first-order bound on |R_sq| error of :func:`vni_moments` for float32 input."""
    return 4.0 * (chunk + 6) * 2.0**-24
