"""Measured VNI of random nets over seeds, and the fixed inputs it is measured on (what ``depthscope vni`` runs).

:func:`measure_vni` draws nets of one :class:`~depthscope.nets.NetSpec` for seeds
0..S-1 and returns each layer's R_sq (eq. 3.5) per seed; :func:`load_inputs` gives
the dataset inputs (the first ``samples`` images, centred or whitened). Both
check their sizes first: a spec whose streamed measurement cannot fit in memory
is refused (:func:`depthscope.memory.check_fits`) before anything is allocated.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import InputError
from .memory import check_fits, vni_bytes

__all__ = ["INPUTS", "load_inputs", "measure_vni"]

#: Input sources of :func:`measure_vni`.
INPUTS = ("gaussian", "mnist", "fashion-mnist")


def load_inputs(inputs: str, samples: int, input_variance: float, data_dir: str | None = None,
                preprocess: str = "center") -> tuple[torch.Tensor, str]:
    """The fixed dataset inputs of ``depthscope vni`` and their note: the first ``samples`` images,
    preprocessed ("center": 784 centred pixels; "whiten": fitted on those images, each feature of
    variance ``input_variance``)."""
    from .data import load_dataset_info

    if inputs not in INPUTS[1:]:
        raise InputError(f"dataset inputs must be mnist or fashion-mnist, got {inputs!r}")
    x, _, info = load_dataset_info(inputs, split="any", data_dir=data_dir, limit=samples, preprocess=preprocess,
                                   variance=input_variance)
    return x, f"{info.n} {inputs} {info.split} images, {info.preprocess}"


def measure_vni(spec, inputs: str, samples: int, seeds: int, input_variance: float,
                data_dir: str | None = None, quiet: bool = True, layers: list[int] | None = None,
                fixed_inputs: torch.Tensor | None = None) -> np.ndarray:
    """R_sq(x_l) = tr(C_l^2)/tr(C_l)^2 (eq. 3.5) of every layer (or only ``layers``; others NaN) for nets of
    seeds 0..seeds-1: an array (seeds, depth), float64.

    Gaussian inputs are drawn fresh per seed (seed 10^6 + s, i.i.d. N(0, input_variance));
    dataset inputs are the first ``samples`` images, centred (the same for every
    seed), unless ``fixed_inputs`` (from :func:`load_inputs`) are given.
    Raises :class:`~depthscope.errors.TooBig` when one layer's measurement cannot fit in memory.
    """
    from .metrics import vni_per_layer
    from .progress import Progress

    if inputs not in INPUTS:
        raise InputError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
    for name, v, lo in (("samples", samples, 2), ("seeds", seeds, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not (isinstance(input_variance, (int, float)) and math.isfinite(input_variance) and input_variance >= 0):
        raise InputError(f"input_variance must be a finite number >= 0, got {input_variance!r}")
    check_fits(vni_bytes(spec, samples), f"measuring the VNI at width {spec.width} on {samples} samples")
    fixed = fixed_inputs
    if inputs != "gaussian" and fixed is None:
        fixed, _ = load_inputs(inputs, samples, input_variance, data_dir)
    out = np.empty((seeds, spec.depth))
    with Progress(seeds, "vni", quiet=quiet) as bar:
        for s in range(seeds):
            if fixed is None:
                g = torch.Generator().manual_seed(1_000_000 + s)
                x = torch.randn(samples, spec.n_in, generator=g) * math.sqrt(input_variance)
            else:
                x = fixed
            out[s] = vni_per_layer(spec, x, s, layers=layers).numpy()
            bar.update()
    return out
