"""Finite-width VNI of deep ReLU nets: the radial-angular model (issue 12 section 1; derivation in docs/theory.md).

Eq. 3.7 assumes zero-mean layers. ReLU's outputs have a mean, and two mechanisms take over:

* early layers read *lower*: a mask that changes with the sample decorrelates nodes; at layer 1 the centred
  correlation between two nodes shrinks by kappa^2 = [(pi/2)/(pi - 1)]^2 ~ 0.538;
* deep layers read *higher*: the arc-cosine map drives the cosine c_l between samples to 1, the centred cloud
  shrinks like 1 - c_l, and what is left is dominated by the spread of the samples along the mean direction
  (finite-width fluctuations of each sample's norm and of its cosine with the others, growing ~ l/N).

With f the share of the centred variance along the mean direction and R_perp the VNI of the rest::

    R ~ f^2 + (1 - f)^2 R_perp,     measured with S samples: R (1 + 1/S) + 1/S

Every quantity is a recursion over layers whose coefficients are Gaussian expectations of relu, computed in
closed form or as one-dimensional integrals (equicorrelated Gaussians are independent given a shared factor).
Covers relu, and so any sigma_w^2 and input variance (relu is positively homogeneous: the VNI is the same), for
bias-free nets with i.i.d. zero-mean inputs. Other activations with E phi != 0 (sigmoid, softplus) are *not*
covered: their norm fluctuations do not pass through a layer unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch

_SQ2PI = math.sqrt(2.0 * math.pi)
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(40)
_GH_W = _GH_W / _SQ2PI


def c_map(c: float) -> float:
    """C(c) = [sqrt(1 - c^2) + (pi - arccos c) c] / pi: the cosine between two samples after a relu layer."""
    c = min(max(c, -1.0), 1.0)
    return (math.sqrt(max(1.0 - c * c, 0.0)) + (math.pi - math.acos(c)) * c) / math.pi


def c_map_slope(c: float) -> float:
    """C'(c) = (pi - arccos c) / pi."""
    return (math.pi - math.acos(min(max(c, -1.0), 1.0))) / math.pi


def _cond_moments(g: np.ndarray, c: float) -> np.ndarray:
    """E_e[relu(sqrt(c) g + sqrt(1 - c) e)^k] for k = 1..4, e ~ N(0, 1): columns (len(g), 4)."""
    s = math.sqrt(max(1.0 - c, 0.0))
    mu = math.sqrt(c) * torch.as_tensor(np.asarray(g, dtype=np.float64))
    if s == 0.0:
        r = torch.relu(mu)
        return torch.stack([r, r**2, r**3, r**4], 1).numpy()
    t = mu / s
    cdf, pdf = torch.special.ndtr(t), torch.exp(-0.5 * t * t) / _SQ2PI
    i1 = t * cdf + pdf
    i2 = (t * t + 1) * cdf + t * pdf
    i3 = (t**3 + 3 * t) * cdf + (t * t + 2) * pdf
    i4 = (t**4 + 6 * t * t + 3) * cdf + (t**3 + 5 * t) * pdf
    return torch.stack([s * i1, s**2 * i2, s**3 * i3, s**4 * i4], 1).clamp_min(0.0).numpy()


def relu_moments(c: float) -> dict[str, float]:
    """Mixed moments of relu(z_a), relu(z_b), ... for unit Gaussians with pairwise correlation c >= 0.

    E11 = E[s_a s_b], E31 = E[s_a^3 s_b], E22 = E[s_a^2 s_b^2], E211 = E[s_a^2 s_b s_c], E1111 = E[s_a s_b s_c s_d]
    (s = relu(z)); z_a = sqrt(c) g + sqrt(1 - c) e_a makes them one integral over the shared g.
    """
    from .theory import _expect_many

    def fn(g):
        m = _cond_moments(g, c)
        m1, m2, m3 = m[:, 0], m[:, 1], m[:, 2]
        return np.stack([m1 * m1, m3 * m1, m2 * m2, m2 * m1 * m1, m1**4], 1)

    e = _expect_many(fn, [1.0], (0.0,))[0]
    return dict(zip(("E11", "E31", "E22", "E211", "E1111"), e))


def _chaos2(c: float) -> dict[str, float]:
    """The chaos-2 part of each covariance below: 1/2 tr(H_F K H_G K), H_F = E[d^2 F / dz dz] (orthogonal W
    keeps the Gram of the pre-activations, which removes exactly this part of the fluctuations)."""
    k = np.full((4, 4), c) + (1.0 - c) * np.eye(4)
    hd = 0.25 + math.asin(min(c, 1.0)) / (2 * math.pi)  # E[relu'(z_a) relu'(z_b)]
    hs = math.sqrt(max(1.0 - c * c, 0.0)) / (2 * math.pi)  # E[relu''(z_a) relu(z_b)] = pdf(0) E[relu(z_b) | z_a = 0]

    def h(x, y):
        m = np.zeros((4, 4))
        if x == y:
            m[x, x] = 1.0  # d^2 relu(z)^2 = 2 relu'^2 (+ 2 relu relu'' = 0): E = 1
        else:
            m[x, x] = m[y, y] = hs
            m[x, y] = m[y, x] = hd
        return m

    def cov2(f, g):
        return 0.5 * float(np.trace(h(*f) @ k @ h(*g) @ k))

    a, b, cc, d = 0, 1, 2, 3
    return {"aa,aa": cov2((a, a), (a, a)), "aa,bb": cov2((a, a), (b, b)), "ab,ac": cov2((a, b), (a, cc)),
            "ab,ab": cov2((a, b), (a, b)),
            "ab,cd": cov2((a, b), (cc, d)), "aa,ab": cov2((a, a), (a, b)), "aa,bc": cov2((a, a), (b, cc))}


def _noise(c: float, width: int, removed: float) -> dict[str, float]:
    """What one layer adds, at input cosine c: per-sample variances of the norm n_a (``vn``), of the cosine
    centrality beta_a (``vb``) and their covariance (``xbn``); the variance of one pair's cosine (``vpair``) and
    the mean shift of the empirical cosine (``bias``: E[k_ab / sqrt(k_aa k_bb)] - C(c)).

    ``removed`` is the share of the chaos-2 fluctuations the weights do not add (0 gaussian, 1 orthogonal).
    """
    m = relu_moments(c)
    e11 = m["E11"]
    cov = {"aa,aa": 1.5 - 0.25, "aa,bb": m["E22"] - 0.25, "ab,ac": m["E211"] - e11**2,
           "ab,cd": m["E1111"] - e11**2, "aa,ab": m["E31"] - 0.5 * e11, "aa,bc": m["E211"] - 0.5 * e11,
           "ab,ab": m["E22"] - e11**2}
    if removed:
        c2 = _chaos2(c)
        cov = {key: v - removed * c2[key] for key, v in cov.items()}
    s = 4.0 / width  # (sigma_w^2 = 2 per kernel entry)^2 / N
    c1 = c_map(c)  # the noise sits on the output kernel k' (mean 1 on the diagonal, C(c) off it)
    vn = s * (cov["aa,aa"] - cov["aa,bb"])
    va = s * (cov["ab,ac"] - cov["ab,cd"])
    xan = s * (cov["aa,ab"] - cov["aa,bc"])
    # rho' = k'_ab (k'_aa k'_bb)^(-1/2) to second order in the noise
    vaa, vaabb, vabaa, vab = s * cov["aa,aa"], s * cov["aa,bb"], s * cov["aa,ab"], s * cov["ab,ab"]
    vpair = vab - 2 * c1 * vabaa + 0.25 * c1 * c1 * (2 * vaa + 2 * vaabb)
    bias = c1 * (0.75 * vaa + 0.25 * vaabb) - vabaa
    # the part of the cosine noise that every pair of a net shares (disjoint pairs ab, cd): the net-to-net
    # fluctuation of the mean cosine, which no average over the samples removes
    vcommon = s * (cov["ab,cd"] - 2 * c1 * cov["aa,bc"] + c1 * c1 * cov["aa,bb"])
    return {"vn": vn, "vb": va - c1 * xan + 0.25 * c1 * c1 * vn, "xbn": xan - 0.5 * c1 * vn,
            "vpair": vpair, "bias": bias, "vcommon": max(vcommon, 0.0)}


def _offset_factors(tau2: float) -> tuple[float, float]:
    """kappa and D for nodes whose offset/std ratio t is N(0, tau2): kappa = E_t[a^2]/E_t[V], D = E[V^2]/E[V]^2,
    a = E relu'(t + z) = Phi(t), V = Var relu(t + z)."""
    x, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / _SQ2PI
    t = torch.as_tensor(math.sqrt(tau2) * x)
    cdf, pdf = torch.special.ndtr(t), torch.exp(-0.5 * t * t) / _SQ2PI
    m1 = t * cdf + pdf
    v = ((t * t + 1) * cdf + t * pdf - m1 * m1).numpy()
    a = cdf.numpy()
    ev = float(w @ v)
    return float(w @ (a * a)) / ev, float(w @ (v * v)) / ev**2


def relu_vni(depth: int, width: int, init: str = "gaussian", in_features: int | None = None,
             samples: int | None = None) -> dict[str, np.ndarray]:
    """The radial-angular model of a bias-free relu net's VNI at layers 1..depth (see module docstring).

    Returns arrays (element l-1 is layer l): ``vni`` (population R), ``vni_sampled`` (R (1 + 1/S) + 1/S, NaN
    without ``samples``), ``cosine`` c_l, ``norm_variance`` v_l (variance of |x_l|^2 / mean over samples),
    ``radial_fraction`` f_l, ``vni_angular`` R_perp and ``cross`` (the radial-perpendicular covariance's part
    of R, averaged over nets like ``vni``).
    """
    from .theory import s1_of

    s1 = s1_of(init)
    n, p = int(width), int(in_features or width)
    orth = s1 == 0.0
    c, v, b, x = 0.0, 2.0 / p, 0.0, 0.0  # i.i.d. inputs: cosine 0, |x|^2 / (P sigma^2) ~ chi2_P / P
    o, d, g, cbar, e, k_cross, r_prev = 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0 / n
    keys = ("vni", "cosine", "norm_variance", "radial_fraction", "vni_angular")
    out = {k: np.empty(depth) for k in keys + ("cross", "_b", "_x", "_cbar", "_e")}
    for l in range(1, depth + 1):
        removed = (min(n / p, 1.0) if l == 1 else 1.0) if orth else 0.0
        nz = _noise(c, n, removed)
        # angular part: the covariance map with node offsets t ~ N(0, tau2) (section "ReLU" of docs/theory.md)
        tau2 = cbar / (1.0 - cbar)  # the inputs' mean kernel over their spread: offsets of the pre-activations
        kappa, d_next = _offset_factors(tau2)
        w_l = ((max(n / p - 1.0, 0.0) if orth else n / p) if l == 1 else -s1)
        o, d = kappa**2 * (o + d - 1.0 + w_l), d_next
        slope = c_map_slope(c)
        # finite width moves the mean cosine: the empirical cosine's bias, and Jensen over the spread G of the
        # pairs' cosines through the convex C (C'' = 1 / (pi sqrt(1 - c^2)))
        curv = 1.0 / (math.pi * math.sqrt(max(1.0 - c * c, 1e-300)))
        # E k'_ab = E[sqrt(k_aa k_bb) C(rho_ab)] exactly over this layer's weights: only the norm spread of the
        # layer's *inputs* lowers the mean kernel (the new gain noise averages out of it)
        cbar = math.exp(-v / 4.0) * (c_map(c) + 0.5 * curv * g)
        c_next = c_map(c) + 0.5 * curv * g + nz["bias"]
        c_next = min(c_next, 1.0 - 0.5 * (1.0 - c_map(c)))  # the corrections are small; never past 1
        # the part of this layer's norm gain that is linear in the sample's perpendicular coordinate u_a
        # (chaos 1 of relu(h)^2 in the sample's own direction: 4 (1 - c) E[s_a s_b] per N/4); orthogonal W
        # keeps W^T W x = x, which halves it (only W^T |h| has a perpendicular part, not W^T h)
        lin = min(4.0 / n * 4.0 * (1.0 - c) * relu_moments(c)["E11"] * (0.5 if orth else 1.0), nz["vn"])
        k_cross += lin * r_prev
        b, x, v = slope**2 * b + nz["vb"], slope * x + nz["xbn"], v + nz["vn"]
        g, c = slope**2 * g + nz["vpair"], c_next
        e = slope**2 * e + nz["vcommon"]
        # |x_a|^2 is a product of per-layer gains: log-normal with log-variance v, so Var |x_a| / E|x|^2 =
        # 1 - exp(-v/4) (v reaches 0.4 at N = 100: no small-v expansion)
        t = 1.0 - cbar
        radial = c * (1.0 - math.exp(-v / 4.0)) + b / max(c, 1e-300) + x
        f = min(radial / t, 1.0)
        r_perp = (d + o) / n
        # every net has its own mean cosine (variance e over nets), so its own perpendicular variance
        # T_perp = t - radial: relative spread sqrt(e e^{-v/2}) / T_perp, 25-90% at L = N/10..N/2 for N = 100.
        # R is convex in T_perp: average it over a mean-preserving log-normal T_perp (T_perp > 0)
        t_perp = t - radial
        # the radial coordinate carries sum_k gamma_k . u_a (the gains' linear parts): a covariance with the
        # perpendicular coordinates, tr C^2 gains 2 |Cov(r, u)|^2 ~ 2 (c/4) K T_perp (units of (N Q)^2)
        if t_perp > 0:
            sig2 = math.log1p(e * math.exp(-v / 2.0) / t_perp**2)
            tp = t_perp * np.exp(math.sqrt(sig2) * _GH_X - 0.5 * sig2)
            fz = radial / (radial + tp)
            cross = 0.5 * c * k_cross * tp / (radial + tp) ** 2
            out["vni"][l - 1] = float(_GH_W @ (fz * fz + (1.0 - fz) ** 2 * r_perp + cross))
            out["cross"][l - 1] = float(_GH_W @ cross)
        else:
            out["vni"][l - 1] = f * f + (1.0 - f) ** 2 * r_perp
            out["cross"][l - 1] = 0.0
        r_prev = r_perp
        out["cosine"][l - 1], out["norm_variance"][l - 1] = c, v
        out["radial_fraction"][l - 1], out["vni_angular"][l - 1] = f, r_perp
        out["_b"][l - 1], out["_x"][l - 1], out["_cbar"][l - 1], out["_e"][l - 1] = b, x, cbar, e
    out["vni_sampled"] = out["vni"] * (1 + 1 / samples) + 1 / samples if samples else np.full(depth, np.nan)
    return out
