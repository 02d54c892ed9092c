"""Mean-field theory of deep random networks, beside what :mod:`depthscope.metrics` measures.

Notation follows the thesis (seed 002, chapter 3) and Pennington, Schoenholz &
Ganguli (2018), "The emergence of spectral universality in deep networks":

* q_l      pre-activation variance of layer l (the *variance map*)
* mu_k(q)  = E_z[phi'(sqrt(q) z)^(2k)], z ~ N(0, 1)
* chi      = sigma_w^2 mu_1(q*): the gradient-scale factor per layer (eq. 4.4)
* s1       first coefficient of the weights' S-transform series
           (gaussian -1, uniform -1, orthogonal 0)
* m1, m2   first two moments of the spectrum of J J^T
* VNI      R_sq ~ m2 / (N m1^2)                                   (eq. 3.6)

The asymptotic VNI (eq. 3.7) evaluates mu_k at the fixed point q*::

    R_sq = 1/N + (L/N) (mu2/mu1^2 - 1 - s1)

Inputs of small variance (the thesis uses sigma_x^2 = 0.1) do not start at q*,
so :func:`vni_finite_depth` sums each layer's own term instead::

    R_sq(l) = 1/N + (1/N) sum_{k<=l} (mu2(q_k)/mu1(q_k)^2 - 1 - s1)

The two agree when q_1 = q*; the CLI defaults to the finite-depth form.
Both are first-order (N >> L) approximations and can exceed 1; the measured
VNI cannot (it lies in [1/N, 1]).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from .activations import get_activation, numpy_derivative, numpy_phi

#: s1 of each weight distribution (Pennington, Schoenholz & Ganguli 2018).
S1 = {"gaussian": -1.0, "uniform": -1.0, "orthogonal": 0.0}

#: sigma_w^2 with sigma_w^2 mu_1 = 1 at the fixed point, where it is known in closed form.
_CRITICAL_CLOSED_FORM = {
    "linear": 1.0,
    "tanh": 1.0,
    "hard_tanh": 1.0,
    "relu": 2.0,
    # No closed form: sigmoid's mean of 1/2 feeds q* ~ sigma_w^2/4, so chi = 1 needs a
    # large sigma_w^2. Precomputed by _critical_numeric (7 s); a test checks it.
    "sigmoid": 103.00755385551933,
}

_GH_POINTS = 120  # exact for polynomials of degree < 240; more points overflow numpy's weights
_DENSE_POINTS = 48_000  # midpoint rule on [-12, 12]: a kink costs O(h) = 5e-4 * pdf at most


@functools.lru_cache(maxsize=None)
def _rule(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "hermite":
        # Probabilists' Hermite nodes; weights normalised so they integrate N(0, 1).
        x, w = np.polynomial.hermite_e.hermegauss(_GH_POINTS)
        return x, w / math.sqrt(2.0 * math.pi)
    # Gauss-Hermite converges slowly (errors of ~3% at 200 nodes) when phi' jumps,
    # as relu's and hard_tanh's do, so kinked functions get a dense midpoint rule
    # ("dense"); smooth functions at large q, whose phi' narrows to a spike
    # between Hermite nodes, get a coarser one ("midpoint", O(h^2) for smooth
    # integrands). The nodes straddle 0, so a jump at 0 (relu) is exact.
    n = _DENSE_POINTS if kind == "dense" else 6_000
    h = 24.0 / n
    x = -12.0 + h * (np.arange(n) + 0.5)
    w = h * np.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)
    return x, w


def gaussian_expectation(fn, q: float, smooth: bool = True) -> float:
    """E_z[fn(sqrt(q) z)], z ~ N(0,1).

    Gauss-Hermite quadrature when fn is smooth on the scale of its nodes (smooth
    and q <= 4); a midpoint rule otherwise (dense for kinks, coarser for smooth
    functions at large q).
    """
    kind = "dense" if not smooth else ("hermite" if q <= 4.0 else "midpoint")
    x, w = _rule(kind)
    return float(np.sum(w * fn(math.sqrt(max(q, 0.0)) * x)))


def s1_of(init: str) -> float:
    """s1 of an init name (gaussian -1, uniform -1, orthogonal 0)."""
    try:
        return S1[init]
    except KeyError:
        raise ValueError(f"unknown init {init!r}; expected one of: {', '.join(S1)}") from None


def mu(activation: str, q: float, k: int = 1) -> float:
    """mu_k(phi, q) = E_z[phi'(sqrt(q) z)^(2k)] by Gauss-Hermite quadrature."""
    if k < 1:
        raise ValueError(f"moment order k must be >= 1, got {k}")
    smooth = get_activation(activation).smooth
    return gaussian_expectation(lambda h: numpy_derivative(activation, h) ** (2 * k), q, smooth)


def variance_map(activation: str, q: float, sigma_w2: float, sigma_b2: float = 0.0) -> float:
    """q_{l+1} = sigma_w^2 E_z[phi(sqrt(q_l) z)^2] + sigma_b^2."""
    smooth = get_activation(activation).smooth
    return sigma_w2 * gaussian_expectation(lambda h: numpy_phi(activation, h) ** 2, q, smooth) + sigma_b2


def _variance_map_many(activation: str, qs: np.ndarray, sigma_w2: float, sigma_b2: float) -> np.ndarray:
    """variance_map at many q in one vectorised evaluation per quadrature rule."""
    smooth = get_activation(activation).smooth
    out = np.empty(len(qs))
    kinds = np.array(["dense" if not smooth else ("hermite" if q <= 4.0 else "midpoint") for q in qs])
    for kind in set(kinds):
        sel = kinds == kind
        x, w = _rule(kind)
        h = np.sqrt(np.maximum(qs[sel], 0.0))[:, None] * x[None, :]
        out[sel] = (numpy_phi(activation, h) ** 2) @ w
    return sigma_w2 * out + sigma_b2


def variance_trajectory(
    activation: str, depth: int, sigma_w2: float, input_variance: float, sigma_b2: float = 0.0
) -> np.ndarray:
    """Pre-activation variances q_1..q_L for inputs of per-feature variance ``input_variance``.

    q_1 = sigma_w^2 sigma_x^2 + sigma_b^2 (the input is not passed through phi).
    """
    qs = np.empty(depth)
    q = sigma_w2 * input_variance + sigma_b2
    for l in range(depth):
        qs[l] = q
        q = variance_map(activation, q, sigma_w2, sigma_b2)
    return qs


def fixed_point(activation: str, sigma_w2: float, sigma_b2: float = 0.0, q0: float = 1.0) -> float:
    """The stable fixed point q* of the variance map reached from q0.

    Returns 0.0 when the map contracts every q to 0, ``inf`` when it grows without
    bound, and q0 itself when every q is a fixed point (linear at sigma_w^2 = 1,
    relu at 2).
    """
    grid = np.logspace(-8, 6, 141)
    g = _variance_map_many(activation, grid, sigma_w2, sigma_b2) - grid
    # Quadrature error is ~1e-9 relative; anything below 1e-6 q is "no change".
    g[np.abs(g) <= 1e-6 * grid] = 0.0
    if np.all(g == 0.0):
        return float(q0)
    # Stable fixed points: g changes sign from + to - as q grows.
    roots = []
    for i in range(len(grid) - 1):
        if g[i] > 0 and g[i + 1] <= 0:
            lo, hi = grid[i], grid[i + 1]
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if variance_map(activation, mid, sigma_w2, sigma_b2) - mid > 0:
                    lo = mid
                else:
                    hi = mid
            roots.append(0.5 * (lo + hi))
    if roots:
        return float(min(roots, key=lambda r: abs(math.log(r) - math.log(max(q0, 1e-300)))))
    if np.all(g <= 0):
        return 0.0
    return math.inf


def chi(activation: str, sigma_w2: float, q: float) -> float:
    """chi = sigma_w^2 mu_1(q): the per-layer gradient-scale factor (eq. 4.4)."""
    return sigma_w2 * mu(activation, q, 1)


@functools.lru_cache(maxsize=None)
def _critical_numeric(activation: str, sigma_b2: float) -> float:
    def excess(s: float) -> float:
        return chi(activation, s, fixed_point(activation, s, sigma_b2)) - 1.0

    # chi need not be monotone in sigma_w^2 (sigmoid's q* grows with it), so take
    # the first crossing of chi = 1 on a log grid, then bisect inside it.
    grid = np.logspace(-3, 3, 31)
    ex = [excess(s) for s in grid]
    for i in range(len(grid) - 1):
        if ex[i] <= 0 < ex[i + 1]:
            lo, hi = grid[i], grid[i + 1]
            break
    else:
        raise ValueError(
            f"activation {activation!r} has no critical sigma_w^2 in [1e-3, 1e3]; pass sigma_w2 explicitly"
        )
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
    return math.sqrt(lo * hi)


def critical_sigma_w2(activation: str, sigma_b2: float = 0.0) -> float:
    """sigma_w^2 such that sigma_w^2 mu_1(q*) = 1 (the edge of chaos, no vanishing/exploding gradients).

    1 for linear, tanh and hard_tanh, 2 for relu (He et al.); found by bisection
    for any other registered activation (sigmoid: about 16 less its saturation).
    """
    get_activation(activation)  # validate the name
    if sigma_b2 == 0.0 and activation in _CRITICAL_CLOSED_FORM:
        return _CRITICAL_CLOSED_FORM[activation]
    return _critical_numeric(activation, float(sigma_b2))


def vni_asymptotic(depth: int, width: int, mu1: float, mu2: float, s1: float) -> float:
    """Eq. 3.7: R_sq = 1/N + (L/N) (mu2/mu1^2 - 1 - s1)."""
    return 1.0 / width + depth / width * (mu2 / mu1**2 - 1.0 - s1)


@dataclass
class TheoryResult:
    """Predictions for one architecture; per-layer arrays are indexed by layer 1..L (element 0 is layer 1)."""

    depth: int
    width: int
    activation: str
    init: str
    sigma_w2: float
    sigma_b2: float
    input_variance: float
    q_star: float
    chi: float
    mu1: float
    mu2: float
    s1: float
    q: np.ndarray = field(repr=False)
    mu1_layers: np.ndarray = field(repr=False)
    mu2_layers: np.ndarray = field(repr=False)
    vni_asymptotic: np.ndarray = field(repr=False)
    vni_finite: np.ndarray = field(repr=False)
    m1: np.ndarray = field(repr=False)
    m2: np.ndarray = field(repr=False)
    forward_variance: np.ndarray = field(repr=False)

    @property
    def effective_nodes(self) -> np.ndarray:
        """N (1 - R_sq) + 1 from the finite-depth prediction (clipped to [1/N, 1])."""
        r = np.clip(self.vni_finite, 1.0 / self.width, 1.0)
        return self.width * (1.0 - r) + 1.0


def predict(
    depth: int,
    width: int,
    activation: str = "tanh",
    init: str = "gaussian",
    sigma_w2: float | None = None,
    sigma_b: float = 0.0,
    input_variance: float = 0.1,
) -> TheoryResult:
    """All predictions for a depth-L, width-N net: q*, chi, mu_k, eq. 3.7 and its finite-depth form, m1, m2.

    m1(l) = prod_{k<=l} sigma_w^2 mu1(q_k);  m2(l) = m1(l)^2 (1 + sum_{k<=l}(mu2_k/mu1_k^2 - 1 - s1)).
    With every q_k = q* this is Pennington et al.'s m1 = (sigma_w^2 mu1)^L,
    m2 = m1^2 L (mu2/mu1^2 + 1/L - 1 - s1), the form eq. 3.7 comes from.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    # issue 11: a variance is a finite number >= 0; sigma_b enters squared, so sigma_b^2 must be finite too
    for name, v, sq in (("input_variance", input_variance, ""), ("sigma_b", sigma_b, " whose square is finite")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf) \
                or (sq and v * v == math.inf):
            raise ValueError(f"{name} must be a finite number >= 0{sq}, got {v!r}")
    s1 = s1_of(init)
    sb2 = float(sigma_b) ** 2
    sw2 = critical_sigma_w2(activation, sb2) if sigma_w2 is None else float(sigma_w2)
    if sw2 <= 0:
        raise ValueError(f"sigma_w2 must be > 0, got {sw2}")
    q_star = fixed_point(activation, sw2, sb2, q0=sw2 * input_variance + sb2)
    qstar_eval = q_star if math.isfinite(q_star) else 1e6
    mu1s, mu2s = mu(activation, qstar_eval, 1), mu(activation, qstar_eval, 2)
    qs = variance_trajectory(activation, depth, sw2, input_variance, sb2)
    mu1_l = np.array([mu(activation, q, 1) for q in qs])
    mu2_l = np.array([mu(activation, q, 2) for q in qs])
    layers = np.arange(1, depth + 1)
    term = mu2_l / mu1_l**2 - 1.0 - s1
    vni_fin = 1.0 / width + np.cumsum(term) / width
    vni_asy = np.array([vni_asymptotic(l, width, mu1s, mu2s, s1) for l in layers])
    m1 = np.cumprod(sw2 * mu1_l)
    m2 = m1**2 * (1.0 + np.cumsum(term))
    fwd = np.array([variance_map(activation, q, 1.0, 0.0) for q in qs])  # E[x_l^2]
    return TheoryResult(
        depth=depth, width=width, activation=activation, init=init, sigma_w2=sw2, sigma_b2=sb2,
        input_variance=input_variance, q_star=q_star, chi=chi(activation, sw2, qstar_eval),
        mu1=mu1s, mu2=mu2s, s1=s1, q=qs, mu1_layers=mu1_l, mu2_layers=mu2_l,
        vni_asymptotic=vni_asy, vni_finite=vni_fin, m1=m1, m2=m2, forward_variance=fwd,
    )
