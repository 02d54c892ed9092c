"""Any sweep can be read: the chapter-5 study's figures for a user's own grid (``depthscope sweep``).

A sweep stores its runs under its name with its resolved config in the store's
meta (``sweep:NAME``, :func:`depthscope.sweep.run_sweep`); no experiment module
defines that name, so :func:`user_sweeps` gives the report an adapter for each
such sweep. :func:`sweep_figures` draws, from the store only and for whatever
axes the grid holds (the computations are :mod:`.chapter5`'s, reused):

* success probability over depth x learning rate, one figure per (optimizer,
  width), one panel per (activation, init) - thesis Fig. 5.1-5.4's layout;
* the final output-layer VNI of failed vs successful runs - Fig. 5.7's, with the
  thesis' claim (failed runs end with VNI near 1) judged on these runs;
* how the failed runs failed (:func:`depthscope.train.failure_kind`), per
  (optimizer, activation, init);
* sigma_w^2 mu_1 per layer of successful and failed runs - Fig. 5.5/5.6's;
* ``NAME-runs.csv``: one row per run, one column per spec field, then seed,
  status, reason, success, failure, the output VNI, the last training accuracy, the steps and
  ``early_stop_epoch`` (the epoch after which the early-stop policy stopped the run; empty
  otherwise; a sweep under a policy also has its ``early_stop_vni``/``early_stop_epochs`` columns).

Runs stored as ``error`` (the code crashed) are not results and appear nowhere.
"""
from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import numpy as np

from ..store import Store
from .base import FigureResult
from .chapter5 import (
    KINDS,
    OPTIMIZER_TITLES,
    _layer_bins,
    _save,
    collect_runs,
    failure_counts,
    failure_line,
    log10_gain,
    success_panels,
    trend,
    vni_claim,
    vni_stats,
)

#: what a run's row holds besides its spec fields, in the CSV
RUN_COLUMNS = ("seed", "status", "reason", "success", "failure", "vni_out", "final_accuracy", "steps",
               "early_stop_epoch")
#: fields of a run read as the grid's axes (one figure / panel / axis each)
_NOT_SPEC = {"seed", "status", "reason", "success", "diverged", "steps", "vni", "sigma", "acc", "vni_out",
             "failure", "stopped"}


class UserSweep:
    """The report's view of one stored sweep: quacks like an :class:`~.base.Experiment` (name, title,
    reproduces, presets, figures) without being one, so the registry never lists it."""

    def __init__(self, name: str, config: dict):
        self.name = name
        self.title = "Your sweep: success over depth x learning rate, and why runs fail"
        self.reproduces = "the study of thesis ch. 5 (Fig. 5.1-5.7) on this grid"
        self.presets = {"sweep": dict(config)}

    def figures(self, store: Store, outdir: Path, params: dict) -> list[FigureResult]:
        return sweep_figures(store, self.name, outdir)


def is_sweep(store: Store, experiment: str) -> bool:
    """Was ``experiment`` written by ``depthscope sweep`` / :func:`~depthscope.sweep.run_sweep`?"""
    return isinstance(store.get_meta(f"sweep:{experiment}"), dict)


def user_sweeps(store: Store, names: list[str]) -> dict[str, UserSweep]:
    """An adapter for each of ``names`` (experiments no module defines) that is a stored sweep."""
    return {n: UserSweep(n, store.get_meta(f"sweep:{n}")) for n in names if is_sweep(store, n)}


def _file_stem(name: str) -> str:
    """A file-name-safe version of an experiment name (a name never becomes a path)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".") or "sweep"


def _values(runs: list[dict], field: str) -> list:
    return sorted({r[field] for r in runs if r.get(field) is not None})


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def spec_fields(runs: list[dict]) -> list[str]:
    """Every spec field the runs carry (the union, sorted), e.g. depth, lr, optimizer, width, ..."""
    return sorted({k for r in runs for k in r} - _NOT_SPEC)


def write_runs_csv(runs: list[dict], path: Path) -> Path:
    """``path``: one row per run, a column per spec field then :data:`RUN_COLUMNS`."""
    cols = spec_fields(runs)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + list(RUN_COLUMNS))
        for r in sorted(runs, key=lambda r: tuple(str(r.get(c)) for c in cols) + (r["seed"],)):
            acc = r["acc"][-1] if r["acc"] else ""
            w.writerow([r.get(c, "") for c in cols] + [r["seed"], r["status"], r["reason"] or "",
                                                       int(bool(r["success"])), r["failure"] or "",
                                                       r["vni_out"], acc, "" if r["steps"] is None else r["steps"],
                                                       "" if r.get("stopped") is None else r["stopped"]])
    return path


def sweep_figures(store: Store, experiment: str, outdir: Path) -> list[FigureResult]:
    """The study's figures of the stored sweep ``experiment`` (see the module docstring), from the store only."""
    runs = collect_runs(store, experiment)
    if not runs:
        warnings.warn(f"{experiment}: no finished runs in the store; no figure drawn", stacklevel=2)
        return []
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(experiment)
    cmd = f"depthscope report {store.run_dir}"
    csv_path = write_runs_csv(runs, outdir / f"{stem}-runs.csv")
    about = _about(runs)
    figs: list[FigureResult | None] = []
    for opt in _values(runs, "optimizer"):
        for width in _values(runs, "width"):
            sub = [r for r in runs if r["optimizer"] == opt and r["width"] == width]
            if sub:
                figs.append(success_figure(sub, experiment, stem, opt, width, outdir, cmd, about))
    figs.append(vni_figure(runs, experiment, stem, outdir, cmd, about))
    figs.append(failure_figure(runs, experiment, stem, outdir, cmd, about, csv_path))
    figs.append(sigma_figure(runs, experiment, stem, outdir, cmd, about))
    out = [f for f in figs if f is not None]
    if out:
        out[0].paths.append(csv_path)
    return out


def _about(runs: list[dict]) -> str:
    """The grid in one sentence: every axis with its values, and the protocol fields that do not vary."""
    parts = []
    for f in spec_fields(runs):
        vals = _values(runs, f)
        if f == "max_epochs":
            parts.append(f"epochs {', '.join(map(_fmt, vals))}")
        elif vals:
            parts.append(f"{f} {', '.join(map(_fmt, vals))}")
    seeds = _values(runs, "seed")
    return f"{len(runs)} runs; " + "; ".join(parts) + f"; {len(seeds)} seed{'s' * (len(seeds) != 1)}"


def success_figure(runs, experiment, stem, opt, width, outdir, cmd, about) -> FigureResult:
    """P(success) over depth x learning rate, one panel per (activation, init) the grid holds."""
    from matplotlib.figure import Figure

    depths, lrs = _values(runs, "depth"), _values(runs, "lr")
    combos = [(a, i) for a in _values(runs, "activation") for i in _values(runs, "init")
              if any(r["activation"] == a and r["init"] == i for r in runs)]
    ncol = 2 if len(combos) > 1 else 1
    nrow = math.ceil(len(combos) / ncol)
    fig = Figure(figsize=(max(4.2, 0.5 * len(lrs) + 2.4) * ncol, max(3.2, 0.3 * len(depths) + 2) * nrow),
                 layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    success_panels(fig, axes, runs, combos, depths, lrs,
                   annotate=len(depths) * len(lrs) <= 144)  # small grids: the numbers themselves
    title = f"{OPTIMIZER_TITLES.get(opt, opt)}, width {width}"
    fig.suptitle(f"{experiment}: probability of successful training ({title})")
    name = f"{stem}-success-{_file_stem(opt)}-w{width}"
    paths = _save(fig, outdir, name)
    ds, ps_d = trend(runs, "depth")
    ls, ps_l = trend(runs, "lr")
    best = int(np.argmax(ps_l))
    verdict = (f"{title}: P(success) {ps_d[0]:.2f} at depth {ds[0]}" +
               (f", {ps_d[-1]:.2f} at depth {ds[-1]}" if len(ds) > 1 else "") +
               f"; best learning rate {ls[best]:.3g} ({ps_l[best]:.2f})" +
               (f", largest {ls[-1]:.3g} ({ps_l[-1]:.2f})" if len(ls) > 1 and best != len(ls) - 1 else "") +
               ". The thesis' figures fall with depth and at large rates; this grid is judged by you.")
    caption = (f"Fraction of seeds reaching the target per depth x learning rate (black = 0), one panel per "
               f"activation x init of the grid. {about}. Every run: {stem}-runs.csv (one column per spec field).")
    return FigureResult(name, f"{experiment}: probability of success, {title}", paths, cmd,
                        "thesis Fig. 5.1-5.4 (layout)", verdict, caption, None)


def vni_figure(runs, experiment, stem, outdir, cmd, about) -> FigureResult | None:
    """Histogram of the final output-layer VNI of failed and successful runs, judged by :func:`vni_claim`."""
    from matplotlib.figure import Figure

    failed = np.array([r["vni_out"] for r in runs if not r["success"]], dtype=float)
    succ = np.array([r["vni_out"] for r in runs if r["success"]], dtype=float)
    failed, succ = failed[np.isfinite(failed)], succ[np.isfinite(succ)]
    if failed.size == 0 and succ.size == 0:
        warnings.warn(f"{experiment}: no final VNI in the store; no VNI figure", stacklevel=2)
        return None
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41)
    parts = []
    for v, label, color in ((failed, "failed", "tab:blue"), (succ, "successful", "tab:orange")):
        if v.size:
            mn, mx, mean, std = vni_stats(v)
            ax.hist(v, bins=bins, alpha=0.6, color=color, label=f"{label} ({v.size})")
            parts.append(f"{label}: {mn:.4f}-{mx:.4f}, mean {mean:.4f}, std {std:.4f}")
        else:
            parts.append(f"{label}: none")
    ax.set_xlabel(r"VNI $R_{sq}$ of the output layer (after training)")
    ax.set_ylabel("runs")
    ax.legend()
    ax.set_title(f"{experiment}: output-layer VNI of failed vs successful runs", fontsize=10)
    name = f"{stem}-vni"
    paths = _save(fig, outdir, name)
    claim, agrees = vni_claim(runs)
    caption = (f"Final VNI (eq. 3.5) of the last hidden layer on the probe batch, failed (blue) vs successful "
               f"(orange) runs; runs without a finite VNI (diverged, dead) are left out. {about}.")
    return FigureResult(name, f"{experiment}: VNI of failed vs successful runs", paths, cmd, "thesis Fig. 5.7",
                        "; ".join(parts) + f". {claim}", caption, agrees)


def failure_figure(runs, experiment, stem, outdir, cmd, about, csv_path: Path) -> FigureResult:
    """Runs per (optimizer, activation, init): successful, then failed by kind (stacked bars)."""
    from matplotlib.figure import Figure

    cells = sorted({(r["optimizer"], r["activation"], r["init"]) for r in runs})
    kinds = [k for k, v in failure_counts(runs).items() if v]
    fig = Figure(figsize=(max(5.0, 1.1 * len(cells) + 2.5), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(cells))
    bottom = np.zeros(len(cells))
    colors = dict(zip(("success",) + KINDS, ("tab:green", "tab:red", "tab:purple", "black", "tab:orange",
                                              "tab:gray", "tab:brown")))
    by_cell = [[r for r in runs if (r["optimizer"], r["activation"], r["init"]) == c] for c in cells]
    succ = np.array([sum(bool(r["success"]) for r in rs) for rs in by_cell], dtype=float)
    ax.bar(x, succ, color=colors["success"], label="successful")
    bottom += succ
    for k in kinds:
        n = np.array([failure_counts(rs)[k] for rs in by_cell], dtype=float)
        ax.bar(x, n, bottom=bottom, color=colors.get(k, "tab:gray"), label=k)
        bottom += n
    ax.set_xticks(x, [f"{o}\n{a}\n{i}" for o, a, i in cells], fontsize=7)
    ax.set_ylabel("runs")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{experiment}: how runs ended", fontsize=10)
    name = f"{stem}-failures"
    paths = _save(fig, outdir, name)
    n_fail = sum(not r["success"] for r in runs)
    verdict = f"{len(runs) - n_fail} of {len(runs)} runs reached the target; {failure_line(runs)}."
    caption = (f"Runs per optimizer x activation x init: successful (green), then the failed ones by kind "
               f"(depthscope.train.failure_kind: diverged = non-finite loss; collapsed = output VNI > 0.9; dead = "
               f"output nodes constant; slow = still learning at the end; stuck = the rest). {about}. Every run "
               f"with its spec fields: {csv_path.name}.")
    return FigureResult(name, f"{experiment}: failure kinds", paths, cmd, "thesis Table 5.1 (kinds)", verdict,
                        caption, None)


def sigma_figure(runs, experiment, stem, outdir, cmd, about) -> FigureResult | None:
    """Box plots of sigma_w^2 mu_1 per layer (bins on deep nets), successful and failed runs side by side."""
    from matplotlib.figure import Figure

    groups = [(label, [r for r in runs if bool(r["success"]) == ok]) for label, ok in
              (("successful", True), ("failed", False))]
    edges = _layer_bins(max(r["depth"] for r in runs))
    panels = []
    for label, sub in groups:
        boxes, labels = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            vals = np.concatenate([r["sigma"][lo - 1:min(hi - 1, r["depth"])] for r in sub]) if sub else np.array([])
            vals = vals[np.isfinite(vals)]
            if vals.size:
                boxes.append(vals)
                labels.append(str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}")
        if boxes:
            panels.append((label, sub, boxes, labels))
    if not panels:
        warnings.warn(f"{experiment}: no sigma_w2_mu1 in the store; no sigma figure", stacklevel=2)
        return None
    fig = Figure(figsize=(max(6.0, 0.45 * max(len(p[2]) for p in panels)) * len(panels) / 1.4, 3.6),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    parts = []
    for ax, (label, sub, boxes, labels) in zip(axes, panels):
        ax.boxplot(boxes, whis=(5, 95), showfliers=False)
        ax.set_xticks(range(1, len(boxes) + 1), labels, rotation=60, fontsize=7)
        ax.axhline(1.0, color="tab:red", lw=0.8, ls="--")
        ax.set_xlabel("layer")
        ax.set_ylabel(r"$\sigma_w^2 \mu_1$")
        ax.set_title(f"{label} runs ({len(sub)})", fontsize=9)
        allv = np.concatenate(boxes)
        q1, med, q3 = np.percentile(allv, [25, 50, 75])
        gains = np.array([log10_gain(r) for r in sub])
        gains = gains[np.isfinite(gains)]
        gain = f", product over a run's layers median 10^{np.median(gains):.1f}" if gains.size else ""
        parts.append(f"{label}: median {med:.3f} (IQR {q1:.3f}-{q3:.3f}){gain}")
    fig.suptitle(f"{experiment}: " + r"$\sigma_w^2 \mu_1$ per layer (final weights)")
    name = f"{stem}-sigma"
    paths = _save(fig, outdir, name)
    verdict = "sigma_w^2 mu_1 per layer, " + "; ".join(parts) + " (thesis: near 1 in both)."
    caption = (f"Box: quartiles, whiskers: 5th-95th percentile of sigma_w^2 mu_1 (final weights) per layer"
               f"{' bin' if len(edges) - 1 < max(r['depth'] for r in runs) else ''}; its product over the layers is "
               f"eq. 4.4's gradient factor. {about}.")
    return FigureResult(name, f"{experiment}: sigma_w^2 mu_1 per layer", paths, cmd, "thesis Fig. 5.5/5.6", verdict,
                        caption, None)
