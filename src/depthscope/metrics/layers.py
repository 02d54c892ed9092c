"""Per-layer VNI of a whole network in one streaming forward pass.

Only the current layer's activations (and, for an unmaterialised net, weights)
are alive at any time, so memory is O(batch x width) (+ O(width^2) weights),
not O(depth x batch x width): a 10,000-layer net is fine.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..nets import Net, NetSpec, stream_layers
from .vni import effective_nodes, vni


@torch.no_grad()
def vni_per_layer(
    net_or_spec: Net | NetSpec,
    x: torch.Tensor,
    seed: int = 0,
    *,
    layers: Iterable[int] | None = None,
) -> torch.Tensor:
    """R_sq(x_l) (eq. 3.5) of the post-activations of every layer l = 1..L (element l-1), float64.

    ``net_or_spec`` is a materialised :class:`~depthscope.nets.Net` or a
    :class:`~depthscope.nets.NetSpec` (weights then drawn layer by layer from
    ``seed``, identical to ``build_net(spec, seed)``). With ``layers`` given,
    only those layers are measured and the others are NaN (saves the Gram cost).
    Inputs holding inf or NaN are refused (ValueError): a saturating activation
    (tanh(inf) = 1) would turn them into ordinary-looking VNIs further up. Identical input
    rows (input variance 0) make every layer constant, so every VNI is NaN: computed, they
    would read the rounding differences between the rows of a matrix product (VNI ~ 1).
    """
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"x holds {int(bad.sum())} non-finite value(s) (first {float(x[first])} at index {first}); "
                         "VNI needs finite inputs")
    if isinstance(net_or_spec, Net):
        depth = net_or_spec.spec.depth
        it = net_or_spec.layers(x)
    else:
        depth = net_or_spec.depth
        it = stream_layers(net_or_spec, x, seed)
    wanted = None if layers is None else set(int(l) for l in layers)
    if wanted is not None and any(not 1 <= l <= depth for l in wanted):
        raise ValueError(f"layers must lie in 1..{depth}, got {sorted(wanted)}")
    out = torch.full((depth,), float("nan"), dtype=torch.float64)
    if x.ndim == 2 and x.shape[0] >= 2 and bool((x == x[:1]).all()):
        return out
    for l, _, xl in it:
        if wanted is None or l in wanted:
            out[l - 1] = vni(xl)
    return out


def effective_nodes_per_layer(r_sq: torch.Tensor, width: int) -> torch.Tensor:
    """N (1 - R_sq) + 1 for every layer (thesis section 3.3)."""
    return effective_nodes(r_sq, width)
