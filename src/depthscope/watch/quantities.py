"""Quantities: the numbers of one recorded step, computed from what the hooks captured.

Each number is a pure function of tensors (the formulas are in the package docstring and
docs/watch.md); :func:`compute_records` only batches them so that a step needs one
transfer to the host.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Callable

import torch
from torch import nn

from ..metrics import effective_nodes, participation_ratio
from ..metrics.collapse import spectral_collapse
from ..metrics.vni import debias_vni, vni_moments
from .batched import group_size, moments, slab_moments
from .capture import _Capture
from .select import _Watched, is_linear_like

#: Every quantity a record can carry, in the order written to CSV.
QUANTITIES = (
    "vni", "vni_debiased", "effective_nodes", "participation_ratio", "nodes", "samples", "calls",
    "act_mean", "act_var", "grad_norm", "grad_rms", "out_grad_rms", "sigma_w2", "sigma_w2_mu1",
    "effective_rank", "rankme", "stable_rank", "dormant_fraction", "token_collapse",
)

#: Recorded only with ``collapse=True`` (an eigendecomposition per module and recorded step).
COLLAPSE = ("effective_rank", "rankme", "stable_rank", "dormant_fraction", "token_collapse")

#: phi'(h) in closed form for common activation modules (checked against autograd in the tests).
_DERIVATIVES: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.Tanh: lambda m, h: torch.tanh(h).square_().neg_().add_(1.0),  # in place: one temporary of h's size
    nn.ReLU: lambda m, h: (h > 0).to(h.dtype),
    nn.Sigmoid: lambda m, h: (lambda s: s.sub_(s.square()))(torch.sigmoid(h)),
    nn.LeakyReLU: lambda m, h: torch.where(h > 0, torch.ones_like(h), torch.full_like(h, m.negative_slope)),
}


def derivative_of(phi: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """phi'(h) elementwise: closed form for nn.Tanh/ReLU/Sigmoid/LeakyReLU, autograd for anything else."""
    closed = _DERIVATIVES.get(type(phi))
    if closed is not None:
        return closed(phi, h)
    with torch.enable_grad():
        hr = h.detach().clone().requires_grad_(True)
        y = phi(hr.clone())  # the clone lets in-place activations (ReLU(inplace=True)) run
        (g,) = torch.autograd.grad(y.sum(), hr)
    return g


#: Entries of a float64 temporary made from a tensor when summing it (2^16: 512 KiB).
CHUNK64 = 1 << 16


def sum64(t: torch.Tensor, *, center: torch.Tensor | float | None = None, square: bool = False) -> torch.Tensor:
    """sum_i (t_i - center)^p (p = 2 if ``square`` else 1) accumulated in float64, a float64 0-d tensor.

    The entries are converted to float64 :data:`CHUNK64` at a time (``t.sum(dtype=torch.float64)``
    would make a float64 copy of all of t): the watch's float64 temporaries stay that small.
    """
    flat = t.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=t.device)
    for part in flat.split(CHUNK64):
        p = part.to(torch.float64)
        if center is not None:
            p = p.sub_(center) if p.data_ptr() != part.data_ptr() else p - center
        total += p.square().sum() if square else p.sum()
    return total


def var64(t: torch.Tensor) -> torch.Tensor:
    """Population variance of every entry of t, two passes in float64 chunks (:func:`sum64`)."""
    n = max(t.numel(), 1)
    mean = sum64(t) / n
    return sum64(t, center=mean, square=True) / n


def mu1_sum(phi: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """sum of phi'(h)^2 over every entry of h, a float64 tensor (mu_1 = this / h.numel(), thesis eq. 4.4).

    phi'(h)^2 is formed in h's dtype (float32 for half precision) and summed in float64 chunks.
    """
    d = derivative_of(phi, h.detach() if h.is_floating_point() and h.element_size() >= 4 else h.detach().float())
    return sum64(d.square_())


def _mu1(phi: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """mu_1 = mean of phi'(h)^2 over the samples and nodes of h (thesis eq. 4.4), a float64 tensor."""
    return mu1_sum(phi, h) / max(h.numel(), 1)


def extra_memory_bound(widths: Sequence[int], max_rows: int, *, itemsize: int = 4,
                       rows: Sequence[int] | None = None, call_rows: int = 0) -> int:
    """Bytes: the bound on the watch's extra peak memory in a recorded step (docs/watch.md, "Memory").

    sum_l k_l D_l b  +  4 max_l k_l D_l max(b, 4)  +  28 max_(k,D) g_(k,D) m^2  +  41 n  +  8 CHUNK64

    k_l = min(max_rows, rows_l) rows kept of module l (rows_l: the rows all its calls produce in
    the step, default max_rows), D_l its width (nodes), b the output's bytes per entry, m =
    min(k, D) the side of a Gram, g_(k,D) = batched.group_size(#modules with k_l = k and D_l = D,
    m) the Grams of same-shape modules formed at once (at most GRAM_BATCH_ENTRIES entries, or
    one), n the rows of the largest single call. The terms: the reservoirs (same-shape ones
    allocated as one slab, the same bytes); at most four transient copies of one module's rows
    (a reservoir that grows, the gathered rows of one call, phi' and a half-precision input
    converted to float32); the float32 products and three float64 Gram-sized temporaries of
    one batch of Grams; the sampling indices of one call; one float64 chunk of a variance or
    mu_1 sum. It does not grow with the number of calls. Returned after detach: nothing of it stays.
    """
    rows = list(rows) if rows is not None else [max_rows] * len(widths)
    ks = [min(max_rows, r) for r in rows]
    res = sum(k * d * itemsize for k, d in zip(ks, widths))
    trans = max((k * d for k, d in zip(ks, widths)), default=0) * 4 * max(itemsize, 4)
    shapes = Counter(zip(ks, widths))
    gram = max((group_size(c, min(k, d)) * min(k, d) ** 2 for (k, d), c in shapes.items()), default=0) * 28
    return res + trans + gram + 41 * call_rows + 8 * CHUNK64


def fan_in_of(module: nn.Module, nodes: int) -> int | None:
    """fan_in of a linear-like module's weight, or None: nn.Linear / Conv: weight[0].numel(); another
    2-D weight (transformers' Conv1D stores (in, out)): the axis that is not the ``nodes`` outputs."""
    w = module._parameters.get("weight")
    if not isinstance(w, torch.Tensor) or w.ndim < 2:
        return None
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return int(w[0].numel())
    if not is_linear_like(module):
        return None
    a, b = w.shape
    if a == nodes:
        return int(b)  # (out, in), as nn.Linear; a square weight has the same fan_in either way
    if b == nodes:
        return int(a)  # (in, out), applied as x @ W
    return None


def _norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """[||t_i||_2] as one float64 tensor, each norm in its tensor's own dtype (one fused kernel where torch has one)."""
    foreach = getattr(torch, "_foreach_norm", None)
    devices = {t.device for t in tensors}
    norms = foreach(list(tensors)) if foreach is not None and len(devices) == 1 else \
        [torch.linalg.vector_norm(t) for t in tensors]
    if len({n.dtype for n in norms}) == 1 and len(devices) == 1:
        return torch.stack(list(norms)).to(torch.float64)
    return torch.stack([n.to(torch.float64).cpu() for n in norms])


def _to_host(vals: Sequence[torch.Tensor]) -> list[float]:
    """The numbers of 1-D tensors as Python floats, in order: one transfer (one sync) per device."""
    if not vals:
        return []
    vals = [v if v.dtype == torch.float64 else v.to(torch.float64) for v in vals]
    if len({v.device for v in vals}) > 1:
        vals = [v.cpu() for v in vals]
    return torch.cat(vals).tolist()


def dormant_fraction_rows(x: torch.Tensor, tau: float) -> torch.Tensor:
    """#{i : s_i <= tau} / N, s_i = mean|x_i| / ((1/N) sum_k mean|x_k|) over rows x (samples x units), float64 0-d.

    :func:`depthscope.metrics.collapse.dormant_fraction` (Sokar et al. 2023) without its float64 copy
    of x: |x| is averaged in x's dtype (float32 for half precision), each unit's mean then in float64.
    An all-zero layer counts as all dormant, as there.
    """
    e = x.abs().mean(0, dtype=torch.float32 if x.element_size() < 4 else x.dtype).to(torch.float64)
    m = e.mean()
    scores = e / m if bool(m > 0) else torch.zeros_like(e)
    return (scores <= tau).to(torch.float64).mean()


def centred_gram(xc: torch.Tensor) -> torch.Tensor:
    """X_c^T X_c (N <= S) or X_c X_c^T of centred rows in float64 (same non-zero spectrum as S times the covariance).

    Float64 products, unlike vni_moments' float32 ones: the spectral metrics read the small
    eigenvalues too (RankMe takes their square roots), where float32 rounding, about
    2^-24 lambda_max, would read as signal. The rows are converted m at a time (m = min(S, N),
    the Gram's side), so no float64 temporary is larger than the m x m Gram.
    """
    a = xc if xc.shape[1] <= xc.shape[0] else xc.T
    m = a.shape[1]
    g = torch.zeros((m, m), dtype=torch.float64, device=xc.device)
    for part in a.split(max(m, 1), dim=0):
        p = part.to(torch.float64)
        g.addmm_(p.T, p)
    return g


def compute_records(caps: Sequence[tuple[_Watched, _Capture]], step: int,
                    measured: set[tuple[int, str]] | None = None, *, collapse: bool = False,
                    dormant_tau: float = 0.025, slabs: Sequence[tuple[torch.Tensor, Sequence[int]]] = (),
                    reference: bool = False) -> list[dict]:
    """The records of one step (one dict per watched module that captured rows).

    Every statistic stays a tensor where the activations live until one transfer at the
    end (one host sync per step, not one per number). VNI and the moments are computed in
    place on the modules' own reservoirs (no copy of the rows; the temporaries are
    Gram-sized): ``slabs`` lists (slab (G, S, N), [layer of slab[0], ...]) of reservoirs
    allocated as one tensor; where every member's kept rows are exactly its whole slot,
    the slab is computed as one batch (batched.slab_moments), every other module alone
    (batched.moments). ``reference``: metrics.vni.vni_moments module by module, the slow
    reference the tests compare the fast path with (same numbers within its stated
    bound, vni_moments_error). All parameter gradients go through one fused norm.
    The reservoirs are overwritten (centred): they are this step's scratch. ``measured``
    receives (layer, quantity) of each gradient number measured (NaN there means a NaN gradient).
    """
    nan = float("nan")
    recs: list[dict] = []
    vals: list[torch.Tensor] = []  # 1-D tensors, concatenated and transferred once
    slots: list[tuple[Any, Any]] = []  # (container, key) that each transferred number goes to
    grads: dict[int, torch.Tensor] = {}  # id(parameter) -> its gradient, each counted once
    pnorm: dict[int, float] = {}  # id(parameter) -> ||gradient||, filled by the transfer
    grad_of: list[tuple[dict, list[float], int, list[int]]] = []  # rec, output-grad norms, numel, params
    weights: list[tuple[dict, int]] = []  # (record, fan_in)
    rec_of: dict[int, dict] = {}
    cap_of: dict[int, _Capture] = {}

    def put(v: torch.Tensor, where: Sequence[tuple[Any, Any]]) -> None:
        vals.append(v.reshape(-1))
        slots.extend(where)

    # 1. what reads the rows as captured (before they are centred in place)
    for w, cap in caps:
        x = cap.buf[: cap.kept]
        n_samples, n_nodes = x.shape
        rec = dict(step=step, layer=w.layer, name=w.name, **{q: nan for q in QUANTITIES})
        rec.update(nodes=float(n_nodes), samples=float(n_samples), calls=float(cap.calls))
        recs.append(rec)
        rec_of[w.layer], cap_of[w.layer] = rec, cap
        if cap.grad_norms:  # a backward pass reached this module's output in this step
            norms = [nan] * len(cap.grad_norms)
            put(torch.stack(cap.grad_norms), [(norms, k) for k in range(len(norms))])
            ids = []
            for p in w.module.parameters():
                if p.grad is not None:
                    grads[id(p)] = p.grad.detach()
                    ids.append(id(p))
            grad_of.append((rec, norms, cap.grad_numel, ids))
        weight = w.module._parameters.get("weight")
        fan_in = fan_in_of(w.module, n_nodes) if w.kind == "linear-like" else None
        if fan_in is not None and isinstance(weight, torch.Tensor):
            weights.append((rec, fan_in))
            put(var64(weight.detach()), [(rec, "sigma_w2")])  # x fan_in below
            if w.phi is not None and w.phi_module is None:
                put(_mu1(w.phi, x), [(rec, "sigma_w2_mu1")])  # x sigma_w2 below
            elif w.phi_module is not None and cap.mu1_n:
                put(cap.mu1_sum / cap.mu1_n, [(rec, "sigma_w2_mu1")])
        if collapse:
            put(dormant_fraction_rows(x, dormant_tau), [(rec, "dormant_fraction")])
            if cap.tc_n:
                put(cap.tc_sum / cap.tc_n, [(rec, "token_collapse")])
        if n_samples < 2:
            put(x.to(torch.float64).mean(), [(rec, "act_mean")])

    # 2. VNI and the moments; the rows are this step's own copies and every other use of them
    # is done: they are centred in place (a half-precision reservoir in a float32 copy)
    moment_q = ("vni", "act_mean", "act_var")
    centred: dict[int, torch.Tensor] = {}
    if not reference:
        for slab, layers in slabs:
            members = [cap_of.get(layer) for layer in layers]
            if (slab.dtype in (torch.float32, torch.float64) and slab.shape[1] >= 2 and len(members) == slab.shape[0]
                    and all(c is not None and c.kept == slab.shape[1] and c.buf is not None
                            and c.buf.shape == slab.shape[1:] and c.buf.data_ptr() == slab[i].data_ptr()
                            for i, c in enumerate(members))):
                put(slab_moments(slab), [(rec_of[layer], q) for layer in layers for q in moment_q])
                centred.update((layer, slab[i]) for i, layer in enumerate(layers))
    for w, cap in caps:
        if w.layer in centred or cap.kept < 2:
            continue
        x = cap.buf[: cap.kept]
        xf = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
        put(vni_moments(xf, overwrite=True) if reference else moments(xf), [(rec_of[w.layer], q) for q in moment_q])
        centred[w.layer] = xf

    # 3. the spectrum, from the centred rows (X_c times a power of two: the metrics are scale invariant)
    if collapse:
        for w, cap in caps:
            if w.layer in centred:
                sc = spectral_collapse(centred_gram(centred[w.layer]))
                put(torch.stack([sc[q] for q in ("effective_rank", "rankme", "stable_rank")]),
                    [(rec_of[w.layer], q) for q in ("effective_rank", "rankme", "stable_rank")])
    if grads:
        put(_norms(list(grads.values())), [(pnorm, i) for i in grads])

    for (container, key), v in zip(slots, _to_host(vals)):
        container[key] = v
    for rec, norms, numel, ids in grad_of:
        if measured is not None:
            measured.add((rec["layer"], "out_grad_rms"))
            if ids:
                measured.add((rec["layer"], "grad_rms"))
        rec["out_grad_rms"] = math.sqrt(math.fsum(v * v for v in norms) / max(numel, 1))
        if ids:
            sq = math.fsum(pnorm[i] * pnorm[i] for i in ids)  # v * v: inf where v ** 2 would raise
            rec["grad_norm"] = math.sqrt(sq)
            rec["grad_rms"] = math.sqrt(sq / sum(grads[i].numel() for i in ids))
    for rec, fan_in in weights:
        rec["sigma_w2"] = fan_in * rec["sigma_w2"]  # = metrics.sigma_w2, the same float64 product
        if not math.isnan(rec["sigma_w2_mu1"]):
            rec["sigma_w2_mu1"] = rec["sigma_w2"] * rec["sigma_w2_mu1"]
    for rec in recs:
        r = rec["vni"]
        if not math.isnan(r):
            rec.update(vni_debiased=float(debias_vni(r, int(rec["samples"]))),
                       effective_nodes=float(effective_nodes(r, int(rec["nodes"]))),
                       participation_ratio=float(participation_ratio(r)) if r > 0 else nan)
    return recs
