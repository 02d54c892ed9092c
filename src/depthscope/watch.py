"""``depthscope.watch``: vanishing nodes and gradient health of any ``torch.nn.Module``, during training.

::

    import depthscope
    with depthscope.watch(model, every=50, optimizer=opt, run_dir="runs/a") as w:
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()   # opt.step() advances w
    print(w.records[-1])          # per watched module: vni, effective_nodes, grad_norm, ...

How it works (nothing of the model is wrapped or rewritten):

* Forward hooks exist only during *scheduled* steps (step % every == 0): they are
  registered when such a step begins and removed when it ends, so the steps in
  between run the bare model. The hook copies (a bounded sample of) its module's
  output; the output's gradient is read by a tensor hook registered on that step's
  output, parameter gradients are read from ``p.grad`` when the step ends.
* A recorded step's statistics are computed together when it ends: outputs of the
  same shape share one :func:`depthscope.metrics.vni.vni_moments` call (a float32
  Gram summed in float64; within 4 (512 + 6) 2^-24 = 1.2e-4 of the float64
  :func:`depthscope.metrics.vni`, about 1e-8 in practice), all parameter gradients
  one fused norm, and everything reaches the host in one transfer.
* The step counter advances when ``w.step()`` is called, or, with ``optimizer=``,
  after every ``optimizer.step()`` (``register_step_post_hook``). Use one of the two,
  not both. Everything between two advances (several forwards, gradient
  accumulation, an evaluation pass) belongs to the same step.
* Nodes are the feature axis. Linear-like (B, D): samples B, nodes D. Conv / norm
  modules with a (B, C, ...) output and any other 4-D/5-D output: samples B*H*W,
  nodes C. Other 3-D outputs (B, T, D) or (T, B, D): samples B*T, nodes D (the
  last axis). Pass ``node_axis={"name pattern": axis}`` to override.
* Memory is bounded: at most ``max_rows`` rows (default 4096) of each module's
  output are kept per step, chosen by :func:`sample_rows` without replacement with
  a seed that is a function of (seed, step, layer, call), so the same run gives
  the same numbers. Smaller outputs are kept whole.
* A module called several times in one step (weight sharing, a block reused twice
  in a forward) contributes every call: the rows of all calls are concatenated as
  samples of the same nodes (then bounded to ``max_rows``). Its output gradient
  norm covers every call; its parameter gradients are, as autograd makes them,
  the sum over calls. ``calls`` in the record says how many there were.

Quantities recorded per watched module and scheduled step (missing ones are NaN):

``vni``                 R_sq = tr(C^2)/tr(C)^2 of the node covariance (thesis eq. 3.5), via :func:`depthscope.metrics.vni.vni_moments`
``vni_debiased``        :func:`depthscope.metrics.vni.debias_vni` of it: the finite-sample excess removed
``effective_nodes``     N (1 - VNI) + 1, the thesis' effective number of nodes
``participation_ratio`` 1 / VNI (delve's measure)
``nodes``, ``samples``  N and the number of rows the numbers were computed on
``act_mean``            mean of all sampled output values (drift: watch it over steps)
``act_var``             mean over nodes of each node's variance (eq. 4.2's shared variance)
``grad_norm``           ||dL/dtheta||_2 over the module's parameters (recursively), from ``p.grad``
``grad_rms``            grad_norm / sqrt(number of those parameters): comparable across layer sizes
``out_grad_rms``        root mean square of dL/d(output), the backward signal reaching the module
``sigma_w2``            fan_in Var[W] of a Linear/Conv weight (section 4.1)
``sigma_w2_mu1``        sigma_w2 * mean(phi'(h)^2), only where the elementwise activation phi that
                        follows the module is known: the next module in an ``nn.Sequential`` when it
                        is an elementwise activation module, or ``activations={"name": phi}``.

Gradient quantities are recorded only when a backward pass reached the module's
output during the step; under ``torch.no_grad`` they are NaN while the forward
quantities are recorded as usual.

Alerts: the first time a module's VNI reaches ``vni_threshold`` (default 0.9), or
its ``grad_rms`` falls below median/``grad_ratio`` or rises above
median*``grad_ratio`` (median over the watched modules at that step; default
ratio 100), or becomes non-finite, one warning naming the module and the step is
logged on the ``depthscope.watch`` logger and appended to ``w.alerts``; each
(module, kind) fires once per watch.
"""
from __future__ import annotations

import contextlib
import csv
import fnmatch
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .metrics import effective_nodes, participation_ratio
from .metrics.vni import debias_vni, vni_moments

logger = logging.getLogger("depthscope.watch")

#: Module types watched when ``modules`` is not given.
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

_CHANNEL_FIRST: tuple[type, ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
)

#: Every quantity a record can carry, in the order written to CSV.
QUANTITIES = (
    "vni", "vni_debiased", "effective_nodes", "participation_ratio", "nodes", "samples", "calls",
    "act_mean", "act_var", "grad_norm", "grad_rms", "out_grad_rms", "sigma_w2", "sigma_w2_mu1",
)

EXPERIMENT = "watch"

ModuleSelector = str | type | Sequence[str | type] | None


# -- pure helpers ---------------------------------------------------------------------------------
def _sample_index(n: int, k: int, seed: int, device: torch.device) -> torch.Tensor:
    """The sorted row numbers of a seeded sample of k of n rows without replacement.

    The first k entries of ``torch.randperm(n)`` drawn with ``seed``, in increasing order
    (sorted through a mask: O(n) instead of a sort of k random numbers).
    """
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:k]] = True
    return mask.nonzero().squeeze(1).to(device)


def sample_rows(x: torch.Tensor, max_rows: int, seed: int) -> torch.Tensor:
    """At most ``max_rows`` rows of x (rows x nodes), drawn without replacement with ``seed``, in order.

    Returns a copy of x when it has no more than ``max_rows`` rows.
    """
    n = x.shape[0]
    if n <= max_rows:
        return x.clone()
    return x.index_select(0, _sample_index(n, max_rows, seed, x.device))


def sample_output_rows(out: torch.Tensor, axis: int, max_rows: int, seed: int, *,
                       buffer: torch.Tensor | None = None) -> torch.Tensor:
    """``sample_rows(as_rows(out, axis), max_rows, seed)`` without first copying the whole output.

    The same rows in the same order (tested against that reference): row r of
    ``as_rows`` is, for a channel-first (B, C, *spatial) output, image r // S at
    position r % S (S = the spatial size), read with one gather; otherwise the
    row numbers are unravelled into indices of the output with the node axis moved last.
    When every row is kept and ``buffer`` (rows x nodes, out's dtype) is given, the
    rows are copied into it and it is returned.
    """
    moved = out.movedim(axis, -1) if out.ndim >= 2 else as_rows(out, axis)
    d = moved.shape[-1]
    n = moved.numel() // max(d, 1)
    if n <= max_rows:
        if buffer is not None:
            buffer.view(moved.shape).copy_(moved)
            return buffer
        rows = moved.reshape(n, d)
        # reshape copies when it cannot view: then that copy is already ours
        return rows.clone() if rows.data_ptr() == moved.data_ptr() and rows.numel() else rows
    idx = _sample_index(n, max_rows, seed, out.device)
    if out.ndim >= 3 and axis % out.ndim == 1:
        spatial = n // out.shape[0]
        flat = out.reshape(out.shape[0], d, spatial)  # a view for a contiguous output
        return flat[idx.div(spatial, rounding_mode="floor"), :, idx.remainder(spatial)]
    if moved.is_contiguous():
        return moved.reshape(n, d).index_select(0, idx)
    return moved[torch.unravel_index(idx, moved.shape[:-1])]


def node_axis_of(module: nn.Module, out: torch.Tensor) -> int:
    """The axis of ``out`` holding the nodes (features) of ``module``; see the module docstring."""
    if out.ndim <= 1:
        return -1
    if out.ndim == 2:
        return 1
    if out.ndim >= 4 or isinstance(module, _CHANNEL_FIRST):
        return 1
    return -1


def as_rows(out: torch.Tensor, axis: int) -> torch.Tensor:
    """(samples, nodes) view of an output: the node axis last, every other axis flattened into samples."""
    if out.ndim == 0:
        return out.reshape(1, 1)
    if out.ndim == 1:
        return out.reshape(1, -1)
    return out.movedim(axis, -1).reshape(-1, out.shape[axis])


def _seed_for(seed: int, step: int, layer: int, call: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 10_007 + int(layer) * 101 + int(call)) % (2**63)


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


#: phi'(h) in closed form for common activation modules (checked against autograd in the tests).
_DERIVATIVES: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.Tanh: lambda m, h: 1.0 - torch.tanh(h) ** 2,
    nn.ReLU: lambda m, h: (h > 0).to(h.dtype),
    nn.Sigmoid: lambda m, h: torch.sigmoid(h) * (1.0 - torch.sigmoid(h)),
    nn.LeakyReLU: lambda m, h: torch.where(h > 0, torch.ones_like(h), torch.full_like(h, m.negative_slope)),
}


def derivative_of(phi: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """phi'(h) elementwise: closed form for nn.Tanh/ReLU/Sigmoid/LeakyReLU, autograd for anything else."""
    closed = _DERIVATIVES.get(type(phi))
    if closed is not None:
        return closed(phi, h)
    with torch.enable_grad():
        hr = h.detach().clone().requires_grad_(True)
        y = phi(hr.clone())  # the clone lets in-place activations (ReLU(inplace=True)) run
        (g,) = torch.autograd.grad(y.sum(), hr)
    return g


def _mu1(phi: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """mu_1 = mean of phi'(h)^2 over the samples and nodes of h (thesis eq. 4.4), a float64 tensor."""
    return derivative_of(phi, h.detach()).to(torch.float64).pow(2).mean()


def _norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """[||t_i||_2] as one float64 tensor, each norm in its tensor's own dtype (one fused kernel where torch has one)."""
    foreach = getattr(torch, "_foreach_norm", None)
    devices = {t.device for t in tensors}
    norms = foreach(list(tensors)) if foreach is not None and len(devices) == 1 else \
        [torch.linalg.vector_norm(t) for t in tensors]
    if len({n.dtype for n in norms}) == 1 and len(devices) == 1:
        return torch.stack(list(norms)).to(torch.float64)
    return torch.stack([n.to(torch.float64).cpu() for n in norms])


def _to_host(vals: Sequence[torch.Tensor]) -> list[float]:
    """The numbers of 1-D tensors as Python floats, in order: one transfer (one sync) per device."""
    if not vals:
        return []
    vals = [v if v.dtype == torch.float64 else v.to(torch.float64) for v in vals]
    if len({v.device for v in vals}) > 1:
        vals = [v.cpu() for v in vals]
    return torch.cat(vals).tolist()


# -- records and alerts ---------------------------------------------------------------------------
@dataclass
class Alert:
    """One warning: ``kind`` is 'vni', 'vanishing_grad', 'exploding_grad' or 'nonfinite_grad'."""

    step: int
    layer: int
    name: str
    kind: str
    value: float
    message: str


@dataclass
class _Capture:
    rows: list[torch.Tensor] = field(default_factory=list)
    calls: int = 0
    grad_norms: list[torch.Tensor] = field(default_factory=list)  # ||dL/d(output)|| of each call
    grad_numel: int = 0


@dataclass
class _Watched:
    layer: int  # 1-based, in model.named_modules() order
    name: str
    module: nn.Module
    phi: Callable[[torch.Tensor], torch.Tensor] | None
    axis: int | None  # None: node_axis_of()


# -- writers --------------------------------------------------------------------------------------
class StoreWriter:
    """Rows to a depthscope store: one unit per (run, step), key ``f"{run}:{step}"``, experiment 'watch'.

    Module names go to meta ``watch/<run>/layers`` (index l-1 = layer l); alerts to ``watch/<run>/alerts``.
    """

    def __init__(self, run_dir: str | os.PathLike, run: str, spec: Mapping[str, Any], seed: int):
        from .store import Store

        self.store = Store(run_dir)
        self.run, self.spec, self.seed = run, dict(spec), seed

    def start(self, watched: Sequence[_Watched]) -> None:
        self.store.set_meta(f"watch/{self.run}/layers", [w.name for w in watched])
        self.store.set_meta(f"watch/{self.run}/types", [type(w.module).__name__ for w in watched])
        runs = self.store.get_meta("watch/runs", [])
        if self.run not in runs:
            self.store.set_meta("watch/runs", runs + [self.run])

    def write(self, step: int, records: Sequence[dict]) -> None:
        from .store import Value

        values = [Value(q, r[q], layer=r["layer"], step=step)
                  for r in records for q in QUANTITIES if not math.isnan(r[q])]
        self.store.record(EXPERIMENT, f"{self.run}:{step}", spec={**self.spec, "run": self.run, "step": step},
                          seed=self.seed, values=values)

    def alert(self, alerts: Sequence[Alert]) -> None:
        self.store.set_meta(f"watch/{self.run}/alerts", [a.__dict__ for a in alerts])

    def close(self) -> None:
        self.store.close()


class CSVWriter:
    """Rows to a CSV file (one line per step and module; NaN for missing quantities), appended."""

    COLUMNS = ("step", "layer", "name") + QUANTITIES

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=list(self.COLUMNS), extrasaction="ignore")
        if new:
            self._w.writeheader()

    def start(self, watched: Sequence[_Watched]) -> None:
        pass

    def write(self, step: int, records: Sequence[dict]) -> None:
        self._w.writerows(records)
        self._f.flush()

    def alert(self, alerts: Sequence[Alert]) -> None:
        pass

    def close(self) -> None:
        self._f.close()


class TensorBoardWriter:
    """Scalars ``depthscope/<quantity>/<module name>`` through a ``SummaryWriter`` (or anything with ``add_scalar``)."""

    def __init__(self, target: Any):
        if isinstance(target, (str, os.PathLike)):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("the TensorBoard writer needs tensorboard: pip install 'depthscope[tensorboard]'") from None
            self.sw, self._own = SummaryWriter(str(target)), True
        elif hasattr(target, "add_scalar"):
            self.sw, self._own = target, False
        else:
            raise ValueError(f"tensorboard= expects a log directory or a SummaryWriter, got {type(target).__name__}")

    def start(self, watched: Sequence[_Watched]) -> None:
        pass

    def write(self, step: int, records: Sequence[dict]) -> None:
        for r in records:
            for q in QUANTITIES:
                if q not in ("nodes", "samples", "calls") and not math.isnan(r[q]):
                    self.sw.add_scalar(f"depthscope/{q}/{r['name'] or '<root>'}", r[q], step)

    def alert(self, alerts: Sequence[Alert]) -> None:
        pass

    def close(self) -> None:
        if self._own:
            self.sw.close()
        elif hasattr(self.sw, "flush"):
            self.sw.flush()


# -- the watcher ----------------------------------------------------------------------------------
class Watch:
    """Records per-module vanishing-node and gradient diagnostics of ``model`` every ``every`` steps.

    See the module docstring for what is recorded and when. Use as a context
    manager, or call :meth:`attach` / :meth:`detach` yourself.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 50,
        modules: ModuleSelector = None,
        exclude: str | Sequence[str] = (),
        optimizer: torch.optim.Optimizer | None = None,
        max_rows: int = 4096,
        seed: int = 0,
        activations: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        node_axis: Mapping[str, int] | None = None,
        vni_threshold: float = 0.9,
        grad_ratio: float = 100.0,
        run_dir: str | os.PathLike | None = None,
        run: str = "watch",
        csv: str | os.PathLike | None = None,
        tensorboard: Any = None,
        writers: Iterable[Any] = (),
        keep_records: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch expects a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not isinstance(max_rows, int) or max_rows < 2:
            raise ValueError(f"max_rows must be an integer >= 2, got {max_rows!r}")
        if not (0 < vni_threshold <= 1):
            raise ValueError(f"vni_threshold must lie in (0, 1], got {vni_threshold!r}")
        if not grad_ratio > 1:
            raise ValueError(f"grad_ratio must be > 1, got {grad_ratio!r}")
        self.model = model
        self.every, self.max_rows, self.seed = every, max_rows, int(seed)
        self.optimizer = optimizer
        self.vni_threshold, self.grad_ratio = float(vni_threshold), float(grad_ratio)
        self.keep_records = keep_records
        self.watched = _select(model, modules, exclude, activations or {}, node_axis or {})
        if not self.watched:
            raise ValueError("no module of the model matches modules=; give name patterns "
                             "(e.g. 'encoder.*') or types (e.g. nn.Linear)")
        self.records: list[dict] = []
        self.alerts: list[Alert] = []
        self.step_count = 0
        self._alerted: set[tuple[int, str]] = set()
        self._pending: dict[int, _Capture] = {}
        # Scratch buffers of a recorded step (captured rows, stacked groups). With every=1 they
        # are reused by the next step: on CPU a fresh buffer of this size costs more in page
        # faults than the arithmetic done in it. Otherwise they are freed after each record.
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._in_use: list[torch.Tensor] = []
        self._attached = False
        self._paused = False
        self._handles: list[Any] = []  # the optimizer hook: registered from attach() to detach()
        self._armed: list[Any] = []  # forward hooks: registered only while a scheduled step runs
        self._writer_args = dict(run_dir=run_dir, run=run, csv=csv, tensorboard=tensorboard)
        self._extra_writers = list(writers)
        self._writers: list[Any] = []

    #: Set by :mod:`depthscope.integrations.distributed` (None: every process records its own
    #: captures). Called by :meth:`flush` on every scheduled step with that step's captures
    #: ``{layer: _Capture}``; returns the captures to record (rows gathered across ranks). A
    #: collective call: every rank reaches it at the same steps, whether it captured or not.
    sync: Callable[["Watch", dict], dict] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def armed(self) -> bool:
        """Whether the forward hooks are registered now (only during scheduled steps)."""
        return bool(self._armed)

    @property
    def names(self) -> list[str]:
        """Qualified names of the watched modules; ``names[l-1]`` is layer l."""
        return [w.name for w in self.watched]

    @property
    def is_paused(self) -> bool:
        """Whether capture is paused (:meth:`pause`); the step counter still advances."""
        return self._paused

    def pause(self) -> None:
        """Stop capturing until :meth:`resume`: forward passes run while paused are not read.

        For passes that are not training (a validation loop inside a training step, a
        sanity check): their outputs are not sampled and their output gradients not
        read (the forward hooks are removed). Steps still advance only through
        :meth:`step` or the optimizer hook, paused or not; what the current step
        captured before the pause is kept and recorded with it (the backward of a pass
        captured before the pause still reads its output gradient). Parameter
        gradients are read from ``p.grad`` when the step ends, so a backward run while
        paused adds to them as it adds to the optimizer's. Idempotent.
        """
        self._paused = True
        self._disarm()

    def resume(self) -> None:
        """Capture again (after :meth:`pause`) from the next forward pass on, if this step is scheduled."""
        self._paused = False
        self._schedule()

    @contextlib.contextmanager
    def paused(self) -> Iterator["Watch"]:
        """``with w.paused(): validate()``: no capture inside the block; the state before it comes back after."""
        was = self._paused
        self.pause()
        try:
            yield self
        finally:
            if not was:
                self.resume()

    def attach(self) -> "Watch":
        """Register the optimizer hook, open the writers, and arm the forward hooks if this step is scheduled."""
        if self.attached:
            raise RuntimeError("this watch is already attached; detach() it first")
        try:
            self._open_writers()
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_post_hook(lambda *_a, **_k: self.step()))
            self._attached = True
            self._schedule()
        except BaseException:
            self._attached = False
            self._remove_hooks()
            self._close_writers()
            raise
        return self

    def detach(self, *, flush: bool = True) -> None:
        """Remove every hook; with ``flush``, record what the current step captured so far; close writers."""
        self._attached = False
        self._remove_hooks()
        try:
            if flush:
                self.flush()
        finally:
            self._pending = {}
            self._release_buffers(keep=False)
            self._close_writers()

    def __enter__(self) -> "Watch":
        return self.attach()

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the step in progress may be half captured: drop it.
        self.detach(flush=exc_type is None)

    # -- stepping ----------------------------------------------------------------------------
    def step(self) -> None:
        """End the current training step (recording it if it was scheduled) and start the next."""
        self.flush()
        self.step_count += 1
        self._schedule()

    def _schedule(self) -> None:
        # Unscheduled steps run the bare model: no forward hook is even registered, so
        # watching costs nothing between records (not one Python call per module).
        if self.attached and not self._paused and self.step_count % self.every == 0:
            if not self._armed:
                self._armed = [w.module.register_forward_hook(self._make_hook(w)) for w in self.watched]
        else:
            self._disarm()

    def _disarm(self) -> None:
        armed, self._armed = self._armed, []
        for h in armed:
            h.remove()

    def flush(self) -> list[dict]:
        """Compute and write the records of what the current step captured; returns them."""
        pending, self._pending = self._pending, {}
        if self.sync is not None and self.step_count % self.every == 0:  # see Watch.sync
            pending = self.sync(self, pending)
        if not pending:
            return []
        step = self.step_count
        try:
            recs = self._compute_all([(w, pending[w.layer]) for w in self.watched
                                      if w.layer in pending and pending[w.layer].rows], step)
        finally:
            self._release_buffers(keep=self.every == 1 and self.attached)
        self._check_alerts(step, recs)
        if self.keep_records:
            self.records.extend(recs)
        for wr in self._writers:
            wr.write(step, recs)
        return recs

    def _buffer(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised scratch tensor of ``shape`` with ``like``'s dtype and device, reused when possible."""
        free = self._free.get((shape, like.dtype, like.device))
        t = free.pop() if free else torch.empty(shape, dtype=like.dtype, device=like.device)
        self._in_use.append(t)
        return t

    def _release_buffers(self, keep: bool) -> None:
        in_use, self._in_use = self._in_use, []
        if not keep:
            self._free = {}
            return
        for t in in_use:
            self._free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)

    # -- hooks -------------------------------------------------------------------------------
    def _make_hook(self, w: _Watched):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is None or not t.is_floating_point():
                return
            cap = self._pending.get(w.layer)
            if cap is None:
                cap = self._pending[w.layer] = _Capture()
            axis = w.axis if w.axis is not None else node_axis_of(module, t)
            t_det = t.detach()
            n_nodes = 1 if t_det.ndim == 0 else t_det.shape[axis]
            if cap.rows and n_nodes != cap.rows[0].shape[1]:
                return  # a later call with a different node count: only calls like the first are kept
            cap.calls += 1
            seed = _seed_for(self.seed, self.step_count, w.layer, cap.calls)
            n = t_det.numel() // max(n_nodes, 1)
            buf = self._buffer((n, n_nodes), t_det) if n <= self.max_rows and t_det.ndim >= 1 else None
            cap.rows.append(sample_output_rows(t_det, axis, self.max_rows, seed, buffer=buf))
            if t.requires_grad:
                t.register_hook(self._make_grad_hook(cap))

        return hook

    @staticmethod
    def _make_grad_hook(cap: _Capture):
        def grad_hook(g: torch.Tensor) -> None:
            cap.grad_norms.append(torch.linalg.vector_norm(g.detach()))  # native dtype, cascade summation
            cap.grad_numel += g.numel()

        return grad_hook

    # -- computing ---------------------------------------------------------------------------
    def _compute_all(self, caps: Sequence[tuple[_Watched, _Capture]], step: int) -> list[dict]:
        """The records of one step.

        Every statistic stays a tensor where the activations live until one transfer at the
        end (one host sync per step, not one per number), and the per-module work is batched:
        one :func:`vni_moments` call per group of outputs of the same shape, one fused norm
        over every parameter gradient.
        """
        nan = float("nan")
        recs: list[dict] = []
        vals: list[torch.Tensor] = []  # 1-D tensors, concatenated and transferred once
        slots: list[tuple[Any, Any]] = []  # (container, key) that each transferred number goes to
        groups: dict[tuple, list[tuple[dict, torch.Tensor]]] = {}
        grads: dict[int, torch.Tensor] = {}  # id(parameter) -> its gradient, each counted once
        pnorm: dict[int, float] = {}  # id(parameter) -> ||gradient||, filled by the transfer
        grad_of: list[tuple[dict, list[float], int, list[int]]] = []  # rec, output-grad norms, numel, params
        weights: list[tuple[dict, int]] = []  # (record, fan_in)

        def put(v: torch.Tensor, where: Sequence[tuple[Any, Any]]) -> None:
            vals.append(v.reshape(-1))
            slots.extend(where)

        for w, cap in caps:
            x = torch.cat(cap.rows) if len(cap.rows) > 1 else cap.rows[0]
            if x.shape[0] > self.max_rows:
                x = sample_rows(x, self.max_rows, _seed_for(self.seed, step, w.layer, 0))
            n_samples, n_nodes = x.shape
            rec = dict(step=step, layer=w.layer, name=w.name, **{q: nan for q in QUANTITIES})
            rec.update(nodes=float(n_nodes), samples=float(n_samples), calls=float(cap.calls))
            recs.append(rec)
            if n_samples >= 2:
                groups.setdefault((x.shape, x.dtype, x.device), []).append((rec, x))
            else:
                put(x.to(torch.float64).mean(), [(rec, "act_mean")])
            if cap.grad_norms:  # a backward pass reached this module's output in this step
                norms = [nan] * len(cap.grad_norms)
                put(torch.stack(cap.grad_norms), [(norms, k) for k in range(len(norms))])
                ids = []
                for p in w.module.parameters():
                    if p.grad is not None:
                        grads[id(p)] = p.grad.detach()
                        ids.append(id(p))
                grad_of.append((rec, norms, cap.grad_numel, ids))
            weight = getattr(w.module, "weight", None)
            if isinstance(w.module, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(weight, torch.Tensor):
                wd = weight.detach().reshape(weight.shape[0], -1)
                weights.append((rec, wd.shape[1]))
                put(wd.to(torch.float64).var(unbiased=False), [(rec, "sigma_w2")])  # times fan_in below
                if w.phi is not None:
                    put(_mu1(w.phi, x), [(rec, "sigma_w2_mu1")])  # times sigma_w2 below
        for members in groups.values():
            if len(members) > 1:
                xs = torch.stack([x for _, x in members], out=self._buffer((len(members),) + members[0][1].shape, members[0][1]))
            else:
                xs = members[0][1]
            # the rows are this step's own copies and every other use of them is already queued
            put(vni_moments(xs, overwrite=True), [(rec, q) for rec, _ in members for q in ("vni", "act_mean", "act_var")])
        if grads:
            put(_norms(list(grads.values())), [(pnorm, i) for i in grads])

        for (container, key), v in zip(slots, _to_host(vals)):
            container[key] = v
        for rec, norms, numel, ids in grad_of:
            rec["out_grad_rms"] = math.sqrt(math.fsum(v * v for v in norms) / max(numel, 1))
            if ids:
                sq = math.fsum(pnorm[i] ** 2 for i in ids)
                rec["grad_norm"] = math.sqrt(sq)
                rec["grad_rms"] = math.sqrt(sq / sum(grads[i].numel() for i in ids))
        for rec, fan_in in weights:
            rec["sigma_w2"] = fan_in * rec["sigma_w2"]  # = metrics.sigma_w2, the same float64 product
            if not math.isnan(rec["sigma_w2_mu1"]):
                rec["sigma_w2_mu1"] = rec["sigma_w2"] * rec["sigma_w2_mu1"]
        for rec in recs:
            r = rec["vni"]
            if not math.isnan(r):
                rec.update(vni_debiased=float(debias_vni(r, int(rec["samples"]))),
                           effective_nodes=float(effective_nodes(r, int(rec["nodes"]))),
                           participation_ratio=float(participation_ratio(r)) if r > 0 else nan)
        return recs

    def _check_alerts(self, step: int, recs: Sequence[dict]) -> None:
        new: list[Alert] = []

        def fire(rec: dict, kind: str, value: float, msg: str) -> None:
            if (rec["layer"], kind) in self._alerted:
                return
            self._alerted.add((rec["layer"], kind))
            text = f"layer {rec['layer']} '{rec['name']}' at step {step}: {msg}"
            new.append(Alert(step, rec["layer"], rec["name"], kind, value, text))

        for r in recs:
            if r["vni"] >= self.vni_threshold:
                fire(r, "vni", r["vni"], f"VNI = {r['vni']:.3f} >= {self.vni_threshold:g} (vanishing nodes: "
                     f"{int(r['nodes'])} nodes behave like {r['effective_nodes']:.1f})")
        grads = [r for r in recs if not math.isnan(r["grad_rms"])]
        finite = [r["grad_rms"] for r in grads if math.isfinite(r["grad_rms"])]
        med = float(torch.tensor(finite, dtype=torch.float64).median()) if len(finite) >= 2 else float("nan")
        for r in grads:
            g = r["grad_rms"]
            if not math.isfinite(g):
                fire(r, "nonfinite_grad", g, f"non-finite gradient (grad_rms = {g})")
            elif med > 0 and g < med / self.grad_ratio:
                fire(r, "vanishing_grad", g, f"vanishing gradient: grad_rms = {g:.3g} < median {med:.3g} / {self.grad_ratio:g}")
            elif med > 0 and g > med * self.grad_ratio:
                fire(r, "exploding_grad", g, f"exploding gradient: grad_rms = {g:.3g} > median {med:.3g} x {self.grad_ratio:g}")
        for kind in dict.fromkeys(a.kind for a in new):  # one log line per kind and step
            these = [a for a in new if a.kind == kind]
            if len(these) == 1:
                logger.warning("depthscope.watch: %s", these[0].message)
            else:
                logger.warning("depthscope.watch: %d modules at step %d: %s", len(these), step,
                               "; ".join(a.message.replace(f" at step {step}:", ":") for a in these))
        if new:
            self.alerts.extend(new)
            for wr in self._writers:
                wr.alert(self.alerts)

    # -- writers -----------------------------------------------------------------------------
    def _open_writers(self) -> None:
        a = self._writer_args
        if a["run_dir"] is not None:
            spec = {"model": type(self.model).__name__, "every": self.every, "max_rows": self.max_rows}
            self._writers.append(StoreWriter(a["run_dir"], str(a["run"]), spec, self.seed))
        if a["csv"] is not None:
            self._writers.append(CSVWriter(a["csv"]))
        if a["tensorboard"] is not None:
            self._writers.append(TensorBoardWriter(a["tensorboard"]))
        self._writers.extend(self._extra_writers)
        for wr in self._writers:
            wr.start(self.watched)

    def _close_writers(self) -> None:
        writers, self._writers = self._writers, []
        for wr in writers:
            if wr not in self._extra_writers:
                wr.close()

    def _remove_hooks(self) -> None:
        self._disarm()
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    # -- reading -----------------------------------------------------------------------------
    def history(self, quantity: str = "vni") -> dict[str, list[tuple[int, float]]]:
        """{module name: [(step, value), ...]} of one quantity from the kept records."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}; expected one of: {', '.join(QUANTITIES)}")
        out: dict[str, list[tuple[int, float]]] = {n: [] for n in self.names}
        for r in self.records:
            out[r["name"]].append((r["step"], r[quantity]))
        return out



def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (str, type)):
        return [x]
    return list(x)


def _select(model: nn.Module, modules: ModuleSelector, exclude: str | Sequence[str],
            activations: Mapping[str, Any], node_axis: Mapping[str, int]) -> list[_Watched]:
    selectors = _as_list(modules) or list(DEFAULT_TYPES)
    for s in selectors:
        if not isinstance(s, (str, type)):
            raise ValueError(f"modules= takes name patterns (str) or module types, got {s!r}")
    excl = _as_list(exclude)
    names = dict(model.named_modules())
    for pat in list(activations) + list(node_axis):
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"pattern {pat!r} matches no module name; names look like: "
                             f"{', '.join(list(names)[1:6])}")
    phis = _sequential_activations(model)
    out = []
    for name, mod in names.items():
        hit = any((isinstance(s, str) and fnmatch.fnmatchcase(name, s)) or
                  (isinstance(s, type) and isinstance(mod, s)) for s in selectors)
        if not hit or any(fnmatch.fnmatchcase(name, e) for e in excl):
            continue
        phi = next((f for p, f in activations.items() if fnmatch.fnmatchcase(name, p)), phis.get(name))
        if isinstance(phi, str):
            from .activations import get_activation

            phi = get_activation(phi)
        axis = next((a for p, a in node_axis.items() if fnmatch.fnmatchcase(name, p)), None)
        out.append(_Watched(len(out) + 1, name, mod, phi, axis))
    return out


def _sequential_activations(model: nn.Module) -> dict[str, nn.Module]:
    """{name of a module inside an nn.Sequential: the elementwise activation module right after it}."""
    found = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential):
            kids = list(mod.named_children())
            for (n1, _), (_, m2) in zip(kids, kids[1:]):
                if isinstance(m2, ELEMENTWISE_ACTIVATIONS):
                    found[f"{name}.{n1}" if name else n1] = m2
    return found


def watch(model: nn.Module, *, every: int = 50, **kwargs: Any) -> Watch:
    """Watch ``model``'s modules (default: Linear, Conv, attention and transformer blocks) every ``every`` steps.

    Returns a :class:`Watch`; use it as ``with watch(model) as w:`` or call
    ``w.attach()`` / ``w.detach()``. Keyword arguments are those of :class:`Watch`.
    """
    return Watch(model, every=every, **kwargs)


# -- the figure -----------------------------------------------------------------------------------
def watch_report(run_dir: str | os.PathLike, *, run: str | None = None, quantity: str = "vni",
                 outdir: str | os.PathLike | None = None) -> list[Path]:
    """Draw ``quantity`` per watched module over steps (heatmap: modules x steps) from a run's store.

    One PNG and one SVG per watch run (``watch_<quantity>_<run>.png``) in ``outdir``
    (default ``run_dir``). Reads only the store. Returns the written paths.
    """
    from matplotlib.figure import Figure
    import numpy as np

    from .store import Store

    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of: {', '.join(QUANTITIES)}")
    store = Store(run_dir, create=False)
    try:
        runs = store.get_meta("watch/runs", [])
        if not runs:
            raise ValueError(f"{run_dir} holds no depthscope.watch run (watch(model, run_dir=...) writes one)")
        if run is not None:
            if run not in runs:
                raise ValueError(f"unknown watch run {run!r}; this store holds: {', '.join(runs)}")
            runs = [run]
        outdir = Path(outdir) if outdir is not None else Path(run_dir)
        outdir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        rows = store.rows(EXPERIMENT, quantity)
        for rn in runs:
            names = store.get_meta(f"watch/{rn}/layers", [])
            mine = [r for r in rows if r.get("run") == rn]
            if not mine:
                logger.warning("depthscope.watch: run %r has no %s rows; skipped", rn, quantity)
                continue
            steps = sorted({r["step"] for r in mine})
            col = {s: i for i, s in enumerate(steps)}
            n_layers = max(len(names), max(r["layer"] for r in mine))
            grid = np.full((n_layers, len(steps)), np.nan)
            for r in mine:
                grid[r["layer"] - 1, col[r["step"]]] = r["value"]
            fig = Figure(figsize=(min(4 + 0.12 * len(steps), 14), min(2 + 0.28 * n_layers, 14)))
            ax = fig.add_subplot()
            kw = dict(vmin=0.0, vmax=1.0, cmap="magma") if quantity == "vni" else dict(cmap="viridis")
            im = ax.imshow(grid, aspect="auto", interpolation="nearest", origin="upper", **kw)
            fig.colorbar(im, ax=ax, label=quantity)
            labels = [f"{i + 1} {names[i]}" if i < len(names) else str(i + 1) for i in range(n_layers)]
            ax.set_yticks(range(n_layers), labels, fontsize=7 if n_layers > 20 else 9)
            ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 10)).round().astype(int))
            ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
            ax.set_xlabel("step")
            ax.set_title(f"depthscope.watch: {quantity} per module over steps (run {rn})")
            fig.tight_layout()
            stem = outdir / f"watch_{quantity}_{rn}"
            for ext in ("png", "svg"):
                fig.savefig(f"{stem}.{ext}", dpi=120)
                paths.append(Path(f"{stem}.{ext}"))
        return paths
    finally:
        store.close()
