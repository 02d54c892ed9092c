"""The watch's fast path (watch.batched) against its slow references: torch.aminmax and metrics.vni.vni_moments."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
from torch import nn

from depthscope.metrics.vni import vni_moments, vni_moments_error
from depthscope.watch import watch
from depthscope.watch.batched import GRAM_BATCH_ENTRIES, col_minmax, group_size, moments, slab_moments
from depthscope.watch.quantities import compute_records, extra_memory_bound

U = 2.0**-24


@pytest.mark.parametrize("shape", [(1024, 64), (4096, 16), (4095, 16), (4097, 10), (64, 10), (5, 3), (3, 1),
                                   (4, 4096, 16), (2, 3, 33, 7), (130, 1), (7, 200)])
def test_col_minmax_is_aminmax_exactly(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 3
    x[..., -1, 0] = -100.0  # an extreme in the last rows (the ones a k-fold view leaves over)
    x[..., 0, -1] = 100.0
    lo, hi = col_minmax(x)
    ref = torch.aminmax(x, dim=-2)
    assert torch.equal(lo, ref.min) and torch.equal(hi, ref.max)


def test_col_minmax_nan_and_non_contiguous():
    x = torch.randn(301, 12, generator=torch.Generator().manual_seed(0))
    x[300, 3] = math.nan  # in the left-over rows
    x[7, 5] = math.nan
    lo, hi = col_minmax(x)
    ref = torch.aminmax(x, dim=-2)
    np.testing.assert_equal(lo.numpy(), ref.min.numpy())
    np.testing.assert_equal(hi.numpy(), ref.max.numpy())
    t = torch.randn(40, 300, generator=torch.Generator().manual_seed(1)).T  # (300, 40), not contiguous
    assert torch.equal(torch.stack(col_minmax(t)), torch.stack(torch.aminmax(t, dim=-2)))


def _cases():
    g = torch.Generator().manual_seed(3)
    yield torch.randn(1024, 64, generator=g) * 2 + 0.5
    yield torch.randn(4096, 16, generator=g)
    yield torch.randn(40, 300, generator=g)  # more nodes than samples: the S x S Gram
    c = torch.randn(200, 10, generator=g)
    c[:, 3] = 7.0  # a constant node
    yield c
    yield torch.randn(300, 8, generator=g) * 1e19  # rescaled by 2^-e
    yield torch.randn(300, 8, generator=g) * 1e-30
    yield torch.randn(300, 8, generator=g) + 1e4  # a large common offset
    low = torch.randn(500, 2, generator=g) @ torch.randn(2, 20, generator=g)  # rank 2: ill-conditioned
    yield low + 1e-4 * torch.randn(500, 20, generator=g)
    yield torch.full((50, 6), 2.5)  # every node constant: R_sq NaN
    inf = torch.randn(50, 6, generator=g)
    inf[4, 2] = math.inf
    yield inf
    yield torch.randn(600, 12, dtype=torch.float64, generator=g)


def _close_to_reference(got: torch.Tensor, ref: torch.Tensor, float32: bool) -> None:
    """R_sq within vni_moments_error(), the variance within (sqrt(512) + 6) u relative, the mean to float32 rounding."""
    got, ref = got.double(), ref.double()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), (got, ref)
    if bool(torch.isnan(ref).all()):
        return
    eps = 1.0 if float32 else 2.0**-29  # float64 input is computed in float64
    r, m, v = ref.unbind(-1)
    gr, gm, gv = got.unbind(-1)
    fin = ~torch.isnan(r)
    assert float(torch.where(fin, gr - r, 0.0).abs().max()) <= vni_moments_error() * eps
    rel = torch.where(v > 0, (gv - v) / v, gv - v)  # every node constant: both variances exactly 0
    assert float(rel.abs().max()) <= (math.sqrt(512) + 6) * U * eps
    assert float((gm - m).abs().max()) <= 8 * U * eps * float(m.abs().max() + v.sqrt().max())


@pytest.mark.parametrize("i", range(11))
def test_moments_equals_vni_moments_within_its_bound(i):
    x = list(_cases())[i]
    ref = vni_moments(x.clone())
    got = moments(x.clone())
    _close_to_reference(got, ref, x.dtype == torch.float32)


@pytest.mark.parametrize("chunk", [7, 512])
def test_moments_of_ill_conditioned_rows_within_the_stated_bound_of_float64(chunk):
    """As test_vni holds vni_moments: a 10^4 offset, rank one plus 1e-3 noise, 8192 rows with a constant node,
    each alone and as one batch, against the float64 VNI of the same float32 numbers (many chunks at chunk=7)."""
    from depthscope.metrics import vni

    g = torch.Generator().manual_seed(7)
    xs = [(1e4 + torch.randn(2048, 24, generator=g)).float(),
          torch.randn(2048, 1, generator=g) * torch.randn(1, 24, generator=g) + 1e-3 * torch.randn(2048, 24, generator=g),
          torch.randn(2048, 16, generator=g) @ torch.randn(16, 24, generator=g) + 300.0]
    xs[2][:, 3] = 7.0
    ref = [float(vni(x)) for x in xs]
    alone = [float(moments(x.clone(), chunk=chunk)[0]) for x in xs]
    batch = slab_moments(torch.stack(xs), chunk=chunk)[:, 0].tolist()
    for got in (alone, batch):
        np.testing.assert_allclose(got, ref, rtol=0, atol=vni_moments_error(chunk))


def test_slab_moments_equal_vni_moments_matrix_by_matrix_and_centre_in_place():
    g = torch.Generator().manual_seed(5)
    slab = torch.randn(6, 1024, 64, generator=g) * torch.linspace(0.1, 10, 6)[:, None, None] + 3
    slab[2, :, 7] = -1.0  # a constant node in one matrix
    slab[4] *= 1e25  # one matrix rescaled, the others not
    ref = torch.stack([vni_moments(m.clone()) for m in slab])
    x = slab.clone()
    got = slab_moments(x)
    assert got.shape == (6, 3)
    _close_to_reference(got, ref, True)
    for a, m in zip(x, slab):  # left holding X_c (times 2^-e): centred columns
        assert float(a.double().mean(0).abs().max()) <= 1e-6 * float(a.double().abs().max())
        assert torch.equal(a[:, 7] == 0, torch.zeros(1024, dtype=torch.bool)) or bool((m[:, 7] == m[0, 7]).all())


def test_slab_moments_batches_at_most_group_size_grams(monkeypatch):
    b = importlib.import_module("depthscope.watch.batched")

    seen = []
    real = b.moments
    monkeypatch.setattr(b, "moments", lambda x, **k: (seen.append(x.shape[0]), real(x, **k))[1])
    side = 64
    count = GRAM_BATCH_ENTRIES // side**2 + 3
    slab = torch.randn(count, 100, side)
    ref = torch.stack([vni_moments(m.clone()) for m in slab])
    _close_to_reference(b.slab_moments(slab), ref, True)
    assert seen == [group_size(count, side), 3] and sum(seen) == count
    assert group_size(10, 4096) == 1 and group_size(3, 8) == 3


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                         nn.Linear(32, 5))


def test_every_one_puts_same_shape_layers_in_one_slab_and_records_the_reference_numbers(monkeypatch):
    """From the second recorded step on, the three (rows, 32) layers are one slab computed as one batch; every
    record equals compute_records(reference=True) (vni_moments module by module) on copies of the same rows."""
    core = importlib.import_module("depthscope.watch.core")

    batches = []
    real = core.compute_records

    def spy(caps, step, measured=None, **kw):
        copies = []
        for w, cap in caps:
            c = type(cap)(**{f: getattr(cap, f) for f in ("kept", "seen", "calls", "grad_numel", "mu1_sum", "mu1_n")})
            c.buf, c.grad_norms = cap.buf[: cap.kept].clone(), list(cap.grad_norms)
            copies.append((w, c))
        ref = real(copies, step, set(), collapse=kw.get("collapse", False), reference=True)
        got = real(caps, step, measured, **kw)
        batches.append([(tuple(s.shape), list(layers)) for s, layers in kw.get("slabs", ())])
        for a, b in zip(got, ref):
            assert a.keys() == b.keys()
            for q in a:
                if q in ("vni", "vni_debiased"):
                    np.testing.assert_allclose(a[q], b[q], rtol=0, atol=2 * vni_moments_error(), err_msg=q)
                elif isinstance(a[q], float):
                    np.testing.assert_allclose(a[q], b[q], rtol=1e-6, err_msg=q)
                else:
                    assert a[q] == b[q]
        return got

    monkeypatch.setattr(core, "compute_records", spy)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    with watch(model, every=1, optimizer=opt) as w:
        for _ in range(4):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    assert batches[0] == []  # the first step learns the shapes
    assert batches[1:] == [[((3, 40, 32), [1, 2, 3])]] * 3  # the Linears 0, 2, 4 (32 wide); 6 is 5 wide
    assert len(w.records) == 16
    # the step that forms the slab frees the first step's buffers of its layers: never two sets held
    assert w.peak_held_bytes == 4 * 40 * (3 * 32 + 5)


def test_slab_path_and_reference_give_the_same_records_through_the_watch():
    """Two identical runs, one with the slab path disabled (reference=True inside): the records agree within the bound."""
    core = importlib.import_module("depthscope.watch.core")

    def run(reference: bool) -> list[dict]:
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
        real = core.compute_records
        if reference:
            core.compute_records = lambda *a, **k: real(*a, **{**k, "reference": True})
        try:
            with watch(model, every=1, optimizer=opt) as w:
                for _ in range(3):
                    opt.zero_grad()
                    model(x).pow(2).mean().backward()
                    opt.step()
        finally:
            core.compute_records = real
        return w.records

    fast, ref = run(False), run(True)
    for a, b in zip(fast, ref, strict=True):
        for q, v in a.items():
            if isinstance(v, float) and not (math.isnan(v) and math.isnan(b[q])):
                np.testing.assert_allclose(v, b[q], rtol=2e-6, atol=2 * vni_moments_error(), err_msg=q)


def test_a_partly_filled_slab_is_computed_module_by_module():
    """A step whose calls are not the previous step's shapes: no slab matches, the records are still right."""
    model = _mlp()
    with watch(model, every=1) as w:
        for n in (40, 40, 25):
            with torch.no_grad():
                model(torch.randn(n, 8, generator=torch.Generator().manual_seed(n)))
            w.step()
    last = [r for r in w.records if r["step"] == 2]
    assert [r["samples"] for r in last] == [25.0] * 4
    out = torch.randn(25, 8, generator=torch.Generator().manual_seed(25))
    h = model[0](out).detach()
    np.testing.assert_allclose(last[0]["vni"], float(vni_moments(h.clone())[0]), rtol=0, atol=vni_moments_error())
    assert w.held_bytes == 0


def test_memory_bound_counts_a_batch_of_grams():
    one = extra_memory_bound([64], 1024, rows=[1024], call_rows=1024)
    six = extra_memory_bound([64] * 6, 1024, rows=[1024] * 6, call_rows=1024)
    assert six - one == 5 * 1024 * 64 * 4 + 28 * 5 * 64**2  # five more reservoirs and five more Grams in the batch
    wide = extra_memory_bound([768] * 4, 4096, call_rows=4096)  # one 768^2 Gram at a time
    assert wide - extra_memory_bound([768], 4096, call_rows=4096) == 3 * 4096 * 768 * 4
