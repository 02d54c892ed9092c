"""Walking-dead gradients (seed 004 / thesis ch. 5): nets with VNI -> 1 cannot fit XOR
although their gradients neither vanish nor explode.

Task: the four XOR points x in {-1, +1}^2 with target y = -x_1 x_2 (so +1 when the
signs differ), feed-forward net (thesis eq. 3.1) + linear readout, cost
1/2 mean (f(x) - y)^2, full-batch SGD. A run *succeeds* when at the end
max_i |f(x_i) - y_i| < 0.5 (every point on the right side, with margin).

VNI needs a covariance over many inputs; four points give a rank-<=3 covariance,
so VNI is measured on a *probe set* from the XOR distribution: the four corners
plus Gaussian noise of std ``probe_noise`` (``probe_per_corner`` samples each).

Each setting trains ``seeds`` nets at once as a stacked ensemble (weights of shape
(K, out, in), one ``baddbmm`` per layer); net k's parameters are exactly
``depthscope.nets.layer_params(spec, seed_k, l)``, so the ensemble equals K
separate :func:`~depthscope.nets.build_net` nets (``tests/test_xor.py`` checks this
against one-net-at-a-time training).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from statistics import median

import torch

from ..metrics import vni
from ..nets import NetSpec, layer_params
from ..store import Value
from . import _plotting as P
from .base import Claim, Experiment, FigureResult, RunContext, WorkUnit

#: name -> (depth, width, lr); the first is meant to keep VNI low, the others to drive it to 1.
SETTINGS = {
    "shallow_wide": (2, 32, 0.05),
    "deep_narrow": (16, 4, 0.05),
    "large_lr": (8, 32, 0.3),
}
FIT_MARGIN = 0.5


def xor_points(dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The four XOR points in {-1, +1}^2 and their targets y = -x1 x2 in {-1, +1}."""
    try:  # the shared data module, when present, is the single source of the dataset
        from ..data import xor as _xor  # type: ignore[attr-defined]

        x, y = _xor()
        x = torch.as_tensor(x, dtype=dtype)
        y = torch.as_tensor(y, dtype=dtype).reshape(-1)
        if x.shape == (4, 2) and set(y.tolist()) == {-1.0, 1.0}:
            return x, y
    except (ImportError, TypeError, ValueError):
        pass
    x = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=dtype)
    return x, -x[:, 0] * x[:, 1]


def probe_points(per_corner: int, noise: float, seed: int, dtype=torch.float32) -> torch.Tensor:
    """The XOR corners plus N(0, noise^2) jitter: (4 * per_corner, 2), for VNI."""
    x, _ = xor_points(dtype)
    g = torch.Generator().manual_seed(seed)
    return x.repeat_interleave(per_corner, 0) + noise * torch.randn(4 * per_corner, 2, generator=g, dtype=dtype)


class StackedMLP:
    """K feed-forward nets of one spec (with readout) as stacked tensors; params are leaf tensors."""

    def __init__(self, spec: NetSpec, seeds: list[int], dtype=torch.float32):
        if spec.arch != "feedforward" or spec.out_features is None:
            raise ValueError("StackedMLP needs arch='feedforward' and out_features set")
        self.spec = spec
        from ..activations import get_activation

        self.phi = get_activation(spec.activation)
        self.weights, self.biases = [], []
        for l in list(range(1, spec.depth + 1)) + [-1]:
            ps = [layer_params(spec, s, l, dtype) for s in seeds]
            self.weights.append(torch.stack([p[0] for p in ps]).requires_grad_(True))
            self.biases.append(torch.stack([p[1] for p in ps]).requires_grad_(True))

    @property
    def params(self) -> list[torch.Tensor]:
        return self.weights + self.biases

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x_1..x_L, each (K, P, N), for input x (P, in) shared by all nets."""
        a = x.unsqueeze(0).expand(self.weights[0].shape[0], -1, -1)
        out = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            a = self.phi(torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2)))
            out.append(a)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, P) outputs."""
        hs = self.hidden(x)
        a = hs[-1] if hs else x.unsqueeze(0).expand(self.weights[0].shape[0], -1, -1)
        return torch.baddbmm(self.biases[-1].unsqueeze(1), a, self.weights[-1].transpose(1, 2)).squeeze(-1)


def train_xor(spec: NetSpec, seeds: list[int], lr: float, steps: int, log_every: int,
              probe: torch.Tensor) -> dict:
    """Full-batch SGD on XOR for K stacked nets. Returns per-net logs (lists indexed by net)."""
    x, y = xor_points()
    net = StackedMLP(spec, seeds)
    K, L = len(seeds), spec.depth
    logs = {"step": [], "loss": [], "grad": [], "vni_last": []}

    def vnis() -> torch.Tensor:  # (K, L)
        with torch.no_grad():
            hs = net.hidden(probe)
        return torch.tensor([[float(vni(h[k])) for h in hs] for k in range(K)])

    vni0 = vnis()
    for step in range(steps + 1):
        out = net.forward(x)
        per_net = 0.5 * ((out - y) ** 2).mean(dim=1)  # (K,)
        grads = torch.autograd.grad(per_net.sum(), net.params)
        if step % log_every == 0 or step == steps:
            logs["step"].append(step)
            logs["loss"].append(per_net.detach().clone())
            logs["grad"].append(torch.stack([g.flatten(1).norm(dim=1) for g in grads[:L]], dim=1))  # (K, L)
            with torch.no_grad():
                last = net.hidden(probe)[-1]  # once for all K nets: per net it was K forward passes a log
                logs["vni_last"].append(torch.tensor([float(vni(last[k])) for k in range(K)]))
        if step == steps:
            break
        with torch.no_grad():
            for p, g in zip(net.params, grads):
                p -= lr * g
    with torch.no_grad():
        out = net.forward(x)
    err = (out - y).abs().max(dim=1).values
    finite = torch.isfinite(out).all(dim=1)
    return {"net": net, "vni0": vni0, "vni_end": vnis(), "success": (err < FIT_MARGIN) & finite,
            "max_err": err, "logs": logs}


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def _early(values: list[float], steps: list[int], total: int, frac: float = 0.25) -> float:
    sel = [v for v, s in zip(values, steps) if s <= frac * total]
    return sum(sel) / len(sel)


#: "VNI equal to 1" in seed 004's claim, made checkable: the last hidden layer's VNI at the end of training
VNI_ONE = 0.99


def xor_vni_claim(final_vni: dict[str, float], success: dict[str, bool], scale: str) -> Claim:
    """Seed 004: a net whose VNI is 1 cannot learn XOR. Of the nets whose last hidden layer ends with
    VNI >= VNI_ONE, none may fit (values agree); any that fits makes it differ; not judged when no net
    reached it. ``final_vni`` and ``success`` are keyed by unit."""
    claim = f"nets whose VNI reached 1 cannot learn XOR (last hidden layer, VNI >= {VNI_ONE:g} at the end)"
    thesis = "cannot learn (seed 004; no counts)"
    high = [k for k, v in final_vni.items() if v >= VNI_ONE and k in success]
    fit = sum(success[k] for k in high)
    low = [k for k, v in final_vni.items() if v < VNI_ONE and k in success]
    rest = f"; below it {sum(success[k] for k in low)} of {len(low)} fit" if low else ""
    if not high:
        return Claim(claim, thesis, f"no net ended with VNI >= {VNI_ONE:g}{rest}", scale, "not judged",
                     "no net to judge")
    return Claim(claim, thesis, f"{fit} of {len(high)} such nets fit{rest}", scale,
                 "agree" if fit == 0 else "differs", "tolerance: none of them fits")


def xor_scale(rows: list[dict]) -> str:
    """The settings, seeds and steps the stored XOR units ran at."""
    units = {r["key"]: r for r in rows}.values()
    parts = []
    for name in dict.fromkeys(r["setting"] for r in units):
        sel = [r for r in units if r["setting"] == name]
        r0 = sel[0]
        parts.append(f"{name} L={r0['depth']}, N={r0['width']}, lr {r0['lr']:g}: {len(sel)} nets")
    steps = ", ".join(str(v) for v in sorted({r["steps"] for r in units}))
    return "; ".join(parts) + f"; {steps} full-batch steps"


class XOR(Experiment):
    name = "xor"
    title = "Walking-dead gradients: XOR success vs VNI at comparable gradient norms"
    reproduces = "seed 004 / thesis ch. 5 (walking dead gradients on XOR)"
    presets = {
        "quick": {"settings": SETTINGS, "seeds": 20, "steps": 1000, "log_every": 50, "activation": "tanh",
                  "probe_per_corner": 64, "probe_noise": 0.3},
        "paper": {"settings": SETTINGS, "seeds": 100, "steps": 10000, "log_every": 100, "activation": "tanh",
                  "probe_per_corner": 256, "probe_noise": 0.3},
    }

    def units(self, params: dict) -> list[WorkUnit]:
        out = []
        for name, (depth, width, lr) in params["settings"].items():
            spec = {"setting": name, "depth": depth, "width": width, "lr": lr, "activation": params["activation"],
                    "steps": params["steps"], "probe_per_corner": params["probe_per_corner"],
                    "probe_noise": params["probe_noise"]}
            out += [WorkUnit(spec, s) for s in range(params["seeds"])]
        return out

    def run(self, ctx: RunContext) -> dict:
        p = ctx.params
        units = self.units(p)
        done = ctx.store.done_keys(self.name)
        todo = [u for u in units if u.key not in done]
        counts = {"total": len(units), "skipped": len(units) - len(todo), "ran": 0, "failed": 0}
        groups = P.group([{"u": u, "setting": u.spec["setting"]} for u in todo], "setting")
        from ..progress import Progress

        with Progress(len(todo), self.name, quiet=ctx.quiet) as bar, P.threads(1):
            for (setting,), items in groups.items():
                us = [it["u"] for it in items]
                sp = us[0].spec
                spec = NetSpec(depth=sp["depth"], width=sp["width"], activation=sp["activation"],
                               in_features=2, out_features=1)
                probe = probe_points(sp["probe_per_corner"], sp["probe_noise"], seed=12345)
                t0 = time.time()
                r = train_xor(spec, [u.seed for u in us], sp["lr"], sp["steps"], p["log_every"], probe)
                for k, u in enumerate(us):
                    ctx.store.record(self.name, u.key, spec=u.spec, seed=u.seed, values=self._values(r, k),
                                     started=t0)
                    counts["ran"] += 1
                    bar.update()
        return counts

    @staticmethod
    def _values(r: dict, k: int) -> list[Value]:
        logs = r["logs"]
        vals = [Value("success", float(r["success"][k])), Value("max_error", float(r["max_err"][k]))]
        L = r["vni0"].shape[1]
        for l in range(L):
            vals.append(Value("vni_init", float(r["vni0"][k, l]), l + 1))
            vals.append(Value("vni", float(r["vni_end"][k, l]), l + 1))
        for i, step in enumerate(logs["step"]):
            vals.append(Value("loss", float(logs["loss"][i][k]), None, step))
            vals.append(Value("vni_last", float(logs["vni_last"][i][k]), None, step))
            g = logs["grad"][i][k]
            vals.append(Value("grad_rms", float(g.pow(2).mean().sqrt()), None, step))
            for l in range(L):
                vals.append(Value("grad_norm", float(g[l]), l + 1, step))
        steps = logs["step"]
        rms = [float(logs["grad"][i][k].pow(2).mean().sqrt()) for i in range(len(steps))]
        vals.append(Value("grad_rms_early", _early(rms, steps, steps[-1])))
        return vals

    def figures(self, store, outdir: Path, params: dict) -> list[FigureResult]:
        from matplotlib.figure import Figure

        rows = store.rows(self.name)
        if not rows:
            return P.missing(self.name, "XOR runs")
        by = P.group(rows, "quantity")
        settings = list(dict.fromkeys(r["setting"] for r in rows))
        succ = {r["key"]: r["value"] > 0.5 for r in by.get(("success",), [])}
        setting_of = {r["key"]: r["setting"] for r in rows}
        last_layer_vni = {}
        for r in by.get(("vni",), []):
            if r["layer"] == r["depth"] and _finite(r["value"]):
                last_layer_vni[r["key"]] = r["value"]

        # constrained layout: each panel's y-label gets its own room instead of running into its neighbour
        fig = Figure(figsize=(16, 3.8), layout="constrained")
        axs = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
        colors = dict(zip(settings, ["tab:blue", "tab:red", "tab:orange", "tab:green", "tab:purple"]))
        for q, ax, ylab in (("loss", axs[0], "training loss"), ("vni_last", axs[1], "VNI of last hidden layer"),
                            ("grad_rms", axs[2], r"RMS over layers of $\|\partial C/\partial W_l\|$")):
            for key, rs in P.group(by.get((q,), []), "key").items():
                rs = sorted(rs, key=lambda r: r["step"])
                k = key[0]
                rs = [r for r in rs if _finite(r["value"])]
                ax.plot([r["step"] for r in rs], [r["value"] for r in rs], color=colors[setting_of[k]],
                        ls="-" if succ.get(k) else ":", lw=0.7, alpha=0.6)
            ax.set_xlabel("step")
            ax.set_ylabel(ylab)
            ax.set_yscale("log")
        axs[1].set_yscale("linear")
        axs[1].set_ylim(0, 1.02)
        # success rate per setting
        lines = []
        rates = {}
        for i, s in enumerate(settings):
            ks = [k for k in succ if setting_of[k] == s]
            n_ok = sum(succ[k] for k in ks)
            rates[s] = (n_ok, len(ks))
            vs = [last_layer_vni[k] for k in ks if k in last_layer_vni] or [math.nan]
            axs[3].bar(i, n_ok / max(len(ks), 1), color=colors[s])
            axs[3].text(i, n_ok / max(len(ks), 1) + 0.02, f"{n_ok}/{len(ks)}\nVNI~{median(vs):.2f}",
                        ha="center", fontsize=8)
            fail_v = [last_layer_vni[k] for k in ks if k in last_layer_vni and not succ[k]]
            lines.append(f"{s}: {n_ok}/{len(ks)} fit, median final VNI(last layer) {median(vs):.2f}"
                         + (f" (failed runs: {median(fail_v):.2f})" if fail_v else ""))
        axs[3].set_xticks(range(len(settings)))
        axs[3].set_xticklabels(settings, fontsize=8)
        axs[3].set_ylim(0, 1.2)
        axs[3].set_ylabel("success rate")
        for s in settings:
            d, w, lr = next((r["depth"], r["width"], r["lr"]) for r in rows if r["setting"] == s)
            axs[0].plot([], [], color=colors[s], label=f"{s} (L={d}, N={w}, lr={lr:g})")
        axs[0].plot([], [], "k:", label="failed run")
        axs[0].legend(fontsize=7)
        paths = P.save(fig, outdir, "xor_walking_dead")

        early_all = {r["key"]: r["value"] for r in by.get(("grad_rms_early",), [])}
        early = {k: v for k, v in early_all.items() if _finite(v)}
        n_div = len(early_all) - len(early)
        ok = [v for k, v in early.items() if succ.get(k)]
        bad = [v for k, v in early.items() if k in succ and not succ[k]]
        scale = xor_scale(rows)
        claim = Claim("failing nets' gradients are comparable to succeeding nets' (walking dead)",
                      "neither vanish nor explode", "no failing (or no succeeding) nets", scale, "not judged",
                      "nothing to compare")
        if ok and bad:
            ratio = median(bad) / median(ok)
            within = 0.1 <= ratio <= 10
            claim = Claim(claim.claim, claim.thesis, f"median early gradient RMS failing / succeeding = {ratio:.2g} "
                          f"({len(bad)} vs {len(ok)} nets)", scale, "agree" if within else "differs",
                          "tolerance: within a factor of 10")
            gtxt = (f"median early-training gradient RMS of failing nets / succeeding nets = {ratio:.2g} "
                    f"({len(bad)} vs {len(ok)} nets): " + ("within a factor of 10, i.e. the failures are not "
                                                          "vanishing/exploding gradients (walking dead)."
                                                          if within else "NOT within a factor of 10, so gradient "
                                                          "scale could explain these failures.")
                    + (f" {n_div} diverged (non-finite) runs excluded." if n_div else ""))
        else:
            gtxt = "no failing (or no succeeding) nets, so the gradient comparison is not possible."
        verdict = "; ".join(lines) + ". " + gtxt + (" Thesis: nets with VNI = 1 cannot learn XOR although "
                                                    "their gradients neither vanish nor explode.")
        return [FigureResult("xor_walking_dead", self.title, paths, "depthscope reproduce xor", self.reproduces,
                             verdict, "Training loss, VNI of the last hidden layer (on a noisy probe set around "
                             "the four corners), and RMS gradient norm over training, one line per seed "
                             "(dotted = failed to fit); right: success rate per setting with counts.",
                             claims=[xor_vni_claim(last_layer_vni, succ, scale), claim])]
