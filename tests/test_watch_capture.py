"""depthscope.watch capture and inputs: the reservoir across calls, memory, seeds, names (issue 11 §1 §4 §5 §7)."""
from __future__ import annotations

import gc
import itertools
import logging
import math
import weakref
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from depthscope.metrics import vni
from depthscope.watch import Watch, as_rows, reservoir_plan, sample_rows, watch, watch_report
from depthscope.watch.capture import _seed_for, reservoir_reference

STAT_RTOL = 1e-6


def mlp(seed=0, width=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3))


def feed(sizes, k, seeds):
    """Global row numbers in a reservoir fed by reservoir_plan (the fast path), as the watch does."""
    res: list[int] = []
    seen = 0
    for n, seed in zip(sizes, seeds):
        f, slots, rows = reservoir_plan(seen, n, k, seed)
        res += [seen + i for i in range(f)]
        for s, r in zip(slots.tolist(), rows.tolist()):
            res[s] = seen + r
        seen += n
    return res


@pytest.mark.parametrize("sizes,k", [([5, 15, 10], 8), ([1, 1, 1, 40, 3], 6), ([3, 2], 10), ([12], 4),
                                     ([2, 2, 2, 2, 2, 2, 2, 2], 3), ([0, 7, 0, 9], 5)])
def test_reservoir_plan_equals_row_by_row_algorithm_r(sizes, k):
    for trial in range(20):
        seeds = [trial * 100 + i for i in range(len(sizes))]
        assert feed(sizes, k, seeds) == reservoir_reference(sizes, k, seeds)


def test_reservoir_sample_is_uniform_over_subsets():
    """Every 2-subset of 5 rows fed in calls of 1, 2, 2 is equally likely: chi-square over 10 cells."""
    trials, k = 6000, 2
    counts = Counter(frozenset(feed([1, 2, 2], k, [3 * t, 3 * t + 1, 3 * t + 2])) for t in range(trials))
    subsets = [frozenset(c) for c in itertools.combinations(range(5), k)]
    assert set(counts) == set(subsets)
    expected = trials / len(subsets)
    chi2 = sum((counts[s] - expected) ** 2 / expected for s in subsets)
    assert chi2 < 27.9, (chi2, counts)  # chi-square, 9 degrees of freedom: P(chi2 > 27.9) = 0.001


def test_reservoir_inclusion_is_k_over_n_for_every_row_whatever_the_calls():
    sizes, k, trials = [5, 15, 10], 8, 3000
    hits = np.zeros(30)
    for t in range(trials):
        for j in feed(sizes, k, [t, t + 10_000, t + 20_000]):
            hits[j] += 1
    p = k / 30
    sd = math.sqrt(trials * p * (1 - p))
    assert np.abs(hits - trials * p).max() < 4.5 * sd, hits  # a biased rule (e.g. first calls favoured) fails


def test_module_called_many_times_keeps_max_rows_and_equals_its_reference():
    """200 calls of 16 rows, max_rows 64: the watch holds 64 rows, the same the reference algorithm picks."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 6)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, xs):
            return [self.lin(x) for x in xs]

    xs = [torch.randn(16, 6, generator=torch.Generator().manual_seed(i)) for i in range(200)]
    model = Loop()
    with watch(model, every=1, modules="lin", max_rows=64, seed=3) as w:
        outs = model(xs)
        # one reservoir of 64 rows, whatever the number of calls; it grew 16 -> 32 -> 64 rows, and
        # while growing held the old one too: the bound's growth term, at most one more reservoir
        assert w.held_bytes == 64 * 6 * 4 and w.peak_held_bytes == (32 + 64) * 6 * 4 <= 2 * 64 * 6 * 4
    r = w.records[0]
    assert (r["calls"], r["samples"]) == (200, 64)
    rows = torch.cat([o.detach() for o in outs])
    keep = reservoir_reference([16] * 200, 64, [_seed_for(3, 0, 1, c) for c in range(1, 201)])
    np.testing.assert_allclose(r["vni"], float(vni(rows[sorted(keep)])), rtol=STAT_RTOL)
    assert w.held_bytes == 0


def test_row_sample_seed_depends_on_the_step():
    """The same input at steps 0 and 1 gives other rows (hence another VNI): the step is in the seed."""
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    model = mlp()
    with watch(model, every=1, max_rows=20, seed=1, modules="0") as w:
        for _ in range(3):
            with torch.no_grad():
                model(x)
            w.step()
    v = [r["vni"] for r in w.records]
    assert len(set(v)) == 3, v
    out = model[0](x).detach()
    for r in w.records:  # each is the reference sample of its own step
        ref = sample_rows(as_rows(out, 1), 20, _seed_for(1, r["step"], 1, 1))
        np.testing.assert_allclose(r["vni"], float(vni(ref)), rtol=STAT_RTOL)
    assert len({_seed_for(0, s, 1, 1) for s in range(100)}) == 100


def test_buffers_are_freed_after_detach():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    refs = []
    w = watch(model, every=1, optimizer=opt).attach()
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(40, 8)).sum().backward()
        refs += [weakref.ref(c.buf) for c in w._pending.values()]
        opt.step()
    assert w.held_bytes > 0  # every=1 keeps its buffers for the next step
    w.detach()
    gc.collect()
    assert w.held_bytes == 0 and refs and all(r() is None for r in refs)


# -- bad input, named where it enters ---------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(seed="abc"), "seed must be an integer, got 'abc'"),
    (dict(seed=1.5), "seed must be an integer"),
    (dict(every=True), "every must be an integer"),
    (dict(max_rows=1), "max_rows must be an integer >= 2"),
    (dict(node_axis={"0": "last"}), r"node_axis\['0'\] must be an integer axis"),
    (dict(node_axis={"0": 1.0}), "must be an integer axis"),
    (dict(run="x/../../../escaped"), "run name 'x/../../../escaped' is not allowed"),
    (dict(run=""), "is not allowed"),
    (dict(run=".hidden"), "is not allowed"),
    (dict(optimizer="sgd"), "optimizer= expects a torch.optim.Optimizer"),
])
def test_bad_arguments_are_one_clear_error_before_anything_happens(kw, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        Watch(mlp(), run_dir=tmp_path / "d", **kw)
    assert not (tmp_path / "d").exists()


def test_node_axis_out_of_range_never_raises_inside_forward(caplog):
    model = mlp()
    caplog.set_level(logging.WARNING, logger="depthscope.watch")
    with watch(model, every=1, node_axis={"2": 5}) as w:
        for _ in range(2):
            model(torch.randn(6, 8))  # must not raise
            w.step()
    assert {r["name"] for r in w.records} == {"0", "4"}
    assert len([m for m in caplog.messages if "node_axis 5 is out of range" in m]) == 1


def test_optimizer_and_step_together_are_refused():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, every=1, optimizer=opt) as w:
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        with pytest.raises(RuntimeError, match="count every step twice"):
            w.step()
        assert w.step_count == 1


# -- runs are never overwritten; names never leave the directory ---------------------------------
def _run(tmp_path, steps, **kw):
    model = mlp()
    with watch(model, every=1, run_dir=tmp_path, **kw) as w:
        for _ in range(steps):
            model(torch.randn(10, 8))
            w.step()
    return w


def test_second_watch_into_the_same_dir_gets_a_fresh_name(tmp_path, caplog):
    from depthscope.store import Store

    a = _run(tmp_path, 3)
    caplog.set_level(logging.INFO, logger="depthscope.watch")
    b = _run(tmp_path, 2)
    c = _run(tmp_path, 1, run="watch")  # named explicitly: renamed too, with a warning
    assert (a.run, b.run, c.run) == ("watch", "watch-2", "watch-3")
    assert any("this run is 'watch-3'" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    with Store(tmp_path) as st:
        assert st.get_meta("watch/runs") == ["watch", "watch-2", "watch-3"]
        assert sorted({r["step"] for r in st.rows("watch", "vni", run="watch")}) == [0, 1, 2]
        assert sorted({r["step"] for r in st.rows("watch", "vni", run="watch-2")}) == [0, 1]
        mine = {(r["layer"], r["step"]): r["value"] for r in st.rows("watch", "vni", run="watch")}
    assert all(mine[(r["layer"], r["step"])] == r["vni"] for r in a.records)  # the first run intact


def test_resume_continues_a_run_and_refuses_other_modules(tmp_path):
    from depthscope.store import Store

    _run(tmp_path, 2, run="r")
    model = mlp()
    w = watch(model, every=1, run_dir=tmp_path, run="r", resume=True)
    w.step_count = 2
    with w:
        model(torch.randn(10, 8))
    assert w.run == "r"
    with Store(tmp_path) as st:
        assert st.get_meta("watch/runs") == ["r"]
        assert sorted({r["step"] for r in st.rows("watch", "vni", run="r")}) == [0, 1, 2]
    with pytest.raises(ValueError, match="cannot resume watch run 'r'"):
        watch(mlp(), every=1, run_dir=tmp_path, run="r", resume=True, modules="0").attach()


def test_watch_report_confines_names_and_skips_a_bad_stored_one(tmp_path, caplog):
    from depthscope.cli import main
    from depthscope.store import Store

    _run(tmp_path, 2, run="good")
    with Store(tmp_path) as st:  # a store written by an older version, with a name that escapes
        st.set_meta("watch/runs", st.get_meta("watch/runs") + ["x/../../../escaped"])
    assert main(["watch-report", str(tmp_path), "--run", "x/../../../escaped"]) == 2
    caplog.set_level(logging.WARNING, logger="depthscope.watch")
    paths = watch_report(tmp_path, outdir=tmp_path / "fig")
    assert [p.name for p in paths] == ["watch_vni_good.png", "watch_vni_good.svg"]
    assert any("not a valid run name" in m for m in caplog.messages)
    assert not list(tmp_path.parent.glob("escaped*")) and not list(tmp_path.glob("**/escaped*"))


# -- memory: the stated bound, measured ---------------------------------------------------------------
def _peak_rss_during(fn) -> int:
    """Peak resident bytes while fn runs minus resident bytes before (Linux: VmHWM reset by clear_refs)."""
    import re
    from pathlib import Path

    def field(name):
        return int(re.search(rf"{name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024

    gc.collect()
    try:  # hand freed heap pages back, so that memory reused from earlier steps shows as new RSS
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    before = field("VmRSS")
    fn()
    return field("VmHWM") - before


def test_extra_peak_memory_is_within_the_stated_bound_whatever_the_calls():
    """3 layers called 160 times per step: the watch's extra peak RSS stays within extra_memory_bound
    (reservoirs of max_rows rows), not the calls x rows x width that keeping every call would take."""
    import os
    import sys

    from depthscope.watch.quantities import extra_memory_bound

    if not sys.platform.startswith("linux") or not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    d, calls, rows, k = 256, 160, 64, 2048
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d))
    xs = [torch.randn(rows, d) for _ in range(calls)]

    def step():
        with torch.no_grad():
            for x in xs:
                model(x)

    w = watch(model, every=1, max_rows=k)
    bare = []
    watched = []
    for _ in range(2):  # the second round: allocator and page caches warmed by the first
        bare.append(_peak_rss_during(step))
        w.attach()
        watched.append(_peak_rss_during(lambda: (step(), w.flush())))
        w.detach()
        assert w.held_bytes == 0
    extra = watched[-1] - bare[-1]
    bound = extra_memory_bound([d] * 3, k, rows=[calls * rows] * 3, call_rows=rows)
    reservoirs = 3 * k * d * 4
    kept_every_call = 3 * calls * min(rows, k) * d * 4  # what a per-call sample would hold: 31 MB
    assert reservoirs / 2 < extra <= bound + (4 << 20), (extra, bound, bare, watched)
    print(f"extra peak RSS {extra / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB, reservoirs {reservoirs / 2**20:.1f} MiB")
    assert bound < kept_every_call / 1.5


def test_sum64_and_var64_equal_a_float64_reference_and_leave_the_input_alone():
    from depthscope.watch.quantities import CHUNK64, sum64, var64

    g = torch.Generator().manual_seed(0)
    for t in (torch.randn(3 * CHUNK64 + 17, generator=g) * 3 + 1e3, torch.randn(50, 40, dtype=torch.float64,
                                                                                generator=g)):
        before = t.clone()
        t64 = t.double()
        np.testing.assert_allclose(float(sum64(t)), float(t64.sum()), rtol=1e-13)
        np.testing.assert_allclose(float(var64(t)), float(t64.var(unbiased=False)), rtol=1e-12)
        assert torch.equal(t, before)


def test_watch_report_cli_bad_values_are_one_line_exit_2(tmp_path, capsys):
    from depthscope.cli import main

    _run(tmp_path, 2, run="good")
    (tmp_path / "afile").write_text("x")
    for argv, msg in ((["--run", "../up"], "is not allowed"), (["--quantity", "nope"], "unknown quantity"),
                      (["--out", str(tmp_path / "afile")], "is a file, expected a directory")):
        assert main(["watch-report", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert main(["watch-report", str(tmp_path), "--quantity", "act_var"]) == 0


def test_report_scale_log_where_it_fits():
    from matplotlib.colors import LogNorm

    from depthscope.watch.report import _scale

    assert _scale(np.array([[0.2, np.nan]]), "vni") == dict(vmin=0.0, vmax=1.0, cmap="magma")
    assert isinstance(_scale(np.array([[1e-6, 1.0], [np.nan, 3e-2]]), "grad_rms")["norm"], LogNorm)
    assert "norm" not in _scale(np.array([[1e-6, 0.0]]), "act_mean")  # not all positive
    assert "norm" not in _scale(np.array([[1.0, 50.0]]), "grad_rms")  # under two decades


def test_bf16_autocast_outputs_read_in_their_dtype_numbers_of_float64():
    """Under bf16 autocast the reservoir holds bf16 rows of three calls; VNI equals the float64 VNI of them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16))
    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(1))
    with watch(model, every=1, max_rows=5000) as w, torch.autocast("cpu", dtype=torch.bfloat16):
        for chunk in x.split(1000):  # three calls: the reservoir fills across them
            model(chunk).float().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y0 = model[0](x).detach()
    assert y0.dtype == torch.bfloat16
    r = [r for r in w.records if r["name"] == "0"][0]
    assert (r["calls"], r["samples"]) == (3, 3000)
    np.testing.assert_allclose(r["vni"], float(vni(y0.double())), rtol=1e-6)
    mu1 = (1 - torch.tanh(y0.double()) ** 2).pow(2).mean()  # phi' of the bf16 rows, in float32 then float64
    np.testing.assert_allclose(r["sigma_w2_mu1"], r["sigma_w2"] * float(mu1), rtol=1e-6)


@pytest.mark.parametrize("rows", [30, 400])  # kept whole (pooled buffers), and sampled (gathered rows)
def test_every_one_holds_the_same_bytes_step_after_step(rows):
    """every=1 keeps one step's buffers for the next, never more: held bytes stay flat over steps
    (a pool that kept every step's gathered sample grew by a reservoir per step)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(rows // 25 + 1, 2, 5, 5)
    held = []
    with watch(model, every=1, optimizer=opt, max_rows=64) as w:
        for _ in range(6):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
            held.append(w.held_bytes)
    assert len(set(held)) == 1 and held[0] > 0, held
    assert w.peak_held_bytes <= held[0] + 64 * 4 * 4  # plus at most the conv's sample of the step


def test_capture_rows_list_interface_and_sync_hook():
    """integrations.distributed reads and replaces a step's captures through Watch.sync and _Capture.rows."""
    from depthscope.watch import _Capture

    cap = _Capture()
    assert cap.rows == []
    cap.rows = [torch.ones(2, 3), torch.zeros(4, 3)]
    assert cap.kept == 6 and torch.equal(cap.rows[0], torch.cat([torch.ones(2, 3), torch.zeros(4, 3)]))

    model = mlp()
    x2 = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    seen = []

    def sync(w, pending):  # doubles every module's rows, as a gather over two equal ranks would
        seen.append(sorted(pending))
        for cap in pending.values():
            cap.rows = [cap.rows[0], cap.rows[0].clone()]
        return pending

    w = watch(model, every=1, max_rows=100)
    w.sync = sync
    with w:
        with torch.no_grad():
            model(x2)
    assert seen == [[1, 2, 3]] and all(r["samples"] == 24 for r in w.records)
    np.testing.assert_allclose(w.records[0]["vni"], float(vni(torch.cat([model[0](x2)] * 2).detach())), rtol=STAT_RTOL)


def test_huge_finite_activations_give_the_float64_vni():
    """|y| ~ 1e19 in float32 (issue 11 §4): the watched VNI is the float64 VNI of the rows, not NaN."""
    class Huge(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 5)

        def forward(self, x):
            return self.lin(x) * 1e19

    torch.manual_seed(0)
    m = Huge()
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(1))
    with watch(m, every=1, modules=[Huge]) as w:
        y = m(x).detach()
    assert torch.isfinite(y).all() and y.abs().max() > 1e18
    np.testing.assert_allclose(w.records[0]["vni"], float(vni(y.double())), rtol=1e-6)
    np.testing.assert_allclose(w.records[0]["act_var"], float(y.double().var(0, unbiased=False).mean()), rtol=1e-5)
