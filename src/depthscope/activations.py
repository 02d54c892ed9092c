"""Activation registry: name -> phi.

Each activation is a plain function of a torch tensor. Derivatives are taken by
autograd (:func:`derivative`), so a user-registered function needs nothing else::

    import torch, depthscope
    depthscope.register_activation("swish", lambda x: x * torch.sigmoid(x))

Numpy callers (quadrature in :mod:`depthscope.theory`) go through
:func:`numpy_phi` / :func:`numpy_derivative`, which evaluate the same torch
function in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Phi = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Activation:
    """A registered activation: its name and its elementwise torch function."""

    name: str
    fn: Phi
    #: True when phi' is continuous: theory then integrates with Gauss-Hermite
    #: quadrature; kinked functions (relu, hard_tanh) use a dense composite rule.
    smooth: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


_REGISTRY: dict[str, Activation] = {}


def register_activation(name: str, fn: Phi, *, smooth: bool = False, overwrite: bool = False) -> Activation:
    """Add ``fn`` (an elementwise function of a torch tensor) under ``name``.

    Pass ``smooth=True`` only if phi' is continuous everywhere; it lets the
    theory use Gauss-Hermite quadrature instead of the slower dense rule.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"activation name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"activation {name!r}: expected a callable phi(x), got {type(fn).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"activation {name!r} is already registered; pass overwrite=True to replace it")
    act = Activation(name, fn, smooth)
    _REGISTRY[name] = act
    return act


for _name, _fn, _smooth in [
    ("linear", _linear, True),
    ("tanh", torch.tanh, True),
    ("hard_tanh", torch.nn.functional.hardtanh, False),
    ("relu", torch.relu, False),
    ("sigmoid", torch.sigmoid, True),
]:
    register_activation(_name, _fn, smooth=_smooth)


def activation_names() -> list[str]:
    """Registered activation names, built-ins first."""
    return list(_REGISTRY)


def get_activation(name: str | Activation) -> Activation:
    """Look an activation up by name; an unknown name lists the valid ones."""
    if isinstance(name, Activation):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; expected one of: {', '.join(_REGISTRY)}"
        ) from None


def derivative(act: str | Activation, x: torch.Tensor) -> torch.Tensor:
    """phi'(x) elementwise, by autograd (works for any registered function)."""
    phi = get_activation(act)
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(phi(xr).sum(), xr)
    return g


def numpy_phi(act: str | Activation, x: np.ndarray) -> np.ndarray:
    """phi(x) on a float64 numpy array."""
    phi = get_activation(act)
    return phi(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


def numpy_derivative(act: str | Activation, x: np.ndarray) -> np.ndarray:
    """phi'(x) on a float64 numpy array, by autograd."""
    return derivative(act, torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()
