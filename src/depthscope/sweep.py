"""Sweeps: a grid of training runs, grouped into ensembles, run on a backend, written to the store.

A :class:`SweepSpec` (defaults, then a TOML file, then flags; every value
type-checked, an unknown key answered with the list of valid keys) expands into
one :class:`depthscope.train.RunSpec` per grid point and seed
(:func:`expand`). Runs that share ``RunSpec.group_key()`` are trained together as
one batched ensemble of at most ``group_size`` members (:func:`make_groups`).

Each finished run becomes one unit of the results store (``Store.record``,
``RunResult.to_values()``): status ``done`` when it trained to the end (whether
it reached the target accuracy or not is the ``success`` measurement; a run that
ended below target keeps ``RunResult.failure``, how it failed, as its reason), status
``failed`` with its reason when it diverged. A run whose trainer raised (an
allocation failure, a bug) is status ``error``: not a result, in no statistic, and
retried by the next invocation. A unit is written the moment its run finishes, so
a killed sweep resumes (rerun the same command) without losing or repeating a
finished run. ``force`` retrains the grid, replacing each old unit only as its new
result is written (:func:`execute`).

Backends (:func:`execute`):

``inline``  in this process, one group after another (for debugging).
``local``   worker processes (``spawn``); each worker writes its runs into the
            store itself (SQLite WAL), so killing a worker loses only the runs it
            had not finished; the driver restarts the pool and goes on. Workers
            exit when the driver dies.
``ray``     each group a Ray task (``--address`` of a cluster, else a local Ray);
            each run's record goes to a sink actor on the driver's node as the run
            finishes, and the driver stores it from there while tasks still run. A
            task whose node dies is retried elsewhere and skips the runs the sink
            already has (docs/cluster.md).
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib
import math
import multiprocessing as mp
import os
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .errors import WorkersDied, check_input_file, check_name
from .memory import check_fits, grid_bytes, train_member_bytes
from .store import Store, unit_key

BACKENDS = ("local", "inline", "ray")
DATASETS = ("mnist", "fashion-mnist", "synthetic")
DEFAULT_TRAINER = "depthscope.train:train_group"


# ---------------------------------------------------------------------------
# The grid spec
# ---------------------------------------------------------------------------
def parse_range(text: str, *, integer: bool = False) -> list[float] | list[int]:
    """``"LO:HI:COUNT"`` -> COUNT values log-uniformly spaced from LO to HI (ends included).

    With ``integer`` the values are rounded and duplicates dropped (``"25:500:11"``
    gives the thesis' depth axis). A plain comma list ``"25,50,100"`` is also accepted.
    """
    text = str(text).strip()
    if ":" not in text:
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise ValueError(f"expected a comma list or LO:HI:COUNT, got {text!r}")
        try:
            return [int(t) for t in items] if integer else [float(t) for t in items]
        except ValueError:
            kind = "integers" if integer else "numbers"
            raise ValueError(f"expected a comma list of {kind} or LO:HI:COUNT, got {text!r}") from None
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"expected LO:HI:COUNT (log-uniform), got {text!r}")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"expected LO:HI:COUNT with numbers LO, HI and an integer COUNT, got {text!r}") from None
    if not (lo > 0 and hi >= lo and n >= 1 and math.isfinite(hi)):
        raise ValueError(f"LO:HI:COUNT needs 0 < LO <= HI and COUNT >= 1, got {text!r}")
    if n == 1:
        vals = [lo]
    else:
        vals = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (n - 1)) for i in range(n)]
    if integer:
        out: list[int] = []
        for v in vals:
            r = int(round(v))
            if r not in out:
                out.append(r)
        return out
    return [float(f"{v:.6g}") for v in vals]


def _as_list(name: str, value: Any, kind: type, *, range_ok: bool) -> list:
    """Coerce a TOML/flag value into a list of ``kind``; ranges allowed for numeric axes."""
    if isinstance(value, str):
        if range_ok:
            try:
                return parse_range(value, integer=kind is int)
            except ValueError as e:  # name the field: "lrs: expected a comma list ..."
                raise ValueError(f"{name}: {e}") from None
        value = [v.strip() for v in value.split(",") if v.strip()]
        if kind is int:  # a comma list from a flag ("0,1"): its items are integers written as text
            try:
                value = [int(v) for v in value]
            except ValueError:
                raise ValueError(f"{name} must be a comma list of integers, got {value!r}") from None
    elif isinstance(value, Mapping) and range_ok:
        unknown = set(value) - {"min", "max", "count"}
        if unknown or not {"min", "max", "count"} <= set(value):
            raise ValueError(f"{name}: a range table needs exactly min, max, count; got keys {sorted(value)}")
        return parse_range(f"{value['min']}:{value['max']}:{value['count']}", integer=kind is int)
    elif not isinstance(value, (list, tuple)):
        value = [value]
    out = []
    for v in value:
        if kind is int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must hold integers, got {v!r}")
        elif kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must hold numbers, got {v!r}")
            v = float(v)
        elif not isinstance(v, str):
            raise ValueError(f"{name} must hold strings, got {v!r}")
        out.append(v)
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def _seeds(value: Any, grid_points: int) -> list[int]:
    """``seeds`` as a list: a count n (an integer, or its digits as text) means seeds 0..n-1; a list
    (or comma text "0,1") is taken as is. A count is checked against memory before the list is made:
    ``seeds = 100000000`` would need gigabytes for the list and the expanded grid."""
    count = None
    if isinstance(value, int) and not isinstance(value, bool):
        count = value
    elif isinstance(value, str) and "," not in value:
        try:
            count = int(value.strip())
        except ValueError:
            raise ValueError(f"seeds must be a count n >= 1 (seeds 0..n-1) or a comma list of seeds >= 0, "
                             f"got {value!r}") from None
    if count is not None:
        if count < 1:
            raise ValueError(f"seeds must be a count n >= 1 (seeds 0..n-1) or a comma list of seeds >= 0, "
                             f"got {value!r}")
        check_fits(grid_bytes(count * grid_points), f"seeds = {count} ({count * grid_points} runs in the grid)")
        return list(range(count))
    seeds = _as_list("seeds", value, int, range_ok=False)
    for s in seeds:
        if s < 0:
            raise ValueError(f"seeds must be >= 0, got {s}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds lists a seed twice: {seeds}")
    return seeds


@dataclass
class SweepSpec:
    """A grid of training runs: every combination of the list fields, for every seed.

    ``lrs`` (and ``depths``) accept a list or a log-uniform range ``"LO:HI:COUNT"``;
    ``seeds`` accepts a list or a count n (seeds 0..n-1). ``n_train`` None means the
    whole split. ``target_accuracy``/``epochs`` define success (train accuracy >=
    target within ``epochs`` epochs, thesis ch. 5). ``group_size`` is the largest
    ensemble trained at once. ``early_stop`` is the early-stop policy
    (:func:`depthscope.earlystop.parse_early_stop`: ``"VNI:EPOCHS"`` such as ``"0.99:5"``,
    a table ``{vni, epochs}``, or None / ``"off"``, the default: every run trains to its
    budget, the thesis' protocol); it is kept as ``"VNI:EPOCHS"`` or None.
    """

    name: str = "sweep"
    depths: list = field(default_factory=lambda: [25, 50])
    widths: list = field(default_factory=lambda: [64])
    lrs: list = field(default_factory=lambda: [1e-3])
    optimizers: list = field(default_factory=lambda: ["sgd"])
    activations: list = field(default_factory=lambda: ["tanh"])
    inits: list = field(default_factory=lambda: ["gaussian"])
    seeds: list = field(default_factory=lambda: [0])
    dataset: str = "mnist"
    split: str = "any"
    n_train: int | None = 2000
    epochs: int = 10
    batch_size: int = 100
    target_accuracy: float = 0.9
    group_size: int = 32
    probe_size: int = 500
    vni_dense_steps: int = 10
    early_stop: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def validate(self) -> None:
        """Coerce and check every field; raise ValueError naming the bad value and what is allowed."""
        from .activations import activation_names, get_activation
        from .inits import check_init
        from .train import OPTIMIZERS

        check_name(self.name, "sweep name")  # it names the store's experiment, and files drawn from it
        self.depths = _as_list("depths", self.depths, int, range_ok=True)
        self.widths = _as_list("widths", self.widths, int, range_ok=True)
        self.lrs = _as_list("lrs", self.lrs, float, range_ok=True)
        self.optimizers = _as_list("optimizers", self.optimizers, str, range_ok=False)
        self.activations = _as_list("activations", self.activations, str, range_ok=False)
        self.inits = _as_list("inits", self.inits, str, range_ok=False)
        self.seeds = _seeds(self.seeds, len(self.depths) * len(self.widths) * len(self.lrs)
                            * len(self.optimizers) * len(self.activations) * len(self.inits))
        for d in self.depths:
            if d < 1:
                raise ValueError(f"depths must be >= 1, got {d}")
        for w in self.widths:
            if w < 1:
                raise ValueError(f"widths must be >= 1, got {w}")
        for lr in self.lrs:
            if not (lr > 0 and math.isfinite(lr)):
                raise ValueError(f"lrs must be finite numbers > 0, got {lr}")
        for o in self.optimizers:
            if o not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {o!r}; expected one of: {', '.join(OPTIMIZERS)}")
        for a in self.activations:
            try:
                get_activation(a)
            except (KeyError, ValueError):
                raise ValueError(f"unknown activation {a!r}; expected one of: {', '.join(activation_names())}") from None
        for i in self.inits:
            check_init(i)
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of: {', '.join(DATASETS)}")
        if self.split not in ("train", "test", "any"):
            raise ValueError(f"split must be train, test or any, got {self.split!r}")
        for name in ("epochs", "batch_size", "group_size", "probe_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.vni_dense_steps, bool) or not isinstance(self.vni_dense_steps, int) \
                or self.vni_dense_steps < 0:
            raise ValueError(f"vni_dense_steps must be an integer >= 0, got {self.vni_dense_steps!r}")
        if self.n_train is not None and (isinstance(self.n_train, bool) or not isinstance(self.n_train, int)
                                         or self.n_train < 2):
            raise ValueError(f"n_train must be an integer >= 2 or omitted (whole split), got {self.n_train!r}")
        if isinstance(self.target_accuracy, bool) or not isinstance(self.target_accuracy, (int, float)) \
                or not 0 < self.target_accuracy <= 1:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy!r}")
        self.target_accuracy = float(self.target_accuracy)
        from .earlystop import parse_early_stop

        policy = parse_early_stop(self.early_stop)
        self.early_stop = policy.to_config() if policy is not None else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "SweepSpec | None" = None) -> "SweepSpec":
        """A spec from plain values over ``base`` (or the defaults); unknown keys are an error."""
        valid = cls.keys()
        for k in d:
            if k not in valid:
                raise ValueError(f"unknown sweep key {k!r}; valid keys: {', '.join(valid)}")
        merged = dataclasses.asdict(base) if base is not None else {}
        merged.update(d)
        return cls(**merged)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> "SweepSpec":
        """Read a TOML file (keys at top level or under ``[sweep]``), then apply ``overrides``."""
        import tomllib

        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no sweep config at {p}")
        check_input_file(p, "sweep config")
        try:
            with open(p, "rb") as f:
                doc = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: not valid TOML: {e}") from None
        except UnicodeDecodeError as e:  # tomllib decodes the whole file as UTF-8 first
            raise ValueError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                             "a TOML file must be UTF-8") from None
        if "sweep" in doc and isinstance(doc["sweep"], dict):
            extra = set(doc) - {"sweep"}
            if extra:
                raise ValueError(f"{p}: keys outside [sweep]: {sorted(extra)}; put them inside the [sweep] table")
            doc = doc["sweep"]
        doc = dict(doc)
        doc.update(overrides or {})
        return cls.from_dict(doc)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def data(self) -> "DataSpec":
        return DataSpec(self.dataset, self.split, self.n_train, self.probe_size)

    def n_runs(self) -> int:
        return (len(self.depths) * len(self.widths) * len(self.lrs) * len(self.optimizers)
                * len(self.activations) * len(self.inits) * len(self.seeds))

    def run_bytes(self, in_features: int = 784) -> int:
        """Estimated memory of one worker training this grid's largest run: the training data and one
        member of its ensemble (weights, gradients, optimizer state, one minibatch's activations; see
        :func:`depthscope.memory.train_member_bytes`). A worker stacks more members only while they fit."""
        from .train import RunSpec

        biggest = max(train_member_bytes(RunSpec(depth=max(self.depths), width=max(self.widths),
                                                 activation=self.activations[0], init=self.inits[0], optimizer=o,
                                                 lr=self.lrs[0], seed=0, batch_size=self.batch_size,
                                                 max_epochs=self.epochs, target_accuracy=self.target_accuracy),
                                         in_features)
                      for o in self.optimizers)
        return biggest + 4 * in_features * ((self.n_train or 70_000) + self.probe_size)

    def check_memory(self, workers: int = 1, device: str = "cpu") -> None:
        """Raise :class:`~depthscope.errors.TooBig` when the sweep cannot fit: the driver's expanded grid
        (:func:`depthscope.memory.grid_bytes`) plus, on CPU, ``workers`` concurrent runs of
        :meth:`run_bytes` in RAM; on a GPU, one run in the GPU's free memory."""
        sizes = f"depth up to {max(self.depths)}, width up to {max(self.widths)}, {self.n_runs()} runs"
        run = self.run_bytes()
        if str(device).startswith("cuda"):
            check_fits(grid_bytes(self.n_runs()), f"this sweep's grid ({sizes})")
            check_fits(run, f"one run of this sweep ({sizes})", device)
        else:
            k = max(1, min(workers, self.n_runs()))
            check_fits(grid_bytes(self.n_runs()) + k * run,
                       f"this sweep ({sizes}, {k} worker{'s' if k != 1 else ''} at once)")


@dataclass(frozen=True)
class DataSpec:
    """Which training data a sweep uses: ``n_train`` images (None: all) of ``dataset``/``split``;
    the VNI probe is the first ``probe_size`` of them."""

    dataset: str = "mnist"
    split: str = "any"
    n_train: int | None = 2000
    probe_size: int = 500


def expand(sweep: SweepSpec) -> list:
    """Every RunSpec of the grid, in a fixed order (seed innermost)."""
    from .earlystop import parse_early_stop
    from .train import RunSpec

    policy = parse_early_stop(sweep.early_stop)
    stop = policy.spec_fields() if policy is not None else {}
    out = []
    for opt in sweep.optimizers:
        for act in sweep.activations:
            for init in sweep.inits:
                for depth in sweep.depths:
                    for width in sweep.widths:
                        for lr in sweep.lrs:
                            for seed in sweep.seeds:
                                out.append(RunSpec(depth=depth, width=width, activation=act, init=init,
                                                   optimizer=opt, lr=lr, seed=seed,
                                                   batch_size=sweep.batch_size, max_epochs=sweep.epochs,
                                                   target_accuracy=sweep.target_accuracy,
                                                   vni_dense_steps=sweep.vni_dense_steps, **stop))
    return out


def stored_spec(run, data: DataSpec) -> tuple[dict, int]:
    """(spec dict, seed) under which a run is stored: the RunSpec's fields without the seed, plus the data."""
    d = dict(run.to_dict())
    seed = int(d.pop("seed"))
    d.update(dataset=data.dataset, split=data.split, n_train=data.n_train, probe_size=data.probe_size)
    return d, seed


def run_key(run, data: DataSpec) -> str:
    spec, seed = stored_spec(run, data)
    return unit_key(spec, seed)


def make_groups(runs: Sequence, group_size: int) -> list[list]:
    """Runs with equal ``group_key()`` in ensembles of at most ``group_size``, costliest first.

    Cost is depth x width^2 x epochs per member (the matmul work); starting with
    the costliest groups keeps the workers busy to the end (longest-first scheduling).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    by_key: dict[tuple, list] = {}
    for r in runs:
        by_key.setdefault(r.group_key(), []).append(r)
    groups = []
    for members in by_key.values():
        for i in range(0, len(members), group_size):
            groups.append(members[i:i + group_size])

    def cost(g: list) -> float:
        r = g[0]
        return len(g) * r.depth * r.width * r.width * r.max_epochs

    return sorted(groups, key=cost, reverse=True)


# ---------------------------------------------------------------------------
# Data, trainer, device
# ---------------------------------------------------------------------------
def synthetic_dataset(n: int, dim: int = 784, classes: int = 10, seed: int = 0):
    """A learnable stand-in for MNIST (tests, no files needed): Gaussian blobs around
    ``classes`` random centres in [0, 1]^dim, centred. Returns (x float32 (n, dim), y int64)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(classes, dim, generator=g)
    y = torch.arange(n) % classes
    y = y[torch.randperm(n, generator=g)]
    x = centres[y] + 0.3 * torch.randn(n, dim, generator=g)
    x = x - x.mean(dim=0, keepdim=True)
    return x.float(), y.long()


def load_data(data: DataSpec, data_dir: str | None = None):
    """(x, y, probe) tensors for ``data``: n_train samples and the first probe_size of them as the probe."""
    import torch

    if data.dataset == "synthetic":
        x, y = synthetic_dataset(data.n_train or 2000)
    else:
        try:
            from .data import load_dataset
        except ImportError:
            raise ValueError("loading MNIST needs depthscope.data, which this installation lacks; "
                             "use dataset = \"synthetic\"") from None
        x, y = load_dataset(data.dataset, split=data.split, data_dir=data_dir, limit=data.n_train)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.int64)
    if data.n_train is not None and len(x) < data.n_train:
        raise ValueError(f"n_train={data.n_train} but {data.dataset}/{data.split} has only {len(x)} samples")
    probe = x[: min(data.probe_size, len(x))]
    return x, y, probe


def resolve_trainer(path: str | Callable) -> Callable:
    """``"module:function"`` -> the function (a trainer with train_group's signature)."""
    if callable(path):
        return path
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"trainer must be 'module:function', got {path!r}")
    mod, fn = path.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load trainer {path!r}: {e}") from None
    if not callable(obj):
        raise ValueError(f"trainer {path!r} is not callable")
    return obj


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; ``cpu``/``cuda``/``cuda:N`` checked."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but torch sees no CUDA device; use --device cpu")
        n = torch.cuda.device_count()
        index = name.partition(":")[2]
        if index and not (index.isdigit() and int(index) < n):
            raise ValueError(f"--device {name}: torch sees {n} CUDA device(s), cuda:0..cuda:{n - 1}")
        return name
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


# ---------------------------------------------------------------------------
# Running one group (used by every backend)
# ---------------------------------------------------------------------------
def result_record(result, data: DataSpec) -> dict:
    """What the store keeps of one RunResult: key, spec, seed, values, status, reason."""
    spec, seed = stored_spec(result.spec, data)
    diverged = bool(getattr(result, "diverged", False))
    status = "failed" if diverged else "done"
    reason = getattr(result, "reason", None) if diverged else None
    if diverged and not reason:
        reason = "diverged"
    kind = getattr(result, "failure", None)  # train.failure_kind: why an unsuccessful run failed
    if kind is not None and not getattr(result, "success", False):
        # a run that ended below target is a finished unit; its reason says how it failed
        why = getattr(result, "reason", None)
        reason = f"{kind}: {why}" if why else kind
    seconds = float(getattr(result, "seconds", 0.0) or 0.0)
    return {"key": unit_key(spec, seed), "spec": spec, "seed": seed, "values": list(result.to_values()),
            "status": status, "reason": reason, "started": time.time() - seconds,
            "success": bool(getattr(result, "success", False))}


def crash_records(runs: Iterable, data: DataSpec, reason: str) -> list[dict]:
    """Records of runs whose trainer raised: status ``error`` (the code crashed; not a training outcome),
    no measurements, the exception as reason. An error unit is not done: the next invocation retries it,
    and no statistic counts it."""
    out = []
    now = time.time()
    for r in runs:
        spec, seed = stored_spec(r, data)
        out.append({"key": unit_key(spec, seed), "spec": spec, "seed": seed, "values": [], "status": "error",
                    "reason": reason, "started": now, "success": False})
    return out


def write_record(store: Store, experiment: str, rec: dict, done: set[str] | None = None) -> bool:
    """Record a run unless it is already done (then nothing is repeated); True if written.

    ``done`` is the caller's set of done keys (kept up to date here). The store is asked too, so a unit
    another writer finished meanwhile is never replaced; during a forced rerun the old units are of an
    earlier generation (:meth:`Store.begin_redo`), not done, and each is replaced in the transaction that
    writes its new result. An error never replaces a result.
    """
    key = rec["key"]
    if done is not None and key in done:
        return False
    if store.is_done(experiment, key):
        return False
    store.record(experiment, key, spec=rec["spec"], seed=rec["seed"], values=rec["values"],
                 status=rec["status"], reason=rec["reason"], started=rec["started"])
    if done is not None and rec["status"] != "error":
        done.add(key)
    return True


def done_keys(store: Store, experiment: str) -> set[str]:
    """Keys of the runs of ``experiment`` that count as done (:meth:`Store.done_keys`): stored as done or
    failed with all their rows (an error is retried) and, while a forced rerun is under way, recorded in
    its generation."""
    return store.done_keys(experiment)


def train_one_group(runs: list, x, y, probe, device: str, trainer: Callable, data: DataSpec,
                    emit: Callable[[dict], None]) -> None:
    """Train ``runs`` as one ensemble, calling ``emit(record)`` as each run finishes.

    An exception from the trainer records the group's unfinished runs with status ``error`` and the
    exception as reason (a crash never stops the sweep, and is retried by the next invocation).
    """
    emitted: set[str] = set()

    def on_result(res) -> None:
        rec = result_record(res, data)
        if rec["key"] not in emitted:
            emitted.add(rec["key"])
            emit(rec)

    try:
        results = trainer(list(runs), x, y, probe, device=device, on_result=on_result)
        for res in results or []:
            on_result(res)
    except Exception as e:  # noqa: BLE001 - recorded, not swallowed
        reason = f"crash: {type(e).__name__}: {e}".splitlines()[0][:500]
        left = [r for r in runs if run_key(r, data) not in emitted]
        for rec in crash_records(left, data, reason):
            emit(rec)


# -- local worker processes ---------------------------------------------------
_WORKER_DATA: dict = {}


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:  # the driver died: stop, so a resumed driver never races us
            os._exit(3)


def _worker_init(threads: int, ppid: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    threading.Thread(target=_watch_parent, args=(ppid,), daemon=True).start()


def _local_task(run_dir: str, experiment: str, runs: list, data: DataSpec, data_dir: str | None,
                device: str, trainer_path: str) -> int:
    """One group in a worker process: skip runs already done, train the rest, write each as it ends.
    Returns how many runs it wrote (the driver reads the outcomes back from the store)."""
    _open_worker_log(run_dir)
    key = (data, data_dir)
    if key not in _WORKER_DATA:
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = load_data(data, data_dir)
    x, y, probe = _WORKER_DATA[key]
    trainer = resolve_trainer(trainer_path)
    written = 0
    with Store(run_dir) as store:
        done = done_keys(store, experiment)
        todo = [r for r in runs if run_key(r, data) not in done]

        def emit(rec: dict) -> None:
            nonlocal written
            written += write_record(store, experiment, rec, done)

        if todo:
            train_one_group(todo, x, y, probe, device, trainer, data, emit)
    return written


# -- Ray -------------------------------------------------------------------------
class _Sink:
    """A Ray actor on the driver's node that receives each run's record the moment the run finishes
    (tasks call :meth:`put` and wait for it), so the driver stores results as runs end, not when a task
    returns, and a task retried after its node died skips the runs already delivered (:meth:`seen`)."""

    def __init__(self) -> None:
        self._buffer: list[dict] = []
        self._seen: set[str] = set()

    def put(self, rec: dict) -> bool:
        if rec["status"] != "error" and rec["key"] in self._seen:
            return False
        if rec["status"] != "error":
            self._seen.add(rec["key"])
        self._buffer.append(rec)
        return True

    def seen(self, keys: list[str]) -> list[str]:
        return [k for k in keys if k in self._seen]

    def drain(self) -> list[dict]:
        out, self._buffer = self._buffer, []
        return out


def _ray_task(runs: list, xyp, device: str, trainer_path: str, data: DataSpec, sink) -> int:
    """One group as a Ray task: train the runs the sink has not received yet, handing each record to
    the sink as its run finishes. Returns how many runs it trained."""
    import ray

    x, y, probe = xyp
    keys = [run_key(r, data) for r in runs]
    seen = set(ray.get(sink.seen.remote(keys)))  # a retry after a lost node: skip what was delivered
    todo = [r for r, k in zip(runs, keys) if k not in seen]
    if todo:
        train_one_group(todo, x, y, probe, device, resolve_trainer(trainer_path), data,
                        lambda rec: ray.get(sink.put.remote(rec)))
    return len(todo)


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------
@dataclass
class SweepSummary:
    """What a sweep invocation did, and where the whole sweep stands.

    ``success``/``failed``/``diverged`` count the whole sweep's stored results (runs of this grid
    stored before this invocation and those trained in it): ``failed`` = trained without reaching the
    target (diverged runs included; the thesis' "failed run"), ``diverged`` = of those, the ones whose
    loss went non-finite, ``stopped`` = of those, the ones the early-stop policy stopped before their
    budget ended (:mod:`depthscope.earlystop`; 0 without the policy). ``this_invocation`` and ``before``
    split them ({runs, success, failed, diverged}). ``ran`` = runs trained to a result now, ``skipped`` =
    runs already done before, ``errors`` = runs of the grid stored as ``error`` (the code crashed: not a
    result, in no statistic, retried by the next invocation), ``pending`` = runs of the grid without a
    result (rerun to finish).
    """

    experiment: str
    backend: str
    device: str
    workers: int
    total: int
    skipped: int
    ran: int = 0
    success: int = 0
    failed: int = 0
    diverged: int = 0
    stopped: int = 0
    errors: int = 0
    pending: int = 0
    this_invocation: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    groups: int = 0
    restarts: int = 0
    forced: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _outcomes(store: Store, experiment: str, keys: set[str]) -> dict[str, dict]:
    """Per stored run of ``keys``: its status, when it finished and whether it reached the target."""
    from .earlystop import STOP_QUANTITY

    out = {u.key: {"status": u.status, "finished": u.finished, "success": False, "stopped": False}
           for u in store.units(experiment) if u.key in keys}
    for row in store.rows(experiment, "success"):
        o = out.get(row["key"])
        if o is not None and o["status"] == "done" and row["value"] >= 0.5:
            o["success"] = True
    for row in store.rows(experiment, STOP_QUANTITY):
        o = out.get(row["key"])
        if o is not None:
            o["stopped"] = True
    return out


def _tally(outcomes: Iterable[dict]) -> dict:
    out = {"runs": 0, "success": 0, "failed": 0, "diverged": 0}
    for o in outcomes:
        out["runs"] += 1
        out["success"] += o["success"]
        out["failed"] += not o["success"]
        out["diverged"] += o["status"] == "failed"
    return out


def _summarize(store: Store, experiment: str, keys: set[str], before: set[str], summary: SweepSummary) -> None:
    """Fill ``summary``'s counts from the store: the whole sweep, split into this invocation and before."""
    outs = _outcomes(store, experiment, keys)
    done = done_keys(store, experiment) & keys
    results = {k: outs[k] for k in done}
    summary.before = _tally(o for k, o in results.items() if k in before)
    summary.this_invocation = _tally(o for k, o in results.items() if k not in before)
    whole = _tally(results.values())
    summary.success, summary.failed, summary.diverged = whole["success"], whole["failed"], whole["diverged"]
    summary.stopped = sum(o["stopped"] for o in results.values())
    summary.ran = summary.this_invocation["runs"]
    summary.errors = sum(o["status"] == "error" for o in outs.values())
    summary.pending = len(keys) - len(done)


def default_workers(device: str) -> int:
    """One worker per core on CPU (each with one torch thread); one on a GPU."""
    if device.startswith("cuda"):
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def check_device(device: str, backend: str = "local") -> str:
    """The device the runs train on: :func:`resolve_device` here, except on Ray, where the tasks run on
    the cluster's nodes (a head without a GPU drives GPU workers): only the name is checked there
    (auto, cpu or cuda; Ray gives each task its GPU, so no cuda:N), and ``auto`` is decided by the
    cluster's resources when Ray is up (:func:`_run_ray`)."""
    if backend != "ray":
        return resolve_device(device)
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"with the ray backend the device must be auto, cpu or cuda (Ray gives each task its "
                         f"GPU), got {device!r}")
    return device


def check_backend(backend: str, trainer: str | Callable, device: str, workers: int | None) -> tuple[str, int]:
    """Check the backend, trainer, device and worker count before anything is written; returns the
    resolved (device, workers)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
    if backend != "inline" and not isinstance(trainer, str):
        raise ValueError("the local and ray backends need the trainer as 'module:function'")
    resolve_trainer(trainer)
    device = check_device(device, backend)
    if workers is None or workers == 0:
        workers = default_workers(device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1 (or 0: one per core), got {workers!r}")
    return device, 1 if backend == "inline" else workers


def execute(
    runs: Sequence,
    store: Store,
    experiment: str,
    data: DataSpec,
    *,
    backend: str = "local",
    workers: int | None = None,
    device: str = "auto",
    group_size: int = 32,
    trainer: str | Callable = DEFAULT_TRAINER,
    data_dir: str | None = None,
    address: str | None = None,
    quiet: bool = False,
    max_restarts: int = 3,
    force: bool = False,
) -> SweepSummary:
    """Train every run of ``runs`` not yet done in ``store`` under ``experiment``; returns counts.

    ``trainer`` is train_group or anything with its signature (a callable works
    only with the inline backend; the others need ``"module:function"``).
    Runs stored as ``error`` (a crash) are retried. ``force`` retrains every run with the store's one
    force mechanism, as ``reproduce --force`` does: everything (backend, trainer, device, the data) is
    checked first, then :meth:`Store.begin_redo` raises the experiment's generation (unless a forced
    rerun is already under way: it is resumed, not restarted), so the old units stop counting as done
    but stay readable, and each is replaced in the transaction that writes its new result. An
    interrupted forced rerun loses nothing and resumes (with or without ``force``, :func:`run_sweep`)
    where it stopped. Once every run of the grid has its new result, :meth:`Store.drop_superseded`
    ends the rerun, keeping the runs of other grids stored under the same name (``keep_unlisted``).
    """
    from .progress import Progress

    device, workers = check_backend(backend, trainer, device, workers)
    t0 = time.time()
    keys = [run_key(r, data) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("the sweep lists the same run twice; check for repeated values in its axes")
    if force and not store.redo_pending(experiment):
        load_data(data, data_dir)  # the data must be there before old results stop counting
        store.begin_redo(experiment)
    all_keys = set(keys)
    done = done_keys(store, experiment)
    before = done & all_keys
    todo = [r for r, k in zip(runs, keys) if k not in done]
    summary = SweepSummary(experiment, backend, device, workers, total=len(runs), skipped=len(before),
                           forced=force or store.redo_pending(experiment))
    if todo:
        groups = make_groups(todo, group_size)
        summary.groups = len(groups)
        with Progress(len(todo), experiment, quiet=quiet) as bar:
            if backend == "inline":
                x, y, probe = load_data(data, data_dir)
                fn = resolve_trainer(trainer)
                for g in groups:
                    train_one_group(g, x, y, probe, device, fn, data,
                                    lambda rec: write_record(store, experiment, rec, done) and bar.update())
            elif backend == "local":
                _run_local(groups, store, experiment, data, data_dir, device, trainer, workers, summary, bar,
                           max_restarts, t0)
            else:
                _run_ray(groups, store, experiment, data, data_dir, device, trainer, workers, address, bar, done,
                         summary)
    _summarize(store, experiment, all_keys, before, summary)
    if force:
        finish_redo(store, experiment, all_keys)
    summary.seconds = time.time() - t0
    return summary


def finish_redo(store: Store, experiment: str, keys: Iterable[str]) -> bool:
    """End the forced rerun of ``experiment`` once every one of ``keys`` (a grid) has its new result; the runs
    of other grids under the same name are kept (:meth:`Store.drop_superseded` with ``keep_unlisted``).
    True when no forced rerun is left under way."""
    store.drop_superseded(experiment, keys, keep_unlisted=True)
    return not store.redo_pending(experiment)


def _settled(store: Store, experiment: str, keys: set[str], since: float) -> set[str]:
    """Keys of ``keys`` with a result, or stored as an error by this invocation (begun at ``since``)."""
    done = done_keys(store, experiment)
    errors = {u.key for u in store.units(experiment) if u.status == "error" and u.finished >= since}
    return (done | errors) & keys


def _run_local(groups, store, experiment, data, data_dir, device, trainer, workers, summary, bar,
               max_restarts, t0) -> None:
    from concurrent.futures.process import BrokenProcessPool

    cores = default_workers("cpu")
    threads = max(1, cores // workers) if not device.startswith("cuda") else cores
    ctx = mp.get_context("spawn")
    all_keys = {run_key(r, data) for g in groups for r in g}

    def progress() -> None:  # twice a second: only the cheap key query (errors are counted at the end)
        n = len(done_keys(store, experiment) & all_keys)
        if n > bar.n:
            bar.update(n - bar.n)

    pending_groups = groups
    deaths: list[int | None] = []  # exit codes of dead workers, one pool after another
    while pending_groups:
        broken, procs = False, []
        pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(pending_groups)), mp_context=ctx,
                                      initializer=_worker_init, initargs=(threads, os.getpid()))
        try:
            futs = [pool.submit(_local_task, str(store.run_dir), experiment, g, data, data_dir, device, trainer)
                    for g in pending_groups]
            waiting = set(futs)
            while waiting:
                finished, waiting = cf.wait(waiting, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for f in finished:
                    exc = f.exception()
                    if isinstance(exc, BrokenProcessPool):
                        if not broken:  # errors helper: remember the workers, to say how they died
                            procs = list((getattr(pool, "_processes", None) or {}).values())
                        broken = True
                    elif exc is not None:
                        raise exc
                progress()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if broken:
            deaths += [p.exitcode for p in procs if p.exitcode not in (None, 0)] or [None]
        progress()
        settled = _settled(store, experiment, all_keys, t0)
        left = [r for g in pending_groups for r in g if run_key(r, data) not in settled]
        if len(settled) > bar.n:  # the errors too
            bar.update(len(settled) - bar.n)
        if not left:
            break
        if broken and summary.restarts >= max_restarts:
            raise WorkersDied(_deaths_message(deaths, len(left), summary.restarts, store.run_dir))
        if not broken:
            raise RuntimeError(f"{len(left)} runs unfinished after {summary.restarts} worker restarts; "
                               "rerun the same command to resume")
        summary.restarts += 1
        print(f"{experiment}: a worker died; restarting the pool for the {len(left)} unfinished runs",
              file=sys.stderr)
        pending_groups = make_groups(left, max(len(g) for g in pending_groups))


def _deaths_message(deaths: list[int | None], left: int, restarts: int, run_dir: Path) -> str:
    """One line: how the workers died, how often, what is left, where their log is (errors helper)."""
    from collections import Counter

    from .errors import describe_exit

    how = ", ".join(f"{n} x {describe_exit(c) if c is not None else 'unknown cause'}"
                    for c, n in Counter(deaths).most_common())
    hint = " (SIGKILL is usually the kernel's out-of-memory killer: see dmesg)" if -9 in deaths else ""
    return (f"local sweep workers died {len(deaths)} times ({how}){hint}; gave up after {restarts} restarts with "
            f"{left} runs unfinished (finished runs are kept); the workers' log (Python tracebacks, native "
            f"crashes) is {Path(run_dir) / WORKER_LOG}; rerun the same command to resume")


#: Where local workers write their errors (faulthandler for native crashes, stderr), inside the run directory.
WORKER_LOG = "logs/workers.log"


def _open_worker_log(run_dir: str) -> None:
    """Send this worker's stderr and native-crash tracebacks to RUN_DIR/logs/workers.log (once per process)."""
    import faulthandler

    if getattr(_open_worker_log, "done", False):
        return
    path = Path(run_dir) / WORKER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", buffering=1)
    log.write(f"--- worker {os.getpid()} started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    os.dup2(log.fileno(), 2)  # also what native code writes to fd 2
    sys.stderr = log
    faulthandler.enable(file=log)
    _open_worker_log.done = True  # type: ignore[attr-defined]


def _run_ray(groups, store, experiment, data, data_dir, device, trainer, workers, address, bar, done,
             summary) -> None:
    """Each group a Ray task (retried up to twice when its node or worker dies); every run's record
    reaches the store through :class:`_Sink` as the run finishes. Without ``address`` the cluster of
    ``RAY_ADDRESS`` is used when set (as ``ray job submit`` sets it), else a new local Ray."""
    try:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install 'depthscope[ray]'") from None
    started_here = False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # "local": always a new instance (a bare ray.init() joins whatever cluster this machine last started)
            ray.init(address="local", num_cpus=workers, log_to_driver=False, include_dashboard=False)
        started_here = True
    try:
        if device == "auto":  # decided by the cluster, not by the driver's machine
            device = "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
        summary.device = device
        gpus = 1 if device.startswith("cuda") else 0
        # the sink lives on the driver's node: a worker node lost mid-sweep takes no delivered result with it
        here = ray.get_runtime_context().get_node_id()
        sink = ray.remote(num_cpus=0, max_restarts=0)(_Sink).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(_ray_task)
        xyp = ray.put(load_data(data, data_dir))
        refs = [task.remote(g, xyp, device, trainer, data, sink) for g in groups]
        lost: list[str] = []

        def drain() -> None:
            for rec in ray.get(sink.drain.remote()):
                if write_record(store, experiment, rec, done):
                    bar.update()

        while refs:
            ready, refs = ray.wait(refs, num_returns=len(refs), timeout=0.25)
            drain()
            for ref in ready:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as e:  # retries exhausted: its runs stay unfinished
                    lost.append(str(e).splitlines()[0][:200])
        drain()
        ray.kill(sink)
        if lost:
            raise RuntimeError(f"{len(lost)} Ray tasks failed after their retries ({lost[0]}); "
                               "rerun the same command to resume")
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(sweep: SweepSpec, store: Store, **kwargs) -> SweepSummary:
    """Expand ``sweep`` and :func:`execute` it under experiment ``sweep.name``, saving the resolved
    config in the store's meta (``sweep:NAME``)."""
    check_backend(kwargs.get("backend", "local"), kwargs.get("trainer", DEFAULT_TRAINER),
                  kwargs.get("device", "auto"), kwargs.get("workers"))  # before the config is written
    store.set_meta(f"sweep:{sweep.name}", sweep.to_dict())
    kwargs.setdefault("group_size", sweep.group_size)
    runs = expand(sweep)
    summary = execute(runs, store, sweep.name, sweep.data, **kwargs)
    if summary.pending == 0:  # also a forced rerun resumed without force: it ends here
        finish_redo(store, sweep.name, (run_key(r, sweep.data) for r in runs))
    return summary
