"""depthscope.watch: watched numbers equal the core metrics, hooks leave no trace, alerts fire once."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

import depthscope
from depthscope.metrics import effective_nodes, participation_ratio, sigma_w2, vni
from depthscope.metrics.vni import debias_vni
from depthscope.watch import QUANTITIES, Watch, _seed_for, as_rows, sample_rows, watch, watch_report


# The watch computes VNI and the variance from a float32 Gram summed in float64 (metrics.vni.vni_moments):
# stated bound sqrt(512) 2^-24 = 1.35e-6 on VNI, about 1e-8 on real activations. These
# tests hold it to the typical figure, the bound itself is tested in test_vni.py on ill-conditioned data.
STAT_RTOL = 1e-6


def close(a, b, rtol=1e-10, atol=0.0, what=""):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


def mlp(seed=0, width=16, act=nn.Tanh):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), act(), nn.Linear(width, width), act(), nn.Linear(width, 3))


def by_name(records, name, step=None):
    out = [r for r in records if r["name"] == name and (step is None or r["step"] == step)]
    assert len(out) == 1, (name, step, len(out))
    return out[0]


def no_hooks(model, opt=None):
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    if opt is not None:
        assert not opt._optimizer_step_post_hooks


# -- the numbers ----------------------------------------------------------------------------------
def test_linear_numbers_equal_core_metrics():
    model = mlp()
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    outs = {}
    hs = [model[i].register_forward_hook(lambda m, i_, o, i=i: outs.__setitem__(i, o)) for i in (0, 2, 4)]
    with watch(model, every=1) as w:
        y = model(x)
        for i, o in list(outs.items()):
            o.retain_grad()
        y.pow(2).sum().backward()
    for h in hs:
        h.remove()
    for i in (0, 2, 4):
        r = by_name(w.records, str(i))
        o = outs[i].detach()
        ref = float(vni(o))
        close(r["vni"], ref, rtol=STAT_RTOL, what="vni")
        close(r["vni_debiased"], float(debias_vni(ref, 40)), rtol=STAT_RTOL)  # the core metric
        close(r["effective_nodes"], effective_nodes(ref, o.shape[1]), rtol=STAT_RTOL)
        close(r["participation_ratio"], participation_ratio(ref), rtol=STAT_RTOL)
        close(r["act_mean"], o.double().mean(), atol=1e-7 * float(o.abs().max()))
        close(r["act_var"], o.double().var(0, unbiased=False).mean(), rtol=STAT_RTOL)
        assert (r["nodes"], r["samples"], r["calls"]) == (o.shape[1], 40, 1)
        lin = model[i]
        gsq = lin.weight.grad.double().pow(2).sum() + lin.bias.grad.double().pow(2).sum()
        close(r["grad_norm"], gsq.sqrt(), rtol=1e-6)  # norms in the gradients' own float32
        close(r["grad_rms"], (gsq / (lin.weight.numel() + lin.bias.numel())).sqrt(), rtol=1e-6)
        close(r["out_grad_rms"], outs[i].grad.double().pow(2).mean().sqrt(), rtol=1e-6)
        wd = lin.weight.detach().double()
        close(r["sigma_w2"], wd.shape[1] * wd.var(unbiased=False))
        close(r["sigma_w2"], sigma_w2(lin.weight), rtol=1e-13)  # the core metric (float64, chunked sums)
        if i < 4:  # followed by nn.Tanh in the Sequential: mu_1 = E[(1 - tanh(h)^2)^2]
            mu1 = (1 - torch.tanh(o.double()) ** 2).pow(2).mean()
            close(r["sigma_w2_mu1"], r["sigma_w2"] * mu1, rtol=1e-6)
        else:
            assert math.isnan(r["sigma_w2_mu1"])


def test_conv_nodes_are_channels_and_samples_are_positions():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 7)
    with watch(conv, every=1) as w:
        out = conv(x).detach()
    r = w.records[0]
    # slow, obviously right: one row per (image, y, x), one column per channel
    rows = torch.stack([out[b, :, i, j] for b in range(2) for i in range(6) for j in range(7)])
    assert (r["nodes"], r["samples"]) == (5, 2 * 6 * 7)
    close(r["vni"], vni(rows), rtol=STAT_RTOL)
    wd = conv.weight.detach().double()
    close(r["sigma_w2"], 3 * 3 * 3 * wd.var(unbiased=False))


def test_sequence_nodes_are_features_and_attention_tuple_output():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    x = torch.randn(3, 5, 8)
    seen = {}
    h = enc.layers[1].register_forward_hook(lambda m, i, o: seen.__setitem__("l1", o.detach()))
    h2 = enc.layers[0].self_attn.register_forward_hook(lambda m, i, o: seen.__setitem__("att", o[0].detach()))
    with watch(enc, every=1) as w:
        enc(x).sum().backward()
    h.remove()
    h2.remove()
    r = by_name(w.records, "layers.1")
    assert (r["nodes"], r["samples"]) == (8, 15)
    close(r["vni"], vni(seen["l1"].reshape(15, 8)), rtol=STAT_RTOL)
    ra = by_name(w.records, "layers.0.self_attn")
    close(ra["vni"], vni(seen["att"].reshape(15, 8)), rtol=STAT_RTOL)
    names = {r["name"] for r in w.records}
    assert {"layers.0", "layers.0.linear1", "layers.0.linear2", "layers.1.self_attn"} <= names
    assert all(math.isfinite(r["grad_norm"]) for r in w.records)


def test_bounded_sample_is_seeded_without_replacement_and_matches_core():
    x = torch.randn(1000, 6, generator=torch.Generator().manual_seed(3))
    a, b = sample_rows(x, 100, seed=7), sample_rows(x, 100, seed=7)
    assert torch.equal(a, b) and a.shape == (100, 6)
    assert len({tuple(r.tolist()) for r in a}) == 100  # distinct rows of x
    assert not torch.equal(a, sample_rows(x, 100, seed=8))
    assert torch.equal(sample_rows(x, 5000, seed=0), x)

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1)
    img = torch.randn(4, 2, 10, 10)  # 400 rows > max_rows
    with watch(conv, every=1, max_rows=64, seed=5) as w:
        out = conv(img).detach()
    r = w.records[0]
    assert r["samples"] == 64
    ref = sample_rows(as_rows(out, 1), 64, _seed_for(5, 0, 1, 1))
    close(r["vni"], vni(ref), rtol=STAT_RTOL)


def test_same_seed_same_numbers():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    recs = []
    for _ in range(2):
        model = mlp()
        with watch(model, every=1, max_rows=50, seed=11) as w:
            model(x).sum().backward()
        recs.append([r["vni"] for r in w.records])
    assert recs[0] == recs[1]


# -- hooks leave no trace -------------------------------------------------------------------------
def test_hooks_removed_on_detach_and_on_exception():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = watch(model, every=1, optimizer=opt).attach()
    assert model[0]._forward_hooks and opt._optimizer_step_post_hooks
    with pytest.raises(RuntimeError):
        w.attach()
    w.detach()
    no_hooks(model, opt)

    with pytest.raises(ZeroDivisionError):
        with watch(model, every=1, optimizer=opt) as w2:
            model(torch.randn(4, 8))
            1 / 0
    no_hooks(model, opt)
    assert w2.records == []  # the half-captured step is dropped on an exception


@pytest.mark.parametrize("inplace", [False, True])
def test_outputs_and_gradients_bitwise_unchanged(inplace):
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))

    def run(watched: bool):
        model = mlp(act=lambda: nn.ReLU(inplace=inplace))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        outs, grads = [], []
        ctx = watch(model, every=1, optimizer=opt) if watched else None
        if ctx:
            ctx.attach()
        for _ in range(3):
            opt.zero_grad()
            y = model(x)
            y.pow(2).mean().backward()
            outs.append(y.detach().clone())
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
        if ctx:
            ctx.detach()
            assert len(ctx.records) == 9 and not math.isnan(ctx.records[0]["sigma_w2_mu1"])
        return outs, grads

    (o1, g1), (o2, g2) = run(False), run(True)
    for a, b in zip(o1, o2):
        assert torch.equal(a, b)
    for ga, gb in zip(g1, g2):
        assert all(torch.equal(a, b) for a, b in zip(ga, gb))


def test_no_grad_evaluation_records_forward_quantities_only():
    model = mlp()
    with torch.no_grad(), watch(model, every=1) as w:
        model(torch.randn(20, 8))
    assert len(w.records) == 3  # flushed on exit without any step() call
    for r in w.records:
        assert math.isfinite(r["vni"]) and math.isfinite(r["sigma_w2"])
        assert math.isnan(r["grad_norm"]) and math.isnan(r["out_grad_rms"])
    # stale .grad from an earlier backward is not reported as this step's gradient
    model(torch.randn(20, 8)).sum().backward()
    with torch.no_grad(), watch(model, every=1) as w:
        model(torch.randn(20, 8))
    assert all(math.isnan(r["grad_norm"]) for r in w.records)


def test_module_called_twice_concatenates_both_calls():
    torch.manual_seed(0)
    shared = nn.Linear(6, 6)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = shared

        def forward(self, x):
            return self.shared(torch.tanh(self.shared(x)))

    model = Twice()
    x = torch.randn(10, 6)
    seen = []
    h = shared.register_forward_hook(lambda m, i, o: seen.append(o))
    with watch(model, every=1, modules=nn.Linear) as w:
        y = model(x)
        for o in seen:
            o.retain_grad()
        y.sum().backward()
    h.remove()
    r = by_name(w.records, "shared")
    assert (r["calls"], r["samples"]) == (2, 20)
    close(r["vni"], vni(torch.cat([o.detach() for o in seen])), rtol=STAT_RTOL)
    g = torch.cat([o.grad for o in seen]).double()
    close(r["out_grad_rms"], g.pow(2).mean().sqrt(), rtol=1e-6)


# -- stepping, selection, alerts ------------------------------------------------------------------
def test_schedule_every_and_manual_step():
    model = mlp()
    w = watch(model, every=3).attach()
    for _ in range(7):
        model(torch.randn(8, 8)).sum().backward()
        w.step()
    w.detach()
    assert sorted({r["step"] for r in w.records}) == [0, 3, 6]
    assert w.step_count == 7
    assert [s for s, _ in w.history("vni")["2"]] == [0, 3, 6]


def test_forward_hooks_registered_only_during_scheduled_steps():
    """Unscheduled steps run the bare model: not one forward hook on it (the every=50 cost)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(8, 8)
    armed = []
    with watch(model, every=3, optimizer=opt) as w:
        for _ in range(7):
            armed.append((w.step_count, w.armed, bool(model[0]._forward_hooks)))
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        assert w.attached and opt._optimizer_step_post_hooks
    assert armed == [(s, s % 3 == 0, s % 3 == 0) for s in range(7)]
    assert sorted({r["step"] for r in w.records}) == [0, 3, 6]
    no_hooks(model, opt)
    assert not w.attached and not w.armed


def test_every_step_reuses_its_buffers_without_changing_a_number():
    """every=1 keeps one step's scratch buffers for the next: the records equal fresh watches', bitwise."""
    x = torch.randn(24, 8, generator=torch.Generator().manual_seed(0))

    def run(fresh: bool) -> list[dict]:
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        w, recs = watch(model, every=1), []
        for step in range(4):
            if fresh or step == 0:
                w = watch(model, every=1, seed=0)
                w.step_count = step
                w.attach()
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            recs += w.flush()
            if fresh:
                w.detach()
            else:
                w.step()
                assert w._free  # the scratch buffers are kept for the next step
        w.detach()
        assert not w._free
        return recs

    reused, fresh = run(False), run(True)
    assert [r["step"] for r in reused] == [s for s in range(4) for _ in range(3)]
    np.testing.assert_equal(reused, fresh)  # bitwise, NaN equal to NaN


def test_selection_by_pattern_type_and_bad_input():
    model = mlp()
    assert Watch(model, modules="2").names == ["2"]
    assert Watch(model, modules=[nn.Tanh]).names == ["1", "3"]
    assert Watch(model, exclude="4").names == ["0", "2"]
    with pytest.raises(ValueError, match="every"):
        Watch(model, every=0)
    with pytest.raises(ValueError, match="matches"):
        Watch(model, modules="nope.*")
    with pytest.raises(ValueError, match="matches no module"):
        Watch(model, activations={"nope": torch.tanh})
    with pytest.raises(ValueError, match="unknown quantity"):
        Watch(model).history("vnii")


def test_vni_alert_fires_once_naming_layer_and_step(caplog):
    torch.manual_seed(0)
    model = mlp()
    with torch.no_grad():  # layer "2" becomes rank one: its nodes are collinear, VNI -> 1
        model[2].weight.copy_(torch.outer(torch.randn(16), torch.randn(16)))
    caplog.set_level(logging.WARNING, logger="depthscope.watch")
    with watch(model, every=1, exclude="4") as w:  # the readout after it collapses too
        for _ in range(4):
            model(torch.randn(32, 8))
            w.step()
    vni_alerts = [a for a in w.alerts if a.kind == "vni"]
    assert [(a.name, a.step) for a in vni_alerts] == [("2", 0)]
    msgs = [m for m in caplog.messages if "VNI" in m]
    assert len(msgs) == 1 and "'2'" in msgs[0] and "step 0" in msgs[0]


def test_vanishing_gradient_alert_fires_once():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.c, self.d = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x):  # the loss sees layer a's output only through a tiny factor
            return self.d(self.c(self.b(self.a(x) * 1e-6)))

    model = Scaled()
    with watch(model, every=1, grad_ratio=100) as w:
        for _ in range(3):
            model.zero_grad()
            x = torch.randn(16, 8)
            model(x).sum().backward()
            w.step()
    kinds = [(a.name, a.kind) for a in w.alerts]
    assert kinds.count(("a", "vanishing_grad")) == 1
    assert all(n == "a" for n, k in kinds if k.endswith("grad"))


# -- writers and the report -----------------------------------------------------------------------
def test_store_csv_tensorboard_writers_and_watch_report(tmp_path):
    class FakeSW:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    sw = FakeSW()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, every=2, optimizer=opt, run_dir=tmp_path, run="r1", csv=tmp_path / "w.csv",
               tensorboard=sw) as w:
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(16, 8)).pow(2).sum().backward()
            opt.step()
    from depthscope.store import Store

    with Store(tmp_path) as st:
        rows = st.rows("watch", "vni", run="r1")
        assert sorted({r["step"] for r in rows}) == [0, 2, 4]
        assert st.get_meta("watch/r1/layers") == ["0", "2", "4"]
        mine = {(r["layer"], r["step"]): r["value"] for r in rows}
    for r in w.records:
        assert mine[(r["layer"], r["step"])] == r["vni"]
    lines = (tmp_path / "w.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["step", "layer", "name", "vni"] and len(lines) == 1 + 9
    assert ("depthscope/vni/2", w.records[1]["vni"], 0) in sw.scalars

    from depthscope.cli import main

    assert main(["watch-report", str(tmp_path), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "watch_vni_r1.png").stat().st_size > 0
    assert (tmp_path / "fig" / "watch_vni_r1.svg").exists()
    paths = watch_report(tmp_path, run="r1", quantity="grad_rms")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    with pytest.raises(ValueError, match="unknown watch run"):
        watch_report(tmp_path, run="zz")


@pytest.mark.parametrize("given", ["logdir", "summary_writer"])
def test_tensorboard_event_files_read_back_equal_the_store_rows(tmp_path, given):
    """The real torch.utils.tensorboard writer: every scalar read back by TensorBoard is a store row."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from depthscope.store import Store

    logdir = tmp_path / "tb"
    sw = SummaryWriter(str(logdir)) if given == "summary_writer" else None
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, every=2, optimizer=opt, run_dir=tmp_path, run="tb",
               tensorboard=sw if sw is not None else logdir) as w:
        for _ in range(5):
            opt.zero_grad()
            model(torch.randn(16, 8)).pow(2).sum().backward()
            opt.step()
    if sw is not None:
        sw.close()  # the watch flushes a writer it was given but leaves closing it to its owner
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    got = {(t, e.step): e.value for t in tags for e in acc.Scalars(t)}
    names = dict(enumerate(w.names, start=1))
    with Store(tmp_path) as st:
        want = {(f"depthscope/{q}/{names[r['layer']]}", r["step"]): r["value"]
                for q in QUANTITIES if q not in ("nodes", "samples", "calls")
                for r in st.rows("watch", q, run="tb")}
    assert len(want) == 3 * (3 * 10 + 2)  # steps 0, 2, 4: 10 scalars per Linear, sigma_w2_mu1 for the two before a Tanh
    assert got.keys() == want.keys()
    for key, v in want.items():  # event files hold float32
        assert got[key] == float(np.float32(v)), key


def test_watch_report_without_watch_rows_is_a_one_line_error(tmp_path, capsys):
    from depthscope.cli import main
    from depthscope.store import Store

    Store(tmp_path).close()
    assert main(["watch-report", str(tmp_path)]) == 2
    assert "no depthscope.watch run" in capsys.readouterr().err


def test_quantities_and_public_name():
    assert depthscope.watch is watch
    assert QUANTITIES[0] == "vni"


@pytest.mark.parametrize("act", [nn.Tanh(), nn.ReLU(), nn.Sigmoid(), nn.LeakyReLU(0.1)], ids=lambda m: type(m).__name__)
def test_closed_form_derivatives_match_autograd(act):
    from depthscope.watch import derivative_of

    h = torch.randn(50, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hr = h.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(act(hr).sum(), hr)
    close(derivative_of(act, h), ref, rtol=1e-12)


@pytest.mark.parametrize("shape,axis", [((3, 4, 5, 6), 1), ((7, 9, 5), -1), ((30, 4), 1), ((2, 3, 4), 1)])
@pytest.mark.parametrize("max_rows", [5, 1000])
def test_sample_output_rows_equals_reference(shape, axis, max_rows):
    from depthscope.watch import sample_output_rows

    out = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).transpose(0, -1).transpose(0, -1)
    fast = sample_output_rows(out, axis, max_rows, seed=3)
    assert torch.equal(fast, sample_rows(as_rows(out, axis), max_rows, seed=3))


# -- the MNIST example reads its data through depthscope.data ------------------------------------------
def test_mnist_example_loads_mnist_through_depthscope_data(tmp_path, monkeypatch):
    from pathlib import Path

    from depthscope.data import DataNotFound, write_idx

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    import watch_mnist_mlp as ex

    monkeypatch.setenv("DEPTHSCOPE_CACHE", str(tmp_path / "cache"))  # never the user's cache, never a download
    monkeypatch.delenv("DEPTHSCOPE_DATA", raising=False)
    d = tmp_path / "data" / "mnist"  # IDX files in a mnist/ sub-directory, as depthscope.data allows
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    write_idx(d / "t10k-images-idx3-ubyte.gz", images)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 50, dtype=np.uint8))

    x, y, note = ex.load_mnist(tmp_path / "data", samples=40, download=False)
    ref = torch.from_numpy(images[:40].reshape(40, 784).astype(np.float64) / 255.0)
    ref = ref - ref.mean(0)  # depthscope.data: centred per pixel over the samples used
    close(x, ref / ref.std(), rtol=1e-5, atol=1e-6)  # then unit overall variance
    assert x.shape == (40, 784) and y.shape == (40,) and "40 MNIST test images" in note and str(d) in note

    out = ex.main(["--data-dir", str(tmp_path / "data"), "--no-download", "--samples", "50", "--epochs", "2",
                   "--depth", "3", "--width", "8", "--every", "1"])
    assert str(d) in out["data"] and {r["step"] for r in out["records"]} == {0, 1}

    with pytest.raises(DataNotFound, match="MNIST"):
        ex.load_mnist(tmp_path / "nowhere", download=False)
    # where the files are looked for: --data-dir, $DEPTHSCOPE_DATA, ../shared/data/mnist, the cache
    assert ex.data_dir_for(tmp_path / "data") == tmp_path / "data"
    monkeypatch.setattr(ex, "SHARED_MNIST", d)
    assert ex.data_dir_for(None) == d
    assert str(d) in ex.load_mnist(None, samples=10, download=False)[2]
    monkeypatch.setenv("DEPTHSCOPE_DATA", str(tmp_path / "data"))
    assert ex.data_dir_for(None) is None  # depthscope.data reads $DEPTHSCOPE_DATA itself
    assert str(d) in ex.load_mnist(None, samples=10, download=False)[2]
    monkeypatch.setattr(ex, "SHARED_MNIST", tmp_path / "absent")
    monkeypatch.delenv("DEPTHSCOPE_DATA")
    assert ex.data_dir_for(None) is None


# -- pause / resume -------------------------------------------------------------------------------
def test_paused_passes_are_not_captured_and_steps_advance_only_by_step():
    """A validation pass inside a training step: paused, it adds no rows and no calls to the step."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the same weights in both runs
    x, xv = (torch.randn(12, 8, generator=torch.Generator().manual_seed(s)) for s in (0, 1))

    def run(validate: bool) -> list[dict]:
        with watch(model, every=1, optimizer=opt) as w:
            for _ in range(3):
                opt.zero_grad()
                model(x).pow(2).mean().backward()
                if validate:
                    with w.paused():
                        assert w.is_paused and not w.armed
                        model(xv).pow(2).mean().backward()  # neither rows nor output gradients
                    assert not w.is_paused and w.armed
                    w.pause()
                    with torch.no_grad():
                        model(xv)
                    w.pause()  # idempotent
                    w.resume()
                opt.step()
            assert w.step_count == 3
        return w.records

    plain, with_val = run(False), run(True)
    assert len(plain) == 9
    for a, b in zip(plain, with_val):
        assert a["calls"] == b["calls"] == 1 and a["samples"] == b["samples"] == 12
        # p.grad is the user's: a backward while paused adds to it, and grad_norm reads it when the
        # step ends. Everything captured by hooks (rows, output gradients) is the training pass alone.
        drop = ("grad_norm", "grad_rms")
        np.testing.assert_equal({k: v for k, v in a.items() if k not in drop},
                                {k: v for k, v in b.items() if k not in drop})


def test_pause_across_steps_records_nothing_and_paused_block_restores_state():
    model = mlp()
    w = watch(model, every=1).attach()
    w.pause()
    for _ in range(2):
        model(torch.randn(6, 8))
        w.step()  # steps advance while paused
    assert w.step_count == 2 and w.records == [] and not w.armed
    with w.paused():  # already paused: still paused after the block
        pass
    assert w.is_paused
    w.resume()
    assert w.armed
    model(torch.randn(6, 8))
    w.step()
    w.detach()
    assert {r["step"] for r in w.records} == {2}
    no_hooks(model)


def test_pause_inside_forward_stops_capture_at_once():
    model = mlp()
    w = watch(model, every=1).attach()
    h = model[1].register_forward_hook(lambda *a: w.pause())  # after layer "0", before "2" and "4"
    model(torch.randn(6, 8))
    h.remove()
    w.detach()
    assert [r["name"] for r in w.records] == ["0"]


def test_vni_alert_fires_at_the_threshold_itself():
    """One varying node, the others constant: VNI is exactly 1, and vni_threshold=1 fires (>=, not >)."""
    class OneNode(nn.Module):
        def forward(self, x):
            out = torch.ones(x.shape[0], 4)
            out[:, 0] = x[:, 0]
            return out

    m = OneNode()
    with watch(m, every=1, modules=[OneNode], vni_threshold=1.0) as w:
        m(torch.randn(10, 3, generator=torch.Generator().manual_seed(0)))
    assert w.records[0]["vni"] == 1.0
    assert [a.kind for a in w.alerts] == ["vni"]
