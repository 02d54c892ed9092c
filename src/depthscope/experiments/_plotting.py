"""Small shared helpers for the issue-4 experiments' figures (not an experiment module)."""
from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict
from pathlib import Path
from statistics import median

from matplotlib.figure import Figure


def save(fig: Figure, outdir: Path, name: str) -> list[Path]:
    """Save ``fig`` as outdir/name.png (110 dpi) and .svg; returns [png, svg]."""
    from ..report import save_figure

    return save_figure(fig, outdir, name, dpi=110)


def missing(experiment: str, what: str) -> list:
    """Warn that a figure is skipped because the store lacks its data; returns []."""
    warnings.warn(f"{experiment}: no {what} in the store; figure skipped (run `depthscope reproduce "
                  f"{experiment}` first)", stacklevel=2)
    return []


def group(rows: list[dict], *fields: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r.get(f) for f in fields)].append(r)
    return dict(out)


def per_layer_median(rows: list[dict]) -> tuple[list[int], list[float]]:
    """Layers (sorted) and the median value over rows at each layer."""
    by = group(rows, "layer")
    layers = sorted(k[0] for k in by if k[0] is not None)
    return layers, [median(r["value"] for r in by[(l,)]) for l in layers]


@contextlib.contextmanager
def threads(n: int = 1):
    """Run a block with torch using ``n`` intra-op threads, restoring the previous setting after.

    The issue-4 nets are small (width <= a few hundred): on a shared 2-core machine one
    thread is several times faster than two fighting over the cores.
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
