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
        lo, hi = -1.0, 1.0 - 1e-9  # C(c) - c > 0 below c*, < 0 between c* and 1
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
