"""Thesis chapter 5: how often does training fail, and why (Fig. 5.1-5.7, Table 5.1).

Every (optimizer, activation, init, depth, learning rate, seed) is one training
run on MNIST, trained with the sweep engine (batched ensembles, resumable) into
experiment ``fig5``. Success = training accuracy >= target within ``epochs``
epochs. The figures read only the store:

* Fig. 5.1-5.4: success probability over depth x learning rate, one figure per
  optimizer, one panel per activation x init (black = 0, as in the thesis);
* Table 5.1: failure / success counts beside the thesis' counts;
* Fig. 5.5 / 5.6: box plots of sigma_w^2 mu_1 per layer position for successful
  and failed runs (gradients bounded when near 1);
* Fig. 5.7: histograms of the output layer's final VNI for failed and successful
  runs, with min / mean / std as the thesis reports them, and the thesis' claim
  (failed runs end with VNI near 1, gradients bounded) judged on how the failed
  runs failed (:func:`depthscope.train.failure_kind`: diverged, collapsed, dead,
  slow, stuck; Table 5.1 counts them).

The ``quick`` preset is a miniature of that protocol (docs/sweeps.md says why):
width 64, depths 8-64, three learning rates per optimizer that lie inside the
thesis' axis once mapped back to width 500 (lr x 64/500; SGD: the thesis' top
decade 1e-3..1e-2), 90 % within 30 epochs of 1000 images: 384 runs. Table 5.1 is
compared cell by cell (:func:`table_cells`).

The ``paper`` preset is the thesis' protocol (section 5.1): width 500, depth 25-500
and learning rate log-uniform (11 x 9 points; Adam/RMSProp two decades lower, as
the thesis' Fig. 5.3/5.4 axes), 20 seeds, batch 100, 100 epochs, 90 %: 31,680 runs.

``early_stop`` (both presets: ``"off"``, the thesis' protocol: every failed run trains to its budget)
takes ``"VNI:EPOCHS"`` (:mod:`depthscope.earlystop`; ``--set early_stop=0.99:5``) for exploration: runs
under a policy are other units (their spec carries it), the figures of a policy-off run never read
them, and the figures of a policy-on run say in every caption how many failed runs the policy stopped.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..earlystop import STOP_QUANTITY, parse_early_stop
from ..store import Store
from ..sweep import DataSpec, SweepSpec, execute, expand, stored_spec
from ..train import COLLAPSE_VNI, FAILURE_KINDS, failure_kind
from ._needs import require_if_pending
from .base import Claim, Experiment, FigureResult, RunContext, WorkUnit, judge

#: thesis Table 5.1: (optimizer, activation, init) -> (failures, successes)
THESIS_TABLE_5_1 = {
    ("sgd", "tanh", "gaussian"): (712, 1268), ("sgd", "relu", "gaussian"): (1775, 205),
    ("sgd", "tanh", "orthogonal"): (62, 1918), ("sgd", "relu", "orthogonal"): (882, 1098),
    ("momentum", "tanh", "gaussian"): (982, 998), ("momentum", "relu", "gaussian"): (1140, 840),
    ("momentum", "tanh", "orthogonal"): (546, 1434), ("momentum", "relu", "orthogonal"): (1044, 936),
    ("adam", "tanh", "gaussian"): (609, 1371), ("adam", "relu", "gaussian"): (723, 1257),
    ("adam", "tanh", "orthogonal"): (354, 1626), ("adam", "relu", "orthogonal"): (1465, 515),
    ("rmsprop", "tanh", "gaussian"): (763, 1217), ("rmsprop", "relu", "gaussian"): (827, 1153),
    ("rmsprop", "tanh", "orthogonal"): (453, 1527), ("rmsprop", "relu", "orthogonal"): (764, 1216),
}
#: thesis section 5.2: output VNI of trained nets, (min, max, mean, std)
THESIS_VNI_FAILED = (0.9029, 1.0, 0.9949, 0.0481)
THESIS_VNI_SUCCESS = (0.1224, 0.9865, 0.3207, 0.1690)
OPTIMIZER_TITLES = {"sgd": "SGD", "momentum": "SGD + momentum 0.9", "adam": "Adam", "rmsprop": "RMSProp"}
FIG_OF_OPTIMIZER = {"sgd": "fig5.1", "momentum": "fig5.2", "adam": "fig5.3", "rmsprop": "fig5.4"}

# names of the engine's measurements (RunResult.to_values())
Q_SUCCESS = "success"
Q_VNI = "vni_final"  # final VNI per layer
Q_SIGMA = "sigma_w2_mu1"  # final sigma_w^2 mu_1 per layer
Q_ACC = "train_accuracy"  # per epoch (step = epoch)
Q_DIVERGED = "diverged"
Q_STEPS = "steps"  # updates the run took
#: how a failed run failed (train.failure_kind), plus "crashed" for a group whose trainer raised
KINDS = FAILURE_KINDS + ("crashed",)

_PAPER_LRS = {"sgd": "1e-4:1e-2:9", "momentum": "1e-4:1e-2:9", "adam": "1e-6:1e-4:9", "rmsprop": "1e-6:1e-4:9"}
#: The thesis' learning-rate axis per optimizer at width 500, (low, high): Fig. 5.1-5.4.
THESIS_LR_RANGE = {"sgd": (1e-4, 1e-2), "momentum": (1e-4, 1e-2), "adam": (1e-6, 1e-4), "rmsprop": (1e-6, 1e-4)}
#: The thesis' width: learning rates of a width-N preset map back to it as lr x N / 500 (see width_lr).
THESIS_WIDTH = 500
# The quick axis (docs/sweeps.md, "The fig5 quick grid"): 3 points per optimizer, each inside the thesis'
# range once mapped back to width 500 with lr x N/500 (the preset's rule: lr x 500/N keeps the per-update
# change of the pre-activations when the width changes). SGD: the thesis' top decade 1e-3..1e-2 (where its
# failures are) -> x 500/64 = 7.8125; momentum half a decade lower (10^-3.5..10^-2.5), Adam / RMSProp two
# decades lower (1e-5..1e-4), as the thesis' own axes are offset.
_QUICK_LRS = {"sgd": "7.8125e-3:7.8125e-2:3", "momentum": "2.4705e-3:2.4705e-2:3",
              "adam": "7.8125e-5:7.8125e-4:3", "rmsprop": "7.8125e-5:7.8125e-4:3"}


def width_lr(lr: float, width: int, to_width: int = THESIS_WIDTH) -> float:
    """A learning rate at ``width`` expressed at ``to_width``: lr x width / to_width (the inverse of the
    presets' lr x 500/N rule, which keeps lr x N, the per-update change of a pre-activation, fixed)."""
    return lr * width / to_width


class Chapter5(Experiment):
    name = "fig5"
    title = "Failed training: success probability over depth x learning rate, and why runs fail"
    reproduces = "thesis Fig. 5.1-5.7 and Table 5.1"
    presets = {
        "quick": {
            "depths": [8, 16, 32, 64], "width": 64, "lrs": dict(_QUICK_LRS),
            "optimizers": ["sgd", "momentum", "adam", "rmsprop"], "activations": ["tanh", "relu"],
            "inits": ["gaussian", "orthogonal"], "seeds": 2, "dataset": "mnist", "split": "any", "n_train": 1000,
            "epochs": 30, "batch_size": 100, "target_accuracy": 0.9, "group_size": 64, "probe_size": 500,
            "vni_dense_steps": 0, "backend": "local", "workers": 0, "early_stop": "off",
        },
        "paper": {
            "depths": "25:500:11", "width": 500, "lrs": dict(_PAPER_LRS),
            "optimizers": ["sgd", "momentum", "adam", "rmsprop"], "activations": ["tanh", "relu"],
            "inits": ["gaussian", "orthogonal"], "seeds": 20, "dataset": "mnist", "split": "train",
            "n_train": None, "epochs": 100, "batch_size": 100, "target_accuracy": 0.9, "group_size": 32,
            "probe_size": 1000, "vni_dense_steps": 0, "backend": "local", "workers": 0, "early_stop": "off",
        },
    }

    # -- the runs --------------------------------------------------------------
    def sweeps(self, params: dict) -> list[SweepSpec]:
        """One SweepSpec per optimizer (each has its own learning-rate axis)."""
        lrs = params["lrs"]
        out = []
        for opt in params["optimizers"]:
            if isinstance(lrs, dict) and opt not in lrs:
                raise ValueError(f"lrs has no entry for optimizer {opt!r}; it has: {', '.join(lrs)}")
            opt_lrs = lrs[opt] if isinstance(lrs, dict) else lrs
            out.append(SweepSpec(
                name=self.name, depths=params["depths"], widths=[params["width"]], lrs=opt_lrs, optimizers=[opt],
                activations=params["activations"], inits=params["inits"], seeds=params["seeds"],
                dataset=params["dataset"], split=params["split"], n_train=params["n_train"],
                epochs=params["epochs"], batch_size=params["batch_size"],
                target_accuracy=params["target_accuracy"], group_size=params["group_size"],
                probe_size=params["probe_size"], vni_dense_steps=params["vni_dense_steps"],
                early_stop=params.get("early_stop")))
        return out

    def units(self, params: dict) -> list[WorkUnit]:
        out = []
        for sw in self.sweeps(params):
            for r in expand(sw):
                spec, seed = stored_spec(r, sw.data)
                out.append(WorkUnit(spec, seed))
        return out

    def run(self, ctx: RunContext) -> dict:
        p = ctx.params
        if p["dataset"] != "synthetic":
            require_if_pending(self, ctx, p["dataset"], p["split"])
        sweeps = self.sweeps(p)
        # one execute over every optimizer's runs: one progress bar over all of them (not one per optimizer
        # restarting at 1/96), and longest-first scheduling across the whole grid; the sweeps share data
        runs = [r for sw in sweeps for r in expand(sw)]
        s = execute(runs, ctx.store, self.name, sweeps[0].data, backend=p["backend"], workers=p["workers"] or None,
                    device=ctx.device, group_size=p["group_size"], data_dir=ctx.data_dir, quiet=ctx.quiet)
        return {k: getattr(s, k) for k in ("total", "skipped", "ran", "failed")}

    # -- figures -------------------------------------------------------------
    def figures(self, store: Store, outdir: Path, params: dict) -> list[FigureResult]:
        policy = parse_early_stop(params.get("early_stop"))
        # only the runs of this policy (off: the thesis' protocol, no stopped run among them)
        stop_fields = policy.spec_fields() if policy else dict.fromkeys(("early_stop_vni", "early_stop_epochs"))
        runs = in_grid(collect_runs(store, self.name, width=params["width"], max_epochs=params["epochs"],
                                    **stop_fields), self.sweeps(params))
        if not runs:
            warnings.warn(f"{self.name}: no runs in the store for width {params['width']}; skipping its figures",
                          stacklevel=2)
            return []
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        cmd = "depthscope reproduce fig5 --preset " + ("paper" if params["width"] == 500 else "quick")
        protocol = protocol_text(params)
        if policy is not None:
            n_stop = sum(r["stopped"] is not None for r in runs)
            protocol += (f"; early stop ON (not the thesis' protocol): {policy.text()}; {n_stop} of the "
                         f"{sum(not r['success'] for r in runs)} failed runs were stopped by it before their budget")
        figs = []
        for opt in params["optimizers"]:
            sub = [r for r in runs if r["optimizer"] == opt]
            if sub:
                figs.append(success_figure(sub, opt, params, outdir, cmd, protocol))
        figs.append(table_figure(runs, params, outdir, cmd, protocol))
        figs.extend(sigma_figures(runs, outdir, cmd, protocol))
        figs.append(vni_histogram_figure(runs, outdir, cmd, protocol))
        return [f for f in figs if f is not None]


def in_grid(runs: list[dict], sweeps: list[SweepSpec]) -> list[dict]:
    """The runs whose (optimizer, depth, lr) lie on the preset's grid: a store that also holds an older grid
    (e.g. the quick preset's previous learning rates) is drawn and judged on the current one only."""
    axes = {}
    for sw in sweeps:
        for r in expand(sw):
            axes.setdefault((r.optimizer, r.depth), []).append(r.lr)
    return [r for r in runs if any(math.isclose(r["lr"], lr, rel_tol=1e-6)
                                   for lr in axes.get((r["optimizer"], r["depth"]), ()))]


def protocol_text(params: dict) -> str:
    n = "all" if params["n_train"] is None else str(params["n_train"])
    return (f"{params['dataset']} ({n} training images, split '{params['split']}'), width {params['width']}, "
            f"depths {params['depths']}, {params['seeds']} seeds, batch {params['batch_size']}, "
            f"success = train accuracy >= {params['target_accuracy']:.0%} within {params['epochs']} epochs")


def collect_runs(store: Store, experiment: str, **where) -> list[dict]:
    """One dict per stored run: its spec fields, seed, status, success (0/1), the output layer's final
    VNI, the per-layer sigma_w^2 mu_1 (arrays indexed by layer - 1), the training accuracy per epoch
    (``acc``), ``stopped`` (the epoch after which the early-stop policy stopped it, else None) and
    ``failure``: :func:`depthscope.train.failure_kind` of these stored numbers (None for a successful run;
    "crashed" for a run whose group's trainer raised)."""
    units = {u.key: u for u in store.units(experiment)}
    runs: dict[str, dict] = {}
    for key, u in units.items():
        if u.status == "error":  # the code crashed: not a result, in no statistic (retried by the next run)
            continue
        if all(u.spec.get(k) == v for k, v in where.items()):
            runs[key] = dict(u.spec, seed=u.seed, status=u.status, reason=u.reason, success=0.0, diverged=False,
                             steps=None, stopped=None,
                             vni=np.full(u.spec["depth"], np.nan), sigma=np.full(u.spec["depth"], np.nan),
                             acc={})
    for q in (Q_SUCCESS, Q_VNI, Q_SIGMA, Q_ACC, Q_DIVERGED, Q_STEPS, STOP_QUANTITY):
        for row in store.rows(experiment, q):
            r = runs.get(row["key"])
            if r is None:
                continue
            if q == Q_SUCCESS:
                r["success"] = float(row["value"] >= 0.5 and r["status"] == "done")
            elif q == Q_DIVERGED:
                r["diverged"] = bool(row["value"] >= 0.5)
            elif q == Q_STEPS:
                r["steps"] = int(row["value"])
            elif q == STOP_QUANTITY:
                r["stopped"] = int(row["value"])
            elif q == Q_ACC:
                if row["step"] is not None:
                    r["acc"][row["step"]] = row["value"]
            elif row["layer"] is not None and row["step"] is None and 1 <= row["layer"] <= r["depth"]:
                (r["vni"] if q == Q_VNI else r["sigma"])[row["layer"] - 1] = row["value"]
    for r in runs.values():
        r["vni_out"] = float(r["vni"][-1])
        r["acc"] = [r["acc"][e] for e in sorted(r["acc"])]
        if r["status"] == "failed" and not r["diverged"]:
            r["failure"] = "crashed"
        else:
            r["failure"] = failure_kind(bool(r["success"]), r["diverged"], r["vni_out"], r["acc"])
    return list(runs.values())


def failure_counts(runs: list[dict]) -> dict[str, int]:
    """Failed runs per failure kind (every kind of :data:`KINDS`, zeros included)."""
    out = {k: 0 for k in KINDS}
    for r in runs:
        if r["failure"] is not None:
            out[r["failure"]] += 1
    return out


def step_use(runs: list[dict], steps_per_epoch: int) -> dict:
    """How much of the budget the runs used: ``share`` = sum of the updates taken / (runs x max_epochs x
    steps_per_epoch) over runs with a stored step count, ``failed_share`` = the failed runs' part of the
    updates taken, and the successful runs' epoch of success (``median_epoch``, ``p90_epoch``)."""
    counted = [r for r in runs if r.get("steps") is not None]
    taken = sum(r["steps"] for r in counted)
    budget = sum(r["max_epochs"] * steps_per_epoch for r in counted)
    eos = [len(r["acc"]) for r in runs if r["success"] and r["acc"]]
    return {"share": taken / budget if budget else float("nan"),
            "failed_share": sum(r["steps"] for r in counted if not r["success"]) / taken if taken else float("nan"),
            "median_epoch": float(np.median(eos)) if eos else float("nan"),
            "p90_epoch": float(np.percentile(eos, 90)) if eos else float("nan")}


def failure_line(runs: list[dict]) -> str:
    """'N failed trainings: a collapsed (output VNI > 0.9), b slow, ...' (kinds with a count only)."""
    c = failure_counts(runs)
    n = sum(c.values())
    label = {"collapsed": f"collapsed (output VNI > {COLLAPSE_VNI})", "slow": "slow (still learning at the end)",
             "stuck": f"stuck (no progress, VNI <= {COLLAPSE_VNI})", "dead": "dead (output nodes constant)"}
    parts = [f"{v} {label.get(k, k)} ({100 * v / n:.0f}%)" for k, v in c.items() if v]
    return f"{n} failed training{'' if n == 1 else 's'} (below the target): " + (", ".join(parts) if parts else "none")


def failure_split(runs: list[dict], field: str = "activation") -> str:
    """'by activation: relu: 110 failed, 45% collapsed, output VNI mean 0.790; tanh: ...': per value of
    ``field``, the failed runs, the share of them that collapsed, and their mean final output VNI
    (finite values only: diverged and dead runs have none)."""
    parts = []
    for val in sorted({r[field] for r in runs}):
        failed = [r for r in runs if r[field] == val and r["failure"] is not None]
        if not failed:
            parts.append(f"{val}: none failed")
            continue
        share = 100 * sum(r["failure"] == "collapsed" for r in failed) / len(failed)
        v = np.array([r["vni_out"] for r in failed], dtype=float)
        v = v[np.isfinite(v)]
        mean = f", output VNI mean {v.mean():.3f}" if v.size else ""
        parts.append(f"{val}: {len(failed)} failed, {share:.0f}% collapsed{mean}")
    return f"by {field}: " + "; ".join(parts)


def _save(fig, outdir: Path, name: str) -> list[Path]:
    from ..report import save_figure

    return save_figure(fig, outdir, name, dpi=120)


def success_grid(runs: list[dict], depths: list[int], lrs: list[float]) -> np.ndarray:
    """P(success) on a depth x lr grid (NaN where no run)."""
    grid = np.full((len(depths), len(lrs)), np.nan)
    for i, d in enumerate(depths):
        for j, lr in enumerate(lrs):
            s = [r["success"] for r in runs if r["depth"] == d and math.isclose(r["lr"], lr, rel_tol=1e-9)]
            if s:
                grid[i, j] = float(np.mean(s))
    return grid


def trend(runs: list[dict], field: str) -> tuple[list, list[float]]:
    """Values of ``field`` (sorted) and the success rate at each."""
    vals = sorted({r[field] for r in runs})
    return vals, [float(np.mean([r["success"] for r in runs if r[field] == v])) for v in vals]


def success_panels(fig, axes, runs, combos, depths, lrs, *, annotate: bool = False) -> None:
    """One P(success) panel (depth x log10 lr) per (activation, init) in ``combos``, spare axes hidden, one
    colour bar; ``annotate`` writes each cell's value (readable on small grids only)."""
    im = None
    for ax, (act, init) in zip(axes.flat, combos):
        grid = success_grid([r for r in runs if r["activation"] == act and r["init"] == init], depths, lrs)
        im = ax.imshow(grid, origin="lower", cmap="gray", vmin=0, vmax=1, aspect="auto")
        if annotate:
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.5 else "white")
        ax.set_xticks(range(len(lrs)), [f"{math.log10(v):.2g}" for v in lrs], fontsize=7)
        ax.set_yticks(range(len(depths)), [str(d) for d in depths], fontsize=7)
        ax.set_xlabel("log10 learning rate")
        ax.set_ylabel("depth L")
        ax.set_title(f"{act}, {init} init", fontsize=9)
    for ax in list(axes.flat)[len(combos):]:
        ax.set_visible(False)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), label="P(success)")


def success_figure(runs, opt, params, outdir, cmd, protocol) -> FigureResult:
    from matplotlib.figure import Figure

    depths = sorted({r["depth"] for r in runs})
    lrs = sorted({r["lr"] for r in runs})
    combos = [(a, i) for a in params["activations"] for i in params["inits"]]
    ncol = 2 if len(combos) > 1 else 1
    nrow = math.ceil(len(combos) / ncol)
    fig = Figure(figsize=(4.2 * ncol, 3.6 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    success_panels(fig, axes, runs, combos, depths, lrs)
    fig.suptitle(f"Probability of successful training ({OPTIMIZER_TITLES[opt]})")
    name = FIG_OF_OPTIMIZER[opt]
    paths = _save(fig, outdir, name)
    ds, ps_d = trend(runs, "depth")
    ls, ps_l = trend(runs, "lr")
    falls_d = ps_d[-1] < ps_d[0]
    falls_l = ps_l[-1] < max(ps_l)
    verdict = (f"{OPTIMIZER_TITLES[opt]}: P(success) {ps_d[0]:.2f} at depth {ds[0]} vs {ps_d[-1]:.2f} at depth "
               f"{ds[-1]} ({'falls' if falls_d else 'does not fall'} with depth, as the thesis' does"
               f"{'' if falls_d else ' - not reproduced'}); {ps_l[-1]:.2f} at the largest lr {ls[-1]:.2g} vs "
               f"{max(ps_l):.2f} at the best lr ({'large lr fails more, as in the thesis' if falls_l else 'not reproduced'}).")
    caption = (f"Success probability (fraction of seeds reaching the target) per depth x learning rate; black = 0. "
               f"{protocol}. Thesis: MNIST, width 500, depth 25-500, 20 seeds, 100 epochs, 90%.")
    claim = Claim(f"{OPTIMIZER_TITLES[opt]}: success falls with depth and at large learning rates",
                  "falls with depth; large lr fails (a figure, no numbers)",
                  f"P(success) {ps_d[0]:.2f} at L={ds[0]} → {ps_d[-1]:.2f} at L={ds[-1]}; {ps_l[-1]:.2f} at lr "
                  f"{ls[-1]:.2g} vs {max(ps_l):.2f} at the best lr", scale_text(params),
                  judge(None, falls_d and falls_l), "a trend: the thesis gives the figure only")
    return FigureResult(name, f"Probability of success, {OPTIMIZER_TITLES[opt]}", paths, cmd,
                        f"thesis Fig. {name[3:]}", verdict, caption, falls_d and falls_l, claims=[claim])


def scale_text(params: dict) -> str:
    """'width 64, depths 8-64, 2 seeds, 30 epochs of 1000 images' (the verdict table's scale column)."""
    from ..sweep import parse_range

    ds = params["depths"]
    ds = parse_range(ds, integer=True) if isinstance(ds, str) else ds
    n = "all" if params["n_train"] is None else params["n_train"]
    return (f"width {params['width']}, depths {min(ds)}-{max(ds)}, {params['seeds']} seeds, "
            f"{params['epochs']} epochs of {n} images")


def table_counts(runs: list[dict]) -> dict[tuple, tuple[int, int]]:
    out: dict[tuple, list[int]] = {}
    for r in runs:
        c = out.setdefault((r["optimizer"], r["activation"], r["init"]), [0, 0])
        c[1 if r["success"] else 0] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


#: a Table 5.1 cell agrees when our failure rate is within this many binomial standard errors of the
#: thesis' rate (the standard error of a rate measured on our cell's number of runs)
CELL_SE = 2.0
#: the cell-by-cell claim's values agree when at least this share of the cells do
CELLS_AGREE = 0.8


def cell_agrees(failed: int, n: int, thesis_failed: int, thesis_n: int, k: float = CELL_SE) -> tuple[bool, float]:
    """(|ours - thesis| <= k * sqrt(p (1 - p) / n), that bound), p = the thesis' failure rate, n = our runs."""
    p = thesis_failed / thesis_n
    tol = k * math.sqrt(p * (1 - p) / n) if n else float("nan")
    return (n > 0 and abs(failed / n - p) <= tol), tol


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for x in np.unique(v):  # ties share their mean rank
            r[v == x] = r[v == x].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def table_cells(runs: list[dict], params: dict) -> list[dict]:
    """Table 5.1 cell by cell: per (optimizer, activation, init) our runs, failed trainings, failure rate,
    the thesis' rate, the difference, the tolerance (:func:`cell_agrees`) and the failure kinds."""
    counts = table_counts(runs)
    keys = [(o, a, i) for o in params["optimizers"] for i in params["inits"] for a in params["activations"]
            if (o, a, i) in counts]
    out = []
    for k in keys:
        f, ok = counts[k]
        tf, ts = THESIS_TABLE_5_1.get(k, (0, 0))
        n = f + ok
        agree, tol = cell_agrees(f, n, tf, tf + ts) if tf + ts else (False, float("nan"))
        kinds = failure_counts([r for r in runs if (r["optimizer"], r["activation"], r["init"]) == k])
        decided = f - kinds["slow"]  # slow runs were still learning when the budget ended: not yet decided
        out.append({"key": k, "runs": n, "failed": f, "rate": f / n if n else float("nan"),
                    "thesis_failed": tf, "thesis_runs": tf + ts,
                    "thesis_rate": tf / (tf + ts) if tf + ts else float("nan"), "tol": tol, "agrees": agree,
                    "decided": decided, "decided_rate": decided / n if n else float("nan"),
                    "decided_agrees": cell_agrees(decided, n, tf, tf + ts)[0] if tf + ts else False,
                    "kinds": kinds})
    return out


def cells_claim(cells: list[dict], scale: str) -> Claim:
    """Table 5.1 cell by cell: values agree when >= CELLS_AGREE of the cells are within tolerance; the trend
    when our rates rank the cells as the thesis' do (Spearman >= 0.5); else differs."""
    ok = sum(c["agrees"] for c in cells)
    rho = spearman([c["rate"] for c in cells], [c["thesis_rate"] for c in cells])
    values = bool(cells) and ok / len(cells) >= CELLS_AGREE
    trend = bool(np.isfinite(rho) and rho >= 0.5)
    nf, n = sum(c["failed"] for c in cells), sum(c["runs"] for c in cells)
    tf, tn = sum(c["thesis_failed"] for c in cells), sum(c["thesis_runs"] for c in cells)
    ok_decided = sum(c["decided_agrees"] for c in cells)
    rho_decided = spearman([c["decided_rate"] for c in cells], [c["thesis_rate"] for c in cells])
    return Claim("failure rate per optimizer x activation x init (Table 5.1, cell by cell)",
                 f"{100 * tf / max(tn, 1):.0f}% of {tn} runs failed; per cell "
                 f"{min(100 * c['thesis_rate'] for c in cells):.0f}-{max(100 * c['thesis_rate'] for c in cells):.0f}%",
                 f"{100 * nf / max(n, 1):.0f}% of {n} failed; {ok} of {len(cells)} cells within tolerance; rank "
                 f"correlation with the thesis' cells {rho:.2f}", scale, judge(values, trend),
                 f"tolerance: a cell agrees within {CELL_SE:g} binomial standard errors (the thesis' rate, our runs "
                 f"per cell); the values agree when {100 * CELLS_AGREE:.0f}% of the cells do; trend: rank "
                 "correlation >= 0.5. Scale: far fewer updates (epochs x images) and shallower, narrower nets than "
                 "the thesis; slow runs (still learning at the end) count as failed. Without them (runs still "
                 f"learning when the budget ended, not failed for the thesis' reasons) {ok_decided} of "
                 f"{len(cells)} cells agree, rank correlation {rho_decided:.2f}")


def table_html(cells: list[dict]) -> str:
    """Table 5.1 ours vs the thesis, one row per cell, as an HTML table for the report."""
    from .chapter3 import html_table

    kinds = [k for k in KINDS if any(c["kinds"][k] for c in cells)]
    header = (["optimizer", "activation", "init", "runs", "failed", "fail %", "thesis fail %", "difference",
               f"tolerance (±{CELL_SE:g} SE)", "agrees", "fail % without slow", "agrees without slow"] +
              [f"{k}" for k in kinds])
    rows, attrs = [], []
    for c in cells:
        o, a, i = c["key"]
        rows.append([OPTIMIZER_TITLES[o], a, i, c["runs"], c["failed"], f"{100 * c['rate']:.0f}",
                     f"{100 * c['thesis_rate']:.0f}", f"{100 * (c['rate'] - c['thesis_rate']):+.0f}",
                     f"±{100 * c['tol']:.0f}", "yes" if c["agrees"] else "no", f"{100 * c['decided_rate']:.0f}",
                     "yes" if c["decided_agrees"] else "no"] + [c["kinds"][k] for k in kinds])
        attrs.append(f'data-cell="{o}/{a}/{i}"')
    return html_table(header, rows, attrs)


def _cell_name(cell: dict) -> str:
    return f"{cell['key'][1]}+{cell['key'][2]}"


def table_figure(runs, params, outdir, cmd, protocol) -> FigureResult:
    cells = table_cells(runs, params)
    kinds = [k for k in KINDS if any(c["kinds"][k] for c in cells)]
    header = (["optimizer", "activation", "init", "failed", "success", "fail %"] + kinds +
              ["thesis failed", "thesis success", "thesis fail %"])
    rows = [[OPTIMIZER_TITLES[c["key"][0]], c["key"][1], c["key"][2], c["failed"], c["runs"] - c["failed"],
             f"{100 * c['rate']:.0f}"] + [c["kinds"][k] for k in kinds] +
            [c["thesis_failed"], c["thesis_runs"] - c["thesis_failed"], f"{100 * c['thesis_rate']:.0f}"]
            for c in cells]
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    csv_path = outdir / "table5.1.csv"
    csv_path.write_text("\n".join(",".join(str(c) for c in row) for row in [header] + rows) + "\n")
    scale = scale_text(params)
    claims = []
    # tanh + orthogonal fails least under SGD?
    sgd = [c for c in cells if c["key"][0] == "sgd"]
    if sgd:
        best = min(c["rate"] for c in sgd)
        least = [c for c in sgd if math.isclose(c["rate"], best)]
        to = next((c for c in sgd if c["key"] == ("sgd", "tanh", "orthogonal")), None)
        lowest = to is not None and to in least
        verdict = (f"Under SGD the lowest failure rate is {', '.join(_cell_name(c) for c in least)} "
                   f"({100 * best:.0f}% failed; " + ", ".join(f"{c['key'][1]}+{c['key'][2]} {100 * c['rate']:.0f}%"
                                                                for c in sorted(sgd, key=lambda c: c["key"])) +
                   f"); thesis: tanh+orthogonal fails least (3%). The ordering {'holds' if lowest else 'does not hold'}; "
                   "the rates are judged cell by cell in the table below and the verdict table.")
        claims.append(Claim("SGD: tanh + orthogonal init fails least", "3% failed (62 of 1980), the lowest cell",
                            (f"{100 * to['rate']:.0f}% ({to['failed']} of {to['runs']})" if to else "not run") +
                            f"; lowest: {', '.join(_cell_name(c) for c in least)}", scale,
                            judge(bool(to and to["agrees"]) and lowest, lowest),
                            f"tolerance: {CELL_SE:g} binomial standard errors (±{100 * to['tol']:.0f} points)"
                            if to else ""))
        ok = lowest
    else:
        ok = None
        verdict = "No SGD runs in the store: the thesis' tanh+orthogonal claim is not checked."
    claims.append(cells_claim(cells, scale))
    n = sum(c["runs"] for c in cells)
    nf = sum(c["failed"] for c in cells)
    verdict += f" How they failed: {failure_line(runs)}."
    compute = ""
    if params["n_train"] is not None:
        use = step_use(runs, math.ceil(params["n_train"] / params["batch_size"]))
        if math.isfinite(use["share"]):
            compute = (f"The runs took {100 * use['share']:.0f}% of the updates a full budget allows (successful "
                       f"runs stop at their epoch of success: median {use['median_epoch']:.0f}, 90th percentile "
                       f"{use['p90_epoch']:.0f} of {params['epochs']}; failed trainings take "
                       f"{100 * use['failed_share']:.0f}% of the updates). ")
    lrs = params["lrs"]
    mapped = ""
    if isinstance(lrs, dict):
        from ..sweep import parse_range

        mapped = " Learning rates mapped back to width 500 (lr x N/500): " + "; ".join(
            f"{OPTIMIZER_TITLES[o]} " + ", ".join(f"{width_lr(v, params['width']):.2g}" for v in
                                                   (parse_range(r) if isinstance(r, str) else r))
            + f" (thesis {THESIS_LR_RANGE[o][0]:g}-{THESIS_LR_RANGE[o][1]:g})"
            for o, r in lrs.items() if o in params["optimizers"] and o in THESIS_LR_RANGE) + "."
    caption = (f"{n} runs ({nf} failed trainings: below the target at the end, diverged ones included; "
               f"{n - nf} successful); thesis: 31,680 runs (13,101 failed). Failure kinds "
               f"(depthscope.train.failure_kind): diverged = non-finite loss; collapsed = output-layer VNI > "
               f"{COLLAPSE_VNI} at the end; dead = every output node constant on the probe; slow = training accuracy "
               f"still rising by > 2 points over the last quarter of the epochs; stuck = the rest. A cell agrees "
               f"when our failure rate is within {CELL_SE:g} binomial standard errors of the thesis' (the standard "
               f"error of a rate on our cell's runs). {compute}{protocol}.{mapped} Also as CSV: table5.1.csv.")
    return FigureResult("table5.1", "Failed / successful runs per optimizer, activation, init", [csv_path], cmd,
                        "thesis Table 5.1", verdict, caption, ok, claims=claims, html=table_html(cells))


def _layer_bins(max_depth: int, max_boxes: int = 20) -> np.ndarray:
    if max_depth <= max_boxes:
        return np.arange(1, max_depth + 2)
    return np.unique(np.linspace(1, max_depth + 1, max_boxes + 1).round().astype(int))


def sigma_figures(runs, outdir, cmd, protocol) -> list[FigureResult]:
    from matplotlib.figure import Figure

    max_depth = max(r["depth"] for r in runs)
    edges = _layer_bins(max_depth)
    out = []
    for name, label, ok in (("fig5.5", "successful", 1.0), ("fig5.6", "failed", 0.0)):
        sub = [r for r in runs if r["success"] == ok]
        if not sub:
            warnings.warn(f"fig5: no {label} runs in the store; skipping {name}", stacklevel=2)
            continue
        boxes, labels = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            vals = np.concatenate([r["sigma"][lo - 1:min(hi - 1, r["depth"])] for r in sub])
            vals = vals[np.isfinite(vals)]
            if vals.size:
                boxes.append(vals)
                labels.append(str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}")
        if not boxes:
            warnings.warn(f"fig5: no sigma_w2_mu1 rows for {label} runs; skipping {name}", stacklevel=2)
            continue
        allv = np.concatenate(boxes)
        fig = Figure(figsize=(max(6, 0.45 * len(boxes)), 3.6))
        ax = fig.subplots()
        ax.boxplot(boxes, whis=(5, 95), showfliers=False)
        ax.set_xticks(range(1, len(boxes) + 1), labels, rotation=60, fontsize=7)
        ax.axhline(1.0, color="tab:red", lw=0.8, ls="--")
        ax.set_xlabel("layer")
        ax.set_ylabel(r"$\sigma_w^2 \mu_1$")
        ax.set_title(f"{label} runs ({len(sub)})")
        paths = _save(fig, outdir, name)
        q1, med, q3 = np.percentile(allv, [25, 50, 75])
        near = float(np.mean((allv > 0.5) & (allv < 2.0)))
        gains = np.array([log10_gain(r) for r in sub])
        gains = gains[np.isfinite(gains)]
        gain = (f" Their product over a run's layers (eq. 4.4's gradient factor) has median 10^{np.median(gains):.1f}."
                if gains.size else "")
        verdict = (f"{label} runs: sigma_w^2 mu_1 median {med:.3f} (IQR {q1:.3f}-{q3:.3f}), {100 * near:.0f}% of "
                   f"layer values in (0.5, 2); thesis: near 1 for both successful and failed runs. "
                   f"{'Reproduced' if 0.5 < med < 2 else 'Not reproduced'}.{gain}")
        caption = (f"Box: quartiles, whiskers: 5th-95th percentile of sigma_w^2 mu_1 (final weights) per layer "
                   f"{'bin' if len(edges) - 1 < max_depth else ''}, {len(sub)} {label} runs. {protocol}.")
        who = "failed trainings" if label == "failed" else "successful runs"
        claim = Claim(f"σ_w²μ1 per layer stays near 1 in {who}", "near 1 (box plots, no numbers)",
                      f"median {med:.2f} (IQR {q1:.2f}-{q3:.2f}); {100 * near:.0f}% of layer values in (0.5, 2)",
                      "", "agree" if SIGMA_NEAR[0] < med < SIGMA_NEAR[1] else "differs",
                      f"tolerance: the median per-layer value in ({SIGMA_NEAR[0]:g}, {SIGMA_NEAR[1]:g}), the thesis' "
                      "box-plot reading of 'near 1'")
        out.append(FigureResult(name, f"sigma_w^2 mu_1 per layer, {label} runs", paths, cmd,
                                f"thesis Fig. {name[3:]}", verdict, caption, bool(0.5 < med < 2), claims=[claim]))
    return out


def vni_stats(v: np.ndarray) -> tuple[float, float, float, float]:
    """(min, max, mean, std) as the thesis reports them (population std)."""
    return float(v.min()), float(v.max()), float(v.mean()), float(v.std())


def vni_histogram_figure(runs, outdir, cmd, protocol) -> FigureResult | None:
    from matplotlib.figure import Figure

    failed = np.array([r["vni_out"] for r in runs if not r["success"]])
    succ = np.array([r["vni_out"] for r in runs if r["success"]])
    failed, succ = failed[np.isfinite(failed)], succ[np.isfinite(succ)]
    if failed.size == 0 and succ.size == 0:
        warnings.warn("fig5: no final VNI rows in the store; skipping fig5.7", stacklevel=2)
        return None
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 41)
    parts = []
    for v, label, color, thesis in ((failed, "failed", "tab:blue", THESIS_VNI_FAILED),
                                    (succ, "successful", "tab:orange", THESIS_VNI_SUCCESS)):
        if v.size:
            mn, mx, mean, std = vni_stats(v)
            ax.hist(v, bins=bins, alpha=0.6, color=color, label=f"{label} ({v.size})")
            parts.append(f"{label}: {mn:.4f}-{mx:.4f}, mean {mean:.4f}, std {std:.4f} (thesis {thesis[0]}-"
                         f"{thesis[1]}, mean {thesis[2]}, std {thesis[3]})")
        else:
            parts.append(f"{label}: none")
    ax.set_xlabel(r"VNI $R_{sq}$ of the output layer (after training)")
    ax.set_ylabel("runs")
    ax.legend()
    paths = _save(fig, outdir, "fig5.7")
    claim, agrees = vni_claim(runs)
    verdict = "; ".join(parts) + f". {claim}"
    claims = fig57_claims(runs)
    caption = (f"Histogram of the final VNI of the output (last hidden) layer x_L (eq. 3.5, on the probe batch of "
               f"training images), the quantity of the thesis' Fig. 5.7, of failed (blue) and successful (orange) "
               f"runs; runs without a finite VNI (diverged, dead) are left out. {protocol}.")
    return FigureResult("fig5.7", "VNI of failed vs successful runs", paths, cmd, "thesis Fig. 5.7", verdict,
                        caption, agrees, claims=claims)


#: "near 1" for sigma_w^2 mu_1 per layer (the thesis reads its box plots so); its product over the layers
#: (eq. 4.4's gradient factor) counts as bounded within this many decades of 1
SIGMA_NEAR = (0.5, 2.0)
GAIN_DECADES = 2.0
#: failed trainings "end with VNI near 1" when at least this share of them end above COLLAPSE_VNI
#: (the thesis: every failed run, min 0.9029)
COLLAPSED_SHARE = 0.9


def collapsed_share(failed: list[dict]) -> tuple[float, int, int]:
    """(share, collapsed, counted): of the failed trainings with a finite final output VNI, the share
    ending above COLLAPSE_VNI (diverged and dead runs have no VNI and are not counted)."""
    v = np.array([r["vni_out"] for r in failed], dtype=float)
    v = v[np.isfinite(v)]
    return (float(np.mean(v > COLLAPSE_VNI)) if v.size else float("nan")), int(np.sum(v > COLLAPSE_VNI)), int(v.size)


def fig57_claims(runs: list[dict]) -> list[Claim]:
    """Fig 5.7's two claims, judged from the stored numbers, kept apart:

    1. failed trainings end with output VNI near 1 - one row per activation: values agree when at least
       COLLAPSED_SHARE of them end above COLLAPSE_VNI, else they differ;
    2. sigma_w^2 mu_1 stays near 1 in failed trainings - values agree when the per-layer median lies in
       SIGMA_NEAR for every activation *and* the median product over a run's layers (:func:`log10_gain`)
       lies within GAIN_DECADES of 1; "trend" when only the per-layer median does; else differs.
    """
    out = []
    failed = [r for r in runs if r["failure"] is not None]
    acts = sorted({r["activation"] for r in runs})
    epochs = max((r.get("max_epochs") or 0 for r in runs), default=0)
    for act in acts:
        fa = [r for r in failed if r["activation"] == act]
        share, k, n = collapsed_share(fa)
        n_div = sum(r["failure"] == "diverged" for r in fa)
        if not n:
            out.append(Claim(f"failed trainings end with output VNI near 1 ({act})", "every failed run: VNI >= 0.9029",
                             f"no failed {act} training with a final VNI", f"{epochs} epochs", "not run",
                             "nothing to judge"))
            continue
        out.append(Claim(f"failed trainings end with output VNI near 1 ({act})",
                         "every failed run: VNI >= 0.9029 (mean 0.9949)",
                         f"{100 * share:.0f}% ({k} of {n}) above {COLLAPSE_VNI}" +
                         (f"; {n_div} diverged (no VNI)" if n_div else ""), f"{epochs} epochs",
                         "agree" if share >= COLLAPSED_SHARE else "differs",
                         f"tolerance: at least {100 * COLLAPSED_SHARE:.0f}% of the failed trainings end above "
                         f"{COLLAPSE_VNI}"))
    med = {}
    for act in acts:
        sig = np.concatenate([r["sigma"] for r in failed if r["activation"] == act] or [np.array([])])
        sig = sig[np.isfinite(sig)]
        if sig.size:
            med[act] = float(np.median(sig))
    coll = [r for r in failed if r["failure"] == "collapsed"]
    gains = np.array([log10_gain(r) for r in coll], dtype=float)
    gains = gains[np.isfinite(gains)]
    if not med:
        out.append(Claim("σ_w²μ1 stays near 1 in failed trainings (gradients bounded)", "near 1 (Figs 5.5, 5.6)",
                         "no σ_w²μ1 of failed trainings in the store", "", "not run", "nothing to judge"))
        return out
    per_layer = all(SIGMA_NEAR[0] < m < SIGMA_NEAR[1] for m in med.values())
    gain = float(np.median(gains)) if gains.size else float("nan")
    through = bool(np.isfinite(gain) and abs(gain) <= GAIN_DECADES)
    lo, hi = min(med.values()), max(med.values())
    ours = (f"per-layer median {lo:.2f}" + (f"-{hi:.2f}" if hi > lo else "") + " (" +
            ", ".join(f"{a} {m:.2f}" for a, m in med.items()) + ")" +
            (f"; product over the layers median 10^{gain:.0f} in collapsed nets" if gains.size else ""))
    out.append(Claim("σ_w²μ1 stays near 1 in failed trainings (gradients bounded)", "near 1 (Figs 5.5, 5.6)",
                     ours, "", "agree" if per_layer and through else "trend" if per_layer else "differs",
                     f"tolerance: per-layer median in ({SIGMA_NEAR[0]:g}, {SIGMA_NEAR[1]:g}) and its product over "
                     f"a net's layers (eq. 4.4's gradient factor) within 10^±{GAIN_DECADES:g}" +
                     ("" if through or not gains.size else
                      ": per layer near 1, but the product is not, so the gradient still vanishes through the "
                      "collapsed nets")))
    return out


def log10_gain(run: dict) -> float:
    """log10 of prod_l sigma_w^2 mu_1(l) over a run's hidden layers: eq. 4.4's factor by which the
    backward gradient variance changes through the net (NaN layers left out)."""
    s = np.asarray(run["sigma"], dtype=float)
    s = s[np.isfinite(s) & (s > 0)]
    return float(np.sum(np.log10(s))) if s.size else float("nan")


def vni_claim(runs: list[dict]) -> tuple[str, bool | None]:
    """The thesis' section 5.2 claim judged on these runs: failed runs end with output VNI near 1
    (all of the thesis' failed runs had VNI >= 0.9029) while gradients stay bounded (sigma_w^2 mu_1 near 1).

    Reproduced when >= 90% of the failed runs collapsed (output VNI > 0.9), the median per-layer
    sigma_w^2 mu_1 of the collapsed runs lies in (0.5, 2) (the thesis reads its box plots so) and the
    median of their product over the layers (:func:`log10_gain`) lies within two decades of 1;
    partly when most (> 50%) collapsed with the per-layer median in (0.5, 2); else not.
    Returns (the verdict sentence, agrees: True / False / None for partly or not checkable).
    """
    failed = [r for r in runs if r["failure"] is not None]
    if not failed:
        return "No failed runs: the claim is not checked.", None
    counts = failure_counts(runs)
    share = counts["collapsed"] / len(failed)
    coll = [r for r in failed if r["failure"] == "collapsed"]
    sig = np.concatenate([r["sigma"] for r in coll]) if coll else np.array([])
    sig = sig[np.isfinite(sig)]
    if sig.size:
        q1, med, q3 = np.percentile(sig, [25, 50, 75])
        bounded = 0.5 < med < 2
        gain_c = float(np.median([log10_gain(r) for r in coll]))
        ok_runs = [log10_gain(r) for r in runs if r["success"]]
        gain_s = f", successful runs 10^{np.median(ok_runs):.1f}" if ok_runs else ""
        through = abs(gain_c) < 2
        grad = (f"the collapsed runs' per-layer sigma_w^2 mu_1 has median {med:.2f} (IQR {q1:.2f}-{q3:.2f}): "
                f"{'near 1 by the thesis box-plot reading, (0.5, 2)' if bounded else 'not near 1'}; its product over "
                f"a run's layers (eq. 4.4's gradient factor) has median 10^{gain_c:.1f} in collapsed runs{gain_s}: "
                f"{'bounded through the net' if through else 'in the collapsed nets the gradients vanish through the depth'}")
    else:
        bounded, through, grad = False, False, "no sigma_w^2 mu_1 of collapsed runs"
    succ = np.array([r["vni_out"] for r in runs if r["success"] and np.isfinite(r["vni_out"])])
    above = (f"; {100 * np.mean(succ > COLLAPSE_VNI):.0f}% of successful runs end above {COLLAPSE_VNI}"
             if succ.size else "")
    if share >= 0.9 and bounded and through:
        verdict, agrees = "reproduced", True
    elif share > 0.5 and bounded:
        verdict, agrees = ("partly reproduced (" + ("most, not all, failures are collapses" if share < 0.9 else
                                                     "failures are collapses") +
                           ("" if through else "; gradients bounded per layer, not through the net") + ")", None)
    else:
        verdict, agrees = "not reproduced", False
    return (f"{failure_line(runs)} ({failure_split(runs)}){above}; {grad}. Thesis: every failed run ends with "
            f"VNI near 1 (min 0.9029) with sigma_w^2 mu_1 near 1 - {verdict}.", agrees)
