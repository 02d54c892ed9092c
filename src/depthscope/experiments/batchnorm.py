"""Thesis section 4.3 (title only: "Batch normalization results in exploding gradients").

The thesis leaves 4.2-4.4 empty; this implements what 4.3's title names: per-layer
||dC/dW_l||_F at initialisation for feed-forward nets with and without a BatchNorm1d
(batch statistics, gamma = 1, beta = 0) between each linear layer and its activation.
The known result is from outside the seeds: Yang et al. 2019, "A mean field theory of
batch normalization" (ICLR 2019), show gradients explode with depth at init with BN.
Cost: 1/2 mean ||readout(x_L) - y||^2 with Gaussian inputs and targets.
Weights come from :func:`depthscope.nets.layer_params` (the no-BN net equals build_net).
"""
from __future__ import annotations

import math
from pathlib import Path
from statistics import median

import torch
from torch import nn

from ..activations import get_activation
from ..nets import NetSpec, layer_params, linear_from_params
from ..store import Value
from . import _plotting as P
from .base import Claim, Experiment, FigureResult, RunContext, WorkUnit, judge


class BNNet(nn.Module):
    """Feed-forward net x_l = phi(BN(W_l x_{l-1} + b_l)) (or without BN) plus a linear readout."""

    def __init__(self, spec: NetSpec, seed: int, batchnorm: bool):
        super().__init__()
        self.phi = get_activation(spec.activation)
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for l in list(range(1, spec.depth + 1)) + [-1]:
            lin = linear_from_params(*layer_params(spec, seed, l))
            self.linears.append(lin)
        if batchnorm:
            self.norms = nn.ModuleList(nn.BatchNorm1d(spec.width) for _ in range(spec.depth))
        self.batchnorm = batchnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, lin in enumerate(self.linears[:-1]):
            h = lin(x)
            x = self.phi(self.norms[i](h) if self.batchnorm else h)
        return self.linears[-1](x)


def init_gradient_norms(spec: NetSpec, seed: int, batchnorm: bool, batch: int) -> torch.Tensor:
    """||dC/dW_l||_F for l = 1..L at initialisation (train-mode BN: batch statistics)."""
    net = BNNet(spec, seed, batchnorm)
    g = torch.Generator().manual_seed(seed + 777)
    x = torch.randn(batch, spec.n_in, generator=g)
    y = torch.randn(batch, spec.out_features, generator=g)
    loss = 0.5 * ((net(x) - y) ** 2).sum(dim=1).mean()
    loss.backward()
    return torch.stack([lin.weight.grad.norm() for lin in net.linears[:-1]])


class BatchNorm(Experiment):
    name = "batchnorm"
    title = "Batch normalization and exploding gradients at initialisation"
    reproduces = "thesis §4.3 title; Yang et al. 2019 (outside the seeds)"
    presets = {
        "quick": {"depths": [10, 25, 50], "activations": ["relu", "tanh"], "width": 128, "batch": 128, "seeds": 3},
        "paper": {"depths": [10, 25, 50, 100, 200], "activations": ["relu", "tanh", "linear"], "width": 512,
                  "batch": 512, "seeds": 10},
    }

    def units(self, params: dict) -> list[WorkUnit]:
        return [WorkUnit({"activation": a, "depth": d, "batchnorm": bn, "width": params["width"],
                          "batch": params["batch"]}, s)
                for a in params["activations"] for d in params["depths"] for bn in (False, True)
                for s in range(params["seeds"])]

    def run_unit(self, unit: WorkUnit, ctx: RunContext) -> list[Value]:
        sp = unit.spec
        spec = NetSpec(depth=sp["depth"], width=sp["width"], activation=sp["activation"], out_features=10)
        with P.threads(1):
            gn = init_gradient_norms(spec, unit.seed, sp["batchnorm"], sp["batch"])
        return [Value("grad_norm", float(v), l + 1) for l, v in enumerate(gn)]

    def figures(self, store, outdir: Path, params: dict) -> list[FigureResult]:
        from matplotlib.figure import Figure

        rows = store.rows(self.name, "grad_norm")
        if not rows:
            return P.missing(self.name, "batch-norm gradient rows")
        acts = sorted({r["activation"] for r in rows})
        dmax = max(r["depth"] for r in rows)
        fig = Figure(figsize=(5 * (len(acts) + 1), 3.8))
        rates = []
        for i, act in enumerate(acts):
            ax = fig.add_subplot(1, len(acts) + 1, i + 1)
            for bn, style in ((False, "-"), (True, "--")):
                for d in sorted({r["depth"] for r in rows}):
                    sel = [r for r in rows if r["activation"] == act and r["batchnorm"] == bn and r["depth"] == d]
                    if sel:
                        ls, ys = P.per_layer_median(sel)
                        ax.plot(ls, ys, style, label=f"{'BN' if bn else 'no BN'}, L = {d}")
                        if d == dmax:
                            rates.append((act, bn, per_layer_rate(ys), ys[0] / ys[-1]))
            ax.set_yscale("log")
            ax.set_xlabel("layer l")
            ax.set_ylabel("||dC/dW_l|| at init (median over seeds)")
            ax.set_title(act)
            ax.legend(fontsize=6)
        ax = fig.add_subplot(1, len(acts) + 1, len(acts) + 1)
        for act in acts:
            for bn, style in ((False, "-o"), (True, "--s")):
                pts = []
                for d in sorted({r["depth"] for r in rows}):
                    sel = [r for r in rows if r["activation"] == act and r["batchnorm"] == bn and r["depth"] == d]
                    if sel:
                        ls, ys = P.per_layer_median(sel)
                        pts.append((d, ys[0] / ys[-1]))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{act}, {'BN' if bn else 'no BN'}")
        ax.set_yscale("log")
        ax.set_xlabel("depth L")
        ax.set_ylabel("||dC/dW_1|| / ||dC/dW_L||")
        ax.legend(fontsize=7)
        paths = P.save(fig, outdir, "batchnorm_gradients")
        txt = "; ".join(f"{a} {'with' if bn else 'without'} BN: x{r:.3g} per layer (first/last {t:.3g})"
                        for a, bn, r, t in rates)
        verdict = (f"Gradient growth towards the input at L = {dmax}, init: {txt}. Thesis §4.3 (title only) and "
                   "Yang et al. 2019: BN makes gradients explode with depth at initialisation (they give a "
                   "ReLU rate of about sqrt(pi/(pi-1)) ~ 1.21 per layer in norm at large width and batch).")
        claims = [relu_claim(rows)]
        return [FigureResult("batchnorm_gradients", self.title, paths, "depthscope reproduce batchnorm",
                             self.reproduces, verdict, "Per-layer weight-gradient norm at initialisation with "
                             "(dashed) and without (solid) batch norm; right: first/last-layer ratio vs depth.",
                             claims=claims)]


#: Yang et al. 2019: with batch norm a ReLU net's gradient norm grows by sqrt(pi / (pi - 1)) per layer
#: towards the input at initialisation (large width and batch); ours agrees within BN_RATE_RTOL
BN_RELU_RATE = math.sqrt(math.pi / (math.pi - 1))
BN_RATE_RTOL = 0.1


def per_layer_rate(ys) -> float:
    """(g_1 / g_L)^(1/(L-1)) of per-layer gradient norms g_1..g_L: the geometric-mean growth per layer towards
    the input."""
    return math.exp(math.log(ys[0] / ys[-1]) / (len(ys) - 1))


def growth_rate(rows: list[dict]) -> float:
    """:func:`per_layer_rate` of the per-layer median gradient norm g_l = median over rows of ||dC/dW_l||."""
    return per_layer_rate(P.per_layer_median(rows)[1])


def relu_claim(rows: list[dict]) -> Claim:
    """:func:`bn_rate_claim` at the deepest depth with ReLU + BN units stored, its scale read from those units
    (width, batch, seeds): a store that is still filling is judged on what it holds."""
    relu = [r for r in rows if r["activation"] == "relu"]
    bn_rows = [r for r in relu if r["batchnorm"]]
    if not bn_rows:
        return bn_rate_claim({}, max((r["depth"] for r in rows), default=0))
    d = max(r["depth"] for r in bn_rows)
    at = {bn: [r for r in relu if r["depth"] == d and bool(r["batchnorm"]) == bn] for bn in (False, True)}
    rates = {("relu", bn): growth_rate(sel) for bn, sel in at.items() if sel}
    r0 = at[True][0]
    scale = (f"L={d}, N={r0['width']}, batch {r0['batch']}, {len({r['seed'] for r in at[True]})} seeds with BN, "
             f"{len({r['seed'] for r in at[False]})} without")
    return bn_rate_claim(rates, d, scale)


def bn_rate_claim(rates: dict[tuple[str, bool], float], depth: int, scale: str | None = None) -> Claim:
    """ReLU with BN: per-layer growth within BN_RATE_RTOL of sqrt(pi/(pi-1)) ~ 1.21 agrees; growing faster
    with BN than without is the trend; else differs ("not run" without a ReLU pair)."""
    bn, plain = rates.get(("relu", True)), rates.get(("relu", False))
    claim = "batch norm makes gradients explode with depth at initialisation (ReLU)"
    thesis = f"x{BN_RELU_RATE:.2f} per layer towards the input (Yang et al. 2019)"
    scale = scale or f"depth {depth}"
    if bn is None:
        return Claim(claim, thesis, "no ReLU runs with BN", scale, "not run", "no ReLU + BN unit stored")
    values = abs(bn - BN_RELU_RATE) <= BN_RATE_RTOL * BN_RELU_RATE
    return Claim(claim, thesis, f"x{bn:.3g} per layer with BN" + (f", x{plain:.3g} without" if plain else ""),
                 scale, judge(values, plain is not None and bn > plain and bn > 1),
                 f"tolerance: within {100 * BN_RATE_RTOL:.0f}% of x{BN_RELU_RATE:.2f}; the rate is for large width "
                 "and batch")
