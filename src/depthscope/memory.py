"""How much memory a spec needs, estimated before anything is allocated, and the refusal when it cannot fit.

Each estimator counts the large buffers of one computation (weights, activations,
Gram matrices, optimizer state, the expanded grid) from its sizes alone; the
tests compare each against the memory actually allocated at a small size
(tests/test_memory.py). :func:`check_fits` turns an estimate above what the
machine (or the GPU) has free into a :class:`~depthscope.errors.TooBig` error
that names both numbers, so ``depthscope vni --width 100000`` answers in one
line instead of failing deep inside torch's allocator.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .errors import TooBig

__all__ = ["machine_memory", "device_memory", "vni_bytes", "train_member_bytes", "grid_bytes",
           "theory_bytes", "check_fits", "format_bytes", "GRID_BYTES_PER_RUN", "experiment_bytes"]

#: Bytes one expanded sweep run costs in the driver: its RunSpec, its store key (a JSON string), its
#: slots in the run, key and group lists and a done-set: 0.64 kB measured with tracemalloc
#: (tests/test_memory.py), plus the copy of its key that the store's done_keys returns (~0.35 kB).
GRID_BYTES_PER_RUN = 1000


def format_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as free(1) -h and the GPU tools print them)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    raise AssertionError("unreachable")


def _cgroup_limit() -> int | None:
    """Memory the cgroup still allows (limit - usage), cgroup v2 or v1; None when unlimited or unknown."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit_file).read_text().strip()
            if text == "max":
                return None
            limit, usage = int(text), int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1's "no limit" is a huge number
            return None
        return max(0, limit - usage)
    return None


def machine_memory() -> tuple[int, int]:
    """(available, total) bytes of this machine's RAM, available bounded by the cgroup's limit.

    Available is the kernel's MemAvailable (free plus reclaimable caches);
    without /proc/meminfo, the free physical pages.
    """
    avail = total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "MemAvailable":
                avail = int(rest.split()[0]) * 1024
            elif key == "MemTotal":
                total = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if total is None or avail is None:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        avail = os.sysconf("SC_AVPHYS_PAGES") * page
    cg = _cgroup_limit()
    if cg is not None:
        avail = min(avail, cg)
    return int(avail), int(total)


def device_memory(device: str = "cpu") -> tuple[int, int, str]:
    """(available, total, what) for ``device``: a CUDA device's free memory, else the machine's RAM."""
    if str(device).startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), int(total), f"free on {device}"
    avail, total = machine_memory()
    return avail, total, "available on this machine"


def check_fits(needed: int, what: str, device: str = "cpu", *, available: int | None = None) -> None:
    """Raise :class:`TooBig` when ``needed`` bytes exceed the memory available on ``device``.

    ``what`` says which sizes asked for it (e.g. "--width 100000, --samples 1000");
    ``available`` overrides the measured amount (tests).
    """
    if available is None:
        available, total, where = device_memory(device)
    else:
        total, where = available, "available"
    if needed > available:
        raise TooBig(f"{what} needs about {format_bytes(needed)} of memory, but only {format_bytes(available)} "
                     f"is {where} (of {format_bytes(total)}); use smaller sizes", needed, available)


# ----------------------------------------------------------------------------- estimators
def vni_bytes(spec, samples: int) -> int:
    """Peak bytes of :func:`depthscope.metrics.vni_per_layer` on ``samples`` inputs of ``spec`` (streamed),
    the float32 input batch (S x n_in) included.

    One layer at a time (nets.stream_layers): two float32 weight matrices N x fan_in
    (the previous layer's, still referenced, and the new one), plus for orthogonal
    init the float64 QR work (3 N^2 doubles) and for a volume net its triangular
    mask (N^2 floats); two float32 activations S x N (h and x); the VNI's float64
    working copies of the S x N layer (metrics.vni's _centred64 holds up to three
    at once: the cast, the centred and the rescaled copy) and its float64 Gram matrix
    min(S, N)^2 with the elementwise square.
    Measured against the peak RSS growth at widths 2000 to 3000 and 1000 to 4000
    samples (tests/test_memory.py): never below it, at most 2x above it (RSS peaks of
    identical runs vary by up to 40% there).
    """
    n, s = int(spec.width), int(samples)
    fan_in = max(n, int(spec.n_in))
    weights = 2 * 4 * n * fan_in
    if spec.init == "orthogonal":
        weights += 3 * 8 * max(n, fan_in) ** 2
    if spec.arch == "volume":
        weights += 4 * n * n
    acts = 2 * 4 * s * fan_in
    g = min(s, n)
    vni = 3 * 8 * s * n + 2 * 8 * g * g
    return 4 * s * int(spec.n_in) + weights + acts + vni


def train_member_bytes(run, in_features: int) -> int:
    """Bytes one member of a training ensemble needs (the formula of train.members_per_ensemble).

    Weights, gradients, one scratch copy and the optimizer's state per parameter
    (float32), plus one minibatch's input and stored activations (h and x per layer).
    """
    L, N, B = int(run.depth), int(run.width), int(run.batch_size)
    nparam = N * in_features + (L - 1) * N * N + L * N + (N + 1) * int(getattr(run, "classes", 10))
    nstate = {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1}.get(run.optimizer, 2)
    return 4 * (nparam * (3 + nstate) + B * (in_features + 2 * L * N))


def grid_bytes(n_runs: int) -> int:
    """Bytes the driver needs to expand a sweep of ``n_runs`` runs (:data:`GRID_BYTES_PER_RUN` each)."""
    return int(n_runs) * GRID_BYTES_PER_RUN


def theory_bytes(depth: int) -> int:
    """Bytes of :func:`depthscope.theory.predict`'s per-layer arrays and the CLI's printout of them.

    About twenty float64 arrays of ``depth`` values (q, mu1, mu2, VNI both forms,
    m1, m2, ...) plus their Python lists for JSON (some 50 bytes per value each).
    """
    return int(depth) * 20 * (8 + 50)


# ----------------------------------------------------------------------------- an experiment's parameters
#: Parameter names (one name per concept across experiments) that size an experiment's largest unit.
WIDTH_KEYS = ("width", "widths")
DEPTH_KEYS = ("depth", "depths", "max_depth")
#: Samples pushed through a net at once (a batch, a probe, the simulated inputs).
SAMPLE_KEYS = ("n", "n_iid", "n_mnist", "batch", "batch_size", "probe_size", "n_probe")
#: Bytes of one measurement held in a unit's list of values before it is stored (a Value tuple of four fields
#: and its float: 72 + 24 bytes by sys.getsizeof); every experiment records at least one per layer.
VALUE_BYTES = 96
_MNIST_ROWS, _MNIST_PIXELS = 60000, 784


def _sizes(value: Any) -> list[int]:
    """Every integer a parameter value names: itself, a list's items, a ``LO:HI:COUNT`` range's HI."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, float) and value.is_integer():
        return [int(value)]
    if isinstance(value, str):
        parts = value.split(":")
        try:
            return [int(float(parts[1]))] if len(parts) == 3 else [int(v) for v in value.split(",")]
        except (ValueError, OverflowError):
            return []  # not a size: the experiment's own parsing reports it
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _sizes(v)]
    if isinstance(value, Mapping):
        return [x for v in value.values() for x in _sizes(v)]
    return []


def _axis_len(value: Any) -> int:
    """How many values an axis of the grid takes: a list's length, a range's COUNT, a table's largest axis."""
    if isinstance(value, (list, tuple)):
        return max(1, len(value))
    if isinstance(value, str):
        parts = value.split(":")
        try:
            return max(1, int(parts[2])) if len(parts) == 3 else max(1, len(value.split(",")))
        except (ValueError, OverflowError):
            return 1
    if isinstance(value, Mapping):
        inner = [_axis_len(v) for v in value.values() if isinstance(v, (list, tuple, str, Mapping))]
        return max(inner) if inner else max(1, len(value))
    return 1


def _largest(params: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    """The largest size any of ``keys`` names, at the top or inside a table (fig3.3's row_a.width)."""
    found = [0]
    for k, v in params.items():
        if k in keys:
            found += _sizes(v)
        elif isinstance(v, Mapping):
            found.append(_largest(v, keys))
    return max(found)


def experiment_bytes(params: Mapping[str, Any]) -> tuple[int, dict[str, int]]:
    """(bytes, sizes): the memory an experiment's parameters need at least, from the names they share.

    sizes = the largest width N, depth L and samples S its parameters name, its units U (seeds times
    the length of every list-valued parameter: an upper bound of the grid) and its training rows T.
    Bytes = the driver's unit list (:func:`grid_bytes` of U) plus its largest unit: a trained net
    (``epochs`` or ``steps`` among the parameters) costs :func:`train_member_bytes` of one member at
    (L, N, its batch size) or the VNI of S probe samples, whichever is larger, plus its T training
    rows of 784 float32 pixels (60,000 rows when ``n_train`` is null); a simulated
    one costs :func:`vni_bytes` at (N, S), streamed one layer at a time, plus its per-layer values
    (L x :data:`VALUE_BYTES`). Sizes hidden in records (xor's ``settings``) are not read.
    """
    from types import SimpleNamespace

    width = _largest(params, WIDTH_KEYS)
    depth = _largest(params, DEPTH_KEYS)
    samples = _largest(params, SAMPLE_KEYS)
    seeds = params.get("seeds", 1)
    units = max(1, len(seeds) if isinstance(seeds, (list, tuple)) else (seeds if isinstance(seeds, int) else 1))
    for k, v in params.items():
        if k != "seeds" and isinstance(v, (list, tuple, Mapping)) or (isinstance(v, str) and v.count(":") == 2):
            units *= _axis_len(v)
    mnist = params.get("dataset", "mnist") in ("mnist", "fashion-mnist")
    rows = 0
    if "n_train" in params:
        rows = _MNIST_ROWS if params["n_train"] is None else max(_sizes(params["n_train"]) or [0])
    sizes = {"width": width, "depth": depth, "samples": samples, "units": units, "training_rows": rows}
    if "epochs" in params or "steps" in params:
        optimizers = [o for o in params.get("optimizers", ["sgd"]) if isinstance(o, str)] or ["sgd"]
        inputs = _MNIST_PIXELS if mnist else max(1, width)
        batch = _largest(params, ("batch", "batch_size")) or samples
        unit = max(train_member_bytes(SimpleNamespace(depth=max(1, depth), width=width, batch_size=batch,
                                                      optimizer=o), inputs) for o in optimizers)
        probe = vni_bytes(SimpleNamespace(width=width, n_in=width, init="gaussian", arch="feedforward"),
                          max(1, samples))  # the VNI of the probe batch, one layer at a time, after training
        unit = max(unit, probe) + 4 * rows * inputs
    else:
        spec = SimpleNamespace(width=width, n_in=width, init=str(params.get("init", "gaussian")), arch="feedforward")
        unit = vni_bytes(spec, max(1, samples)) + depth * VALUE_BYTES
    return grid_bytes(units) + unit, sizes
