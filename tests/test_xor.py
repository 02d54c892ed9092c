"""XOR study: the stacked ensemble equals one-net-at-a-time training; units are recorded and resumable."""
import pytest
import torch

from depthscope.experiments import get_experiment, run_experiment
from depthscope.experiments.xor import StackedMLP, probe_points, train_xor, xor_points
from depthscope.nets import NetSpec, build_net
from depthscope.store import Store


# Tiny nets: intra-op threads only add contention on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_xor_points():
    x, y = xor_points()
    assert x.shape == (4, 2) and sorted(y.tolist()) == [-1.0, -1.0, 1.0, 1.0]
    assert torch.equal(y, -x[:, 0] * x[:, 1])


def test_stacked_training_equals_one_net_at_a_time():
    spec = NetSpec(depth=3, width=5, activation="tanh", in_features=2, out_features=1)
    seeds, lr, steps = [0, 7], 0.1, 5
    r = train_xor(spec, seeds, lr, steps, 1, probe_points(8, 0.3, 0))
    x, y = xor_points()
    for k, s in enumerate(seeds):
        net = build_net(spec, s)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * ((net(x).squeeze(-1) - y) ** 2).mean()).backward()
            opt.step()
        for l, lin in enumerate(net.hidden):
            torch.testing.assert_close(r["net"].weights[l][k].detach(), lin.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["net"].forward(x)[k].detach(), net(x).squeeze(-1).detach(), rtol=1e-5, atol=1e-6)


def test_xor_experiment_records_units_and_resumes(tmp_path):
    over = {"settings": {"tiny": [2, 8, 0.1]}, "seeds": 3, "steps": 40, "log_every": 20, "probe_per_corner": 8}
    with Store(tmp_path) as st:
        c = run_experiment("xor", st, "quick", overrides=over, quiet=True)
        assert c["ran"] == 3
        assert len(st.rows("xor", "success")) == 3
        assert len(st.rows("xor", "vni", layer=2)) == 3
        c = run_experiment("xor", st, "quick", overrides=over, quiet=True)
        assert c["ran"] == 0 and c["skipped"] == 3
        figs = get_experiment("xor").figures(st, tmp_path / "figs", over)
        assert figs and figs[0].paths[0].exists() and "tiny" in figs[0].verdict
