"""The study's networks (thesis eq. 3.1) and their variants.

``arch="feedforward"``  h_l = W_l x_{l-1} + b_l,  x_l = phi(h_l)                  (eq. 3.1)
``arch="residual"``     branch="one":  x_l = x_{l-1} + alpha * phi(W_l x_{l-1} + b_l)
                        branch="two":  x_l = x_{l-1} + alpha * V_l phi(W_l x_{l-1} + b_l)
                        (the ResNet form: V_l has variance 1/N, so the branch has zero mean
                        over the weights whatever phi is; see docs/theory.md "Residual nets")
``arch="volume"``       x_l = x_{l-1} + phi((M_l * W_l) x_{l-1} + b_l), M_l strictly
                        triangular (lower at odd l, upper at even l), so the layer
                        Jacobian I + diag(phi') (M_l * W_l) is triangular with a unit
                        diagonal and det J = 1 exactly (seed 003 section 2.1, the DVCNN).

Depth counts the width-N hidden layers x_1..x_L; ``depth=0`` is the identity map
(with the readout, if any, applied to the input). Layer 1 of a feed-forward net
reads the raw input (fan-in = ``in_features``) as in the thesis; residual and
volume nets need width-preserving layers, so an input of another size first goes
through a linear *input projection* (no activation, not counted in depth). An
optional linear readout to ``out_features`` is not counted either.

Every layer's parameters come from :func:`layer_params`, a pure function of
(spec, seed, layer index), so a materialised :class:`Net` and the streaming
:func:`stream_layers` (memory O(width^2 + batch x width), for 10,000-layer nets)
see identical weights.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .activations import get_activation
from .inits import check_init, init_weight
from .theory import critical_sigma_w2

ARCHS = ("feedforward", "residual", "volume")
BRANCHES = ("one", "two")

#: The largest sigma_b whose square is a finite float64 (with room): sigma_b^2 enters every variance map.
SIGMA_B_MAX = 1e154


@dataclass(frozen=True)
class NetSpec:
    """Everything that defines a random network except its seed."""

    depth: int
    width: int
    activation: str = "tanh"
    init: str = "gaussian"
    sigma_w2: float | None = None  # None: critical value of the activation
    sigma_b: float = 0.0  # std of random biases
    bias_value: float = 0.0  # constant added to every bias (seed 003 uses -2 for sigmoid)
    arch: str = "feedforward"
    # alpha of the residual branch. ``residual_scale`` is its older name, kept as an alias so that specs
    # stored before ``alpha`` existed (table3.1's units carry residual_scale) still load: give either one,
    # or both equal; after construction both fields hold the same resolved value (default 1.0).
    residual_scale: float | None = None
    in_features: int | None = None  # None: same as width
    out_features: int | None = None  # None: no readout
    branch: str = "one"  # residual branch: "one" (alpha phi(W x + b)) or "two" (alpha V phi(W x + b))
    alpha: float | None = None

    def __post_init__(self) -> None:
        for name in ("depth", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        get_activation(self.activation)
        check_init(self.init)
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; expected one of: {', '.join(ARCHS)}")
        for name in ("sigma_w2", "sigma_b", "bias_value", "residual_scale"):
            v = getattr(self, name)
            if name in ("sigma_w2", "residual_scale") and v is None:  # None: the default (resolved below)
                continue
            # NaN passes every comparison and a string fails with a TypeError, so type and finiteness come
            # first; sigma_b enters squared (sigma_b^2), so it is bounded where its square stays finite
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(v) or (name == "sigma_b" and abs(v) > SIGMA_B_MAX):
                extra = {"sigma_w2": " >= 0", "sigma_b": f" in [0, {SIGMA_B_MAX:g}] (its square must be finite)"}
                raise ValueError(f"NetSpec.{name} must be a finite number{extra.get(name, '')}, got {v!r}")
        if self.sigma_w2 is not None and self.sigma_w2 < 0:
            raise ValueError(f"NetSpec.sigma_w2 must be a finite number >= 0, got {self.sigma_w2!r}")
        if self.sigma_b < 0:
            raise ValueError(f"NetSpec.sigma_b must be a finite number >= 0, got {self.sigma_b!r}")
        for name in ("in_features", "out_features"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"NetSpec.{name} must be an integer >= 1 or None, got {v!r}")
        self._resolve_alpha()

    def _resolve_alpha(self) -> None:
        if self.branch not in BRANCHES:
            raise ValueError(f"unknown residual branch {self.branch!r}; expected one of: {', '.join(BRANCHES)}")
        a, r = self.alpha, self.residual_scale
        for name, v in (("alpha", a), ("residual_scale", r)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                                  or not math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if a is not None and r is not None and float(a) != float(r):
            raise ValueError(f"alpha and residual_scale are the same setting (residual_scale is its old name); "
                             f"got alpha={a} and residual_scale={r}: give one of them")
        value = float(a if a is not None else (r if r is not None else 1.0))
        object.__setattr__(self, "alpha", value)
        object.__setattr__(self, "residual_scale", value)

    @property
    def resolved_sigma_w2(self) -> float:
        """sigma_w^2 in use: the given one, else the activation's critical value."""
        if self.sigma_w2 is not None:
            return float(self.sigma_w2)
        return critical_sigma_w2(self.activation, self.sigma_b**2)

    @property
    def n_in(self) -> int:
        return self.width if self.in_features is None else self.in_features

    @property
    def has_input_projection(self) -> bool:
        return self.arch != "feedforward" and self.n_in != self.width

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "NetSpec":
        # alpha and residual_scale are one setting: changing either one replaces both
        if "alpha" in changes and "residual_scale" not in changes:
            changes["residual_scale"] = None
        elif "residual_scale" in changes and "alpha" not in changes:
            changes["alpha"] = None
        return replace(self, **changes)

    @property
    def two_branch(self) -> bool:
        return self.arch == "residual" and self.branch == "two"


def layer_seed(seed: int, layer: int) -> int:
    """A 63-bit seed for one layer, derived from (seed, layer) by numpy's SeedSequence.

    Layer 0 is the input projection, -1 the readout (mapped to slot 2**31 - 1).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    slot = 2**31 - 1 if layer == -1 else int(layer)
    return int(np.random.SeedSequence([int(seed), slot]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _generator(seed: int, layer: int) -> torch.Generator:
    return torch.Generator().manual_seed(layer_seed(seed, layer))


def triangular_mask(width: int, layer: int, dtype=torch.float32) -> torch.Tensor:
    """Strictly lower-triangular mask at odd layers, strictly upper at even ones."""
    ones = torch.ones(width, width, dtype=dtype)
    return torch.tril(ones, -1) if layer % 2 == 1 else torch.triu(ones, 1)


def layer_params(spec: NetSpec, seed: int, layer: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_l, b_l) of hidden layer ``layer`` (1-based); layer 0 is the input projection, -1 the readout.

    Drawn in float32 whatever ``dtype`` asks for, then cast, so a float64 net has
    the same weights as a float32 one (torch's float64 streams differ).
    """
    w, b = _layer_params32(spec, seed, layer)
    return w.to(dtype), b.to(dtype)


def _layer_params32(spec: NetSpec, seed: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.float32
    g = _generator(seed, layer)
    sw2 = spec.resolved_sigma_w2
    if layer == 0:  # input projection: linear, variance preserving
        w = init_weight(spec.width, spec.n_in, spec.init, 1.0, generator=g, dtype=dtype)
        return w, torch.zeros(spec.width, dtype=dtype)
    if layer == -1:  # readout
        w = init_weight(spec.out_features, spec.width, "gaussian", 1.0, generator=g, dtype=dtype)
        return w, torch.zeros(spec.out_features, dtype=dtype)
    fan_in = spec.n_in if (layer == 1 and spec.arch == "feedforward") else spec.width
    w = init_weight(spec.width, fan_in, spec.init, sw2, generator=g, dtype=dtype)
    b = torch.randn(spec.width, generator=g, dtype=dtype) * spec.sigma_b + spec.bias_value
    if spec.arch == "volume":
        w = w * triangular_mask(spec.width, layer, dtype)
    return w, b


def branch_weight(spec: NetSpec, seed: int, layer: int, dtype=torch.float32) -> torch.Tensor:
    """V_l, the second matrix of a two-layer residual branch (variance 1/N, the spec's init).

    Drawn from its own stream (seed, layer, 1), so W_l is the same as in the one-layer branch's net.
    """
    if not spec.two_branch:
        raise ValueError(f"branch_weight applies to arch='residual' with branch='two', got arch={spec.arch!r}, "
                         f"branch={spec.branch!r}")
    state = np.random.SeedSequence([int(seed), int(layer), 1]).generate_state(2, np.uint64)[0] >> np.uint64(1)
    g = torch.Generator().manual_seed(int(state))
    return init_weight(spec.width, spec.width, spec.init, 1.0, generator=g, dtype=torch.float32).to(dtype)


def apply_layer(spec: NetSpec, layer: int, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                mask: torch.Tensor | None = None, v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One hidden layer on a batch x (batch, fan_in): returns (h_l, x_l); ``v`` is V_l of a two-layer branch."""
    phi = get_activation(spec.activation)
    if mask is not None:
        w = w * mask
    h = torch.nn.functional.linear(x, w, b)
    if spec.arch == "feedforward":
        return h, phi(h)
    if spec.two_branch:
        if v is None:
            raise ValueError("a two-layer residual branch needs its second matrix v (see branch_weight)")
        return h, x + spec.alpha * torch.nn.functional.linear(phi(h), v)
    scale = spec.alpha if spec.arch == "residual" else 1.0
    return h, x + scale * phi(h)


def linear_from_params(w: torch.Tensor, b: torch.Tensor, bias: bool = True) -> nn.Linear:
    """An nn.Linear holding copies of ``w`` (fan_out, fan_in) and ``b``, in w's dtype."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(b)
    return lin


class Net(nn.Module):
    """A materialised network of a :class:`NetSpec`; parameters are ordinary nn.Parameters.

    ``hidden[l-1]`` is the nn.Linear of layer l. Volume nets keep the triangular
    mask as a buffer and apply it in forward, so training cannot break det J = 1.
    """

    def __init__(self, spec: NetSpec, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.seed = int(seed)
        self.phi = get_activation(spec.activation)
        self.input_projection: nn.Linear | None = None
        if spec.has_input_projection:
            self.input_projection = linear_from_params(*layer_params(spec, seed, 0, dtype), bias=False)
        self.hidden = nn.ModuleList(
            linear_from_params(*layer_params(spec, seed, l, dtype)) for l in range(1, spec.depth + 1)
        )
        # V_l of a two-layer residual branch (bias-free: the branch is alpha V phi(W x + b))
        self.branch_out: nn.ModuleList | None = None
        if spec.two_branch:
            self.branch_out = nn.ModuleList(
                linear_from_params(branch_weight(spec, seed, l, dtype), torch.zeros(spec.width, dtype=dtype),
                                   bias=False) for l in range(1, spec.depth + 1))
        self.readout: nn.Linear | None = None
        if spec.out_features is not None:
            self.readout = linear_from_params(*layer_params(spec, seed, -1, dtype))
        if spec.arch == "volume":
            self.register_buffer("mask_odd", triangular_mask(spec.width, 1, dtype), persistent=False)
            self.register_buffer("mask_even", triangular_mask(spec.width, 2, dtype), persistent=False)

    def mask(self, layer: int) -> torch.Tensor | None:
        if self.spec.arch != "volume":
            return None
        return self.mask_odd if layer % 2 == 1 else self.mask_even

    def layers(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (l, h_l, x_l) for l = 1..L, one layer at a time."""
        if self.input_projection is not None:
            x = self.input_projection(x)
        for l, lin in enumerate(self.hidden, start=1):
            v = self.branch_out[l - 1].weight if self.branch_out is not None else None
            h, x = apply_layer(self.spec, l, x, lin.weight, lin.bias, self.mask(l), v)
            yield l, h, x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x_L (the input itself, projected if needed, when depth = 0)."""
        out = self.input_projection(x) if (self.input_projection is not None) else x
        for _, _, out in self.layers(x):
            pass
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)
        return self.readout(z) if self.readout is not None else z


def build_net(spec: NetSpec, seed: int = 0, dtype: torch.dtype = torch.float32) -> Net:
    """Materialise the network of ``spec`` with weights drawn from ``seed``."""
    return Net(spec, seed, dtype)


@torch.no_grad()
def stream_layers(
    spec: NetSpec, x: torch.Tensor, seed: int = 0, dtype: torch.dtype | None = None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (l, h_l, x_l) for l = 1..L without ever holding more than one layer's weights.

    Same weights as ``build_net(spec, seed)``; memory O(width^2 + batch x width).
    """
    dtype = dtype or x.dtype
    x = x.to(dtype)
    if spec.has_input_projection:
        w, _ = layer_params(spec, seed, 0, dtype)
        x = x @ w.to(x.device).T
    for l in range(1, spec.depth + 1):
        w, b = layer_params(spec, seed, l, dtype)
        v = branch_weight(spec, seed, l, dtype).to(x.device) if spec.two_branch else None
        h, x = apply_layer(spec, l, x, w.to(x.device), b.to(x.device), v=v)
        yield l, h, x
