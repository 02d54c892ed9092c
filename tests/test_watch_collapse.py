"""depthscope.watch's collapse quantities (issue 13 §6) equal the pure functions of metrics.collapse on the same rows."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from depthscope.metrics.collapse import dormant_fraction, spectral_collapse, token_collapse
from depthscope.watch import watch, watch_report

RTOL = 1e-6  # the watch's Gram is float32 products summed in float64; the references are float64


def cov(rows: torch.Tensor) -> torch.Tensor:
    x = rows.double()
    xc = x - x.mean(0)
    return xc.T @ xc / x.shape[0]


@pytest.mark.parametrize("samples", [200, 10])  # more samples than nodes, and fewer (the S x S Gram)
def test_spectral_and_dormant_equal_metrics_collapse(samples):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), nn.ReLU(), nn.Linear(24, 16))
    with torch.no_grad():  # five dead units in the first layer's output, three in the second's
        model[0].weight[:5] = 0
        model[0].bias[:5] = 0
        model[2].weight[:3] = 0
        model[2].bias[:3] = 0
    x = torch.randn(samples, 8, generator=torch.Generator().manual_seed(1))
    with watch(model, every=1, collapse=True, dormant_tau=0.1) as w:
        model(x)
    outs = {"0": model[0](x).detach(), "2": model[2](model[1](model[0](x))).detach()}
    for r in w.records:
        out = outs[r["name"]]
        ref = spectral_collapse(cov(out))
        for q in ("effective_rank", "rankme", "stable_rank"):
            np.testing.assert_allclose(r[q], float(ref[q]), rtol=RTOL, err_msg=f"{q} {r['name']}")
        np.testing.assert_allclose(1 / r["vni"], float(ref["participation_ratio"]), rtol=RTOL)
        assert r["dormant_fraction"] == dormant_fraction(out, 0.1)
        assert math.isnan(r["token_collapse"])  # 2-D outputs: no tokens
    assert {r["name"]: r["dormant_fraction"] for r in w.records}["0"] >= 5 / 24


class Seq(nn.Module):
    """(B, T, D) outputs: sequence 0 collapsed to one token direction, the others not."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("batch_first", [True, False])
def test_token_collapse_equals_metrics_collapse_over_the_sequences(batch_first):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 7, 6, generator=g)
    x[0] = torch.outer(torch.randn(7, generator=g), torch.randn(6, generator=g))  # rank one tokens
    x[3] = 0  # padding: no token collapse defined, skipped as metrics.collapse skips it
    model = Seq()
    with torch.no_grad():
        model.proj.bias.zero_()  # keeps sequence 0 rank one
    if not batch_first:  # a model that says its sequences are (T, B, D), as nn.Transformer* by default
        model.enc = nn.TransformerEncoderLayer(6, 2, 8, batch_first=False)
    inp = x if batch_first else x.transpose(0, 1)
    with watch(model, every=1, modules="proj", collapse=True, token_sequences=5) as w:
        model(inp)
    y = model.proj(x).detach()  # (B, T, D)
    r = w.records[0]
    np.testing.assert_allclose(r["token_collapse"], token_collapse(y), rtol=1e-12)
    assert 0 < r["token_collapse"] < 1


def test_token_collapse_reads_at_most_token_sequences_and_collapse_off_records_nan():
    torch.manual_seed(0)
    model = Seq()
    x = torch.randn(20, 4, 6, generator=torch.Generator().manual_seed(3))
    with watch(model, every=1, collapse=True, token_sequences=3) as w:
        model(x)
    from depthscope.metrics.collapse import token_collapse_per_sequence

    per = token_collapse_per_sequence(model.proj(x).detach())
    v = w.records[0]["token_collapse"]
    # the mean of 3 of the 20 sequences: one of the C(20, 3) subsets' means
    import itertools

    means = {round(float(per[list(c)].mean()), 12) for c in itertools.combinations(range(20), 3)}
    assert round(v, 12) in means and v != float(per.mean())
    with watch(model, every=1) as w:
        model(x)
    assert all(math.isnan(w.records[0][q]) for q in ("effective_rank", "rankme", "stable_rank",
                                                     "dormant_fraction", "token_collapse"))


def test_watch_report_draws_a_collapse_quantity(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16))
    with watch(model, every=1, collapse=True, run_dir=tmp_path, run="c") as w:
        for _ in range(3):
            model(torch.randn(32, 8))
            w.step()
    paths = watch_report(tmp_path, run="c", quantity="effective_rank")
    assert [p.name for p in paths] == ["watch_effective_rank_c.png", "watch_effective_rank_c.svg"]


@pytest.mark.parametrize("tau", [0.0, 0.025, 0.1, 0.5, 1.0])
def test_dormant_fraction_rows_equals_metrics_collapse_at_every_tau(tau):
    """Units whose mean |x| spans 1e-3 .. 10 of the layer's: the fraction below tau equals the reference."""
    from depthscope.watch.quantities import dormant_fraction_rows

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=g) * torch.logspace(-3, 1, 40)
    x[:, 7] = 0
    assert float(dormant_fraction_rows(x, tau)) == dormant_fraction(x, tau)
    assert float(dormant_fraction_rows(x.to(torch.bfloat16), tau)) == dormant_fraction(x.to(torch.bfloat16), tau)
