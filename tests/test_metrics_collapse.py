"""metrics/collapse.py: each collapse metric against a brute-force reference (explicit loops, numpy SVD)."""
import math

import numpy as np
import pytest
import torch

from conftest import compare
from depthscope.metrics import (
    covariance_spectrum,
    dormant_fraction,
    dormant_scores,
    effective_rank,
    rankme,
    spectral_collapse,
    stable_rank,
    token_collapse,
    token_collapse_per_sequence,
    vni,
)


def _rows(seed: int, s: int = 80, n: int = 12, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = rank or n
    return rng.standard_normal((s, r)) @ rng.standard_normal((r, n)) * rng.uniform(0.1, 3.0, n) + rng.normal(0, 5, n)


def _entropy_rank(values) -> float:
    """exp(entropy) of a non-negative spectrum, with an explicit loop."""
    tot = sum(values)
    h = 0.0
    for v in values:
        if v > 0:
            p = v / tot
            h -= p * math.log(p)
    return math.exp(h)


def _ref_spectral(x: np.ndarray) -> dict[str, float]:
    """From numpy's SVD of the centred rows: sigma_k^2 = (S - 1) lambda_k(C)."""
    xc = x - x.mean(0)
    sv = np.linalg.svd(xc, compute_uv=False)
    return {
        "effective_rank": _entropy_rank([s * s for s in sv]),
        "rankme": _entropy_rank(list(sv)),
        "stable_rank": np.linalg.norm(xc, "fro") ** 2 / np.linalg.norm(xc, 2) ** 2,
        "participation_ratio": sum(s * s for s in sv) ** 2 / sum(s**4 for s in sv),
    }


@pytest.mark.parametrize("seed,rank", [(0, None), (1, 3), (2, 1), (3, 12)])
def test_spectral_collapse_equals_svd_reference(seed, rank):
    x = _rows(seed, rank=rank)
    got = spectral_collapse(torch.cov(torch.from_numpy(x).T))
    ref = _ref_spectral(x)
    for k, v in ref.items():
        compare(got[k], v, rtol=1e-9, what=k)
    compare(got["participation_ratio"], 1 / vni(torch.from_numpy(x)), rtol=1e-9)


def test_spectral_metrics_of_known_spectra():
    lam = torch.tensor([[4.0, 0, 0, 0], [1, 1, 1, 1], [3, 1, 0, 0]], dtype=torch.float64)
    compare(effective_rank(lam), [1.0, 4.0, math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))], rtol=1e-14)
    compare(stable_rank(lam), [1.0, 4.0, 4 / 3], rtol=1e-14)
    p = np.array([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    compare(rankme(lam)[2], math.exp(-(p * np.log(p)).sum()), rtol=1e-14)
    assert torch.isnan(effective_rank(torch.zeros(3))) and torch.isnan(stable_rank(torch.zeros(3)))


def test_spectral_collapse_is_batched_scale_invariant_and_nan_on_degenerate_covariances():
    xs = [_rows(s) for s in range(3)]
    cs = torch.stack([torch.cov(torch.from_numpy(x).T) for x in xs])
    batched = spectral_collapse(cs)
    for i, x in enumerate(xs):
        for k, v in _ref_spectral(x).items():
            compare(batched[k][i], v, rtol=1e-9, what=k)
    for scale in (1e-300, 1e300):
        compare(spectral_collapse(cs[0] * scale)["effective_rank"], batched["effective_rank"][0], rtol=1e-9)
    bad = cs[0].clone()
    bad[1, 2] = math.inf
    for c in (torch.zeros(5, 5), bad):
        assert all(math.isnan(float(v)) for v in spectral_collapse(c).values())
    lam = covariance_spectrum(cs)
    assert bool((lam[..., :-1] >= lam[..., 1:]).all())  # descending
    with pytest.raises(ValueError, match="square"):
        covariance_spectrum(torch.zeros(3, 4))


def _ref_dormant(x: np.ndarray, tau: float) -> float:
    """Sokar et al. 2023 with explicit loops over units and samples."""
    s, n = x.shape
    e = [sum(abs(x[k, i]) for k in range(s)) / s for i in range(n)]
    layer = sum(e) / n
    return sum(1 for i in range(n) if e[i] / layer <= tau) / n


@pytest.mark.parametrize("tau", [0.0, 0.025, 0.1, 0.5, 1.0])
def test_dormant_fraction_equals_loops(tau):
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal((60, 20)) * rng.uniform(0, 2, 20) + rng.normal(0, 1, 20), 0)  # ReLU layer
    x[:, [3, 7]] = 0.0  # dead units
    x[:, 11] *= 1e-3  # a nearly dead unit
    assert dormant_fraction(torch.from_numpy(x), tau) == pytest.approx(_ref_dormant(x, tau), abs=1e-15)
    seq = torch.from_numpy(x).reshape(6, 10, 20)  # (B, T, D): every axis but the last is samples
    assert dormant_fraction(seq, tau) == pytest.approx(_ref_dormant(x, tau), abs=1e-15)
    compare(dormant_scores(torch.from_numpy(x) * 1e300), dormant_scores(torch.from_numpy(x)), rtol=1e-12)


def test_dormant_fraction_edge_cases():
    assert dormant_fraction(torch.zeros(5, 4), 0.0) == 1.0  # a dead layer: every unit dormant
    assert dormant_fraction(torch.ones(5, 4), 0.99) == 0.0
    x = torch.ones(5, 4)
    x[2, 1] = math.nan
    assert math.isnan(dormant_fraction(x, 0.1))
    with pytest.raises(ValueError, match="tau must be a finite number >= 0, got -0.1"):
        dormant_fraction(torch.ones(3, 3), -0.1)


def _ref_token_collapse(x: np.ndarray, reference: str) -> list[float]:
    out = []
    for b in range(x.shape[0]):
        xb = x[b]
        if reference == "rank1":
            u, s, vt = np.linalg.svd(xb, full_matrices=False)
            approx = s[0] * np.outer(u[:, 0], vt[0])
        else:
            approx = np.ones((xb.shape[0], 1)) @ xb.mean(0, keepdims=True)
        out.append(np.linalg.norm(xb - approx) / np.linalg.norm(xb))
    return out


@pytest.mark.parametrize("reference", ["rank1", "mean"])
@pytest.mark.parametrize("t,d", [(7, 16), (16, 5)], ids=["tokens<features", "tokens>features"])
def test_token_collapse_equals_numpy_svd(reference, t, d):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, t, d))
    x[1] = np.outer(rng.standard_normal(t), rng.standard_normal(d)) + 1e-3 * rng.standard_normal((t, d))  # ~rank 1
    x[2] = np.ones((t, 1)) * rng.standard_normal(d) + 0.1 * rng.standard_normal((t, d))  # tokens nearly equal
    ref = _ref_token_collapse(x, reference)
    got = token_collapse_per_sequence(torch.from_numpy(x), reference=reference)
    compare(got, ref, rtol=1e-7, atol=1e-7)
    assert token_collapse(torch.from_numpy(x), reference=reference) == pytest.approx(np.mean(ref), rel=1e-7)
    compare(token_collapse_per_sequence(torch.from_numpy(x * 1e250), reference=reference), ref, rtol=1e-7, atol=1e-7)


def test_token_collapse_degenerate_sequences():
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[1] = 0.0  # padding: skipped in the mean
    per = token_collapse_per_sequence(x)
    assert math.isnan(float(per[1])) and not torch.isnan(per[[0, 2]]).any()
    # the batch and the per-sequence SVDs may round apart by a few ulps under threads
    assert token_collapse(x) == pytest.approx(float(per[[0, 2]].mean()), rel=1e-13)
    # every token equal (a seeded vector: the suite's global RNG state must not decide the rounding)
    same = torch.ones(2, 5, 4, dtype=torch.float64) * torch.randn(4, dtype=torch.float64,
                                                                  generator=torch.Generator().manual_seed(3))
    # rank 1: sqrt of a difference of squares, ~sqrt(eps); mean: the mean of equal tokens rounds by an ulp at most
    assert float(token_collapse(same)) < 1e-7 and float(token_collapse(same, reference="mean")) <= 1e-15
    x[2, 1, 1] = math.inf
    assert math.isnan(token_collapse(x))
    with pytest.raises(ValueError, match="expected \\(batch, tokens, features\\)"):
        token_collapse(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="reference must be 'rank1' or 'mean', got 'svd'"):
        token_collapse(x, reference="svd")
