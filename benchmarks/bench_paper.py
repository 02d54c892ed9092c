"""Cost of chapter 3's paper presets (fig3.1, fig3.2, fig3.3, table3.1, effective-nodes) on this machine.

Each experiment's cost is units x per-unit time, and a unit's time is built from measured step
times: one layer of the net (the weights drawn as the experiment draws them, the matmul, the
activation) at the unit's samples x width, and one R_sq measurement at that size. Times are
single-thread CPU seconds (``time.process_time``), which the other jobs on a shared machine
inflate much less than wall time. The projection on 2 cores assumes the units are spread over
two single-thread processes (what table3.1's ``workers = 2`` does; the other experiments run on
one process of 2 threads, about as fast for their matmul-bound units): CPU total / 2.

Table 3.1's units stop when R_sq exceeds the preset's ``stop_above`` (0.9 at the paper preset), at a
depth the benchmark cannot know before the run: it takes each row's layers from a run's store (``--store``, quantity ``layers_computed``)
where there is one, else an estimate: the thesis' depth + 25% for the rows that cross (x 2.5 when
the nets run on to 0.99), the cap (10000) for the "> 10000" rows, 1000 for the one-layer relu
branch. The fast path is projected (R_sq every ``vni_every`` layers past ``dense_until``, at the log
depths and near the thresholds; with ``decided_median``, 3 of 5 seeds for the rows that run to the cap
unless a run's store shows them crossing), for the paper preset as it is and, beside it, for the
previous one (1000 samples, build_net's float64-QR orthogonal weights, R_sq every 10 layers:
``PREVIOUS_TABLE31``), from the same step times. Orthogonal layers are timed with the preset's
``orthogonal_sampler``.

    PYTHONPATH=src python benchmarks/bench_paper.py [--store runs/paper-ch3] [--reps 3] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from depthscope.experiments.base import get_experiment  # noqa: E402
from depthscope.experiments.chapter3 import _stream_step, log_depths  # noqa: E402
from depthscope.metrics import vni  # noqa: E402
from depthscope.nets import NetSpec  # noqa: E402

#: MNIST images available here (the 10k test set; the paper presets ask for up to 50000 and get these)
MNIST_AVAILABLE = 10_000


def _cpu(f, reps: int) -> float:
    f()  # warm-up (allocations, first-call dispatch)
    c0 = time.process_time()
    for _ in range(reps):
        f()
    return (time.process_time() - c0) / reps


_cache: dict = {}


def step_s(samples: int, width: int, act: str = "tanh", init: str = "gaussian", arch: str = "feedforward",
           branch: str = "one", reps: int = 3, sampler: str = "qr") -> float:
    """CPU seconds of one hidden layer (weights drawn + applied) on ``samples`` inputs of width ``width``;
    ``sampler`` is how orthogonal weights are drawn ("qr": build_net's float64 QR; "householder": reflectors)."""
    sampler = sampler if init == "orthogonal" else "qr"
    key = ("step", samples, width, act, init, arch, branch, sampler)
    if key not in _cache:
        spec = NetSpec(50, width, act, init, arch=arch, residual_scale=0.1, branch=branch)
        x = torch.randn(samples, width)
        layer = iter(range(2, 10_000))
        _cache[key] = _cpu(lambda: _stream_step(spec, 0, next(layer), x, "cpu", sampler), reps)
    return _cache[key]


def vni_s(samples: int, width: int, reps: int = 3) -> float:
    """CPU seconds of one R_sq (eq. 3.5; float64 Gram) of ``samples`` x ``width`` activations."""
    key = ("vni", samples, width)
    if key not in _cache:
        x = torch.randn(samples, width)
        _cache[key] = _cpu(lambda: vni(x), reps)
    return _cache[key]


#: where the MNIST IDX files are (--data-dir)
DATA_DIR: list[str | None] = [None]


def mnist_load_s(preprocess: str, reps: int = 1) -> float:
    """CPU seconds of one unit's MNIST load and preprocessing (every image; NaN without the files)."""
    from depthscope.data import batch_source

    key = ("mnist", preprocess)
    if key not in _cache:
        try:
            _cache[key] = _cpu(lambda: batch_source("mnist", None, seed=0, split="any", preprocess=preprocess,
                                                    variance=0.1, data_dir=DATA_DIR[0]), reps)
        except Exception:  # no MNIST here: the units needing it are not run (their cost is then 0)
            _cache[key] = math.nan
    return _cache[key]


def cost_fig31(p: dict, reps: int) -> list[tuple[str, int, float]]:
    return [(f"width {w}", 1, p["depth"] * step_s(p["n"], w, p["activation"], reps=reps) + vni_s(p["n"], w, reps))
            for w in p["widths"]]


def cost_fig32(p: dict, reps: int) -> list[tuple[str, int, float]]:
    out, nd = [], len(p["depths"])
    n_mnist = min(p["n_mnist"] or MNIST_AVAILABLE, MNIST_AVAILABLE)
    d = max(p["depths"])
    for w in p["widths"]:
        # an i.i.d. unit also runs the relu panel's nets, one per init, on the same inputs
        relu = sum(d * step_s(p["n_iid"], w, "relu", init, reps=reps) + nd * vni_s(p["n_iid"], w, reps)
                   for init in p.get("relu_inits", []))
        out.append((f"width {w}, i.i.d. ({p['n_iid']} samples, + relu {'/'.join(p.get('relu_inits', []))})",
                    p["seeds"], d * step_s(p["n_iid"], w, p["activation"], reps=reps) + nd * vni_s(p["n_iid"], w, reps)
                    + relu))
        for pre in p["mnist_preprocess"]:
            load = mnist_load_s(pre)
            out.append((f"width {w}, MNIST {pre} ({n_mnist} images)", p["seeds"],
                        d * step_s(n_mnist, w, p["activation"], reps=reps) + nd * vni_s(n_mnist, w, reps) + load))
    return out


def cost_fig33(p: dict, reps: int) -> list[tuple[str, int, float]]:
    n = min(p["n"], MNIST_AVAILABLE)
    a, b = p["row_a"], p["row_b"]
    load = mnist_load_s("center")
    # rho^2 of the kept layer costs about one R_sq (a Gram of the nodes)
    out = [(f"row a: width {a['width']}, depth {max(a['depths'])}, {n} images", 1,
            max(a["depths"]) * step_s(n, a["width"], p["activation"], reps=reps)
            + 2 * len(a["depths"]) * vni_s(n, a["width"], reps) + load)]
    out += [(f"row b: width {w}, depth {b['depth']}", 1,
             b["depth"] * step_s(n, w, p["activation"], reps=reps) + 2 * vni_s(n, w, reps) + load)
            for w in b["widths"]]
    return out


def cost_effective_nodes(p: dict, reps: int) -> list[tuple[str, int, float]]:
    nv = len(log_depths(p["depth"], 40))
    return [(f"width {w}", p["seeds"], p["depth"] * step_s(p["n"], w, p["activation"], reps=reps)
             + nv * vni_s(p["n"], w, reps)) for w in p["widths"]]


def _measured_layers(store_dir: str | None, quantity: str = "layers_computed") -> dict[tuple, list[float]]:
    if not store_dir:
        return {}
    from depthscope.store import Store

    out: dict[tuple, list[float]] = {}
    with Store(store_dir, readonly=True) as st:
        for r in st.rows("table3.1", quantity):
            out.setdefault((r["arch"], r["init"], r["activation"], r.get("branch")), []).append(r["value"])
    return out


def cost_table31(p: dict, reps: int, store_dir: str | None, fast: bool) -> list[tuple[str, int, float]]:
    from depthscope.experiments.chapter3 import THESIS_TABLE, Table31, table31_cost_rank

    rows = sorted({(u.spec["arch"], u.spec["init"], u.spec["activation"], u.spec.get("branch"))
                   for u in Table31().units(p)}, key=str)
    measured = _measured_layers(store_dir)
    measured_depth = _measured_layers(store_dir, f"max_depth@{p['threshold']:g}")
    S, N, cap = p["n"], p["width"], p["max_depth"]
    nlog = len(log_depths(cap))
    out = []
    for arch, init, act, branch in rows:
        got = measured.get((arch, init, act, branch))
        thesis = THESIS_TABLE.get((arch, init, act)) if branch in (None, "two") else None
        finite = thesis is not None and not thesis.startswith(">")
        if got:
            layers, how = sum(got) / len(got), "measured"
        elif finite:  # a row that crosses: the thesis' depth + 25% (the agreement tolerance), then the stop
            layers, how = min(cap, 1.25 * float(thesis)), "thesis + 25%"
        elif act == "relu" and branch == "one":  # crosses by L ~ 100 at any width (docs/theory.md)
            layers, how = min(1000, cap), "bound"
        else:
            layers, how = cap, "cap"
        if p.get("stop_above", 0.99) > 0.9 and finite and not got:
            layers, how = min(cap, 2.5 * layers), how + ", x2.5 to reach 0.99"  # relu: 0.9 at ~210, 0.99 at 350-620
        step = step_s(S, N, act, init, arch, branch or "one", reps=reps, sampler=p.get("orthogonal_sampler", "qr"))
        if fast:
            # dense to dense_until, every k-th after, the log depths, and (a row that crosses) densely in the
            # guard band below each threshold: counted as a fifth of its layers
            n_vni = min(layers, p["dense_until"] + layers / p["vni_every"] + nlog + (layers / 5 if finite else 0))
        else:
            n_vni = layers
        label = f"{arch} {init} {act}" + (f" ({branch}-layer branch)" if branch else "") + \
            f": {layers:.0f} layers ({how}), {n_vni:.0f} R_sq"
        seeds = p["seeds"]
        if fast and p.get("decided_median") and table31_cost_rank({"arch": arch, "init": init, "activation": act,
                                                                    **({"branch": branch} if branch else {})}) >= 2:
            never = [g for g in (measured_depth.get((arch, init, act, branch)) or [math.inf])]
            if all(math.isinf(d) for d in never):  # a majority never crosses: the other seeds are not run
                seeds = p["seeds"] // 2 + 1
        out.append((label, seeds, layers * step + n_vni * vni_s(S, N, reps)))
    return out


#: table3.1's paper preset before issue 12's last changes (1000 samples, build_net's float64-QR orthogonal
#: weights, R_sq every 10 layers): projected beside the current one, from the same step times
PREVIOUS_TABLE31 = {"n": 1000, "orthogonal_sampler": "qr", "vni_every": 10}
PREVIOUS = "table3.1 (previous: n 1000, qr, every 10)"


def measured_tables(run_dir: str, outdir: str) -> str:
    """The verdict rows (claim | thesis | ours | scale | verdict) of chapter 3's experiments in a run's
    store, as markdown, plus each table3.1 row's seeds, CPU seconds and layers: what docs/reproduce.md shows."""
    from depthscope.store import Store

    lines = ["| experiment | claim | thesis | ours | scale | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    cost = ["| row (width, samples, orthogonal sampler) | seeds run | max depth @0.5 (median) | "
            "max depth @0.9 (median) | layers computed (mean) | CPU s per unit (mean) |",
            "| --- | --- | --- | --- | --- | --- |"]
    with Store(run_dir, readonly=True) as st:
        for name in ("fig3.1", "fig3.2", "fig3.3", "effective-nodes", "table3.1"):
            if not st.done_keys(name):
                lines.append(f"| {name} | - | - | - | - | not run yet |")
                continue
            meta = st.get_meta(f"params:{name}") or {}
            exp = get_experiment(name)
            variants = [("", meta.get("params") or exp.params("paper"))]
            if name == "table3.1" and not meta.get("params"):
                # the figures read only the units of the params given: the current paper preset's, and the
                # previous one's (1000 samples, qr) where a store holds those, each judged on its own
                variants.append((" (previous preset: n 1000, qr)", {**variants[0][1], **PREVIOUS_TABLE31}))
            for label, params in variants:
                for fig in exp.figures(st, Path(outdir), params):
                    for c in fig.claims:
                        lines.append(f"| {fig.name}{label} | {c.claim} | {c.thesis} | {c.ours} | {c.scale} | "
                                     f"{c.verdict} |")
        rows: dict[tuple, dict] = {}
        for r in st.rows("table3.1"):
            # units of other sizes or samplers (the paper preset's before issue 12's last changes: 1000
            # samples, qr) are rows of their own, never pooled with the current ones
            k = (r["arch"], r["init"], r["activation"], r.get("branch"), f"width {r['width']}", f"n {r['n']}",
                 r.get("orthogonal_sampler") or ("qr" if r["init"] == "orthogonal" else None))
            d = rows.setdefault(k, {})
            d.setdefault(r["quantity"], {})[r["seed"]] = r["value"]
    import numpy as np

    def med(d, q):
        v = list(d.get(q, {}).values())
        return "-" if not v else ("> cap" if math.isinf(float(np.median(v))) else f"{float(np.median(v)):.0f}")

    for k in sorted(rows, key=str):
        d = rows[k]
        seeds = sorted(d.get("cpu_seconds", {}))
        lc = list(d.get("layers_computed", {}).values())
        cpu = list(d.get("cpu_seconds", {}).values())
        cost.append(f"| {' '.join(x for x in k if x)} | {len(seeds)} | {med(d, 'max_depth@0.5')} | "
                    f"{med(d, 'max_depth@0.9')} | {np.mean(lc):.0f} | {np.mean(cpu):.0f} |" if cpu else
                    f"| {' '.join(x for x in k if x)} | 0 | - | - | - | - |")
    return "\n".join(lines) + "\n\n" + "\n".join(cost) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="a run directory whose table3.1 units give each row's measured depth")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per step time (default 3)")
    ap.add_argument("--only", nargs="*", help="experiments to cost (default: all five)")
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.add_argument("--data-dir", help="the MNIST IDX files (without them the MNIST units cost NaN: not run)")
    ap.add_argument("--tables", metavar="RUN_DIR", help="print the measured verdict rows of a run (markdown) and exit")
    a = ap.parse_args(argv)
    DATA_DIR[0] = a.data_dir
    if a.tables:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            print(measured_tables(a.tables, tmp))
        return 0
    torch.set_num_threads(1)
    names = a.only or ["fig3.1", "fig3.2", "fig3.3", "effective-nodes", "table3.1"]
    t0 = time.time()
    table = []
    for name in names:
        p = get_experiment(name).params("paper")
        if name == "table3.1":
            parts = {"table3.1": cost_table31(p, a.reps, a.store, True),
                     PREVIOUS: cost_table31({**p, **PREVIOUS_TABLE31}, a.reps, a.store, True)}
        else:
            parts = {name: {"fig3.1": cost_fig31, "fig3.2": cost_fig32, "fig3.3": cost_fig33,
                            "effective-nodes": cost_effective_nodes}[name](p, a.reps)}
        for label, items in parts.items():
            for what, units, sec in items:
                table.append({"experiment": label, "what": what, "units": units, "cpu_s_per_unit": sec,
                              "cpu_s": units * sec})
    print(f"{'experiment':38} {'what':66} {'units':>5} {'CPU s/unit':>10} {'CPU s':>9}")
    for r in table:
        print(f"{r['experiment']:38} {r['what'][:66]:66} {r['units']:5d} {r['cpu_s_per_unit']:10.1f} {r['cpu_s']:9.0f}")
    totals: dict[str, float] = {}
    for r in table:
        if not math.isnan(r["cpu_s"]):
            totals[r["experiment"]] = totals.get(r["experiment"], 0.0) + r["cpu_s"]
    print("\nper experiment: CPU hours (single thread), projected wall hours on 2 cores (CPU / 2)")
    for k, v in totals.items():
        print(f"  {k:40} {v / 3600:7.2f} h CPU   {v / 7200:7.2f} h on 2 cores")
    now = sum(v for k, v in totals.items() if k != PREVIOUS)
    before = sum(v for k, v in totals.items() if k != "table3.1")
    print(f"\nwhole set, paper preset:             {now / 3600:.2f} h CPU, {now / 7200:.2f} h on 2 cores")
    print(f"whole set, with the previous table3.1: {before / 3600:.2f} h CPU, {before / 7200:.2f} h on 2 cores")
    steps = {" ".join(map(str, k)): v for k, v in _cache.items()}
    print(f"(step times measured single-thread in {time.time() - t0:.0f} s wall; CPU seconds per call: "
          + json.dumps({k: round(v, 4) for k, v in steps.items()}) + ")")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": table, "totals_cpu_s": totals, "steps_cpu_s": steps}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
