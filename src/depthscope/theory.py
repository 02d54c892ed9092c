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

_Z = 10.0  # P(|z| > 10) = 1.5e-23: the tails beyond are below the target accuracy
_GL = {n: np.polynomial.legendre.leggauss(n) for n in (10, 20)}
_RTOL = 1e-14  # per-panel target, relative to the whole integral
_MAX_SPLITS = 80  # a jump in the integrand needs ~50 halvings to reach _RTOL
_MAX_PANELS = 200_000
#: Where phi' jumps (in h), for activations whose kinks are known; others are found by the adaptive splitting.
_KINKS = {"relu": (0.0,), "hard_tanh": (-1.0, 1.0)}
_FIXED_RTOL = 1e-11  # variance-map changes below this share of q count as none (quadrature: ~1e-14)
_TINY = 1e-200  # q -> 0 and q -> inf limits are taken at h = +-_TINY and +-1/_TINY


def _panels(q: float, kinks: tuple[float, ...]) -> np.ndarray:
    """Initial panel edges in z for E[f(sqrt(q) z)]: unit panels on [-Z, Z], graded towards 0 when sqrt(q) > 1
    (phi varies on |h| ~ 1, i.e. |z| ~ 1/sqrt(q)), and a break at every known kink."""
    edges = set(np.arange(-_Z, _Z + 0.5, 1.0).tolist())
    s = math.sqrt(q)
    if s > 1.0:
        z = 0.5 / s
        while z < 1.0:
            edges.update((z, -z))
            z *= 2.0
    edges.update(k / s for k in kinks if abs(k / s) < _Z)
    return np.array(sorted(edges))


def _expect_many(fn, qs, kinks: tuple[float, ...] = ()) -> np.ndarray:
    """E_z[fn(sqrt(q) z)] for every q in ``qs``, z ~ N(0, 1); fn maps an array of h to (len(h), m) values.

    Adaptive Gauss-Legendre: each panel is integrated with 10 and 20 nodes and halved until the two agree
    to _RTOL of the whole integral (the 20-node value is kept), so the rule is chosen by accuracy, not by
    q. q = 0 and q = inf give the one-sided limits (fn(+0) + fn(-0))/2 and (fn(+inf) + fn(-inf))/2.
    Returns (len(qs), m).
    """
    qs = np.asarray(qs, dtype=np.float64)
    m = np.asarray(fn(np.array([0.5]))).reshape(1, -1).shape[1]
    out = np.zeros((len(qs), m))
    lim = (qs <= 0.0) | ~np.isfinite(qs)
    if lim.any():
        h = np.where(qs[lim] <= 0.0, _TINY, 1.0 / _TINY)
        v = np.asarray(fn(np.concatenate([h, -h]))).reshape(2 * len(h), m)
        out[lim] = 0.5 * (v[: len(h)] + v[len(h):])
    idx = np.flatnonzero(~lim)
    if len(idx) == 0:
        return out
    a, b, owner = [], [], []
    for i in idx:
        e = _panels(float(qs[i]), kinks)
        a.append(e[:-1]), b.append(e[1:]), owner.append(np.full(len(e) - 1, i))
    a, b, owner = np.concatenate(a), np.concatenate(b), np.concatenate(owner)
    x10, w10 = _GL[10]
    x20, w20 = _GL[20]
    xs, ws = np.concatenate([x10, x20]), (w10, w20)
    done = np.zeros((len(qs), m))
    done_abs = np.zeros((len(qs), m))
    for it in range(_MAX_SPLITS + 1):
        mid, half = 0.5 * (a + b), 0.5 * (b - a)
        z = mid[:, None] + half[:, None] * xs[None, :]  # (panels, 30)
        f = np.asarray(fn((np.sqrt(qs[owner])[:, None] * z).ravel()), dtype=np.float64).reshape(len(a), len(xs), m)
        f = f * (np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi))[:, :, None]
        i10 = half[:, None] * np.einsum("pnm,n->pm", f[:, :10], w10)
        i20 = half[:, None] * np.einsum("pnm,n->pm", f[:, 10:], w20)
        # The scale a panel's error is judged against: the sum of |panel integrals| of its q (not the integral
        # itself, which is 0 for E[phi] of an odd phi).
        scale = done_abs.copy()
        np.add.at(scale, owner, np.abs(i20))
        err = np.abs(i20 - i10)
        ok = np.all(err <= _RTOL * scale[owner], axis=1)
        if it == _MAX_SPLITS or len(a) > _MAX_PANELS:
            ok[:] = True  # not converged (a pathological fn): keep the finest estimate
        np.add.at(done, owner[ok], i20[ok])
        np.add.at(done_abs, owner[ok], np.abs(i20[ok]))
        a, b, owner = a[~ok], b[~ok], owner[~ok]
        if len(a) == 0:
            break
        mid = 0.5 * (a + b)
        a, b, owner = np.concatenate([a, mid]), np.concatenate([mid, b]), np.concatenate([owner, owner])
    out[idx] = done[idx]
    return out


def gaussian_expectation(fn, q: float, smooth: bool = True, kinks: tuple[float, ...] = ()) -> float:
    """E_z[fn(sqrt(q) z)], z ~ N(0,1), to ~1e-14 relative (adaptive Gauss-Legendre, see _expect_many).

    ``kinks`` are points h where fn jumps or kinks (they become panel edges); unknown ones are found by the
    adaptive splitting, only more slowly. ``smooth`` is accepted for compatibility and no longer matters.
    """
    return float(_expect_many(lambda h: np.asarray(fn(h))[:, None], [q], kinks)[0, 0])


def s1_of(init: str) -> float:
    """s1 of an init name (gaussian -1, uniform -1, orthogonal 0)."""
    try:
        return S1[init]
    except KeyError:
        raise ValueError(f"unknown init {init!r}; expected one of: {', '.join(S1)}") from None


def _kinks(activation: str) -> tuple[float, ...]:
    return _KINKS.get(get_activation(activation).name, ())


def mu(activation: str, q: float, k: int = 1) -> float:
    """mu_k(phi, q) = E_z[phi'(sqrt(q) z)^(2k)], z ~ N(0, 1); at q = 0 the limit q -> 0+ (relu: 1/2)."""
    if k < 1:
        raise ValueError(f"moment order k must be >= 1, got {k}")
    return float(_expect_many(lambda h: (numpy_derivative(activation, h) ** (2 * k))[:, None], [q],
                              _kinks(activation))[0, 0])


def variance_map(activation: str, q: float, sigma_w2: float, sigma_b2: float = 0.0) -> float:
    """q_{l+1} = sigma_w^2 E_z[phi(sqrt(q_l) z)^2] + sigma_b^2."""
    return float(_variance_map_many(activation, np.array([q]), sigma_w2, sigma_b2)[0])


def _variance_map_many(activation: str, qs: np.ndarray, sigma_w2: float, sigma_b2: float) -> np.ndarray:
    """variance_map at many q in one vectorised evaluation."""
    e = _expect_many(lambda h: (numpy_phi(activation, h) ** 2)[:, None], qs, _kinks(activation))[:, 0]
    return sigma_w2 * e + sigma_b2


def layer_moments(activation: str, qs) -> dict[str, np.ndarray]:
    """E[phi], E[phi^2], E[phi'], mu1 = E[phi'^2] and mu2 = E[phi'^4] at h = sqrt(q) z, for every q in ``qs``."""
    def fn(h):
        p, d = numpy_phi(activation, h), numpy_derivative(activation, h)
        d2 = d * d
        return np.stack([p, p * p, d, d2, d2 * d2], axis=1)

    e = _expect_many(fn, np.atleast_1d(np.asarray(qs, dtype=np.float64)), _kinks(activation))
    return dict(zip(("phi", "phi2", "dphi", "mu1", "mu2"), e.T))


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
    # Quadrature error is ~1e-14 relative; anything below _FIXED_RTOL q is "no change" (linear at
    # sigma_w^2 = 1, relu at 2). Any looser and linear at 1.0005 would read as "every q fixed", not inf.
    g[np.abs(g) <= _FIXED_RTOL * grid] = 0.0
    if np.all(g == 0.0):
        return float(q0)
    # Stable fixed points: g changes sign from + to - as q grows.
    roots = []
    for i in range(len(grid) - 1):
        if g[i] > 0 and g[i + 1] <= 0:
            lo, hi = grid[i], grid[i + 1]
            # narrow the bracket 100-fold per vectorised pass (4 passes: 1e-8 of q), then bisect to the end
            for _ in range(4):
                sub = np.linspace(lo, hi, 101)
                gs = _variance_map_many(activation, sub, sigma_w2, sigma_b2) - sub
                k = int(np.argmax(gs <= 0)) if np.any(gs <= 0) else 100
                lo, hi = sub[max(k - 1, 0)], sub[k]
            for _ in range(30):
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


def first_layer_term(width: int, in_features: int, init: str) -> float:
    """The first weight matrix's share of m2/m1^2 - 1: N/P for i.i.d. (gaussian, uniform) N x P weights
    (Marchenko-Pastur), max(N/P - 1, 0) for orthogonal ones (N <= P: orthonormal rows, an isometry; N > P:
    a rank-P projection). With P = N it is -s1, a whole layer's."""
    s1 = s1_of(init)
    ratio = width / in_features
    return max(ratio - 1.0, 0.0) if s1 == 0.0 else ratio


def kappa(activation: str, qs) -> np.ndarray:
    """kappa(q) = q E[phi'(h)]^2 / Var phi(h), h ~ N(0, q): the factor by which phi scales the correlation of two
    weakly correlated zero-mean nodes (Stein: Cov(phi(h_i), phi(h_j)) = E[phi']^2 Cov(h_i, h_j) + O(rho^2)).
    1 for linear; (pi/2)/(pi - 1) for relu at any q; q -> 0 gives the limit (q is floored at 1e-12)."""
    qs = np.maximum(np.atleast_1d(np.asarray(qs, dtype=np.float64)), 1e-12)
    m = layer_moments(activation, qs)
    return qs * m["dphi"] ** 2 / (m["phi2"] - m["phi"] ** 2)


def vni_covariance_map(width: int, kappas: np.ndarray, first_term: float, s1: float) -> np.ndarray:
    """R(l) = (1 + O_l)/N with O_l = kappa_l^2 (O_{l-1} + w_l), O_0 = 0: the covariance map of a zero-mean net.

    w_1 = :func:`first_layer_term`, w_l = -s1 after it: the weights add their spectrum's normalised variance to
    that of the node covariance (free multiplicative convolution), the activation multiplies the off-diagonal
    part by kappa_l^2 (derivation in docs/theory.md). Orthogonal weights add nothing, so with i.i.d. inputs
    R = 1/N at every depth, whatever phi.
    """
    o, out = 0.0, np.empty(len(kappas))
    for l, k in enumerate(kappas):
        o = k * k * (o + (first_term if l == 0 else -s1))
        out[l] = (1.0 + o) / width
    return out


@dataclass
class TheoryResult:
    """Predictions for one architecture; per-layer arrays are indexed by layer 1..L (element 0 is layer 1).

    ``vni_finite`` is the finite-width covariance form (the default): the covariance map for zero-mean nets
    (E phi = 0 for symmetric inputs: linear, tanh, hard_tanh, any odd phi) and the radial-angular model for
    relu (:mod:`depthscope.theory_relu`); NaN for activations it does not cover (``finite_form`` says which).
    ``vni_jacobian`` is eq. 3.7 summed layer by layer over each layer's own q_l (the Jacobian-spectrum form the
    default was before); ``vni_asymptotic`` is eq. 3.7 itself. ``vni_sampled`` is ``vni_finite`` as measured
    from ``samples`` samples, R (1 + 1/S) + 1/S (NaN when ``samples`` is None). The relu-only arrays
    (``cosine``, ``norm_variance``, ``radial_fraction``, ``vni_angular``) are NaN for other activations.
    """

    depth: int
    width: int
    activation: str
    init: str
    sigma_w2: float
    sigma_b2: float
    input_variance: float
    in_features: int
    samples: int | None
    q_star: float
    chi: float
    mu1: float
    mu2: float
    s1: float
    finite_form: str
    q: np.ndarray = field(repr=False)
    mu1_layers: np.ndarray = field(repr=False)
    mu2_layers: np.ndarray = field(repr=False)
    kappa: np.ndarray = field(repr=False)
    vni_asymptotic: np.ndarray = field(repr=False)
    vni_jacobian: np.ndarray = field(repr=False)
    vni_finite: np.ndarray = field(repr=False)
    vni_sampled: np.ndarray = field(repr=False)
    cosine: np.ndarray = field(repr=False)
    norm_variance: np.ndarray = field(repr=False)
    radial_fraction: np.ndarray = field(repr=False)
    vni_angular: np.ndarray = field(repr=False)
    m1: np.ndarray = field(repr=False)
    m2: np.ndarray = field(repr=False)
    forward_variance: np.ndarray = field(repr=False)

    @property
    def effective_nodes(self) -> np.ndarray:
        """N (1 - R_sq) + 1 from the finite-width prediction (clipped to [1/N, 1])."""
        r = np.clip(self.vni_finite, 1.0 / self.width, 1.0)
        return self.width * (1.0 - r) + 1.0


def _finite_form(activation: str, sigma_b2: float, q1: float) -> str:
    """Which finite-width form covers this net: "relu", "zero-mean" or "none"."""
    if sigma_b2 != 0.0:
        return "none"  # biases give every node a fixed offset: neither form models it
    if get_activation(activation).name == "relu":
        return "relu"
    m = layer_moments(activation, [max(q1, 1e-12), 1.0])
    return "zero-mean" if np.all(np.abs(m["phi"]) <= 1e-10 * np.sqrt(m["phi2"])) else "none"


def predict(
    depth: int,
    width: int,
    activation: str = "tanh",
    init: str = "gaussian",
    sigma_w2: float | None = None,
    sigma_b: float = 0.0,
    input_variance: float = 0.1,
    in_features: int | None = None,
    samples: int | None = None,
) -> TheoryResult:
    """All predictions for a depth-L, width-N net: q*, chi, mu_k, the three VNI forms, m1, m2.

    ``in_features`` (P, default N) is the input's feature count: the first weight matrix is N x P and adds
    :func:`first_layer_term` (N/P for gaussian) instead of a whole layer. ``samples`` (S) adds ``vni_sampled``,
    what a measurement from S samples reads on average.
    m1(l) = prod_{k<=l} sigma_w^2 mu1(q_k);  m2(l) = m1(l)^2 (1 + sum_{k<=l}(mu2_k/mu1_k^2 - 1 - s1)) (with
    the first layer's -s1 replaced by its :func:`first_layer_term`). With every q_k = q* and P = N this is
    Pennington et al.'s m1 = (sigma_w^2 mu1)^L, m2 = m1^2 L (mu2/mu1^2 + 1/L - 1 - s1), the form eq. 3.7
    comes from.
    """
    for name, v, lo in (("depth", depth, 0), ("width", width, 1), ("in_features", in_features, 1),
                        ("samples", samples, 2)):
        if v is None and name in ("in_features", "samples"):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    # issue 11: a variance is a finite number >= 0; sigma_b enters squared, so sigma_b^2 must be finite too
    for name, v, sq in (("input_variance", input_variance, ""), ("sigma_b", sigma_b, " whose square is finite")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf) \
                or (sq and v * v == math.inf):
            raise ValueError(f"{name} must be a finite number >= 0{sq}, got {v!r}")
    s1 = s1_of(init)
    p = width if in_features is None else int(in_features)
    sb2 = float(sigma_b) ** 2
    sw2 = critical_sigma_w2(activation, sb2) if sigma_w2 is None else float(sigma_w2)
    if not (sw2 > 0 and math.isfinite(sw2)):
        raise ValueError(f"sigma_w2 must be a finite number > 0, got {sw2}")
    q1 = sw2 * input_variance + sb2
    q_star = fixed_point(activation, sw2, sb2, q0=q1)
    qstar_eval = q_star if math.isfinite(q_star) else 1e6
    mu1s, mu2s = mu(activation, qstar_eval, 1), mu(activation, qstar_eval, 2)
    qs = variance_trajectory(activation, depth, sw2, input_variance, sb2)
    m = layer_moments(activation, qs)
    mu1_l, mu2_l = m["mu1"], m["mu2"]
    layers = np.arange(1, depth + 1)
    w1 = first_layer_term(width, p, init)
    term = mu2_l / mu1_l**2 - 1.0 - s1
    if depth:
        term[0] += w1 + s1  # the first matrix adds N/P (gaussian), not a whole layer's -s1
    vni_jac = 1.0 / width + np.cumsum(term) / width
    vni_asy = np.array([vni_asymptotic(l, width, mu1s, mu2s, s1) for l in layers])
    kap = kappa(activation, qs) if depth else np.empty(0)
    nan = np.full(depth, np.nan)
    relu = dict(cosine=nan, norm_variance=nan, radial_fraction=nan, vni_angular=nan)
    form = _finite_form(activation, sb2, q1)
    if form == "zero-mean":
        vni_fin = vni_covariance_map(width, kap, w1, s1)
    elif form == "relu":
        from .theory_relu import relu_vni

        rv = relu_vni(depth, width, init, p)
        vni_fin = rv["vni"]
        relu = {k: rv[k] for k in relu}
    else:
        vni_fin = nan.copy()
    vni_s = vni_fin * (1 + 1 / samples) + 1 / samples if samples else nan.copy()
    m1 = np.cumprod(sw2 * mu1_l)
    m2 = m1**2 * (1.0 + np.cumsum(term))
    return TheoryResult(
        depth=depth, width=width, activation=activation, init=init, sigma_w2=sw2, sigma_b2=sb2,
        input_variance=input_variance, in_features=p, samples=samples, q_star=q_star,
        chi=chi(activation, sw2, qstar_eval), mu1=mu1s, mu2=mu2s, s1=s1, finite_form=form, q=qs,
        mu1_layers=mu1_l, mu2_layers=mu2_l, kappa=kap, vni_asymptotic=vni_asy, vni_jacobian=vni_jac,
        vni_finite=vni_fin, vni_sampled=vni_s, m1=m1, m2=m2, forward_variance=m["phi2"], **relu,
    )
