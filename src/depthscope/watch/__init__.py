"""``depthscope.watch``: vanishing nodes and gradient health of any ``torch.nn.Module``, during training.

::

    import depthscope
    with depthscope.watch(model, every=50, optimizer=opt, run_dir="runs/a") as w:
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()   # opt.step() advances w
    print(w.records[-1])          # per watched module: vni, effective_nodes, grad_norm, ...

The package: ``capture`` (which rows are kept: sampling, the reservoir across calls),
``select`` (which modules: the default selection, the activation after each),
``quantities`` (the numbers of a step, pure functions), ``alerts`` (the rules),
``writers`` (store, CSV, TensorBoard), ``core`` (the :class:`Watch`: hooks and steps),
``report`` (the figure). Everything public is importable from ``depthscope.watch``.

How it works (nothing of the model is wrapped or rewritten):

* Forward hooks exist only during *scheduled* steps (step % every == 0): they are
  registered when such a step begins and removed when it ends, so the steps in
  between run the bare model. For a compiled model (``torch.compile`` result, or
  ``compiled=True``) they stay registered from attach to detach and return at once on
  unscheduled steps, since a compiled graph keeps the hooks it was traced with.
  A hook runs outside Dynamo (``torch.compiler.disable``): nothing of the watch's
  state reaches a guard, so watching adds no recompilation. The hook samples its
  module's output into a reservoir; the output's gradient is read by a tensor hook
  registered on that output, parameter gradients from ``p.grad`` when the step ends.
* A recorded step's statistics are computed together when it ends: VNI and the moments of
  each module in place on its reservoir, the reservoirs of same-shape modules as one slab
  in one batch (:mod:`depthscope.watch.batched`, :func:`depthscope.metrics.vni.vni_moments`'
  algorithm and numbers; a float32 Gram summed in float64; within sqrt(512) 2^-24 = 1.35e-6 of the float64
  :func:`depthscope.metrics.vni`, about 1e-8 in practice), all parameter gradients
  one fused norm, and everything reaches the host in one transfer.
* The step counter advances when ``w.step()`` is called, or, with ``optimizer=``,
  after every ``optimizer.step()`` (``register_step_post_hook``); with ``optimizer=``,
  ``w.step()`` is refused (it would count each step twice). Everything between two
  advances (several forwards, gradient accumulation) belongs to the same step;
  ``w.pause()`` / ``w.resume()`` / ``with w.paused():`` keep passes out of it
  (validation).
* Nodes are the feature axis. Linear-like (B, D): samples B, nodes D. Conv / norm
  modules with a (B, C, ...) output and any other 4-D/5-D output: samples B*H*W,
  nodes C. Other 3-D outputs (B, T, D) or (T, B, D): samples B*T, nodes D (the
  last axis). Pass ``node_axis={"name pattern": axis}`` to override. A module whose
  output is a tuple, list or dict (HF ``ModelOutput``) is read through the first
  floating-point tensor in it; an output with none is not recorded, with one warning.
* Memory is bounded whatever the number of calls per step: a watched module keeps at
  most ``max_rows`` rows (default 4096) of its output per step, a uniform sample without
  replacement of the rows of all its calls (reservoir sampling across calls,
  :func:`~depthscope.watch.capture.reservoir_plan`), with seeds that are a function of
  (seed, step, layer, call), so the same run gives the same numbers. The bound on
  the extra memory is stated in docs/watch.md ("Memory").
* A module called several times in one step (weight sharing, a block reused twice
  in a forward) contributes every call: its rows are samples of the same nodes. Its
  output gradient norm covers every call; its parameter gradients are, as autograd
  makes them, the sum over calls. ``calls`` in the record says how many there were.

Which modules (default): every linear-like module (a 2-D weight applied to the feature
axis whatever its class: ``nn.Linear``, transformers' ``Conv1D``; not embeddings),
``nn.Conv1d/2d/3d``, ``nn.MultiheadAttention``, transformer encoder/decoder layers, and
every repeated block (a module with submodules in an ``nn.Sequential``/``nn.ModuleList``
beside another of its class: GPT-2's ``transformer.h.3``, a ResNet's ``layer2.1``), whose
outputs are the residual stream. ``attach()`` logs one line (``depthscope.watch`` logger,
INFO) saying what is watched; ``w.description`` holds it.

Quantities recorded per watched module and scheduled step (missing ones are NaN):

``vni``                 R_sq = tr(C^2)/tr(C)^2 of the node covariance (thesis eq. 3.5), via vni_moments' algorithm (watch.batched)
``vni_debiased``        :func:`depthscope.metrics.vni.debias_vni` of it: the finite-sample excess removed
``effective_nodes``     N (1 - VNI) + 1, the thesis' effective number of nodes
``participation_ratio`` 1 / VNI (not delve's saturation, which counts the eigendirections explaining 99%)
``nodes``, ``samples``  N and the number of rows the numbers were computed on
``act_mean``            mean of all sampled output values (drift: watch it over steps)
``act_var``             mean over nodes of each node's variance (eq. 4.2's shared variance)
``grad_norm``           ||dL/dtheta||_2 over the module's parameters (recursively), from ``p.grad``
``grad_rms``            grad_norm / sqrt(number of those parameters): comparable across layer sizes
``out_grad_rms``        root mean square of dL/d(output), the backward signal reaching the module
``sigma_w2``            fan_in Var[W] of a linear-like or conv weight (section 4.1); fan_in of a 2-D weight
                        stored (in, out) (Conv1D) is its first axis
``effective_rank``, ``rankme``, ``stable_rank``, ``dormant_fraction``, ``token_collapse``
                        with ``collapse=True`` only (:mod:`depthscope.metrics.collapse` on the same rows;
                        token collapse of (B, T, D) outputs, up to ``token_sequences`` sequences a call)
``sigma_w2_mu1``        sigma_w2 * mean(phi'(h)^2), only where the elementwise activation phi that
                        follows the module is known: the next module in an ``nn.Sequential`` when it
                        is an elementwise activation module (h: the module's output), the first one
                        after normalisation / dropout / identity modules only (conv -> bn -> relu; h: the
                        activation's own input, read by a pre-hook), the same after attributes of a
                        custom block (self.conv1, self.bn1, self.act1) when the activation's input is
                        the tensor that chain produced in that call, or ``activations={"name": phi}``.

Gradient quantities are recorded only when a backward pass reached the module's
output during the step; under ``torch.no_grad`` they are NaN while the forward
quantities are recorded as usual.

Alerts (:mod:`depthscope.watch.alerts`): the first time a module's VNI reaches
``vni_threshold`` (default 0.9); its gradient is non-finite, exactly zero, vanishing
(below median/``grad_ratio``, the median over the modules with a finite positive
gradient) or exploding (above median*``grad_ratio`` and grown ``grad_ratio``-fold since
its previous record): one warning naming the module and the step is logged on the
``depthscope.watch`` logger and appended to ``w.alerts``; each (module, kind) fires once.
"""
from __future__ import annotations

from .alerts import KINDS, Alert
from .capture import _Capture, as_rows, node_axis_of, reservoir_plan, sample_output_rows, sample_rows, _seed_for
from .core import Watch, is_compiled, logger, watch
from .quantities import COLLAPSE, QUANTITIES, derivative_of, extra_memory_bound
from .report import watch_report
from .select import DEFAULT_TYPES, ELEMENTWISE_ACTIVATIONS, ModuleSelector, blocks_of, is_linear_like
from .writers import EXPERIMENT, CSVWriter, StoreWriter, TensorBoardWriter, check_run_name

__all__ = [
    "COLLAPSE", "extra_memory_bound", "Alert", "CSVWriter", "DEFAULT_TYPES", "ELEMENTWISE_ACTIVATIONS", "EXPERIMENT", "KINDS", "ModuleSelector",
    "QUANTITIES", "StoreWriter", "TensorBoardWriter", "Watch", "as_rows", "blocks_of", "check_run_name",
    "derivative_of", "is_compiled", "is_linear_like", "logger", "node_axis_of", "reservoir_plan",
    "sample_output_rows", "sample_rows", "watch", "watch_report",
]
