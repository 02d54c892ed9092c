"""Cost of the training experiments' paper presets, from measured step times (thesis §3.2, ch. 4-5, seeds 001/003/004).

    PYTHONPATH=src python benchmarks/bench_paper_training.py                 # every preset, ~5-10 min on 2 busy cores
    PYTHONPATH=src python benchmarks/bench_paper_training.py fig3.5 xor      # some of them
    PYTHONPATH=src python benchmarks/bench_paper_training.py --tflops 30     # the GPU throughput assumed

For every paper preset (fig3.4, fig3.5, fig3.6, gradients, xor, dvcnn, batchnorm, fig5) it lists the units
(``Experiment.units`` of the resolved preset), groups them by shape, times the experiment's *own* code for a
few steps of each shape, and extrapolates: projected seconds = sum over units of the unit's modelled time.
How each is modelled (every coefficient measured here, with one torch thread, on the process' CPU clock so
that other jobs on a shared machine do not inflate it):

* sweep presets (fig3.4, fig3.5, fig5): the engine's ``Ensemble.train_step`` (one member, as the engine
  stacks at width 500 on CPU) timed over a few steps, and ``Ensemble.probe_metrics`` (VNI of every layer on
  the preset's probe) timed once; a run costs epochs x steps/epoch x step + (epochs + 1 + dense) x probe.
  fig5's 11 depths: measured at depths 25 and 275 and fitted t(L) = a + b L (cost is linear in depth). A run
  that reaches the target accuracy stops early: fig5's figure is an upper bound (every run to 100 epochs);
  fig3.4 and fig3.5 use target 1.0 (every run trains its full budget).
* fig3.6, gradients, xor: the experiment's unit function run at 2-3 small step counts and solved for
  (set-up, per step, per recorded measurement) by least squares; extrapolated to the preset's steps.
* dvcnn: one SGD step and one forward pass of a batch at depths 10, 100, 300 (width 784), fitted linear in
  depth and extrapolated to 1000 and 2000; a unit costs epochs x (n_train / batch) x (step + forward) (the
  epoch's error is a forward over the training set). ReLU units blow up early (seed 003), so theirs is an
  upper bound.
* batchnorm: one unit per shape timed whole (a unit is one forward/backward at initialisation).

"2 cores" is the CPU total / 2: two units at a time (the sweep engine's local workers, or two processes on
two experiments); the table also gives one-core time. The GPU column is FLOPs / the assumed sustained
throughput (``--tflops``, default 30 TFLOP/s float32; small matmuls such as 100 x 500 x 500 reach a fraction
of it unless many runs are stacked, so it is a lower bound on the time). FLOPs per step: 6 B x (weights)
(forward 2, backward 4); a probe 2 P x (weights) + 2 P N^2 per layer (the covariance of the VNI).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter

import numpy as np
import torch

from depthscope.experiments.base import get_experiment, resolve

CLOCK = time.process_time
ORDER = ["fig3.4", "fig3.5", "fig3.6", "gradients", "xor", "dvcnn", "batchnorm", "fig5"]


def timed(fn, *a, **k) -> float:
    """CPU seconds of fn(*a, **k); a unit that fails (a blow-up) is timed up to its failure."""
    from depthscope.experiments.base import UnitFailed

    t = CLOCK()
    try:
        fn(*a, **k)
    except UnitFailed:
        pass
    return CLOCK() - t


def lstsq(rows: list[list[float]], ts: list[float]) -> np.ndarray:
    """Non-negative-ish coefficients of t = rows @ c (least squares; a negative coefficient, from timing noise
    on a busy machine, is set to 0)."""
    c = np.linalg.lstsq(np.array(rows, dtype=float), np.array(ts, dtype=float), rcond=None)[0]
    return np.maximum(c, 0.0)


def mlp_weights(depth: int, width: int, d_in: int = 784, classes: int = 10) -> int:
    return d_in * width + (depth - 1) * width * width + width * classes


# ---------------------------------------------------------------------------
# sweep presets: the engine
# ---------------------------------------------------------------------------
def engine_times(depth: int, width: int, optimizer: str, batch: int, probe: int, steps: int = 2) -> tuple[float, float]:
    """(seconds per member-step, seconds per probe) of the training engine for one member."""
    from depthscope.ensemble import Ensemble
    from depthscope.train import RunSpec

    r = RunSpec(depth, width, "tanh", "gaussian", optimizer, 1e-3, 0, batch_size=batch)
    ens = Ensemble([(r.net_spec(784), 0)], optimizer, [1e-3])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, batch, 784, generator=g)  # (K, B, D): the engine's per-member batches
    y = torch.randint(0, 10, (1, batch), generator=g)
    ens.train_step(x, y)  # warm-up
    t = CLOCK()
    for _ in range(steps):
        loss, *_ = ens.train_step(x, y)
        loss.cpu()
    step = (CLOCK() - t) / steps
    p = torch.rand(probe, 784, generator=g)
    return step, timed(ens.probe_metrics, p)


def sweep_cost(name: str, p: dict, fit_depths: list[int] | None = None) -> dict:
    exp = get_experiment(name)
    runs = [u.spec for u in exp.units(p)]
    n_train = p["n_train"] if p["n_train"] is not None else 60000
    spe = math.ceil(n_train / p["batch_size"])
    shapes = Counter((s["depth"], s["optimizer"]) for s in runs)
    depths = sorted({d for d, _ in shapes})
    opts = sorted({o for _, o in shapes})
    times = {}
    for o in opts:
        measure = fit_depths or depths
        m = {d: engine_times(d, p["width"], o, p["batch_size"], p["probe_size"]) for d in measure}
        if fit_depths:
            cs = lstsq([[1, d] for d in measure], [m[d][0] for d in measure])
            cp = lstsq([[1, d] for d in measure], [m[d][1] for d in measure])
            m = {d: (cs[0] + cs[1] * d, cp[0] + cp[1] * d) for d in depths}
        times.update({(d, o): m[d] for d in depths})
    E, dense = p["epochs"], p["vni_dense_steps"]
    cpu = flops = 0.0
    for (d, o), n in shapes.items():
        st, pr = times[(d, o)]
        cpu += n * (E * spe * st + (E + 1 + dense) * pr)
        w = mlp_weights(d, p["width"])
        flops += n * (E * spe * 6 * p["batch_size"] * w
                      + (E + 1 + dense) * (2 * p["probe_size"] * w + 2 * p["probe_size"] * p["width"] ** 2 * d))
    d0, o0 = max(shapes)
    how = (f"{len(runs)} runs x {E} epochs x {spe} steps; engine step {1e3 * times[(d0, o0)][0]:.0f} ms, "
           f"probe {times[(d0, o0)][1]:.2f} s at L={d0} ({o0})")
    return {"units": len(runs), "cpu": cpu, "flops": flops, "how": how}


# ---------------------------------------------------------------------------
# experiments with their own loops
# ---------------------------------------------------------------------------
def fig36_cost(p: dict) -> dict:
    from depthscope.experiments.training_dynamics import gaussian_gradient_run, record_steps

    kw = dict(lr=p["lr"], batch=p["batch"], variance=p["variance"], reduction=p["reduction"])
    trials = [(0, 1000), (2, 1000), (4, 1000)]  # (steps, every): records {0}, {0,1,2}, {0,1,2,4}
    rows, ts = [], []
    for s, every in trials:
        ts.append(timed(gaussian_gradient_run, p["depth"], p["width"], 0, steps=s, every=every, **kw))
        rows.append([1, s, len(record_steps(s, every))])
    c = lstsq(rows, ts)
    per = c[0] + c[1] * p["steps"] + c[2] * len(record_steps(p["steps"], p["every"]))
    n = p["seeds"]
    w = p["depth"] * p["width"] ** 2
    rec = len(record_steps(p["steps"], p["every"]))
    flops = n * (p["steps"] * 6 * p["batch"] * w + rec * 4 * p["batch"] * w)
    return {"units": n, "cpu": n * per, "flops": flops,
            "how": f"{n} seeds x {p['steps']} steps (batch {p['batch']}); {1e3 * c[1]:.0f} ms/step, "
                   f"{1e3 * c[2]:.0f} ms/record x {rec} records"}


def gradients_cost(p: dict) -> dict:
    exp = get_experiment("gradients")
    from depthscope.experiments.base import WorkUnit

    units = exp.units(p)
    shapes = Counter((u.spec["activation"], u.spec["sigma_w2"], u.spec["depth"]) for u in units)
    cpu = flops = 0.0
    last = ""
    for (a, sw2, d), n in shapes.items():
        base = next(u for u in units if (u.spec["activation"], u.spec["sigma_w2"], u.spec["depth"]) == (a, sw2, d))
        ts, rows = [], []
        for s in (10, 100, 300):  # 2 vs 12 steps left the per-step cost inside the noise of the 2 measurements
            u = WorkUnit({**base.spec, "steps": s}, 0)
            ts.append(timed(exp._run, u))
            rows.append([1, s])
        c = lstsq(rows, ts)
        cpu += n * (c[0] + c[1] * p["steps"])
        flops += n * p["steps"] * 6 * p["batch"] * d * p["width"] ** 2
        last = f"L={d} {a}: set-up + 2 measurements {c[0]:.2f} s, {1e3 * c[1]:.1f} ms/step (float64)"
    return {"units": len(units), "cpu": cpu, "flops": flops,
            "how": f"{len(units)} units x {p['steps']} steps; {last}"}


def xor_cost(p: dict) -> dict:
    from depthscope.experiments.xor import probe_points, train_xor
    from depthscope.nets import NetSpec

    cpu = flops = 0.0
    seeds = list(range(p["seeds"]))
    probe = probe_points(p["probe_per_corner"], p["probe_noise"], seed=12345)
    parts = []
    for name, (depth, width, lr) in p["settings"].items():
        spec = NetSpec(depth=depth, width=width, activation=p["activation"], in_features=2, out_features=1)
        rows, ts = [], []
        # logs {0}, {0, 100}, {0, 300}, {0, 20, ..., 100}: 20 vs 60 steps left a tiny net's per-step cost
        # inside the noise of its set-up, and the per-log cost needs a trial with more logs at equal steps
        for steps, every in ((0, 10**9), (100, 10**9), (300, 10**9), (100, 20)):
            ts.append(timed(train_xor, spec, seeds, lr, steps, every, probe))
            rows.append([1, steps, len(set(range(0, steps + 1, every)) | {steps})])
        c = lstsq(rows, ts)
        logs = len(set(range(0, p["steps"] + 1, p["log_every"])) | {p["steps"]})
        cpu += c[0] + c[1] * p["steps"] + c[2] * logs
        flops += len(seeds) * p["steps"] * 6 * 4 * depth * width * width
        parts.append(f"{name} {1e3 * c[1]:.1f} ms/step + {c[2]:.2f} s/log x {logs}")
    return {"units": len(seeds) * len(p["settings"]), "cpu": cpu, "flops": flops,
            "how": f"{len(p['settings'])} settings x {p['seeds']} stacked nets x {p['steps']} steps; "
                   + ", ".join(parts)}


def dvcnn_cost(p: dict) -> dict:
    from depthscope.nets import NetSpec, build_net

    exp = get_experiment("dvcnn")
    units = exp.units(p)
    W, B = p["width"], p["batch"]
    fit = [10, 100, 300]
    per_act = {}
    for act in p["activations"]:
        st, fw = [], []
        for d in fit:
            spec = NetSpec(depth=d, width=W, activation=act, sigma_w2=1.0, bias_value=-2.0 if act == "sigmoid" else 0.0,
                           arch="volume", in_features=784, out_features=10)
            net = build_net(spec, 0)
            x = torch.rand(B, 784)
            y = torch.randint(0, 10, (B,))
            opt = torch.optim.SGD(net.parameters(), lr=1e-9)

            def step():
                loss = torch.nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()

            step()
            st.append(timed(step))
            with torch.no_grad():
                fw.append(timed(net, x))
        cs = lstsq([[1, d] for d in fit], st)
        cf = lstsq([[1, d] for d in fit], fw)
        per_act[act] = (cs, cf)
    cpu = flops = 0.0
    steps = p["epochs"] * math.ceil(p["n_train"] / B)
    for u in units:
        cs, cf = per_act[u.spec["activation"]]
        d = u.spec["depth"]
        cpu += steps * (cs[0] + cs[1] * d + cf[0] + cf[1] * d)
        flops += steps * 8 * B * d * W * W
    cs, cf = per_act[p["activations"][0]]
    return {"units": len(units), "cpu": cpu, "flops": flops,
            "how": f"{len(units)} units x {steps} steps (W={W}); step {1e3 * cs[1]:.1f} ms + forward "
                   f"{1e3 * cf[1]:.1f} ms per layer (fit over L = 10, 100, 300; ReLU units blow up early: upper bound)"}


def batchnorm_cost(p: dict) -> dict:
    from depthscope.experiments.base import RunContext

    exp = get_experiment("batchnorm")
    units = exp.units(p)
    by = {}
    for u in units:
        by.setdefault((u.spec["activation"], u.spec["depth"], u.spec["batchnorm"]), []).append(u)
    cpu = flops = 0.0
    for us in by.values():
        t = timed(exp.run_unit, us[0], RunContext(store=None, preset="paper", params=p))  # type: ignore[arg-type]
        cpu += t * len(us)
        flops += len(us) * 6 * p["batch"] * us[0].spec["depth"] * p["width"] ** 2
    return {"units": len(units), "cpu": cpu, "flops": flops,
            "how": f"{len(units)} units, each one forward/backward at init (timed one per shape)"}


def cost(name: str) -> dict:
    p, _ = resolve(name, "paper")
    if name in ("fig3.4", "fig3.5"):
        return sweep_cost(name, p)
    if name == "fig5":
        return sweep_cost(name, p, fit_depths=[25, 275])
    return {"fig3.6": fig36_cost, "gradients": gradients_cost, "xor": xor_cost, "dvcnn": dvcnn_cost,
            "batchnorm": batchnorm_cost}[name](p)


def hms(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    if s < 730 * 86400:
        return f"{s / 86400:.0f} d"
    return f"{s / 86400 / 365.25:.1f} y"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=ORDER, help=f"presets (default: {' '.join(ORDER)})")
    ap.add_argument("--tflops", type=float, default=30.0, help="assumed sustained GPU float32 TFLOP/s")
    a = ap.parse_args(argv)
    for n in a.names:
        if n not in ORDER:
            ap.error(f"unknown preset {n!r}; expected some of: {', '.join(ORDER)}")
    torch.set_num_threads(1)
    print(f"paper presets, one torch thread, CPU-clock timings; 2 cores = two units at a time; GPU: FLOPs at "
          f"{a.tflops:g} TFLOP/s")
    print(f"{'preset':10s} {'units':>6} {'1 core':>8} {'2 cores':>8} {'GFLOP/s':>8} {'TFLOP':>9} {'1 GPU':>8}  how")
    for n in a.names:
        c = cost(n)
        print(f"{n:10s} {c['units']:>6} {hms(c['cpu']):>8} {hms(c['cpu'] / 2):>8} "
              f"{c['flops'] / max(c['cpu'], 1e-9) / 1e9:>8.1f} {c['flops'] / 1e12:>9.1f} "
              f"{hms(c['flops'] / (a.tflops * 1e12)):>8}  {c['how']}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
