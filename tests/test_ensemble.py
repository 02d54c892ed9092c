"""ensemble.py: each member trains exactly as a net trained alone, with its own learning rate."""
import pytest
import torch

from depthscope.ensemble import Ensemble
from depthscope.nets import NetSpec

pytestmark = pytest.mark.usefixtures("one_thread")

# Not palindromes, all distinct: a reversed or permuted per-member lr list changes some member.
LRS = {"sgd": [0.2, 0.01, 0.07], "momentum": [0.05, 0.002, 0.02], "adam": [1e-2, 1e-4, 3e-3],
       "rmsprop": [5e-3, 1e-4, 1e-3]}


def _member(ens: Ensemble, k: int) -> list[torch.Tensor]:
    return [p.select(d, k) for p, d in zip(ens.params, ens.kdim)]


@pytest.mark.parametrize("optimizer", list(LRS))
def test_each_member_uses_its_own_lr_as_if_trained_alone(optimizer):
    g = torch.Generator().manual_seed(0)
    spec = NetSpec(3, 10, "tanh", "gaussian", in_features=6, out_features=4)
    lrs = LRS[optimizer]
    members = [(spec, s) for s in (3, 4, 5)]
    ens = Ensemble(members, optimizer, lrs)
    alone = [Ensemble([m], optimizer, [lr]) for m, lr in zip(members, lrs)]
    for step in range(5):
        if step == 2:  # compaction keeps each member's own lr (and optimizer state), in the new order
            ens.keep([2, 0])
            alone = [alone[2], alone[0]]
        x, y = torch.randn(ens.K, 8, 6, generator=g), torch.randint(0, 4, (ens.K, 8), generator=g)
        ens.train_step(x, y)
        for k, a in enumerate(alone):
            a.step(x[k:k + 1], y[k:k + 1])
            a.update()
        for k, a in enumerate(alone):
            for p, q in zip(_member(ens, k), _member(a, 0)):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # the lrs matter: the members moved by different amounts from their start
    moved = [float((_member(ens, k)[0] - _member(Ensemble([members[i]], optimizer, [1.0]), 0)[0]).norm())
             for k, i in enumerate((2, 0))]
    assert moved[0] != pytest.approx(moved[1], rel=0.1)


@pytest.mark.parametrize("optimizer", list(LRS))
def test_update_equals_torch_optim(optimizer):
    """One member's update against torch.optim on the same parameters and gradients, three steps."""
    from depthscope.ensemble import ADAM_BETAS, ADAM_EPS, MOMENTUM, RMSPROP_ALPHA, RMSPROP_EPS

    g = torch.Generator().manual_seed(1)
    spec = NetSpec(3, 10, "tanh", "gaussian", in_features=6, out_features=4)
    lr = LRS[optimizer][0]
    ens = Ensemble([(spec, 7)], optimizer, [lr])
    ref = [p.detach().clone().requires_grad_(True) for p in ens.params]
    make = {"sgd": lambda ps: torch.optim.SGD(ps, lr=lr),
            "momentum": lambda ps: torch.optim.SGD(ps, lr=lr, momentum=MOMENTUM),
            "adam": lambda ps: torch.optim.Adam(ps, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS),
            "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=lr, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS)}
    opt = make[optimizer](ref)
    for _ in range(3):
        x, y = torch.randn(1, 8, 6, generator=g), torch.randint(0, 4, (1, 8), generator=g)
        ens.step(x, y)
        for r, gr in zip(ref, ens.grads):
            r.grad = gr.clone()
        ens.update()
        opt.step()
        for p, r in zip(ens.params, ref):
            torch.testing.assert_close(p, r.detach(), rtol=1e-5, atol=1e-7)


def test_probe_sigma_w2_mu1_equals_the_metric_on_each_member_net():
    """probe_metrics' sigma_w^2 mu_1 (fan_in Var[W_l] mean phi'(h_l)^2) vs metrics.sigma_w2_mu1_per_layer, layer 1 non-square."""
    from depthscope.metrics import sigma_w2_mu1_per_layer, vni_per_layer
    from depthscope.nets import build_net

    spec = NetSpec(3, 12, "tanh", "gaussian", sigma_w2=1.6, in_features=5, out_features=3)
    ens = Ensemble([(spec, 0), (spec, 1)], "sgd", [0.1, 0.1])
    probe = torch.randn(64, 5, generator=torch.Generator().manual_seed(2))
    v, smu = ens.probe_metrics(probe)
    for k in range(2):
        net = build_net(spec, k)
        torch.testing.assert_close(smu[k], sigma_w2_mu1_per_layer(net, probe), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(v[k], vni_per_layer(net, probe), rtol=1e-5, atol=1e-7)
