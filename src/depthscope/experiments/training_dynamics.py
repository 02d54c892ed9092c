"""Thesis section 3.2: what back-propagation does to the VNI (Fig. 3.4, 3.5, 3.6).

* ``fig3.4``: quartiles over seeds of the output (last hidden) layer's VNI over
  the training epochs, for three SGD learning rates (MNIST, tanh, scaled Gaussian).
* ``fig3.5``: mean over seeds of every hidden layer's VNI over the first updates
  (the engine measures the VNI densely over the first ``vni_dense_steps`` updates),
  for learning rates 1e-3 and 1e-2: a layer x update heatmap.
* ``fig3.6``: layer-wise mean squared correlation rho^2 (eq. 3.2, mean over node
  pairs i != j) during training with Gaussian inputs (variance 0.1, batch 1000)
  and Gaussian output gradients of the same distribution, SGD lr 1e-2. This one
  uses its own small loop (no labels, no loss: the output gradient is drawn).

fig3.4 and fig3.5 train with the sweep engine (resumable, batched); all figures
read the store only.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..store import Store, Value
from ..sweep import SweepSpec, execute, expand, stored_spec
from ._needs import require_if_pending
from .base import Claim, Experiment, FigureResult, RunContext, WorkUnit, judge

Q_TRACE = "vni"  # engine: VNI of layer l after `step` updates (step 0 = at initialisation); step None = final


def _save(fig, outdir: Path, name: str) -> list[Path]:
    from ..report import save_figure

    return save_figure(fig, outdir, name, dpi=120)


def _protocol(p: dict) -> str:
    n = "all" if p["n_train"] is None else str(p["n_train"])
    return (f"L={p['depth']}, N={p['width']}, tanh, scaled-Gaussian init, SGD, batch {p['batch_size']}, "
            f"{p['seeds']} seeds, {p['dataset']} ({n} training images, split '{p['split']}')")


class _TrainingSweep(Experiment):
    """An experiment whose units are training runs of one SweepSpec (run with the sweep engine)."""

    def sweep(self, p: dict) -> SweepSpec:
        return SweepSpec(name=self.name, depths=[p["depth"]], widths=[p["width"]], lrs=p["lrs"], optimizers=["sgd"],
                         activations=["tanh"], inits=["gaussian"], seeds=p["seeds"], dataset=p["dataset"],
                         split=p["split"], n_train=p["n_train"], epochs=p["epochs"], batch_size=p["batch_size"],
                         target_accuracy=p["target_accuracy"], group_size=p["group_size"], probe_size=p["probe_size"],
                         vni_dense_steps=p["vni_dense_steps"])

    def units(self, p: dict) -> list[WorkUnit]:
        sw = self.sweep(p)
        return [WorkUnit(*stored_spec(r, sw.data)) for r in expand(sw)]

    def run(self, ctx: RunContext) -> dict:
        sw = self.sweep(ctx.params)
        if sw.data.dataset != "synthetic":
            require_if_pending(self, ctx, sw.data.dataset, sw.data.split)
        s = execute(expand(sw), ctx.store, self.name, sw.data, backend=ctx.params["backend"],
                    workers=ctx.params.get("workers") or None, device=ctx.device, group_size=sw.group_size,
                    data_dir=ctx.data_dir, quiet=ctx.quiet)
        return {"total": s.total, "skipped": s.skipped, "ran": s.ran, "failed": s.failed}

    def traces(self, store: Store, p: dict, layer: int | None = None) -> dict[float, dict[int, dict]]:
        """lr -> seed -> {(layer, step): vni} of the runs of these params."""
        where = dict(depth=p["depth"], width=p["width"], max_epochs=p["epochs"])
        if layer is not None:
            where["layer"] = layer
        out: dict[float, dict[int, dict]] = {}
        for r in store.rows(self.name, Q_TRACE, **where):
            if r["step"] is None or r["layer"] is None:
                continue
            out.setdefault(r["lr"], {}).setdefault(r["seed"], {})[(r["layer"], r["step"])] = r["value"]
        return out


#: The thesis' width; a quick preset's learning rate lr at width N corresponds to lr x N / 500 there (the
#: lr x 500/N rule of docs/sweeps.md, "The fig5 quick grid": one SGD step changes the output by lr x Theta,
#: and the tangent kernel Theta grows as N in the standard parameterisation).
THESIS_WIDTH = 500
#: The thesis' SGD learning rates at width 500: Fig. 3.4 and Fig. 3.5.
THESIS_LRS = {"fig3.4": (1e-4, 1e-3, 1e-2), "fig3.5": (1e-3, 1e-2)}


def at_thesis_width(lr: float, width: int) -> float:
    """lr x width / 500: a width-``width`` learning rate expressed at the thesis' width (docs/sweeps.md)."""
    return lr * width / THESIS_WIDTH


def preset_label(exp: Experiment, p: dict) -> str:
    """The preset these parameters are, or the nearest one plus the changed keys ("paper with seeds=5")."""
    diffs = {name: {k: p[k] for k in pre if k in p and p[k] != pre[k]} for name, pre in exp.presets.items()}
    name = min(diffs, key=lambda n: len(diffs[n]))
    changed = diffs[name]
    return name if not changed else f"{name} with " + ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))


def steps_per_epoch(p: dict, n_available: int | None = None) -> int:
    n = p["n_train"] if p["n_train"] is not None else (n_available or 60000)
    return math.ceil(n / p["batch_size"])


def quartile_series(per_seed: dict[int, dict], layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps present in any run, and the 25/50/75th percentiles over runs (finite values only) at each."""
    steps = sorted({s for tr in per_seed.values() for (l, s) in tr if l == layer})
    q = np.full((len(steps), 3), np.nan)
    for i, s in enumerate(steps):
        v = np.array([tr[(layer, s)] for tr in per_seed.values() if (layer, s) in tr], dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            q[i] = np.percentile(v, [25, 50, 75])
    return np.array(steps), q


def vni_course(median: np.ndarray, margin: float = 0.05) -> dict:
    """The shape of a median VNI course (index 0 = initialisation, then per epoch): its ``start``,
    ``peak``, ``final`` value, and ``rise_then_settle``: it rose above its start by more than
    ``margin``, then fell from its peak by more than ``margin``, ending above its start (thesis Fig. 3.4:
    "VNI grows larger initially, and then decreases to a value which is larger than the initial VNI")."""
    v = np.asarray(median, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"start": float("nan"), "peak": float("nan"), "final": float("nan"), "rise_then_settle": False}
    start, peak, final = float(v[0]), float(v.max()), float(v[-1])
    settle = peak > start + margin and final < peak - margin and final > start
    return {"start": start, "peak": peak, "final": final, "rise_then_settle": bool(settle)}


class Fig34(_TrainingSweep):
    name = "fig3.4"
    title = "Output-layer VNI during training, three learning rates"
    reproduces = "thesis Fig. 3.4"
    presets = {
        # local workers (one torch thread each): these small nets train 2.5x slower on two threads.
        # quick lrs: the thesis' 1e-4, 1e-3, 1e-2 times 500/64 (the width rule of THESIS_WIDTH), so that mapped
        # back to width 500 they are exactly the thesis' rates (the former 1e-3, 1e-2, 1e-1 mapped to 1.3e-4,
        # 1.3e-3, 1.3e-2: the top one above the thesis' range)
        "quick": {"depth": 50, "width": 64, "lrs": [7.8125e-4, 7.8125e-3, 7.8125e-2], "seeds": 4, "epochs": 10,
                  "dataset": "mnist", "split": "any", "n_train": 1000, "batch_size": 100, "target_accuracy": 1.0,
                  "group_size": 6, "probe_size": 500, "vni_dense_steps": 0, "backend": "local", "workers": 0},
        "paper": {"depth": 100, "width": 500, "lrs": [1e-4, 1e-3, 1e-2], "seeds": 20, "epochs": 100,
                  "dataset": "mnist", "split": "train", "n_train": None, "batch_size": 100, "target_accuracy": 1.0,
                  "group_size": 20, "probe_size": 1000, "vni_dense_steps": 0, "backend": "local", "workers": 0},
    }

    def figures(self, store: Store, outdir: Path, p: dict) -> list[FigureResult]:
        from matplotlib.figure import Figure

        tr = self.traces(store, p, layer=p["depth"])
        if not tr:
            warnings.warn(f"{self.name}: no vni_trace rows in the store; skipping", stacklevel=2)
            return []
        spe = steps_per_epoch(p)
        fig = Figure(figsize=(6, 3.8))
        ax = fig.subplots()
        parts = []
        for lr in sorted(tr):
            steps, q = quartile_series(tr[lr], p["depth"])
            ep = steps / spe
            line, = ax.plot(ep, q[:, 1], label=f"lr {lr:g}")
            ax.fill_between(ep, q[:, 0], q[:, 2], alpha=0.25, color=line.get_color())
            finals = np.array([t[max(k for k in t if k[0] == p["depth"])] for t in tr[lr].values() if t])
            finals = finals[np.isfinite(finals)]
            init = q[0, 1]
            parts.append(f"lr {lr:g}: median {init:.2f} at init, peak {np.nanmax(q[:, 1]):.2f}, final "
                         f"{q[-1, 1]:.2f}; {int(np.sum(finals > 0.9))}/{len(tr[lr])} runs end above 0.9")
        ax.set_xlabel("epoch")
        ax.set_ylabel(r"VNI $R_{sq}$ (output layer)")
        ax.set_ylim(0, 1.02)
        ax.legend()
        paths = _save(fig, Path(outdir), "fig3.4")
        lrs = sorted(tr)
        shapes = {lr: vni_course(quartile_series(tr[lr], p["depth"])[1][:, 1]) for lr in lrs}
        to_one = shapes[lrs[-1]]["final"] > 0.9
        settle = [lr for lr in lrs[:-1] if shapes[lr]["rise_then_settle"]]
        top = "rises to 1" if to_one else f"ends at {shapes[lrs[-1]]['final']:.2f}, not near 1"
        mid = (f"the median rises, then settles above its start at lr {', '.join(f'{v:g}' for v in settle)}" if settle
               else "no smaller lr shows the rise-then-settle course")
        word = "reproduced" if to_one and settle else "partly reproduced" if to_one or settle else "not reproduced"
        verdict = ("; ".join(parts) + f". Thesis (lrs 1e-4, 1e-3, 1e-2 at N=500): at the largest lr the VNI can "
                   f"rise to 1; otherwise it rises, then decreases to a value above its initial one. Here the "
                   f"largest lr's median {top}; {mid} ({word}).")
        agrees = True if word == "reproduced" else False if word == "not reproduced" else None
        width = p["width"]
        scale = (f"{preset_label(self, p)}: L={p['depth']}, N={p['width']}, {p['seeds']} seeds, {p['epochs']} epochs, "
                 f"lrs {', '.join(f'{v:g}' for v in lrs)} (at N=500: "
                 f"{', '.join(f'{at_thesis_width(v, width):.2g}' for v in lrs)})")
        claims = [
            Claim(f"at the largest lr the output VNI rises to 1", "rises to ~1 (lr 1e-2, N=500, 100 epochs)",
                  f"median {shapes[lrs[-1]]['final']:.2f} at the end (lr {lrs[-1]:g})", scale,
                  "agree" if to_one else "differs", "tolerance: a final median above 0.9"),
            Claim("at smaller lrs the VNI rises, then settles above its initial value",
                  "rises, then decreases to a value above the initial one (no numbers)",
                  "; ".join(f"lr {lr:g}: {shapes[lr]['start']:.2f} → peak {shapes[lr]['peak']:.2f} → "
                            f"{shapes[lr]['final']:.2f}" for lr in lrs[:-1]), scale,
                  judge(None, bool(settle)),
                  "a trend (the thesis gives a figure only)" + (
                      "" if p["width"] == THESIS_WIDTH else f"; at N={p['width']} the lrs are the thesis' x "
                      f"{THESIS_WIDTH}/{p['width']} (lr x 500/N keeps the size of one update, docs/sweeps.md)"))]
        caption = (f"Median (line) and quartiles (band) over seeds of the last hidden layer's VNI (eq. 3.5, probe "
                   f"of {p['probe_size']} training images) per epoch. {_protocol(p)}, {p['epochs']} epochs "
                   f"(thesis: L=100, N=500, 20 runs, full MNIST).")
        return [FigureResult("fig3.4", self.title, paths, f"depthscope reproduce fig3.4 --preset "
                             f"{'paper' if p['width'] == 500 else 'quick'}", self.reproduces, verdict, caption,
                             agrees, claims=claims)]


class Fig35(_TrainingSweep):
    name = "fig3.5"
    title = "Hidden-layer VNI over the first updates"
    reproduces = "thesis Fig. 3.5"
    presets = {
        # quick lrs: the thesis' 1e-3, 1e-2 times 500/64 (see Fig34)
        "quick": {"depth": 50, "width": 64, "lrs": [7.8125e-3, 7.8125e-2], "seeds": 4, "epochs": 1,
                  "dataset": "mnist", "split": "any", "n_train": 1000, "batch_size": 100, "target_accuracy": 1.0,
                  "group_size": 4, "probe_size": 500, "vni_dense_steps": 10, "backend": "local", "workers": 0},
        # the thesis' protocol up to what its figure shows: updates 0..10 of an SGD run on MNIST (batch 100).
        # Ten updates read 1000 images, so n_train=1000 is the same first 10 updates as a full epoch of 60,000
        # shuffled images (a random 1000 of them) without the 590 updates the figure never looks at: 1/60 of
        # the cost. split "any": the training images where present, else the 10k test images (captions say).
        "paper": {"depth": 100, "width": 500, "lrs": [1e-3, 1e-2], "seeds": 50, "epochs": 1,
                  "dataset": "mnist", "split": "any", "n_train": 1000, "batch_size": 100, "target_accuracy": 1.0,
                  "group_size": 25, "probe_size": 1000, "vni_dense_steps": 10, "backend": "local", "workers": 0},
    }

    def figures(self, store: Store, outdir: Path, p: dict) -> list[FigureResult]:
        from matplotlib.figure import Figure

        tr = self.traces(store, p)
        if not tr:
            warnings.warn(f"{self.name}: no vni_trace rows in the store; skipping", stacklevel=2)
            return []
        L, T = p["depth"], p["vni_dense_steps"]
        lrs = sorted(tr)
        fig = Figure(figsize=(4.5 * len(lrs), 3.8))
        axes = np.atleast_1d(fig.subplots(1, len(lrs)))
        parts = []
        im = None
        for ax, lr in zip(axes, lrs):
            mean = heat_mean(tr[lr], L, T)
            im = ax.imshow(mean, origin="lower", aspect="auto", vmin=0, vmax=1, cmap="viridis",
                           extent=(-0.5, T + 0.5, 0.5, L + 0.5))
            ax.set_xlabel("update")
            ax.set_ylabel("layer")
            ax.set_title(f"lr {lr:g}")
            hi = float(np.mean(mean[:, -1] >= 0.9))
            gained = float(np.nanmean(mean[:, -1] - mean[:, 0]))
            parts.append(f"lr {lr:g}: {100 * hi:.0f}% of layers at VNI >= 0.9 after {T} updates "
                         f"(mean change {gained:+.3f})")
        fig.colorbar(im, ax=list(axes), label=r"mean VNI $R_{sq}$")
        paths = _save(fig, Path(outdir), "fig3.5")
        # the claims are the thesis' at lr 1e-2: judged on the stored lr that is 1e-2 at N=500 (lr x N/500), not
        # on whatever lr is largest (a paper run still at its lr 1e-3 half would be judged as if at 1e-2)
        judged = thesis_lr(lrs, p["width"], FIG35_THESIS_LR)
        command = f"depthscope reproduce fig3.5 --preset {'paper' if p['width'] == 500 else 'quick'}"
        if judged is None:
            scale = f"{preset_label(self, p)}: L={L}, N={p['width']}, lrs {', '.join(f'{v:g}' for v in lrs)} stored"
            why = f"no run at lr {FIG35_THESIS_LR:g} (at N=500: lr x {p['width']}/500) is stored yet"
            claims = [Claim(f"over 70% of hidden layers reach VNI >= 0.9 within {T} updates",
                            "> 70% (lr 1e-2, N=500)", "-", scale, "not run", why),
                      Claim("the rise starts at the output layer and spreads toward the input", "output first", "-",
                            scale, "not run", why)]
            verdict = "; ".join(parts) + f". No run at the thesis' lr {FIG35_THESIS_LR:g} (at N=500) is stored yet."
            caption = (f"Mean over seeds of every hidden layer's VNI after 0..{T} SGD updates. {_protocol(p)}.")
            return [FigureResult("fig3.5", self.title, paths, command, self.reproduces, verdict, caption, None,
                                 claims=claims)]
        last = heat_mean(tr[judged], L, T)
        hi_last = float(np.mean(last[:, -1] >= 0.9))
        change = last[:, -1] - last[:, 0]
        onset = onset_updates(last)
        q = max(1, L // 4)
        top_on, bottom_on = float(np.mean(onset[-q:])), float(np.mean(onset[:q]))
        from_output = top_on < bottom_on
        never = int(np.sum(onset > T))
        verdict = ("; ".join(parts) + f". At lr {judged:g} the VNI of {100 * np.mean(change > ONSET_RISE):.0f}% of "
                   f"layers rose by > {ONSET_RISE}; the rise (> {ONSET_RISE} above the start) began at update "
                   f"{top_on:.1f} on average in the top quarter of layers and {bottom_on:.1f} in the bottom quarter "
                   f"({never} layers never; counted as {T + 1}): "
                   f"{'it starts from the output side' if from_output else 'it does not start from the output side'}. "
                   f"Thesis (lr 1e-2, N=500): over 70% of hidden layers are highly intensified within 10 updates, "
                   f"starting at the output layer and spreading toward the input. "
                   + ("Reproduced." if hi_last >= FIG35_THESIS_SHARE and from_output else
                      "The output-first spread is reproduced, the 70% at VNI >= 0.9 is not." if from_output else
                      "Not reproduced at these sizes."))
        agrees = True if hi_last >= FIG35_THESIS_SHARE and from_output else None if from_output else False
        caption = (f"Mean over seeds of every hidden layer's VNI after 0..{T} SGD updates. {_protocol(p)} "
                   f"(thesis: L=100, N=500, 50 runs, full MNIST).")
        # the seeds stored, not the preset's count: a store still filling is judged on what it holds
        n_seeds = len(tr[judged])
        seeds = f"{n_seeds} seeds" + ("" if n_seeds == p["seeds"] else f" (of the preset's {p['seeds']})"
                                      if n_seeds < p["seeds"] else f" (the saved parameters name {p['seeds']}: "
                                      "a run adding seeds has not ended)")
        scale = (f"{preset_label(self, p)}: L={L}, N={p['width']}, {seeds}, lr {judged:g} (at N=500: "
                 f"{at_thesis_width(judged, p['width']):.2g})")
        claims = [fig35_share_claim(hi_last, T, scale),
                  Claim("the rise starts at the output layer and spreads toward the input", "output first",
                        f"rise began at update {top_on:.1f} (top quarter of layers) vs {bottom_on:.1f} (bottom "
                        f"quarter); {never} layers never rose", scale, judge(None, from_output),
                        f"a trend: onset = first update with VNI > {ONSET_RISE} above its start")]
        return [FigureResult("fig3.5", self.title, paths, command, self.reproduces, verdict, caption, agrees,
                             claims=claims)]


#: thesis Fig. 3.5: "over 70% of the hidden layers are highly intensified (VNI >= 0.9) within 10 updates"
FIG35_THESIS_SHARE = 0.7
#: the learning rate (at N=500) of that sentence
FIG35_THESIS_LR = 1e-2


def thesis_lr(lrs: list[float], width: int, target: float, factor: float = 1.5) -> float | None:
    """The lr of ``lrs`` (at width ``width``) that is ``target`` at the thesis' width (lr x width/500, the
    nearest on a log scale), or None when none is within ``factor`` of it."""
    if not lrs:
        return None
    best = min(lrs, key=lambda lr: abs(math.log(at_thesis_width(lr, width) / target)))
    return best if abs(math.log(at_thesis_width(best, width) / target)) <= math.log(factor) else None


def fig35_share_claim(share: float, updates: int, scale: str) -> Claim:
    """Values agree when at least 70% of the hidden layers reach VNI >= 0.9 within the updates (the thesis'
    one-sided number); otherwise they differ."""
    return Claim(f"over 70% of hidden layers reach VNI >= 0.9 within {updates} updates", "> 70% (lr 1e-2, N=500)",
                 f"{100 * share:.0f}%", scale, "agree" if share >= FIG35_THESIS_SHARE else "differs",
                 "tolerance: at least 70% (a one-sided claim)")


#: a layer's VNI counts as intensified once it is this much above its value at initialisation
ONSET_RISE = 0.2


def onset_updates(mean: np.ndarray, rise: float = ONSET_RISE) -> np.ndarray:
    """Per layer (rows of a (layers, updates + 1) VNI array, column 0 = initialisation): the first update
    t >= 1 with VNI(t) - VNI(0) > ``rise``; updates + 1 where that never happens (or VNI(0) is NaN)."""
    m = np.asarray(mean, dtype=float)
    T = m.shape[1] - 1
    out = np.full(m.shape[0], T + 1, dtype=float)
    with np.errstate(invalid="ignore"):
        up = (m[:, 1:] - m[:, :1]) > rise
    for l in range(m.shape[0]):
        hit = np.flatnonzero(up[l])
        if hit.size:
            out[l] = hit[0] + 1
    return out


def heat_mean(per_seed: dict[int, dict], depth: int, steps: int) -> np.ndarray:
    """(depth, steps + 1) mean over runs of VNI at (layer, update); NaN where nothing was measured."""
    acc = np.zeros((depth, steps + 1))
    cnt = np.zeros((depth, steps + 1))
    for tr in per_seed.values():
        for (l, s), v in tr.items():
            if 1 <= l <= depth and 0 <= s <= steps and np.isfinite(v):
                acc[l - 1, s] += v
                cnt[l - 1, s] += 1
    with np.errstate(invalid="ignore"):
        return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)


# ---------------------------------------------------------------------------
# Fig 3.6: Gaussian inputs and Gaussian output gradients
# ---------------------------------------------------------------------------
def mean_rho2(x: torch.Tensor) -> float:
    """Mean over node pairs i != j of rho_ij^2 (eq. 3.2) of x (samples x nodes)."""
    from ..metrics.vni import rho_squared

    r = rho_squared(x)
    n = r.shape[0]
    return float((r.sum() - torch.diagonal(r).sum()) / (n * (n - 1)))


def record_steps(steps: int, every: int) -> list[int]:
    return sorted(set([0, 1, 2, 5] + list(range(0, steps + 1, every)) + [steps]) & set(range(steps + 1)))


def gaussian_gradient_run(depth: int, width: int, seed: int, *, steps: int, lr: float, batch: int,
                          variance: float, every: int, reduction: str = "mean") -> list[Value]:
    """Train a tanh / scaled-Gaussian net with SGD where the input x_0 and the output gradient dLoss/dx_L
    are both drawn from N(0, variance) each step (thesis section 3.2); returns mean rho^2 and VNI per layer at
    the recorded steps, measured on a fixed probe batch from the same distribution."""
    from ..metrics.vni import vni
    from ..nets import NetSpec, build_net

    net = build_net(NetSpec(depth=depth, width=width, activation="tanh", init="gaussian"), seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 36]).generate_state(1)[0]))
    sd = math.sqrt(variance)
    probe = torch.randn(batch, width, generator=g) * sd
    keep = set(record_steps(steps, every))
    out: list[Value] = []
    for t in range(steps + 1):
        if t in keep:
            with torch.no_grad():
                for l, _, x in net.layers(probe):
                    out.append(Value("rho2_mean", mean_rho2(x), layer=l, step=t))
                    out.append(Value("vni", float(vni(x)), layer=l, step=t))
        if t == steps:
            break
        x0 = torch.randn(batch, width, generator=g) * sd
        grad = torch.randn(batch, width, generator=g) * sd
        opt.zero_grad()
        y = net(x0)
        y.backward(grad / batch if reduction == "mean" else grad)
        opt.step()
    return out


class Fig36(Experiment):
    name = "fig3.6"
    title = "Layer-wise mean rho^2 during training with Gaussian inputs and output gradients"
    reproduces = "thesis Fig. 3.6"
    presets = {
        "quick": {"depth": 30, "width": 64, "seeds": 4, "steps": 40, "every": 5, "lr": 1e-2, "batch": 1000,
                  "variance": 0.1, "reduction": "sum", "workers": 1},
        # seeds on 2 processes of one thread each (base.Experiment.run): the values are the same as serially
        "paper": {"depth": 100, "width": 500, "seeds": 50, "steps": 200, "every": 10, "lr": 1e-2, "batch": 1000,
                  "variance": 0.1, "reduction": "sum", "workers": 2},
    }

    def _spec(self, p: dict) -> dict:
        return {k: p[k] for k in ("depth", "width", "steps", "every", "lr", "batch", "variance", "reduction")}

    def validate(self, p: dict) -> None:
        w = p.get("workers", 1)
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"fig3.6: workers must be an integer >= 1, got {w!r}")

    def units(self, p: dict) -> list[WorkUnit]:
        if p["reduction"] not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum, got {p['reduction']!r}")
        return [WorkUnit(self._spec(p), s) for s in range(p["seeds"])]

    def run_unit(self, unit: WorkUnit, ctx: RunContext) -> list[Value]:
        s = unit.spec
        # (batch x width) matmuls this small run fastest on one thread; with two on a busy 2-core
        # machine a unit took 17 s instead of 2.5 s
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return gaussian_gradient_run(s["depth"], s["width"], unit.seed, steps=s["steps"], lr=s["lr"],
                                         batch=s["batch"], variance=s["variance"], every=s["every"],
                                         reduction=s["reduction"])
        finally:
            torch.set_num_threads(threads)

    def figures(self, store: Store, outdir: Path, p: dict) -> list[FigureResult]:
        from matplotlib.figure import Figure

        rows = store.rows(self.name, "rho2_mean", **self._spec(p))
        if not rows:
            warnings.warn(f"{self.name}: no rho2_mean rows in the store; skipping", stacklevel=2)
            return []
        steps = sorted({r["step"] for r in rows})
        L = p["depth"]
        acc = np.zeros((L, len(steps)))
        cnt = np.zeros((L, len(steps)))
        col = {s: i for i, s in enumerate(steps)}
        for r in rows:
            acc[r["layer"] - 1, col[r["step"]]] += r["value"]
            cnt[r["layer"] - 1, col[r["step"]]] += 1
        mean = acc / np.maximum(cnt, 1)
        n_runs = len({r["seed"] for r in rows})
        fig = Figure(figsize=(8, 3.8))
        a0, a1 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.2]})
        im = a0.imshow(mean, origin="lower", aspect="auto", cmap="gray_r", vmin=0, vmax=max(0.05, mean.max()))
        a0.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7, rotation=60)
        a0.set_xlabel("SGD update")
        a0.set_ylabel("layer")
        fig.colorbar(im, ax=a0, label=r"mean $\rho_{ij}^2$")
        a1.plot(mean[:, 0], np.arange(1, L + 1), label="start")
        a1.plot(mean[:, -1], np.arange(1, L + 1), label=f"after {steps[-1]}")
        a1.set_xlabel(r"mean $\rho_{ij}^2$")
        a1.legend(fontsize=7)
        paths = _save(fig, Path(outdir), "fig3.6")
        up = float(np.mean(mean[:, -1] > mean[:, 0]))
        ratio = float(mean[:, -1].mean() / max(mean[:, 0].mean(), 1e-12))
        verdict = (f"Mean rho^2 over layers {mean[:, 0].mean():.4f} at the start, {mean[:, -1].mean():.4f} after "
                   f"{steps[-1]} updates (x{ratio:.2f}); it rose in {100 * up:.0f}% of layers. Thesis: the "
                   f"correlation of each hidden layer is highly intensified. "
                   f"{'Reproduced' if up > 0.7 and ratio > 2 else 'Not reproduced at these sizes' if up <= 0.7 else 'Rises, but mildly'}.")
        agrees = True if up > 0.7 and ratio > 2 else False if up <= 0.7 else None
        claims = [Claim("training with Gaussian inputs and output gradients intensifies every layer's correlation",
                        "highly intensified (a figure, no numbers)",
                        f"mean ρ² {mean[:, 0].mean():.4f} → {mean[:, -1].mean():.4f} (x{ratio:.2f}); rose in "
                        f"{100 * up:.0f}% of layers",
                        f"{preset_label(self, p)}: L={L}, N={p['width']}, {n_runs} seeds, {steps[-1]} updates",
                        judge(None, up > 0.7),
                        "a trend: rose in more than 70% of layers" + ("" if ratio > 2 else
                                                                       ", but mildly (less than x2)"))]
        caption = (f"Mean over node pairs and over {n_runs} runs of rho_ij^2 (eq. 3.2) per layer, on a fixed probe "
                   f"batch, during SGD (lr {p['lr']:g}, gradient {'averaged' if p['reduction'] == 'mean' else 'summed'} "
                   f"over the batch of {p['batch']}) with inputs and output gradients drawn from N(0, {p['variance']}). "
                   f"L={L}, N={p['width']}, tanh, scaled-Gaussian (thesis: L=100, N=500, 50 runs).")
        return [FigureResult("fig3.6", self.title, paths, f"depthscope reproduce fig3.6 --preset "
                             f"{'paper' if p['width'] == 500 else 'quick'}", self.reproduces, verdict, caption,
                             agrees, claims=claims)]
