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
