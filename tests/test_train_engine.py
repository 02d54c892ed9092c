"""The stacked engine (train_group / Ensemble) against one-net-at-a-time torch.optim training."""
import math

import pytest
import torch

from depthscope.ensemble import batched_vni
from depthscope.metrics import vni
from depthscope.train import OPTIMIZERS, RunSpec, train_group, train_reference

LRS = {"sgd": (0.05, 0.2), "momentum": (0.01, 0.05), "adam": (1e-3, 1e-2), "rmsprop": (1e-3, 5e-3)}

# Tiny nets: intra-op threads only add contention on 2 cores.
pytestmark = pytest.mark.usefixtures("one_thread")



def _blobs(n=200, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long() + 4 * (x[:, 2] > 0).long()
    return x - x.mean(0), y


def _compare(fast, slow, tol=1e-5):
    assert fast.spec == slow.spec
    assert fast.steps == slow.steps
    assert (fast.success, fast.epoch_of_success, fast.diverged) == (slow.success, slow.epoch_of_success, slow.diverged)
    assert fast.step_loss == pytest.approx(slow.step_loss, abs=tol, rel=tol)
    assert fast.train_loss == pytest.approx(slow.train_loss, abs=tol, rel=tol)
    assert fast.train_accuracy == pytest.approx(slow.train_accuracy, abs=1e-12)
    assert [t[:2] for t in fast.vni_trace] == [t[:2] for t in slow.vni_trace]
    assert [t[2] for t in fast.vni_trace] == pytest.approx([t[2] for t in slow.vni_trace], rel=1e-4, nan_ok=True)
    assert fast.vni_final == pytest.approx(slow.vni_final, rel=1e-4, nan_ok=True)
    assert fast.sigma_w2_mu1 == pytest.approx(slow.sigma_w2_mu1, rel=1e-4, nan_ok=True)
    assert fast.grad_norms == pytest.approx(slow.grad_norms, rel=1e-4, nan_ok=True)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_each_member_follows_its_own_torch_optim_trajectory(optimizer, activation, device):
    """20 steps (4 epochs x 5 batches) of 4 members with different lr, seed and init, vs torch.optim alone."""
    x, y = _blobs()
    lo, hi = LRS[optimizer]
    specs = [RunSpec(4, 16, activation, init, optimizer, lr, seed, batch_size=40, max_epochs=4,
                     target_accuracy=1.0, vni_dense_steps=3)
             for init, lr, seed in [("gaussian", lo, 0), ("orthogonal", hi, 1), ("uniform", hi, 2), ("orthogonal", lo, 3)]]
    fast = train_group(specs, x, y, x[:64], device=device, trace_steps=True)
    for f, s in zip(fast, specs):
        slow = train_reference(s, x, y, x[:64], device=device, trace_steps=True)
        assert len(slow.step_loss) == 20
        _compare(f, slow)


def test_members_leave_on_success_and_on_running_out_of_epochs(device):
    """One member succeeds early and leaves the stack, the other runs out of epochs; both match torch.optim."""
    x, y = _blobs()
    specs = [RunSpec(3, 16, "tanh", "orthogonal", "momentum", lr, seed, batch_size=40, max_epochs=5,
                     target_accuracy=0.45, vni_dense_steps=2) for seed, lr in [(0, 0.1), (1, 1e-4)]]
    seen = []
    fast = train_group(specs, x, y, x[:50], device=device, on_result=lambda r: seen.append(r.spec.seed),
                       trace_steps=True)
    assert seen == [0, 1]
    for f, s in zip(fast, specs):
        _compare(f, train_reference(s, x, y, x[:50], device=device, trace_steps=True))
    assert fast[0].success and fast[0].epoch_of_success < 5 and fast[0].steps < fast[1].steps
    assert not fast[1].success and not fast[1].diverged and "below target" in fast[1].reason


def test_divergence_inside_an_ensemble(device):
    x, y = _blobs()
    specs = [RunSpec(3, 16, "relu", "gaussian", "sgd", lr, s, batch_size=50, max_epochs=3, target_accuracy=1.0)
             for s, lr in enumerate([1e-2, 1e6, 1e-3])]
    fast = train_group(specs, x * 100, y, x[:50] * 100, device=device, trace_steps=True)
    assert fast[1].diverged and "non-finite loss" in fast[1].reason
    assert not fast[0].diverged and not fast[2].diverged
    for f, s in zip(fast, specs):
        _compare(f, train_reference(s, x * 100, y, x[:50] * 100, device=device, trace_steps=True), tol=1e-4)


def test_unknown_activation_uses_autograd_backward():
    from depthscope.activations import register_activation
    try:
        register_activation("softsign_test", torch.nn.functional.softsign)
    except ValueError:
        pass
    x, y = _blobs()
    specs = [RunSpec(3, 16, "softsign_test", "gaussian", "momentum", lr, s, batch_size=50, max_epochs=2,
                     sigma_w2=1.5, target_accuracy=1.0) for s, lr in enumerate([1e-2, 3e-2])]
    for f, s in zip(train_group(specs, x, y, x[:40], trace_steps=True), specs):
        _compare(f, train_reference(s, x, y, x[:40], trace_steps=True))


def test_chunked_ensembles_equal_one_ensemble():
    x, y = _blobs()
    specs = [RunSpec(3, 16, "tanh", "gaussian", "rmsprop", 1e-3 * (s + 1), s, batch_size=50, max_epochs=2,
                     target_accuracy=1.0) for s in range(3)]
    a = train_group(specs, x, y, x[:40], trace_steps=True)
    b = train_group(specs, x, y, x[:40], trace_steps=True, max_members=1)
    for f, s in zip(a, b):
        _compare(f, s, tol=1e-6)


def test_batched_vni_matches_vni():
    g = torch.Generator().manual_seed(0)
    for shape in [(3, 50, 8), (2, 6, 20)]:
        x = torch.randn(*shape, generator=g) @ torch.randn(shape[2], shape[2], generator=g)
        got = batched_vni(x)
        for k in range(shape[0]):
            assert float(got[k]) == pytest.approx(float(vni(x[k])), rel=1e-6)


def test_group_key_mismatch_is_an_error():
    x, y = _blobs()
    a = RunSpec(3, 16, "tanh", "gaussian", "sgd", 1e-2, 0)
    with pytest.raises(ValueError, match=r"train_group needs runs with one group_key, got 2: \[\(3, "):
        train_group([a, RunSpec(4, 16, "tanh", "gaussian", "sgd", 1e-2, 0)], x, y, x[:10])


def test_failure_kind_rules():
    from depthscope.train import failure_kind

    rising, flat = [0.2, 0.4, 0.5, 0.6], [0.2, 0.5, 0.5, 0.51]
    assert failure_kind(True, False, 0.99, flat) is None  # success wins over everything
    assert failure_kind(False, True, float("nan"), rising) == "diverged"
    assert failure_kind(False, False, 0.95, rising) == "collapsed"  # VNI > 0.9 even while learning
    assert failure_kind(False, False, 0.9, rising) == "slow"  # 0.9 itself is not above the threshold
    assert failure_kind(False, False, float("nan"), flat) == "dead"  # every output node constant
    assert failure_kind(False, False, None, flat) == "dead"
    assert failure_kind(False, False, 0.3, flat) == "stuck"  # +0.01 over the last epoch: not learning
    # k = max(1, E // 4): with 8 epochs the gain is measured over the last 2
    assert failure_kind(False, False, 0.3, [0.1] * 5 + [0.2, 0.21, 0.23]) == "slow"
    assert failure_kind(False, False, 0.3, [0.1] * 5 + [0.22, 0.21, 0.23]) == "stuck"
    assert failure_kind(False, False, 0.3, [0.5]) == "stuck"  # one epoch: nothing to compare with
    assert failure_kind(False, False, 0.5, rising, collapse_vni=0.4) == "collapsed"


def test_result_failure_is_failure_kind_of_its_fields():
    x, y = _blobs(60)
    specs = [RunSpec(depth=3, width=8, activation="tanh", init="gaussian", optimizer="sgd", lr=lr, seed=0,
                     batch_size=20, max_epochs=4, target_accuracy=0.99) for lr in (1e-3, 1e38)]
    low, blown = train_group(specs, x, y, x[:30])
    assert not low.success and low.failure in ("slow", "stuck", "collapsed", "dead")
    from depthscope.train import failure_kind

    assert low.failure == failure_kind(False, False, low.vni_final[-1], low.train_accuracy)
    assert blown.diverged and blown.failure == "diverged"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "hard_tanh", "linear"])
def test_fused_train_step_equals_step_then_update(optimizer, activation, device):
    """train_step (per-layer update inside backprop, scratch gradients, in-place kernels) vs step + update."""
    from depthscope.ensemble import Ensemble
    from depthscope.nets import NetSpec

    g = torch.Generator().manual_seed(5)
    # depth 4 and 5: the dL/da buffers alternate, an even and an odd number of times
    for depth in (4, 5):
        spec = NetSpec(depth, 12, activation, "gaussian", in_features=9, out_features=5)
        members = [(spec, s) for s in range(3)]
        lrs = list(LRS[optimizer]) + [LRS[optimizer][0] / 2]
        fused, plain = Ensemble(members, optimizer, lrs, device), Ensemble(members, optimizer, lrs, device)
        for step in range(6):
            B = 7 if step < 4 else 3  # a last partial minibatch: a second set of buffers
            x, y = torch.randn(3, B, 9, generator=g).to(device), torch.randint(0, 5, (3, B), generator=g).to(device)
            lf, cf, gf, updated = fused.train_step(x, y)
            lp, cp, gp = plain.step(x, y)
            plain.update()
            assert updated
            torch.testing.assert_close(lf, lp, rtol=1e-6, atol=1e-7)
            assert torch.equal(cf, cp)
            torch.testing.assert_close(gf, gp, rtol=1e-5, atol=1e-7)
        for pf, pp in zip(fused.params, plain.params):
            torch.testing.assert_close(pf, pp, rtol=1e-5, atol=1e-6)


def test_train_step_skips_the_update_when_a_loss_is_not_finite():
    from depthscope.ensemble import Ensemble
    from depthscope.nets import NetSpec

    spec = NetSpec(3, 8, "relu", "gaussian", in_features=4, out_features=3)
    ens = Ensemble([(spec, 0), (spec, 1)], "momentum", [0.1, 0.1])
    before = [p.clone() for p in ens.params]
    x = torch.randn(2, 5, 4)
    x[1, 0, 0] = float("inf")
    loss, _, gn, updated = ens.train_step(x, torch.zeros(2, 5, dtype=torch.long))
    assert not updated and gn is None and math.isfinite(float(loss[0])) and not math.isfinite(float(loss[1]))
    assert all(torch.equal(a, b) for a, b in zip(before, ens.params)) and ens.t == 0


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "hard_tanh", "linear"])
def test_hand_written_backward_equals_autograd(activation, device):
    """Ensemble.step's gradients (in-place activation kernels) vs autograd through Ensemble.forward."""
    from depthscope.ensemble import Ensemble
    from depthscope.nets import NetSpec

    g = torch.Generator().manual_seed(2)
    spec = NetSpec(4, 10, activation, "orthogonal", in_features=6, out_features=4)
    ens = Ensemble([(spec, 0), (spec, 1)], "sgd", [0.1, 0.1], device)
    x, y = torch.randn(2, 8, 6, generator=g).to(device), torch.randint(0, 4, (2, 8), generator=g).to(device)
    loss, _, gn = ens.step(x, y)
    params = [p.clone().requires_grad_(True) for p in ens.params]
    ref = Ensemble([(spec, 0), (spec, 1)], "sgd", [0.1, 0.1], device)
    ref._set_params(params)
    logits = ref.forward(x)
    ref_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
    grads = torch.autograd.grad(ref_loss.sum(), params)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-7)
    for got, want in zip(ens.grads, grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    want_gn = torch.stack([grads[0].flatten(1).norm(dim=1)] + [w.flatten(1).norm(dim=1) for w in grads[1]], 1)
    torch.testing.assert_close(gn, want_gn, rtol=1e-5, atol=1e-7)


def test_tanh_in_place_equals_torch_tanh():
    """The numpy SIMD tanh (CPU float32 fast path) vs torch.tanh: within 2 float32 ulp, specials exact."""
    from depthscope.ensemble import tanh_

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=g) * s for s in (1e-4, 0.1, 1.0, 5.0)]
                  + [torch.tensor([0.0, -0.0, 1e-30, 9.0, 10.0, 20.0, -20.0, 1e30, float("inf"), float("-inf")])])
    got = tanh_(x.clone())
    want = torch.tanh(x)
    ulp = torch.finfo(torch.float32).eps * want.abs().clamp_min(torch.finfo(torch.float32).tiny)
    assert float(((got - want).abs() / ulp).max()) <= 2.0
    assert torch.equal(torch.signbit(got), torch.signbit(want))
    assert torch.isnan(tanh_(torch.tensor([float("nan")]))).all()
    # non-contiguous and float64 tensors take torch's own kernel
    y = torch.randn(6, 4, generator=g, dtype=torch.float64).T
    assert torch.equal(tanh_(y.clone()), torch.tanh(y))


def test_cpu_stack_size_rule():
    from depthscope.train import CPU_STACK_BYTES, cpu_stack_size, members_per_ensemble

    assert [cpu_stack_size(n, 1) for n in (32, 64, 128, 256, 500, 1000)] == [256, 64, 16, 4, 1, 1]
    assert [cpu_stack_size(n, 2) for n in (32, 128, 256, 500, 1000)] == [256, 16, 4, 2, 2]
    assert all(cpu_stack_size(n, 1) * 4 * n * n <= max(CPU_STACK_BYTES, 4 * n * n) for n in range(1, 600))
    assert cpu_stack_size(500) == 1  # torch's thread count: one here (the one_thread fixture)
    spec = RunSpec(50, 128, "tanh", "gaussian", "adam", 1e-3, 0)
    assert members_per_ensemble(spec, 784) == 16
    assert members_per_ensemble(spec, 784, memory_bytes=10 << 20) == 1  # memory binds first
    assert members_per_ensemble(RunSpec(50, 500, "tanh", "gaussian", "sgd", 1e-3, 0), 784) == 1
