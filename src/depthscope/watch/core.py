"""The Watch: hooks that capture a model's outputs on scheduled steps and turn them into records."""
from __future__ import annotations

import weakref

import contextlib
import functools
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .alerts import Alert, grad_findings
from .capture import (_Capture, _seed_for, copy_rows_into, count_rows, gather_rows, node_axis_of, output_tensors,
                      reservoir_plan, sample_output_rows)
from ..metrics.collapse import token_collapse_per_sequence
from .quantities import QUANTITIES, compute_records, mu1_sum
from .select import ModuleSelector, _Watched, describe, select
from .writers import CSVWriter, StoreWriter, TensorBoardWriter, check_run_name

logger = logging.getLogger("depthscope.watch")

_disable = getattr(torch.compiler, "disable", None) or (lambda f: f)


@_disable
def _read_grad(cap: _Capture, g: torch.Tensor) -> None:
    """The output-gradient hook: ||dL/d(output)|| of one call, in g's dtype (cascade summation)."""
    cap.grad_norms.append(torch.linalg.vector_norm(g.detach()))
    cap.grad_numel += g.numel()


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` result or holds a module compiled in place (``m.compile()``)."""
    opt = getattr(getattr(torch, "_dynamo", None), "eval_frame", None)
    if opt is not None and isinstance(model, getattr(opt, "OptimizedModule", ())):
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


class Watch:
    """Records per-module vanishing-node and gradient diagnostics of ``model`` every ``every`` steps.

    See the package docstring for what is recorded and when. Use as a context
    manager, or call :meth:`attach` / :meth:`detach` yourself.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int = 50,
        modules: ModuleSelector = None,
        exclude: str | Iterable[str] = (),
        optimizer: torch.optim.Optimizer | None = None,
        max_rows: int = 4096,
        seed: int = 0,
        activations: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        node_axis: Mapping[str, int] | None = None,
        vni_threshold: float = 0.9,
        grad_ratio: float = 100.0,
        run_dir: str | os.PathLike | None = None,
        run: str | None = None,
        resume: bool = False,
        csv: str | os.PathLike | None = None,
        tensorboard: Any = None,
        writers: Iterable[Any] = (),
        keep_records: bool = True,
        compiled: bool | None = None,
        collapse: bool = False,
        dormant_tau: float = 0.025,
        token_sequences: int = 8,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch expects a torch.nn.Module, got {type(model).__name__}")
        for name, v, low in (("every", every, 1), ("max_rows", max_rows, 2)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not (isinstance(vni_threshold, numbers.Real) and 0 < vni_threshold <= 1):
            raise ValueError(f"vni_threshold must lie in (0, 1], got {vni_threshold!r}")
        if not (isinstance(grad_ratio, numbers.Real) and grad_ratio > 1):
            raise ValueError(f"grad_ratio must be > 1, got {grad_ratio!r}")
        if run is not None:
            check_run_name(run)
        if not (isinstance(dormant_tau, numbers.Real) and 0 <= dormant_tau < math.inf):
            raise ValueError(f"dormant_tau must be a finite number >= 0, got {dormant_tau!r}")
        if isinstance(token_sequences, bool) or not isinstance(token_sequences, numbers.Integral) or token_sequences < 1:
            raise ValueError(f"token_sequences must be an integer >= 1, got {token_sequences!r}")
        if optimizer is not None and not hasattr(optimizer, "register_step_post_hook"):
            raise ValueError(f"optimizer= expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.compiled = is_compiled(model) if compiled is None else bool(compiled)
        self.model = model
        inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: select in the model it wraps
        self.every, self.max_rows, self.seed = int(every), int(max_rows), int(seed)
        self.optimizer = optimizer
        self.vni_threshold, self.grad_ratio = float(vni_threshold), float(grad_ratio)
        self.keep_records = keep_records
        self.collapse, self.dormant_tau, self.token_sequences = bool(collapse), float(dormant_tau), int(token_sequences)
        # (B, T, D) or (T, B, D): batch-first unless a module of the model says otherwise (nn.Transformer*)
        self.batch_first = all(bool(m.batch_first) for m in getattr(model, "_orig_mod", model).modules()
                               if isinstance(getattr(m, "batch_first", None), bool))
        self.watched = select(inner, modules, exclude, activations or {}, node_axis or {})
        if not self.watched:
            raise ValueError("no module of the model matches modules=; give name patterns "
                             "(e.g. 'encoder.*') or types (e.g. nn.Linear)")
        self.description = describe(inner, self.watched, self.every)
        self.records: list[dict] = []
        self.alerts: list[Alert] = []
        self.step_count = 0
        self._alerted: set[tuple[int, str]] = set()
        self._warned: set[tuple[int, str]] = set()
        self._warned_empty = False
        self._last_grad: dict[int, float] = {}  # layer -> grad_rms at its previous record
        self._pending: dict[int, _Capture] = {}
        # Scratch buffers of a recorded step (the reservoirs). With every=1 they are reused by
        # the next step: on CPU a fresh buffer of this size costs more in page faults than the
        # arithmetic done in it. Otherwise they are freed after each record.
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._in_use: list[torch.Tensor] = []
        self._adopted: list[torch.Tensor] = []
        # Same-shape reservoirs as one slab (batched.slab_moments computes it as one batch): the
        # shapes are those of the previous recorded step, layer -> (rows, nodes, dtype, device).
        self._layout: dict[int, tuple] = {}
        self._groups: dict[tuple, list[int]] = {}  # shape -> its layers (two or more), in watched order
        self._slot_of: dict[int, tuple[tuple, int]] = {}  # layer -> (shape, index in its slab)
        self._slabs: dict[tuple, torch.Tensor] = {}  # this step's slabs, allocated at their first use
        self.held_bytes = 0  # bytes of the reservoirs and kept buffers the watch holds now
        self.peak_held_bytes = 0
        self._attached = False
        self._paused = False
        self._recording = False  # read by the hooks: a scheduled step, attached, not paused
        self._handles: list[Any] = []  # optimizer hook (and every forward hook when compiled)
        self._armed: list[Any] = []  # forward hooks registered only while a scheduled step runs
        self._hook_fns: list[tuple[Callable, Callable]] | None = None  # (register method, hook), made once
        self._flow: dict[int, weakref.ref] = {}  # layer -> the last output along its phi_chain (this call)
        self._writer_args = dict(run_dir=run_dir, run=run, resume=resume, csv=csv, tensorboard=tensorboard)
        self._extra_writers = list(writers)
        self._writers: list[Any] = []
        self.run: str | None = run

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
        """Whether the watch captures now: its forward hooks are registered and the step is scheduled."""
        return self._recording and (self.compiled or bool(self._armed))

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
        read. Steps still advance only through :meth:`step` or the optimizer hook,
        paused or not; what the current step captured before the pause is kept and
        recorded with it (the backward of a pass captured before the pause still reads
        its output gradient). Parameter gradients are read from ``p.grad`` when the step
        ends, so a backward run while paused adds to them as it adds to the optimizer's.
        Idempotent.
        """
        self._paused = True
        self._schedule()

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
        """Register the hooks, open the writers, log what is watched, and start capturing if this step is scheduled."""
        if self.attached:
            raise RuntimeError("this watch is already attached; detach() it first")
        try:
            self._open_writers()
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_post_hook(lambda *_a, **_k: self._advance()))
            if self.compiled:
                # A compiled graph keeps the hooks it was traced with, so they stay registered from
                # attach to detach; a hook runs outside the graph (torch.compiler.disable) and returns
                # at once on unscheduled steps: no guard of Dynamo ever sees the watch's state change.
                self._handles.extend(self._register_hooks())
            self._attached = True
            self._schedule()
        except BaseException:
            self._attached = False
            self._remove_hooks()
            self._close_writers()
            raise
        logger.info("%s%s", self.description, f"; run {self.run!r}" if self.run else "")
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
        """End the current training step (recording it if it was scheduled) and start the next.

        Not with ``optimizer=``: then ``optimizer.step()`` advances the watch, and calling
        both would count every step twice.
        """
        if self.optimizer is not None and self.attached:
            raise RuntimeError("this watch advances on optimizer.step() (optimizer= was given): do not call "
                               "w.step() too, it would count every step twice; use one of the two")
        self._advance()

    def _advance(self) -> None:
        if self.compiled and self._recording and not self._pending and not self._warned_empty:
            # Dynamo keeps the graph it traced first and ignores hooks added later
            # (skip_nnmodule_hook_guards): a model compiled and run before attach() is never seen.
            self._warned_empty = True
            logger.warning("depthscope.watch: step %d was scheduled but no watched module was captured: a compiled "
                           "model keeps the hooks it had when it was first run, so attach the watch before its "
                           "first call (or call torch._dynamo.reset() after attaching)", self.step_count)
        self.flush()
        self.step_count += 1
        self._schedule()

    def _schedule(self) -> None:
        self._recording = self.attached and not self._paused and self.step_count % self.every == 0
        if self.compiled:
            return
        # Unscheduled steps run the bare model: no forward hook is even registered, so
        # watching costs nothing between records (not one Python call per module).
        if self._recording:
            if not self._armed:
                self._armed = self._register_hooks()
        else:
            self._disarm()

    def _register_hooks(self) -> list[Any]:
        # The hook functions are made (and wrapped by torch.compiler.disable, which costs more than
        # registering them) once per watch; each scheduled step registers the same functions again.
        if self._hook_fns is None:
            self._hook_fns = ([(w.module.register_forward_hook, self._make_hook(w)) for w in self.watched]
                              + [(w.phi_module.register_forward_pre_hook, self._make_phi_hook(w))
                                 for w in self.watched if w.phi_module is not None]
                              + [(m.register_forward_hook, self._make_flow_hook(w, i))
                                 for w in self.watched if w.phi_chain is not None
                                 for i, m in enumerate((w.module,) + w.phi_chain)])
        return [register(fn) for register, fn in self._hook_fns]

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
        measured: set[tuple[int, str]] = set()
        slabs = [(slab, self._groups[key]) for key, slab in self._slabs.items()]
        try:
            recs = compute_records([(w, pending[w.layer]) for w in self.watched
                                    if w.layer in pending and pending[w.layer].kept], step, measured,
                                   collapse=self.collapse, dormant_tau=self.dormant_tau, slabs=slabs)
        finally:
            if self._learn_layout(pending):
                # a new grouping: the next step puts these layers in new slabs, so their buffers of
                # this step are freed now rather than pooled (never two sets held at once)
                for slab in self._slabs.values():
                    self._drop(slab)
                for layer in self._slot_of:
                    if layer in pending and pending[layer].buf is not None:
                        self._drop(pending[layer].buf)
            self._release_buffers(keep=self.every == 1 and self.attached)
        self._check_alerts(step, recs, measured)
        if self.keep_records:
            self.records.extend(recs)
        for wr in self._writers:
            wr.write(step, recs)
        return recs

    # -- buffers -----------------------------------------------------------------------------
    def _learn_layout(self, pending: dict[int, _Capture]) -> bool:
        """Remember each module's kept-row shape of this step; True when the slab grouping changed."""
        layout = {layer: (c.kept, int(c.buf.shape[1]), c.buf.dtype, c.buf.device)
                  for layer, c in pending.items() if c.buf is not None and c.kept >= 2}
        if layout == self._layout:
            return False
        self._layout = layout
        groups: dict[tuple, list[int]] = {}
        for w in self.watched:
            if w.layer in layout:
                groups.setdefault(layout[w.layer], []).append(w.layer)
        old = self._groups
        self._groups = {key: layers for key, layers in groups.items() if len(layers) >= 2}
        self._slot_of = {layer: (key, i) for key, layers in self._groups.items() for i, layer in enumerate(layers)}
        return self._groups != old

    def _slot(self, layer: int, rows: int, d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """This layer's (rows, d) slot of its shape's slab, when the previous recorded step predicts that shape."""
        found = self._slot_of.get(layer)
        if found is None or found[0] != (rows, d, dtype, device):
            return None
        key, i = found
        slab = self._slabs.get(key)
        if slab is None:
            slab = self._slabs[key] = self._alloc((len(self._groups[key]), rows, d), dtype, device)
        return slab[i]

    def _alloc(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised scratch tensor, reused from the previous step when possible (every=1)."""
        free = self._free.get((shape, dtype, device))
        if free:
            t = free.pop()
        else:
            t = torch.empty(shape, dtype=dtype, device=device)
            self._count(t.numel() * t.element_size())
        self._in_use.append(t)
        return t

    def _adopt(self, t: torch.Tensor) -> torch.Tensor:
        """Count a tensor made elsewhere (a gathered sample) as this step's; it is never pooled."""
        self._count(t.numel() * t.element_size())
        self._adopted.append(t)
        return t

    def _count(self, nbytes: int) -> None:
        self.held_bytes += nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)

    def _drop(self, t: torch.Tensor) -> None:
        """Forget a buffer of this step that was replaced (a reservoir that grew)."""
        for lst in (self._in_use, self._adopted):
            for i, u in enumerate(lst):
                if u is t:
                    del lst[i]
                    self.held_bytes -= t.numel() * t.element_size()
                    return

    def _release_buffers(self, keep: bool) -> None:
        """End of a step: with ``keep``, the buffers of this step become the pool of the next (and only
        they: what the pool held and this step did not use is freed), else everything is freed."""
        in_use, self._in_use = self._in_use, []
        self._slabs = {}
        freed = self._adopted + [t for ts in self._free.values() for t in ts]
        self._adopted, self._free = [], {}
        if keep:
            for t in in_use:
                self._free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)
        else:
            freed += in_use
        self.held_bytes -= sum(t.numel() * t.element_size() for t in freed)

    # -- hooks -------------------------------------------------------------------------------
    def _warn_once(self, w: _Watched, what: str, msg: str) -> None:
        if (w.layer, what) not in self._warned:
            self._warned.add((w.layer, what))
            logger.warning("depthscope.watch: layer %d '%s': %s", w.layer, w.name, msg)

    def _make_hook(self, w: _Watched):
        @_disable
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._recording:
                self._capture(w, module, output)

        return hook

    def _capture(self, w: _Watched, module: nn.Module, output: Any) -> None:
        ts = output_tensors(output)
        if not ts:
            self._warn_once(w, "output", f"its output ({type(output).__name__}) holds no floating-point tensor: "
                            "not recorded (choose a submodule, or exclude= it)")
            return
        t = ts[0]
        axis = w.axis if w.axis is not None else node_axis_of(module, t)
        if t.ndim and not -t.ndim <= axis < t.ndim:
            self._warn_once(w, "axis", f"node_axis {axis} is out of range for its {t.ndim}-D output "
                            f"{tuple(t.shape)}: not recorded")
            return
        t_det = t.detach()
        n, d = count_rows(t_det, axis)
        cap = self._pending.get(w.layer)
        if cap is None:
            cap = self._pending[w.layer] = _Capture()
        if cap.buf is not None and d != cap.buf.shape[1]:
            self._warn_once(w, "nodes", f"calls with {d} nodes after calls with {cap.buf.shape[1]}: "
                            "only calls like the first of each step are recorded")
            return
        cap.calls += 1
        self._offer(w.layer, cap, t_det, axis, n, d, _seed_for(self.seed, self.step_count, w.layer, cap.calls))
        if self.collapse and t_det.ndim == 3 and axis % 3 == 2:
            self._token_collapse(cap, t_det, _seed_for(self.seed, self.step_count, w.layer, cap.calls) + 1)
        if t.requires_grad:
            t.register_hook(self._make_grad_hook(cap))

    def _token_collapse(self, cap: _Capture, t: torch.Tensor, seed: int) -> None:
        """Add token collapse (metrics.collapse.token_collapse_per_sequence) of up to ``token_sequences``
        sequences of this call, drawn with ``seed``, one sequence in float64 at a time."""
        seqs = t if self.batch_first else t.transpose(0, 1)
        b = seqs.shape[0]
        pick = torch.randperm(b, generator=torch.Generator().manual_seed(seed % (2**63)))[: self.token_sequences]
        for i in sorted(pick.tolist()):
            r = token_collapse_per_sequence(seqs[i: i + 1])[0]
            if not bool(torch.isnan(r)):  # an all-zero (padding) sequence has none
                cap.tc_sum = r if cap.tc_sum is None else cap.tc_sum + r
                cap.tc_n += 1

    def _offer(self, layer: int, cap: _Capture, t: torch.Tensor, axis: int, n: int, d: int, seed: int) -> None:
        """Add the n rows of one call to the module's reservoir of at most max_rows rows (capture.reservoir_plan).

        The reservoir is the layer's slot of a slab (see _slot) when the previous recorded step
        kept the rows the layer will hold (a module called once: this call's rows).
        """
        k = self.max_rows
        if cap.seen == 0 and n > k:  # one call fills it: exactly sample_rows' randperm sample
            sample = sample_output_rows(t, axis, k, seed)
            slot = self._slot(layer, k, d, t.dtype, t.device)
            cap.buf = self._adopt(sample) if slot is None else slot.copy_(sample)
            cap.kept, cap.seen = k, n
            return
        f, slots, rows = reservoir_plan(cap.seen, n, k, seed)
        need = cap.kept + f
        if cap.buf is None:
            predicted = self._layout.get(layer)
            size = predicted[0] if predicted is not None and need <= predicted[0] <= k else need
            cap.buf = self._slot(layer, size, d, t.dtype, t.device)
            if cap.buf is None:
                cap.buf = self._alloc((need, d), t.dtype, t.device)
        elif need > cap.buf.shape[0]:
            size = min(k, max(need, 2 * cap.buf.shape[0]))
            old, cap.buf = cap.buf, self._alloc((size, d), t.dtype, t.device)
            if old is not None:
                cap.buf[: cap.kept].copy_(old[: cap.kept])
                self._drop(old)
        if f == n:
            copy_rows_into(t, axis, cap.buf[cap.kept: cap.kept + n])
        elif f:
            cap.buf[cap.kept: cap.kept + f] = gather_rows(t, axis, torch.arange(f, device=t.device))
        cap.kept += f
        if slots.numel():
            dev = cap.buf.device
            cap.buf.index_copy_(0, slots.to(dev), gather_rows(t, axis, rows.to(dev)).to(cap.buf.dtype))
        cap.seen += n

    def _make_flow_hook(self, w: _Watched, i: int):
        # Follows w's output through its attribute-order chain (conv1 -> bn1): each link must receive the
        # previous link's output object, else the chain is broken for this call (see _Watched.phi_chain).
        @_disable
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            ref = self._flow.pop(w.layer, None)
            if not isinstance(output, torch.Tensor):
                return
            if i == 0 or (ref is not None and args and ref() is args[0]):
                self._flow[w.layer] = weakref.ref(output)

        return hook

    def _make_phi_hook(self, w: _Watched):
        @_disable
        def pre_hook(module: nn.Module, args: Any) -> None:
            cap = self._pending.get(w.layer)
            if not self._recording or cap is None or not args or not isinstance(args[0], torch.Tensor):
                return
            if w.phi_chain is not None:
                ref = self._flow.pop(w.layer, None)
                if ref is None or ref() is not args[0]:
                    return  # this activation's input is not what w's chain produced (e.g. after a residual add)
            h = args[0].detach()
            axis = w.axis if w.axis is not None else node_axis_of(w.module, h)
            rows = sample_output_rows(h, axis, self.max_rows, _seed_for(self.seed, self.step_count, w.layer,
                                                                         -cap.calls))
            s = mu1_sum(w.phi, rows)
            cap.mu1_sum = s if cap.mu1_sum is None else cap.mu1_sum + s
            cap.mu1_n += rows.numel()

        return pre_hook

    @staticmethod
    def _make_grad_hook(cap: _Capture):
        # a partial of one disabled function: wrapping a fresh closure in torch.compiler.disable
        # on every captured call cost more than the norm itself
        return functools.partial(_read_grad, cap)

    # -- alerts ------------------------------------------------------------------------------
    def _check_alerts(self, step: int, recs: list[dict], measured: set[tuple[int, str]]) -> None:
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
        for r, kind, msg in grad_findings(recs, self.grad_ratio, self._last_grad, measured):
            fire(r, kind, r["grad_rms"], msg)
        for r in recs:
            if math.isfinite(r["grad_rms"]):
                self._last_grad[r["layer"]] = r["grad_rms"]
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
            sw = StoreWriter(a["run_dir"], a["run"] or "watch", spec, self.seed, resume=a["resume"],
                             named=a["run"] is not None)
            self._writers.append(sw)
        if a["csv"] is not None:
            self._writers.append(CSVWriter(a["csv"]))
        if a["tensorboard"] is not None:
            self._writers.append(TensorBoardWriter(a["tensorboard"]))
        self._writers.extend(self._extra_writers)
        for wr in self._writers:
            wr.start(self.watched)
            if isinstance(wr, StoreWriter):
                self.run = wr.run

    def _close_writers(self) -> None:
        writers, self._writers = self._writers, []
        for wr in writers:
            if wr not in self._extra_writers:
                wr.close()

    def _remove_hooks(self) -> None:
        self._recording = False
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


def watch(model: nn.Module, *, every: int = 50, **kwargs: Any) -> Watch:
    """Watch ``model``'s modules (default: linear-like layers, convolutions, attention and repeated blocks)
    every ``every`` steps.

    Returns a :class:`Watch`; use it as ``with watch(model) as w:`` or call
    ``w.attach()`` / ``w.detach()``. Keyword arguments are those of :class:`Watch`.
    """
    return Watch(model, every=every, **kwargs)
