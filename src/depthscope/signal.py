"""Signal propagation beside VNI: the mean-field quantities of Poole et al. (2016) and Schoenholz et al. (2017).

Two inputs at the fixed point q* with correlation c pass a layer (h = W x + b, x = phi(h)) as::

    c_{l+1} = C(c_l) = [sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2] / q*,
    u_1 = sqrt(q*) z_1,  u_2 = sqrt(q*) (c z_1 + sqrt(1 - c^2) z_2)

* c*     the stable fixed point of C (1 in the ordered phase, below 1 in the chaotic one)
* chi_1  = sigma_w^2 E[phi'(sqrt(q*) z)^2]: the slope of C at c = 1; order (chi_1 < 1) vs chaos (> 1)
* chi_c  = sigma_w^2 E[phi'(u_1) phi'(u_2)] at c*: the slope of C at c*
* xi_q   = -1 / log(chi_1 + sigma_w^2 E[phi''(h) phi(h)]): depth scale of q_l -> q*
* xi_c   = -1 / log(chi_c): depth scale of c_l -> c* (infinite at the edge of chaos)

Expectations over two correlated Gaussians are one integral over a shared factor g of a product of two
shifted one-dimensional expectations (z_a = sqrt(|c|) g + sqrt(1 - |c|) e_a), each computed by the adaptive
quadrature of :mod:`depthscope.theory`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .activations import numpy_derivative, numpy_phi
from .theory import _KINKS, _expect_many, chi as chi_of, fixed_point, layer_moments

_Z = 10.0
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


def _closed_shifted(activation: str, mu: np.ndarray, sigma: float, deriv: bool) -> np.ndarray | None:
    """E_e[f(mu + sigma e)] in closed form for the kinked built-ins (relu, hard_tanh); None for others."""
    import torch

    m = torch.as_tensor(mu, dtype=torch.float64)
    cdf = torch.special.ndtr
    pdf = lambda t: torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    if activation == "relu":
        t = m / sigma
        return (cdf(t) if deriv else sigma * (t * cdf(t) + pdf(t))).numpy()
    if activation == "hard_tanh":
        al, be = (-1.0 - m) / sigma, (1.0 - m) / sigma
        inside = cdf(be) - cdf(al)
        if deriv:
            return inside.numpy()
        return (m * inside + sigma * (pdf(al) - pdf(be)) + (1 - cdf(be)) - cdf(al)).numpy()
    return None


def _shifted(activation: str, mu: np.ndarray, sigma: float, deriv: bool = False) -> np.ndarray:
    """E_e[f(mu + sigma e)], e ~ N(0, 1), for every mu; f = phi or phi'. Closed forms for relu and hard_tanh;
    otherwise composite 24-node Gauss-Legendre on [-10, 10] with panels of width <= min(1, 0.25/sigma)
    (phi varies on |h| ~ 1), all mu in one evaluation (accurate for smooth phi only)."""
    mu = np.asarray(mu, dtype=np.float64)
    f = numpy_derivative if deriv else numpy_phi
    if sigma == 0.0:
        return f(activation, mu)
    closed = _closed_shifted(activation, mu, sigma, deriv)
    if closed is not None:
        return closed
    width = min(1.0, 0.25 / sigma)
    e = np.linspace(-_Z, _Z, int(math.ceil(2 * _Z / width)) + 1)
    half, mid = 0.5 * (e[1:] - e[:-1]), 0.5 * (e[1:] + e[:-1])
    z = (mid[:, None] + half[:, None] * _GL_X[None, :]).ravel()
    w = (half[:, None] * _GL_W[None, :]).ravel() * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    vals = f(activation, (mu[:, None] + sigma * z[None, :]).ravel()).reshape(len(mu), len(z))
    return vals @ w


def pair_expectation(activation: str, q: float, c: float, deriv: bool = False) -> float:
    """E[f(u_1) f(u_2)] for u ~ N(0, q [[1, c], [c, 1]]), f = phi (or phi' with ``deriv``)."""
    c = min(max(float(c), -1.0), 1.0)
    if q <= 0.0:
        v = numpy_derivative(activation, np.array([1e-200])) if deriv else numpy_phi(activation, np.array([0.0]))
        return float(v[0] ** 2)
    a = abs(c)
    sg = math.sqrt(q * (1.0 - a))
    sign = 1.0 if c >= 0 else -1.0

    def fn(g):
        mu = math.sqrt(q * a) * g
        return (_shifted(activation, mu, sg, deriv) * _shifted(activation, sign * mu, sg, deriv))[:, None]

    return float(_expect_many(fn, [1.0], (0.0,))[0, 0])


def correlation_map(activation: str, c: float, sigma_w2: float, sigma_b2: float = 0.0,
                    q: float | None = None) -> float:
    """C(c) = [sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2] / q_next, inputs at variance q (default q*)."""
    if q is None:
        q = fixed_point(activation, sigma_w2, sigma_b2)
    qn = sigma_w2 * pair_expectation(activation, q, 1.0) + sigma_b2
    return (sigma_w2 * pair_expectation(activation, q, c) + sigma_b2) / qn


def correlation_trajectory(activation: str, c0: float, depth: int, sigma_w2: float, sigma_b2: float = 0.0,
                           q0: float | None = None) -> np.ndarray:
    """c_1..c_L for two inputs of correlation c0 and per-layer variance q (q0: pre-activation variance of layer 1,
    default q*); q follows the variance map alongside."""
    from .theory import variance_map

    q = fixed_point(activation, sigma_w2, sigma_b2) if q0 is None else q0
    out, c = np.empty(depth), c0
    for l in range(depth):
        # layer l+1's pre-activations (variance q, correlation c) give layer l+2's through phi and W
        out[l] = c
        qn = variance_map(activation, q, sigma_w2, sigma_b2)
        c = (sigma_w2 * pair_expectation(activation, q, c) + sigma_b2) / qn
        q = qn
    return out


@dataclass
class SignalResult:
    """Mean-field signal-propagation quantities at (sigma_w^2, sigma_b^2); see the module docstring."""

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    xi_q: float
    xi_c: float
    phase: str  # "ordered", "chaotic" or "critical"


def _xi(rate: float) -> float:
    return math.inf if rate >= 1.0 or rate <= 0.0 else -1.0 / math.log(rate)


def signal(activation: str, sigma_w2: float, sigma_b2: float = 0.0, tol: float = 1e-12) -> SignalResult:
    """q*, c*, chi_1, chi_c, xi_q and xi_c of an activation at (sigma_w^2, sigma_b^2)."""
    if not (sigma_w2 > 0 and math.isfinite(sigma_w2)) or not (sigma_b2 >= 0 and math.isfinite(sigma_b2)):
        raise ValueError(f"need sigma_w2 > 0 and sigma_b2 >= 0 (finite), got {sigma_w2!r}, {sigma_b2!r}")
    q = fixed_point(activation, sigma_w2, sigma_b2)
    if not math.isfinite(q):
        raise ValueError(f"q* is infinite for {activation} at sigma_w2 = {sigma_w2}: the variance map diverges")
    chi1 = chi_of(activation, sigma_w2, q)
    if abs(chi1 - 1.0) <= 1e-9:
        c_star, phase = 1.0, "critical"
    elif chi1 < 1.0:
        c_star, phase = 1.0, "ordered"
    else:
        phase = "chaotic"
        # C(c) - c > 0 below c*, < 0 between c* and 1. Both ends are tested inside the interval: without biases an
        # odd phi keeps c = -1 fixed (anti-correlated inputs stay so), an unstable fixed point like c = 1
        lo, hi = -1.0 + 1e-9, 1.0 - 1e-9
        if correlation_map(activation, lo, sigma_w2, sigma_b2, q) - lo <= 0:
            c_star = -1.0
        else:
            while hi - lo > tol:
                mid = 0.5 * (lo + hi)
                if correlation_map(activation, mid, sigma_w2, sigma_b2, q) - mid > 0:
                    lo = mid
                else:
                    hi = mid
            c_star = 0.5 * (lo + hi)
    chi_c = sigma_w2 * pair_expectation(activation, q, c_star, deriv=True) if c_star < 1.0 else chi1
    # E[phi'' phi] by parts: E[(phi phi')'(h)] = E[z phi(h) phi'(h)]/sqrt(q) (Stein), minus E[phi'^2]
    if q > 0:
        zpp = _expect_many(lambda h: (h * numpy_phi(activation, h) * numpy_derivative(activation, h))[:, None],
                           [q], _KINKS.get(activation, ()))[0, 0] / q
        mu1 = layer_moments(activation, [q])["mu1"][0]
        e_dd = zpp - mu1
    else:
        e_dd = 0.0
    return SignalResult(activation, sigma_w2, sigma_b2, q, c_star, chi1, chi_c,
                        _xi(chi1 + sigma_w2 * e_dd), _xi(chi_c), phase)


def phase_diagram(activation: str, sigma_w2s, sigma_b2s, depth: int, width: int, init: str = "gaussian",
                  input_variance: float = 1.0) -> dict[str, np.ndarray]:
    """chi_1 and the VNI at depth L (the Jacobian form: it covers biases) on a (sigma_b^2, sigma_w^2) grid.

    Returns ``chi_1`` and ``vni`` of shape (len(sigma_b2s), len(sigma_w2s)) plus the grids; chi_1 = 1 is the
    order-to-chaos line, where gradients neither vanish nor explode.
    """
    from .theory import predict

    sw = np.asarray(sigma_w2s, dtype=np.float64)
    sb = np.asarray(sigma_b2s, dtype=np.float64)
    chi1, vni = np.empty((len(sb), len(sw))), np.empty((len(sb), len(sw)))
    for i, b in enumerate(sb):
        for j, w in enumerate(sw):
            r = predict(depth, width, activation, init, w, math.sqrt(b), input_variance)
            chi1[i, j] = r.chi if math.isfinite(r.q_star) else math.inf
            vni[i, j] = r.vni_jacobian[-1] if depth else 1.0 / width
    return {"sigma_w2": sw, "sigma_b2": sb, "chi_1": chi1, "vni": vni}


def draw_phase_diagram(diagram: dict[str, np.ndarray], path: str, title: str = "") -> None:
    """Save the phase diagram: chi_1 = 1 (order | chaos) and VNI-at-depth contours, to ``path`` (PNG/SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    w, b = diagram["sigma_w2"], diagram["sigma_b2"]
    v = np.clip(diagram["vni"], 1e-6, None)
    cs = ax.contourf(w, b, np.log10(v), levels=20, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 VNI at depth L (eq. 3.7, layer by layer)")
    ax.contour(w, b, diagram["chi_1"], levels=[1.0], colors="red", linewidths=2)
    lines = ax.contour(w, b, v, levels=[0.1, 0.5, 0.9], colors="white", linewidths=1)
    ax.clabel(lines, fmt="VNI %.1f", fontsize=7)
    ax.set_xlabel("sigma_w^2")
    ax.set_ylabel("sigma_b^2")
    ax.set_title(title or "order (left of red: chi_1 < 1) | chaos (right)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def simulate_correlation(activation: str, sigma_w2: float, sigma_b2: float, c0s, depth: int, width: int, *,
                         pairs: int = 16, nets: int = 4, init: str = "gaussian", seed: int = 0) -> np.ndarray:
    """1 - c_l on simulated nets, shape (nets, len(c0s), depth): per net and starting correlation c0, the mean over
    ``pairs`` input pairs of 1 - cos(h_a, h_b) of layer l's pre-activations, l = 1..depth; float64, nets of seeds
    seed..seed+nets-1.

    Every pair shares its first input a across the c0s (b = c_in a + sqrt(1 - c_in^2) e with one e), so the
    trajectories from different c0 see the same weights and inputs and their difference is nearly free of the
    net's noise. Inputs have norm sqrt(N var), var = (q* - sigma_b^2) / sigma_w^2, and c_in is chosen so that
    layer 1's pre-activations are at q* with correlation c0 (the bias adds sigma_b^2 to their covariance).
    1 - cos is taken as |a/|a| - b/|b||^2 / 2, which keeps its precision where c -> 1.
    """
    import torch

    from .nets import NetSpec, stream_layers

    c0s = [float(c) for c in np.atleast_1d(c0s)]
    s = signal(activation, sigma_w2, sigma_b2)
    var = (s.q_star - sigma_b2) / sigma_w2
    c_ins = [(c0 * s.q_star - sigma_b2) / (sigma_w2 * var) if var > 0 else math.nan for c0 in c0s]
    for c0, c_in in zip(c0s, c_ins):
        if not (-1.0 <= c_in <= 1.0):
            raise ValueError(f"c0 = {c0} needs input cosine {c_in:.4g} at q* = {s.q_star:.4g}: not in [-1, 1]")
    k = len(c0s)
    out = np.empty((nets, k, depth))
    for i in range(nets):
        g = torch.Generator().manual_seed(10_000 + seed + i)
        a = torch.randn(pairs, width, generator=g, dtype=torch.float64)
        e = torch.randn(pairs, width, generator=g, dtype=torch.float64)
        e = e - (e * a).sum(1, keepdim=True) / (a * a).sum(1, keepdim=True) * a
        a, e = a / a.norm(dim=1, keepdim=True), e / e.norm(dim=1, keepdim=True)
        x = torch.cat([a] + [c * a + math.sqrt(1.0 - c * c) * e for c in c_ins]) * math.sqrt(width * var)
        spec = NetSpec(depth=depth, width=width, activation=activation, init=init, sigma_w2=sigma_w2,
                       sigma_b=math.sqrt(sigma_b2))
        for l, h, _ in stream_layers(spec, x, seed + i):
            u = (h / h.norm(dim=1, keepdim=True)).reshape(k + 1, pairs, width)
            out[i, :, l - 1] = ((u[1:] - u[:1]) ** 2).sum(2).mean(1).numpy() / 2.0
    return out


def _start_points(c_star: float, delta: float) -> list[float]:
    """Where the two trajectories start: c* - delta and c* + delta (chaotic), 1 - delta (ordered: c* = 1)."""
    return [1.0 - delta] if c_star >= 1.0 else [c_star - delta, c_star + delta]


def _gap(traj: np.ndarray, c_star: float) -> np.ndarray:
    """The approach to c* from trajectories of c (rows: the start points): 1 - c in the ordered phase; in the
    chaotic phase half the difference of the two trajectories started at c* -/+ delta, whose non-linear (second
    order) transients cancel, and so does any finite-width shift of the limit (both end at the same c_inf)."""
    return 1.0 - traj[0] if c_star >= 1.0 else 0.5 * (traj[1] - traj[0])


def asymptotic_onset(activation: str, sigma_w2: float, sigma_b2: float, delta: float, rel_tol: float = 0.01,
                     max_depth: int = 10_000) -> int:
    """The first layer l from which the c-map's own per-layer depth scale -1/log(g_{l+1}/g_l) stays within
    ``rel_tol`` of xi_c, g_l the approach to c* measured as by :func:`measure_xi_c` from c* -/+ delta (chaotic) or
    1 - delta (ordered): where the non-linear transient of the map is over (1-based)."""
    s = signal(activation, sigma_w2, sigma_b2)
    if not math.isfinite(s.xi_c):
        raise ValueError(f"xi_c is infinite at ({sigma_w2}, {sigma_b2}) for {activation}: no exponential approach")
    depth = min(max_depth, int(math.ceil(12 * s.xi_c)) + 2)  # the gap falls to e^-12 of delta: far below noise
    traj = np.array([correlation_trajectory(activation, c, depth, sigma_w2, sigma_b2)
                     for c in _start_points(s.c_star, delta)])
    gap = _gap(traj, s.c_star)
    ok = np.abs(gap) > 1e-10  # the map's own precision (quadrature ~1e-14, c* to 1e-12)
    both = ok[1:] & ok[:-1]
    rate = np.log(np.abs(gap[1:]) / np.maximum(np.abs(gap[:-1]), 1e-300))
    xi_local = np.where(rate < 0, -1.0 / np.where(rate < 0, rate, -1.0), math.inf)
    good = both & (np.abs(xi_local / s.xi_c - 1.0) <= rel_tol)
    for l in range(int(np.flatnonzero(both).max()) if both.any() else -1, -1, -1):
        if not good[l]:
            return l + 2  # rates from index l + 1 (layers l + 2 -> l + 3) on are all within the tolerance
    return 1


@dataclass
class DepthScaleFit:
    """A measured depth scale of c_l -> c* on simulated nets (see :func:`measure_xi_c`)."""

    xi: float  # fitted: -1 / slope of log g_l over layers first..last
    se: float  # jackknife standard error over nets
    first: int
    last: int
    xi_c: float  # -1 / log chi_c at the fixed point
    xi_map: float  # the same fit on the c-map's own trajectories over the same layers
    c_star: float
    c_end: float  # measured mean c at the last simulated layer (from c* + delta; 1 - delta ordered)
    gap: np.ndarray  # measured g_l, mean over nets, layers 1..depth
    gap_map: np.ndarray  # the c-map's g_l


def _fit_xi(gap: np.ndarray, first: int, last: int) -> float:
    l = np.arange(first, last + 1)
    slope = np.polyfit(l, np.log(np.abs(gap[first - 1:last])), 1)[0]
    return -1.0 / slope if slope < 0 else math.inf


def measure_xi_c(activation: str, sigma_w2: float, sigma_b2: float, width: int, *, delta: float = 0.1,
                 pairs: int = 16, nets: int = 8, depth: int | None = None, rel_tol: float = 0.01,
                 min_snr: float = 10.0, init: str = "gaussian", seed: int = 0) -> DepthScaleFit:
    """Measure, on simulated nets, the depth over which c_l approaches c*, against xi_c = -1 / log chi_c.

    g_l: chaotic phase, half the difference of two trajectories started at c* -/+ delta on the same nets and
    inputs (their second-order transients and the O(1/N) finite-width shift of the limit cancel); ordered phase
    (c* = 1), 1 - c_l from 1 - delta (finite width keeps its relative noise O(1/sqrt N) at any depth). The fit is
    log-linear in g_l over the asymptotic range only: from :func:`asymptotic_onset` (the c-map's local depth
    scale within ``rel_tol`` of xi_c) to the last layer before g_l falls below ``min_snr`` standard errors over
    nets. ``xi_map`` is the same fit on the c-map's own g_l. se: jackknife over nets (range held fixed).
    """
    s = signal(activation, sigma_w2, sigma_b2)
    first = asymptotic_onset(activation, sigma_w2, sigma_b2, delta, rel_tol)
    depth = depth or first + int(math.ceil(8 * s.xi_c))
    starts = _start_points(s.c_star, delta)
    sim = 1.0 - simulate_correlation(activation, sigma_w2, sigma_b2, starts, depth, width, pairs=pairs, nets=nets,
                                     init=init, seed=seed)
    per_net = np.array([_gap(t, s.c_star) for t in sim])
    gap = per_net.mean(0)
    g_se = per_net.std(0, ddof=1) / math.sqrt(nets)
    last = first
    while last < depth and gap[last] * gap[first - 1] > 0 and abs(gap[last]) > min_snr * g_se[last]:
        last += 1
    if last - first < 2:
        raise ValueError(f"only layers {first}..{last} above {min_snr} standard errors: more pairs, nets or width")
    xi = _fit_xi(gap, first, last)
    jack = np.array([_fit_xi(np.delete(per_net, i, 0).mean(0), first, last) for i in range(nets)])
    se = float(math.sqrt((nets - 1) / nets * ((jack - jack.mean()) ** 2).sum()))
    traj = np.array([correlation_trajectory(activation, c, depth, sigma_w2, sigma_b2) for c in starts])
    gap_map = _gap(traj, s.c_star)
    return DepthScaleFit(xi, se, first, last, s.xi_c, _fit_xi(gap_map, first, last), s.c_star,
                         float(sim[:, -1, -1].mean()), gap, gap_map)
