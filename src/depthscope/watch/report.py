"""The figure of a watch run: one quantity per watched module over steps, drawn from the store only."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from .quantities import QUANTITIES
from .writers import EXPERIMENT, RUN_NAME, check_run_name

logger = logging.getLogger("depthscope.watch")

#: Quantities bounded in [0, 1]: drawn on that fixed linear scale.
_UNIT_RANGE = ("vni", "vni_debiased")


def _scale(values, quantity: str) -> dict:
    """imshow arguments: [0, 1] for VNI, a log colour scale for a positive quantity spanning more than
    two decades, else linear."""
    import numpy as np
    from matplotlib.colors import LogNorm

    if quantity in _UNIT_RANGE:
        return dict(vmin=0.0, vmax=1.0, cmap="magma")
    v = values[np.isfinite(values)]
    if v.size and (v > 0).all() and v.max() / v.min() > 100:
        return dict(norm=LogNorm(vmin=float(v.min()), vmax=float(v.max())), cmap="viridis")
    return dict(cmap="viridis")


def watch_report(run_dir: str | os.PathLike, *, run: str | None = None, quantity: str = "vni",
                 outdir: str | os.PathLike | None = None) -> list[Path]:
    """Draw ``quantity`` per watched module over steps (heatmap: modules x steps) from a run's store.

    One PNG and one SVG per watch run (``watch_<quantity>_<run>.png``) in ``outdir``
    (default ``run_dir``). Reads only the store. A stored run whose name is not a valid
    run name (an older store) is skipped with a warning, the others are drawn; every
    written path is checked to lie inside ``outdir``. Returns the written paths.
    """
    import numpy as np
    from matplotlib.figure import Figure

    from ..store import Store

    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of: {', '.join(QUANTITIES)}")
    if run is not None:
        check_run_name(run)
    store = Store(run_dir, create=False)
    try:
        runs = store.get_meta("watch/runs", [])
        if not runs:
            raise ValueError(f"{run_dir} holds no depthscope.watch run (watch(model, run_dir=...) writes one)")
        if run is not None:
            if run not in runs:
                raise ValueError(f"unknown watch run {run!r}; this store holds: {', '.join(map(str, runs))}")
            runs = [run]
        outdir = Path(outdir) if outdir is not None else Path(run_dir)
        if outdir.exists() and not outdir.is_dir():
            raise ValueError(f"--out {outdir} is a file, not a directory")
        outdir.mkdir(parents=True, exist_ok=True)
        root = outdir.resolve()
        paths: list[Path] = []
        rows = store.rows(EXPERIMENT, quantity)
        for rn in runs:
            if not (isinstance(rn, str) and RUN_NAME.fullmatch(rn)):
                logger.warning("depthscope.watch: stored run name %r is not a valid run name; skipped", rn)
                continue
            stem = outdir / f"watch_{quantity}_{rn}"
            if stem.resolve().parent != root:  # cannot happen for a valid name: the last line of defence
                logger.warning("depthscope.watch: run %r would write outside %s; skipped", rn, outdir)
                continue
            names = store.get_meta(f"watch/{rn}/layers", [])
            mine = [r for r in rows if r.get("run") == rn]
            if not mine:
                logger.warning("depthscope.watch: run %r has no %s rows; skipped", rn, quantity)
                continue
            steps = sorted({r["step"] for r in mine})
            col = {s: i for i, s in enumerate(steps)}
            n_layers = max(len(names), max(r["layer"] for r in mine))
            grid = np.full((n_layers, len(steps)), np.nan)
            for r in mine:
                grid[r["layer"] - 1, col[r["step"]]] = r["value"]
            fig = Figure(figsize=(min(5 + 0.12 * len(steps), 16), min(2 + 0.28 * n_layers, 30)))
            ax = fig.add_subplot()
            kw = _scale(grid, quantity)
            im = ax.imshow(grid, aspect="auto", interpolation="nearest", origin="upper", **kw)
            log = "norm" in kw
            fig.colorbar(im, ax=ax, label=f"{quantity} (log scale)" if log else quantity)
            labels = [f"{i + 1} {names[i]}" if i < len(names) else str(i + 1) for i in range(n_layers)]
            ax.set_yticks(range(n_layers), labels, fontsize=7 if n_layers > 20 else 9)
            ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 10)).round().astype(int))
            ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
            ax.set_xlabel("training step")
            ax.set_ylabel("watched module (layer number and full name)")
            ax.set_title(f"depthscope.watch: {quantity} per module over steps (run {rn})")
            fig.tight_layout()
            for ext in ("png", "svg"):
                fig.savefig(f"{stem}.{ext}", dpi=120)
                paths.append(Path(f"{stem}.{ext}"))
        return paths
    finally:
        store.close()
