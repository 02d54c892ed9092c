"""Which modules a watch reads: the default selection, name patterns and types, the activation after each."""
from __future__ import annotations

import fnmatch
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

#: Module types always watched by default (besides linear-like modules and repeated blocks).
DEFAULT_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)

#: Elementwise activation modules whose phi' gives mu_1 for the Linear/Conv before them.
ELEMENTWISE_ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus,
    nn.ReLU6, nn.Hardsigmoid, nn.Hardswish, nn.Mish, nn.SELU, nn.CELU, nn.Tanhshrink, nn.Softsign,
)

#: Modules that may sit between a linear-like module and its activation in an nn.Sequential
#: (conv -> bn -> relu): the activation's input is then the normalised output, read by a hook on it.
PASS_THROUGH: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm,
    nn.LocalResponseNorm, nn.modules.dropout._DropoutNd, nn.Identity,
)

#: Modules with a 2-D weight that is not applied to the feature axis (a lookup table).
NOT_LINEAR: tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)

ModuleSelector = str | type | Sequence[str | type] | None


@dataclass
class _Watched:
    layer: int  # 1-based, in model.named_modules() order
    name: str
    module: nn.Module
    phi: Callable[[torch.Tensor], torch.Tensor] | None
    axis: int | None  # None: node_axis_of()
    kind: str = "module"  # 'linear-like', 'block' or 'module' (chosen by type or pattern)
    phi_module: nn.Module | None = None  # the activation after a norm: mu_1 is read at its input
    # Modules between this one and phi_module found by attribute order (timm's conv1 -> bn1 -> act1,
    # not an nn.Sequential): forward order alone cannot tell conv2 -> bn2 -> (+ shortcut) -> act2 from
    # it, so mu_1 is read only when the activation's input is the very tensor this chain produced.
    phi_chain: tuple[nn.Module, ...] | None = None


def is_linear_like(module: nn.Module) -> bool:
    """A module whose own 2-D ``weight`` multiplies the feature axis: nn.Linear, transformers' Conv1D
    (weight (in, out), applied as x @ W), any such layer of another library; not an embedding."""
    if isinstance(module, nn.Linear):
        return True
    w = module._parameters.get("weight")
    return isinstance(w, torch.Tensor) and w.ndim == 2 and not isinstance(module, NOT_LINEAR)


def blocks_of(model: nn.Module) -> set[str]:
    """Names of the repeated blocks of a model: a module with submodules whose parent (an nn.Sequential
    or nn.ModuleList) holds at least two children of its class (GPT-2's ``transformer.h.3``, a
    ResNet's ``layer2.1``). Their outputs are the residual stream between blocks."""
    found: set[str] = set()
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Sequential, nn.ModuleList)):
            continue
        kids = list(mod.named_children())
        counts = Counter(type(m) for _, m in kids)
        for n, m in kids:
            if counts[type(m)] >= 2 and any(True for _ in m.children()):
                found.add(f"{name}.{n}" if name else n)
    return found


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, type)):
        return [x]
    return list(x)


def select(model: nn.Module, modules: ModuleSelector, exclude: str | Sequence[str],
           activations: Mapping[str, Any], node_axis: Mapping[str, int]) -> list[_Watched]:
    """The watched modules, numbered 1.. in ``named_modules()`` order (see the package docstring)."""
    selectors = _as_list(modules)
    for s in selectors:
        if not isinstance(s, (str, type)):
            raise ValueError(f"modules= takes name patterns (str) or module types, got {s!r}")
    for pat, ax in node_axis.items():
        if not isinstance(pat, str):
            raise ValueError(f"node_axis= maps name patterns (str) to axes, got key {pat!r}")
        if isinstance(ax, bool) or not isinstance(ax, numbers.Integral):
            raise ValueError(f"node_axis[{pat!r}] must be an integer axis (e.g. 1 or -1), got {ax!r}")
    excl = _as_list(exclude)
    names = dict(model.named_modules())
    for pat in list(activations) + list(node_axis):
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"pattern {pat!r} matches no module name; names look like: "
                             f"{', '.join(list(names)[1:6])}")
    blocks = blocks_of(model)
    phis = sequential_activations(model)
    attrs = attribute_activations(model)
    out = []
    for name, mod in names.items():
        linear = isinstance(mod, DEFAULT_TYPES) or is_linear_like(mod)
        if selectors:
            hit = any((isinstance(s, str) and fnmatch.fnmatchcase(name, s)) or
                      (isinstance(s, type) and isinstance(mod, s)) for s in selectors)
        else:
            hit = linear or name in blocks
        if not hit or any(fnmatch.fnmatchcase(name, e) for e in excl):
            continue
        phi, phi_module = next((f for p, f in activations.items() if fnmatch.fnmatchcase(name, p)), None), None
        chain = None
        if phi is None and name in phis:
            phi, direct = phis[name]
            phi_module = None if direct else phi
        elif phi is None and name in attrs:
            phi, chain = attrs[name]
            phi_module = phi
        if isinstance(phi, str):
            from ..activations import get_activation

            phi = get_activation(phi)
        axis = next((int(a) for p, a in node_axis.items() if fnmatch.fnmatchcase(name, p)), None)
        kind = "block" if name in blocks else "linear-like" if is_linear_like(mod) or \
            isinstance(mod, nn.modules.conv._ConvNd) else "module"
        out.append(_Watched(len(out) + 1, name, mod, phi, axis, kind, phi_module, chain))
    return out


def attribute_activations(model: nn.Module) -> dict[str, tuple[nn.Module, tuple[nn.Module, ...]]]:
    """{name of a module outside any nn.Sequential: (the activation registered after it, the modules between)}.

    Candidates only, by registration order (``self.conv1, self.bn1, self.act1``): the activation is the
    first child after the module past children that only normalise or pass through (:data:`PASS_THROUGH`).
    Registration order is not data flow (``conv2 -> bn2 -> + shortcut -> act2`` registers alike), so the
    watch reads mu_1 at the activation only when its input is the tensor the chain produced in that call.
    """
    found: dict[str, tuple[nn.Module, tuple[nn.Module, ...]]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            continue
        kids = list(mod.named_children())
        for i, (n1, m1) in enumerate(kids):
            if isinstance(m1, ELEMENTWISE_ACTIVATIONS + PASS_THROUGH):
                continue
            chain: list[nn.Module] = []
            for _, m2 in kids[i + 1:]:
                if isinstance(m2, ELEMENTWISE_ACTIVATIONS):
                    found[f"{name}.{n1}" if name else n1] = (m2, tuple(chain))
                    break
                if not isinstance(m2, PASS_THROUGH):
                    break
                chain.append(m2)
    return found


def sequential_activations(model: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    """{name of a module inside an nn.Sequential: (the elementwise activation after it, directly after?)}.

    The activation is the next sibling, or the first one after siblings that only normalise or
    pass through (:data:`PASS_THROUGH`: conv -> bn -> relu); any other sibling in between ends the
    search (no activation known: sigma_w2_mu1 is NaN).
    """
    found: dict[str, tuple[nn.Module, bool]] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Sequential):
            continue
        kids = list(mod.named_children())
        for i, (n1, _) in enumerate(kids):
            for j in range(i + 1, len(kids)):
                m2 = kids[j][1]
                if isinstance(m2, ELEMENTWISE_ACTIVATIONS):
                    found[f"{name}.{n1}" if name else n1] = (m2, j == i + 1)
                    break
                if not isinstance(m2, PASS_THROUGH):
                    break
    return found


def describe(model: nn.Module, watched: Sequence[_Watched], every: int) -> str:
    """One line: how many modules of which kinds and classes are watched, and how often."""
    by_kind: dict[str, Counter] = {}
    for w in watched:
        by_kind.setdefault(w.kind, Counter())[type(w.module).__name__] += 1
    parts = []
    for kind in ("linear-like", "block", "module"):
        if kind in by_kind:
            c = by_kind[kind]
            classes = ", ".join(f"{k} {v}" for k, v in c.most_common())
            parts.append(f"{sum(c.values())} {kind if kind != 'module' else 'other'} ({classes})")
    return (f"depthscope.watch: watching {len(watched)} modules of {type(model).__name__} every {every} "
            f"step{'s' if every != 1 else ''}: {'; '.join(parts)}")
