"""The one-net reference trainer: protocol details (success rule, divergence, records)."""
import math

import pytest
import torch

from depthscope.train import RunSpec, epoch_order, train_reference

# Tiny nets: intra-op threads only add contention on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")



def _blobs(n=300, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x - x.mean(0), y


def test_reference_records_everything():
    x, y = _blobs()
    s = RunSpec(3, 16, "tanh", "gaussian", "adam", 1e-2, 0, batch_size=50, max_epochs=3, vni_dense_steps=2)
    r = train_reference(s, x, y, x[:100])
    assert r.steps == 18 and len(r.train_accuracy) == 3 and len(r.train_loss) == 3
    assert [t[0] for t in r.vni_trace[::3]] == [0, 1, 2, 6, 12, 18]
    assert len(r.vni_final) == len(r.sigma_w2_mu1) == len(r.grad_norms) == 3
    assert r.vni_final == [v for (s_, _, v) in r.vni_trace if s_ == 18]
    assert all(1 / 16 <= v <= 1 for v in r.vni_final)
    assert not r.success and not r.diverged and "below target" in r.reason
    q = {v.quantity for v in r.to_values()}
    assert {"success", "train_accuracy", "train_loss", "vni", "vni_final", "sigma_w2_mu1", "grad_norm"} <= q


def test_reference_success_stops_at_first_epoch_above_target():
    x, y = _blobs()
    s = RunSpec(3, 16, "tanh", "orthogonal", "adam", 1e-2, 1, batch_size=30, max_epochs=50, target_accuracy=0.6)
    r = train_reference(s, x, y, x[:50])
    assert r.success and r.epoch_of_success == len(r.train_accuracy)
    assert r.train_accuracy[-1] >= 0.6 and all(a < 0.6 for a in r.train_accuracy[:-1])
    assert r.reason is None


def test_reference_divergence_is_a_failure_not_a_crash():
    x, y = _blobs()
    s = RunSpec(3, 16, "relu", "gaussian", "sgd", 1e6, 0, batch_size=50, max_epochs=5)
    r = train_reference(s, x * 100, y, x[:50])
    assert r.diverged and not r.success and "non-finite loss" in r.reason
    assert all(math.isfinite(v.value) for v in r.to_values())


def test_epoch_order_is_a_seeded_permutation():
    a = epoch_order(3, 1, 100)
    assert torch.equal(a, epoch_order(3, 1, 100)) and not torch.equal(a, epoch_order(3, 2, 100))
    assert torch.equal(a.sort().values, torch.arange(100))


def test_runspec_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer"):
        RunSpec(3, 16, "tanh", "gaussian", "lbfgs", 1e-2, 0)
    with pytest.raises(ValueError, match="lr"):
        RunSpec(3, 16, "tanh", "gaussian", "sgd", -1.0, 0)
    with pytest.raises(ValueError, match="activation"):
        RunSpec(3, 16, "tanhh", "gaussian", "sgd", 1e-2, 0)
