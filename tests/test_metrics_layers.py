"""metrics/layers.py: per-layer VNI in one streaming pass, in memory that does not grow with depth."""
import gc
import weakref

import torch

import depthscope.metrics.layers as layers_mod
from conftest import compare
from depthscope.metrics import vni, vni_per_layer
from depthscope.nets import NetSpec, build_net


def test_streaming_handles_deep_nets_in_bounded_memory(monkeypatch):
    """2000 layers: at most 2 layers' activations are alive at once (the memory is measured, not assumed).

    Every (h_l, x_l) the stream yields is tracked by a weak reference; a vni_per_layer that kept
    the layers (a list of them, or a reference per layer) would hold ~4000 tensors here.
    """
    alive_max = [0]
    refs: list[weakref.ref] = []
    real = layers_mod.stream_layers

    def tracked(spec, x, seed=0, dtype=None):
        for item in real(spec, x, seed, dtype):
            refs.extend([weakref.ref(item[1]), weakref.ref(item[2])])
            # tensors are freed by reference counting: what is alive now is what someone still holds
            alive_max[0] = max(alive_max[0], sum(r() is not None for r in refs[-64:]))
            yield item
            del item

    monkeypatch.setattr(layers_mod, "stream_layers", tracked)
    spec = NetSpec(depth=2000, width=8, activation="tanh", arch="residual", residual_scale=0.1)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    v = vni_per_layer(spec, x, 0, layers=[1, 2000])
    assert torch.isfinite(v[[0, 1999]]).all() and torch.isnan(v[1:1999]).all()
    assert len(refs) >= 2 * 2000  # every layer went through the tracker
    assert alive_max[0] <= 4, alive_max[0]


def test_vni_per_layer_equals_vni_of_each_stored_layer():
    spec = NetSpec(depth=6, width=16, activation="relu", sigma_b=0.2, in_features=5)
    x = torch.randn(100, 5, generator=torch.Generator().manual_seed(1))
    net = build_net(spec, 2)
    stored = [xl for _, _, xl in net.layers(x)]
    compare(vni_per_layer(net, x), torch.stack([vni(a) for a in stored]), rtol=1e-12)
    compare(vni_per_layer(spec, x, 2), torch.stack([vni(a) for a in stored]), rtol=1e-5)
    part = vni_per_layer(spec, x, 2, layers=[2, 5])
    assert torch.isnan(part[[0, 2, 3, 5]]).all()
    compare(part[[1, 4]], torch.stack([vni(stored[1]), vni(stored[4])]), rtol=1e-5)
