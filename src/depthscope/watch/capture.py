"""Capture: which rows of a module's output are kept, and how (pure functions; the hooks live in core.py).

Rows are the samples of a module's output (the node axis last, every other axis
flattened), see :func:`as_rows`. A watched module keeps at most ``max_rows`` of
them per step, whatever the number of calls: a uniform sample without replacement
of every row that all its calls in the step produced (reservoir sampling across
calls, :func:`reservoir_plan`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_CHANNEL_FIRST: tuple[type, ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
)


def _seed_for(seed: int, step: int, layer: int, call: int) -> int:
    """The seed of the row sample of (run seed, step, layer, call): every argument changes it."""
    return (int(seed) * 1_000_003 + int(step) * 10_007 + int(layer) * 101 + int(call)) % (2**63)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % (2**63))


def _sample_index(n: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    """The sorted row numbers of a seeded sample of k of n rows without replacement.

    The first k entries of ``torch.randperm(n)`` drawn with ``seed``, in increasing order
    (sorted through a mask: O(n) instead of a sort of k random numbers).
    """
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=_generator(seed))[:k]] = True
    return mask.nonzero().squeeze(1).to(device)


def sample_rows(x: torch.Tensor, max_rows: int, seed: int) -> torch.Tensor:
    """At most ``max_rows`` rows of x (rows x nodes), drawn without replacement with ``seed``, in order.

    Returns a copy of x when it has no more than ``max_rows`` rows.
    """
    n = x.shape[0]
    if n <= max_rows:
        return x.clone()
    return x.index_select(0, _sample_index(n, max_rows, seed, x.device))


def node_axis_of(module: nn.Module, out: torch.Tensor) -> int:
    """The axis of ``out`` holding the nodes (features) of ``module``; see the package docstring."""
    if out.ndim <= 1:
        return -1
    if out.ndim == 2:
        return 1
    if out.ndim >= 4 or isinstance(module, _CHANNEL_FIRST):
        return 1
    return -1


def as_rows(out: torch.Tensor, axis: int) -> torch.Tensor:
    """(samples, nodes) view of an output: the node axis last, every other axis flattened into samples."""
    if out.ndim == 0:
        return out.reshape(1, 1)
    if out.ndim == 1:
        return out.reshape(1, -1)
    return out.movedim(axis, -1).reshape(-1, out.shape[axis])


def count_rows(out: torch.Tensor, axis: int) -> tuple[int, int]:
    """(rows, nodes) of ``as_rows(out, axis)`` without forming it."""
    if out.ndim == 0:
        return 1, 1
    d = out.shape[-1] if out.ndim == 1 else out.shape[axis]
    return out.numel() // max(d, 1), d


def gather_rows(out: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
    """``as_rows(out, axis)[idx]`` (a new tensor) without first copying the whole output.

    Row r of ``as_rows`` is, for a channel-first (B, C, *spatial) output, image r // S at
    position r % S (S = the spatial size), read with one gather; otherwise the row
    numbers are unravelled into indices of the output with the node axis moved last.
    """
    if out.ndim < 2:
        return as_rows(out, axis).index_select(0, idx)
    moved = out.movedim(axis, -1)
    d = moved.shape[-1]
    if out.ndim >= 3 and axis % out.ndim == 1:
        spatial = out[0, 0].numel()
        flat = out.reshape(out.shape[0], d, spatial)  # a view for a contiguous output
        return flat[idx.div(spatial, rounding_mode="floor"), :, idx.remainder(spatial)]
    if moved.is_contiguous():
        return moved.reshape(-1, d).index_select(0, idx)
    return moved[torch.unravel_index(idx, moved.shape[:-1])]


def copy_rows_into(out: torch.Tensor, axis: int, dest: torch.Tensor) -> torch.Tensor:
    """Copy every row of ``as_rows(out, axis)`` into ``dest`` (rows x nodes, out's dtype): no other copy."""
    if out.ndim < 2:
        dest.copy_(as_rows(out, axis))
    else:
        moved = out.movedim(axis, -1)
        dest.view(moved.shape).copy_(moved)
    return dest


def sample_output_rows(out: torch.Tensor, axis: int, max_rows: int, seed: int, *,
                       buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``sample_rows(as_rows(out, axis), max_rows, seed)`` without first copying the whole output.

    The same rows in the same order (tested against that reference). When every row is
    kept and ``buffer`` (rows x nodes, out's dtype) is given, the rows are copied into it
    and it is returned.
    """
    n, d = count_rows(out, axis)
    if n <= max_rows:
        if buffer is not None:
            return copy_rows_into(out, axis, buffer)
        return copy_rows_into(out, axis, torch.empty((n, d), dtype=out.dtype, device=out.device))
    return gather_rows(out, axis, _sample_index(n, max_rows, seed, out.device))


def reservoir_plan(seen: int, n: int, k: int, seed: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Where the n rows of a new call go in a reservoir of capacity k that has seen ``seen`` rows.

    Returns (f, slots, rows): the call's first f rows fill slots seen .. seen+f-1 (while
    the reservoir is not full), and row ``rows[i]`` of the call replaces slot ``slots[i]``.
    This is Vitter's algorithm R: the row with global number j >= k draws r_j uniform in
    {0, ..., j} (one float64 uniform per row, ``torch.rand`` seeded by ``seed``) and
    replaces slot r_j when r_j < k; a slot drawn by several rows of the call keeps the
    last of them, as the row-by-row algorithm would. Whatever the split of the stream
    into calls, the reservoir then holds a uniform sample without replacement of every
    row seen (tested against the row-by-row algorithm and by the frequencies of subsets).
    When the reservoir is empty and n > k, the caller takes the randperm sample of
    :func:`sample_output_rows` instead (uniform too, and the rows of a single call are
    then exactly those of :func:`sample_rows`).
    """
    f = max(0, min(n, k - seen))
    rest = n - f
    empty = torch.zeros(0, dtype=torch.int64)
    if rest <= 0:
        return f, empty, empty
    j = torch.arange(seen + f, seen + n, dtype=torch.float64)
    r = (torch.rand(rest, dtype=torch.float64, generator=_generator(seed)) * (j + 1)).floor_().to(torch.int64)
    r = torch.minimum(r, j.to(torch.int64))  # float rounding at the top end must not leave {0..j}
    hit = r < k
    slots = r[hit]
    rows = torch.arange(f, n, dtype=torch.int64)[hit]
    if slots.numel() == 0:
        return f, empty, empty
    last = torch.full((k,), -1, dtype=torch.int64).scatter_reduce_(0, slots, rows, "amax")
    slots = (last >= 0).nonzero().squeeze(1)
    return f, slots, last[slots]


def reservoir_reference(stream_sizes: list[int], k: int, seeds: list[int]) -> list[int]:
    """The slow, obviously right twin of :func:`reservoir_plan`: algorithm R one row at a time.

    Global row numbers kept after feeding calls of the given sizes, using the same random
    numbers (one ``torch.rand`` stream per call, as reservoir_plan draws them).
    """
    res: list[int] = []
    seen = 0
    for n, seed in zip(stream_sizes, seeds):
        f = max(0, min(n, k - seen))
        u = torch.rand(n - f, dtype=torch.float64, generator=_generator(seed)).tolist() if n > f else []
        for i in range(n):
            j = seen + i
            if i < f:
                res.append(j)
            else:
                r = min(int(u[i - f] * (j + 1)), j)
                if r < k:
                    res[r] = j
        seen += n
    return res


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a module's output, in order: a tensor, or those inside a tuple,
    list or dict (HF ``ModelOutput`` is a dict), one level deep; None and other entries are skipped."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        items = list(output.values())
    elif isinstance(output, (tuple, list)):
        items = list(output)
    else:
        return []
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


@dataclass
class _Capture:
    """What a watched module captured in the current step."""

    buf: torch.Tensor | None = None  # the reservoir: rows 0..kept-1 hold the sample
    kept: int = 0
    seen: int = 0  # rows offered by every call of the step
    calls: int = 0
    grad_norms: list[torch.Tensor] = field(default_factory=list)  # ||dL/d(output)|| of each call
    grad_numel: int = 0
    fan_in: int | None = None  # the input's feature size of a linear-like module (for sigma_w2)
    mu1_sum: torch.Tensor | None = None  # sum of phi'(h)^2 over sampled inputs of the activation after a norm
    mu1_n: int = 0
    tc_sum: torch.Tensor | None = None  # sum of token collapse over the sequences read (collapse=True)
    tc_n: int = 0

    @property
    def rows(self) -> list[torch.Tensor]:
        """The kept rows as a list of (rows x nodes) tensors ([] before any call), as the single-file
        watch held them; assigning a list (integrations.distributed's gathered rows) replaces them."""
        return [] if self.buf is None or not self.kept else [self.buf[: self.kept]]

    @rows.setter
    def rows(self, value: list[torch.Tensor]) -> None:
        value = list(value)
        x = None if not value else torch.cat(value) if len(value) > 1 else value[0]
        self.buf, self.kept = x, 0 if x is None else int(x.shape[0])
        self.seen = max(self.seen, self.kept)
