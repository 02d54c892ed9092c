"""First-order VNI theory of residual nets, both branch families (docs/theory.md, "Residual nets").

one-layer branch  x_l = x_{l-1} + alpha phi(W_l x_{l-1} + b_l)
two-layer branch  x_l = x_{l-1} + alpha V_l phi(W_l x_{l-1} + b_l)   (V_l of variance 1/N)

The sample covariance C_l of the n inputs is tracked through its normalised moments
m1 = tr C / N and m2 = tr C^2 / N; R_sq = m2 / (N m1^2) = (1 + v) / N with v = m2/m1^2 - 1.
Per layer phi(h) is split (Hermite) into kappa0 + kappa1 h + psi(h) with psi uncorrelated
with h. The linear part maps C to M C M^T, M = I + alpha kappa1 P (P = W or V W), which
adds g(a) = (2a + (k - 1) a^2) / (1 + a)^2 to v, a = alpha^2 kappa1^2 sigma_w^2 (sigma_V^2 = 1),
k = 1 + s (one matrix) or 1 + 2s (V W), s the spread of the init (gaussian 1, orthogonal 0):
for the linear one-layer Gaussian branch g = 2 alpha^2 - 3 alpha^4 + ...  The part psi enters
as a free, sample-noise-like term of size alpha^2 Var psi. Freeness of the layers is the
large-N assumption; the theory is first order in 1/N (it is the R_sq << 1 regime).

Not covered: a one-layer branch whose phi has E phi(h) != 0 (relu, sigmoid...): its mean is
added along the same direction every layer, the pre-activations acquire per-node offsets that
grow with depth, and nodes become always-on or always-off, which this Gaussian-equivalent
recursion does not see (measured VNI crosses 0.9 at L ~ 75-100 for relu, alpha = 0.1, whatever N).
:attr:`ResidualTheory.covered` says whether a prediction is within the theory's scope.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .activations import get_activation, numpy_phi
from .theory import critical_sigma_w2, gaussian_expectation, s1_of
from .theory_relu import c_map

BRANCHES = ("one", "two")
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)
_GH_W = _GH_W / math.sqrt(2.0 * math.pi)


def branch_growth(a: float, k: float) -> float:
    """g(a) = (2a + (k - 1) a^2) / (1 + a)^2: what one layer M = I + sqrt(a) P adds to v = m2/m1^2 - 1.

    m1(M^T M) = 1 + a and m2(M^T M) = 1 + 4a + k a^2 with k = m2(P P^T)/m1(P P^T)^2 (P scaled to
    m1(P P^T) = 1; tr P^2 / N -> 0), and v adds under free multiplication.
    """
    return (2.0 * a + (k - 1.0) * a * a) / (1.0 + a) ** 2


_Z_IN = np.linspace(-8.0, 8.0, 401)  # inner rule: midpoint-like, exact enough at a kink (relu's at 0)
_W_IN = np.exp(-0.5 * _Z_IN**2)
_W_IN /= _W_IN.sum()
# outer rule over the per-node offsets: a uniform grid too, since kappa1(o) is a near-step in o for a kinked phi
# once the offsets outgrow the sample-to-sample spread (relu: kappa1(o) = Phi(o / sqrt(q_c)))
_Z_OUT = np.linspace(-8.0, 8.0, 81)
_W_OUT = np.exp(-0.5 * _Z_OUT**2)
_W_OUT /= _W_OUT.sum()
_Z_FINE = np.linspace(-9.0, 9.0, 4001)
_W_FINE = np.exp(-0.5 * _Z_FINE**2)
_W_FINE /= _W_FINE.sum()


def _erf(x: np.ndarray) -> np.ndarray:
    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


@dataclass(frozen=True)
class BranchMoments:
    """Node averages, over offsets o ~ N(0, q_o), of the Hermite parts of phi(o + h), h ~ N(0, q_c).

    kappa0(o) = E_h phi(o + h), kappa1(o) = E_h[h phi(o + h)] / q_c,
    var_psi(o) = Var_h phi(o + h) - kappa1(o)^2 q_c (what the sample-to-sample part leaves unexplained).
    """

    k0: float  # E_o kappa0
    k0_sq: float  # E_o kappa0^2
    k1_sq: float  # E_o kappa1^2
    k1_4: float  # E_o kappa1^4
    var_psi: float  # E_o var_psi


def branch_moments(activation: str, q_c: float, q_o: float = 0.0) -> BranchMoments:
    """The Hermite split of phi per node (see :class:`BranchMoments`), by quadrature on a grid."""
    act = get_activation(activation)
    q_c = max(float(q_c), 1e-300)
    if activation in ("relu", "linear"):  # closed forms in t = o / sqrt(q_c), on a fine grid of offsets
        z = _Z_FINE if q_o > 0 else np.zeros(1)
        w_out = _W_FINE if q_o > 0 else np.ones(1)
        sc = math.sqrt(q_c)
        t = math.sqrt(max(float(q_o), 0.0)) / sc * z
        if activation == "linear":
            k0, k1, var_psi = sc * t, np.ones_like(t), np.zeros_like(t)
        else:
            cdf = 0.5 * (1.0 + _erf(t / math.sqrt(2.0)))
            pdf = np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
            k0 = sc * (t * cdf + pdf)
            k1 = cdf
            var_psi = np.maximum(q_c * ((t * t + 1.0) * cdf + t * pdf) - k0**2 - k1**2 * q_c, 0.0)
        return BranchMoments(float(w_out @ k0), float(w_out @ k0**2), float(w_out @ k1**2), float(w_out @ k1**4),
                             float(w_out @ var_psi))
    offsets = math.sqrt(max(float(q_o), 0.0)) * _Z_OUT if q_o > 0 else np.zeros(1)
    w_out = _W_OUT if q_o > 0 else np.ones(1)
    h = math.sqrt(q_c) * _Z_IN
    f = numpy_phi(act, offsets[:, None] + h[None, :])
    k0 = f @ _W_IN
    k1 = (f * h) @ _W_IN / q_c
    var_psi = np.maximum((f * f) @ _W_IN - k0**2 - k1**2 * q_c, 0.0)
    return BranchMoments(float(w_out @ k0), float(w_out @ k0**2), float(w_out @ k1**2), float(w_out @ k1**4),
                         float(w_out @ var_psi))


@dataclass
class ResidualTheory:
    """Per-layer predictions (element l-1 is layer l) of a residual net's VNI."""

    depth: int
    width: int
    samples: int
    activation: str
    init: str
    branch: str
    alpha: float
    sigma_w2: float
    sigma_b2: float
    input_variance: float
    covered: bool
    growth_linear: float  # g of the first layer's linear part: the per-layer growth of N R_sq while R_sq << 1
    vni: np.ndarray = field(repr=False)
    m1: np.ndarray = field(repr=False)
    q: np.ndarray = field(repr=False)
    #: share f of the centred variance along the stream's mean (two-layer relu branch; 0 elsewhere):
    #: vni = f^2 + (1 - f)^2 (1 + v)/N
    radial_fraction: np.ndarray = field(repr=False, default=None)
    #: the stream's mean square per node (|mean_a x_a|^2 / N) and the samples' log-norm variance Var log |x_a|^2
    mean2: np.ndarray = field(repr=False, default=None)
    norm_variance: np.ndarray = field(repr=False, default=None)

    def crossing(self, threshold: float) -> float:
        """Deepest L with predicted VNI <= threshold before the first crossing (inf if none within depth)."""
        over = np.nonzero(self.vni > threshold)[0]
        return float(over[0]) if over.size else math.inf


def predict_residual(
    depth: int,
    width: int,
    activation: str = "tanh",
    init: str = "gaussian",
    *,
    branch: str = "two",
    alpha: float = 0.1,
    sigma_w2: float | None = None,
    sigma_b: float = 0.0,
    input_variance: float = 1.0,
    samples: int | None = None,
) -> ResidualTheory:
    """R_sq(l) = (1 + v_l) / N with v_0 = (N + 1)/n and, per layer, the free sum of the linear part
    (v + g(a), m1 (1 + a)) and the psi part (m1 alpha^2 Var psi, v (N + 1)/n (+ s for V)).

    ``samples`` n is the number of inputs the VNI is measured on (None: infinitely many, no
    finite-sample excess). See docs/theory.md, "Residual nets", for the derivation.
    """
    if branch not in BRANCHES:
        raise ValueError(f"unknown residual branch {branch!r}; expected one of: {', '.join(BRANCHES)}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if not (math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
    if samples is not None and samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    s = -s1_of(init)  # spread of W W^T: gaussian 1, orthogonal 0
    sb2 = float(sigma_b) ** 2
    sw2 = critical_sigma_w2(activation, sb2) if sigma_w2 is None else float(sigma_w2)
    noise_v = 0.0 if samples is None else (width + 1.0) / samples
    k = 1.0 + s if branch == "one" else 1.0 + 2.0 * s
    m1, v = float(input_variance), noise_v
    # the sample mean of x_l: per-node mean square, and its average coordinate u (a one-layer branch with
    # E phi != 0 adds kappa0 to every node, so u grows; a two-layer branch's V scatters it with zero mean)
    mean2, u = 0.0, 0.0
    # the radial mode (two-layer branch, E phi != 0): log-variance over samples of |x_a|^2, from the inputs'
    # chi^2_N spread on (2/N) and the per-sample part of each layer's gain; the stream's mean, scaled by each
    # sample's own norm, puts T_r = mean2 (1 - exp(-vr/4)) of centred variance along the mean direction
    vr, var_m2 = 2.0 / width, 0.0
    vnis, m1s, qs = np.empty(depth), np.empty(depth), np.empty(depth)
    radial, mean2s, vrs = np.zeros(depth), np.zeros(depth), np.zeros(depth)
    g_first = math.nan
    covered = True
    radial_on = branch == "two" and activation == "relu" and sb2 == 0.0
    for l in range(depth):
        m1_in, mean2_in = m1, mean2
        q_c, q_o = sw2 * m1, sw2 * mean2 + sb2
        bm = branch_moments(activation, q_c, q_o)
        if branch == "one" and abs(bm.k0) > 1e-9 * math.sqrt(q_c + q_o):
            covered = False
        a = alpha * alpha * sw2 * bm.k1_sq
        v_d = bm.k1_4 / bm.k1_sq**2 - 1.0 if bm.k1_sq > 0 else 0.0  # spread of the per-node gains kappa1(o)
        g = branch_growth(a, k + v_d)
        if l == 0:
            g_first = g
        m1a, va = m1 * (1.0 + a), v + g
        m1b = alpha * alpha * bm.var_psi
        vb = noise_v + (s if branch == "two" else 0.0)
        m2 = m1a * m1a * (1.0 + va) + m1b * m1b * (1.0 + vb) + 2.0 * m1a * m1b
        m1 = m1a + m1b
        v = m2 / (m1 * m1) - 1.0
        if branch == "one":
            mean2 += 2.0 * alpha * u * bm.k0 + alpha * alpha * bm.k0_sq
            u += alpha * bm.k0
        else:
            # per-sample gain |x_a'|^2/|x_a|^2 = 1 + 2 alpha x_a.V phi_a/|x_a|^2 + O(alpha^2): over V its variance
            # is 4 alpha^2 |phi_a|^2/(N |x_a|^2), shared between two samples as rho C(rho) (rho the samples'
            # cosine, mean included; C the relu arc-cosine map: the cosine of phi(W x_a), phi(W x_b)); relu is
            # homogeneous, so a sample keeps its deviation in every later layer
            if radial_on and mean2_in + m1_in > 0:
                rho = mean2_in / (mean2_in + m1_in)
                phi2 = bm.k0_sq + bm.k1_sq * q_c + bm.var_psi  # E phi^2 per node: the Hermite parts' sum
                vr += 4.0 * alpha * alpha / width * phi2 / (mean2_in + m1_in) * (1.0 - rho * c_map(rho))
            mean2 += alpha * alpha * bm.k0_sq
            # net-to-net spread of |m|^2: m' = m + alpha V kappa0 moves |m|^2 by 2 alpha m.V kappa0 (zero mean over
            # V, variance 4 alpha^2 mean2 E kappa0^2 / N per node^2) and alpha^2 |V kappa0|^2 (variance 2 alpha^4
            # (E kappa0^2)^2 / N); the old spread grows with mean2 (factor (mean2' / mean2)^2)
            if radial_on:
                grow = mean2 / mean2_in if mean2_in > 0 else 0.0
                var_m2 = (grow * grow * var_m2 + 4.0 * alpha**2 * mean2_in * bm.k0_sq / width
                          + 2.0 * alpha**4 * bm.k0_sq**2 / width)
        if radial_on and mean2 > 0:
            # f is convex in the net's own mean2: average over a mean-preserving log-normal of it
            sig2 = math.log1p(var_m2 / mean2**2)
            t_r = mean2 * np.exp(math.sqrt(sig2) * _GH_X - 0.5 * sig2) * -math.expm1(-vr / 4.0)
            fz = t_r / (m1 + t_r)
            # the mean is built from increments that every later layer amplifies like the samples, so its
            # direction carries the bulk's variance tr C_b^2 / tr C_b = T_b R_b too: the radial variance adds on
            # top of it, tr C^2 = (T_r + T_b R_b)^2 + tr C_b^2 - (T_b R_b)^2, i.e. R = f^2 + (1 - f^2) R_b
            vnis[l] = float(_GH_W @ (fz * fz + (1.0 - fz * fz) * (1.0 + v) / width))
            f, t_mean = float(_GH_W @ fz), mean2 * -math.expm1(-vr / 4.0)
        else:
            f, t_mean = 0.0, 0.0
            vnis[l] = (1.0 + v) / width
        m1s[l], qs[l] = m1 + t_mean, q_c + q_o
        radial[l], mean2s[l], vrs[l] = f, mean2, vr
    return ResidualTheory(depth=depth, width=width, samples=samples or 0, activation=activation, init=init,
                          branch=branch, alpha=float(alpha), sigma_w2=sw2, sigma_b2=sb2,
                          input_variance=float(input_variance), covered=covered,
                          growth_linear=g_first, vni=vnis, m1=m1s, q=qs, radial_fraction=radial,
                          mean2=mean2s, norm_variance=vrs)
