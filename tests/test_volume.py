"""DVCNN: a 1,000-layer volume-conserving net runs forward/backward with log|det J_l| = 0 on every layer."""
import pytest
import torch

from depthscope.metrics.drift import layer_mean, layer_quantiles, volume_layer_logdet
from depthscope.nets import NetSpec, build_net


# Tiny nets: intra-op threads only add contention on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_thousand_layer_dvcnn_forward_backward_logdet_zero():
    spec = NetSpec(depth=1000, width=16, activation="sigmoid", sigma_w2=1.0, bias_value=-2.0, arch="volume",
                   out_features=3)
    net = build_net(spec, 0)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    logdets = []
    a = x
    for l, h, a in net.layers(x):
        mw = net.hidden[l - 1].weight * net.mask(l)
        logdets.append(volume_layer_logdet("sigmoid", h, mw))
    out = net.readout(a)
    out.square().sum().backward()
    ld = torch.stack(logdets)
    assert ld.shape == (1000, 8)
    assert torch.equal(ld, torch.zeros_like(ld))  # exact: the triangular diagonal is 0
    grads = torch.stack([lin.weight.grad.norm() for lin in net.hidden])
    assert torch.isfinite(grads).all() and (grads > 0).any()
    # drift: the mean of f grows from its bias value towards the top layers
    with torch.no_grad():
        fs = [net.phi(h) for _, h, _ in net.layers(x)]
    assert layer_mean(fs[-1]) > layer_mean(fs[0]) + 0.1
    assert layer_quantiles(fs[0])[0] <= layer_quantiles(fs[0])[-1]


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_full_jacobian_slogdet_matches_autograd_small_net(act):
    spec = NetSpec(depth=12, width=6, activation=act, sigma_w2=1.0, arch="volume")
    net = build_net(spec, 1, dtype=torch.float64)
    x0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    jac = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x0)
    sign, logabs = torch.linalg.slogdet(jac)
    assert float(sign) == 1.0 and abs(float(logabs)) < 1e-10
    # per-layer: the exact triangular formula agrees with slogdet of the layer's autograd Jacobian
    a = x0[None]
    for l, h, x_next in net.layers(x0[None]):
        lin = net.hidden[l - 1]
        jl = torch.autograd.functional.jacobian(
            lambda v: v + net.phi(torch.nn.functional.linear(v, lin.weight * net.mask(l), lin.bias)), a[0])
        assert abs(float(torch.linalg.slogdet(jl)[1]) - float(volume_layer_logdet(act, h, lin.weight * net.mask(l))[0])) < 1e-10
        a = x_next


def test_logdet_detects_a_broken_mask():
    w = torch.eye(4) * 0.5 + torch.tril(torch.ones(4, 4), -1)
    ld = volume_layer_logdet("linear", torch.zeros(1, 4), w)
    assert float(ld[0]) == pytest.approx(4 * torch.log(torch.tensor(1.5)).item())
    with pytest.raises(ValueError, match="triangular"):
        volume_layer_logdet("linear", torch.zeros(1, 4), torch.ones(4, 4))


def test_dvcnn_never_trains_on_stand_in_data_and_ignores_old_stand_in_units(tmp_path, monkeypatch):
    """Issue 14: without MNIST dvcnn trained on Gaussian inputs with random labels, stored those units as
    done, and a later run with the data did not redo them."""
    import numpy as np

    from depthscope import data
    from depthscope.experiments import get_experiment, run_experiment
    from depthscope.store import Store, Value

    monkeypatch.setenv("DEPTHSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DEPTHSCOPE_DATA", raising=False)
    monkeypatch.setattr(data, "DATASETS", {**data.DATASETS, "mnist": {**data.DATASETS["mnist"], "mirrors": ()}})
    over = {"depths": [3], "activations": ["sigmoid"], "width": 8, "n_train": 40, "epochs": 1, "batch": 20,
            "n_probe": 20}
    exp = get_experiment("dvcnn")
    params = exp.params("quick", over)
    with Store(tmp_path / "run") as st:
        # what an older version stored without MNIST: same parameters, no "data" field, status done
        old = {k: v for k, v in exp.units(params)[0].spec.items() if k != "data"}
        st.record("dvcnn", "stand-in", spec=old, seed=0, values=[Value("train_error", 0.9, None, 1)])
        c = run_experiment("dvcnn", st, "quick", overrides=over, quiet=True, data_dir=str(tmp_path / "none"))
        assert c["ran"] == 0 and c["not_run"] == 1 and "mnist" in c["missing"]
        assert [u.key for u in st.units("dvcnn")] == ["stand-in"]  # nothing new stored
        d = tmp_path / "mnist"
        d.mkdir()
        rng = np.random.default_rng(0)
        data.write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (60, 28, 28), dtype=np.uint8))
        data.write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 60, dtype=np.uint8))
        c = run_experiment("dvcnn", st, "quick", overrides=over, quiet=True, data_dir=str(d))
        assert c["ran"] == 1 and c["skipped"] == 0  # the stand-in unit does not count as done
        assert st.get_meta("not_run:dvcnn") is None
        figs = exp.figures(st, tmp_path / "figs", params)
        assert "0.90" not in figs[0].verdict.split("Seed 003")[0]  # the stand-in's error is not drawn or judged


def test_dvcnn_claims_judge_fig1_on_both_sides_of_the_tolerance():
    from depthscope.experiments.volume import DEPTH_ERROR_TOL, dvcnn_claims

    def fig1(errs):
        finals = {("sigmoid", d): e for d, e in zip((10, 100, 300), errs)}
        return dvcnn_claims(finals, [], {}, "s")[0]

    assert fig1([0.5, 0.4, 0.3]).verdict == "agree"                       # falls at every step
    assert fig1([0.5, 0.55, 0.5 + DEPTH_ERROR_TOL - 1e-9]).verdict == "trend"   # flat within the tolerance
    assert fig1([0.63, 0.72, 0.87]).verdict == "differs"                  # the old quick preset's numbers
    assert fig1([0.5, 0.4, 0.5 + DEPTH_ERROR_TOL + 1e-6]).verdict == "differs"
    assert "L=300: 0.87" in fig1([0.63, 0.72, 0.87]).ours
    assert dvcnn_claims({("sigmoid", 10): 0.5}, [], {}, "s")[0].verdict == "not run"


def test_dvcnn_claims_relu_blow_up_and_drift():
    from depthscope.experiments.volume import dvcnn_claims

    finals = {("sigmoid", 10): 0.5, ("sigmoid", 100): 0.4, ("relu", 10): 0.4}
    c = {x.claim: x for x in dvcnn_claims(finals, [("relu", 100)], {"init": 0.47, "trained": 0.01}, "s")}
    relu = c["ReLU DVCNNs blow up numerically"]
    assert relu.verdict == "trend" and "1 of 2 ReLU depths blew up (L = 100)" in relu.ours
    assert c["the untrained sigmoid DVCNN drifts, much less after training"].verdict == "trend"
    c = {x.claim: x for x in dvcnn_claims(finals, [], {"init": 0.2, "trained": 0.3}, "s")}
    assert c["ReLU DVCNNs blow up numerically"].verdict == "differs"
    assert c["the untrained sigmoid DVCNN drifts, much less after training"].verdict == "differs"
