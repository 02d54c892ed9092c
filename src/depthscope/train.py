"""Training engine: one net (:func:`train_reference`) or K nets at once (:func:`train_group`).

A run (:class:`RunSpec`) trains the thesis' feed-forward net (``NetSpec(depth, width,
activation, init, sigma_w2, in_features=784, out_features=10)``: layer 1 reads the
input, L hidden layers of width N, a linear readout, softmax cross-entropy, biases
initialised to zero and trained) with one of :data:`OPTIMIZERS` on minibatches.

Protocol (identical in both trainers, so their results agree):

* **Data order.** Epoch e visits the n training samples in the order
  :func:`epoch_order` ``(seed, e, n)``, in minibatches of ``batch_size`` (the last one
  may be smaller); each run's order depends only on its own seed.
* **Step.** One minibatch, mean cross-entropy loss, one optimizer update. ``steps``
  counts updates.
* **Success rule.** The epoch's training accuracy is the fraction of the epoch's
  samples classified correctly *by the forward pass of their own minibatch* (weights
  before that minibatch's update), as training logs report it. A run succeeds at the
  first epoch (1-based) whose accuracy is >= ``target_accuracy``; it then stops.
  Otherwise it fails after ``max_epochs`` (reason ``"accuracy below target ..."``).
* **Divergence.** A non-finite minibatch loss stops the run before that update; it is
  a failure with ``diverged=True`` and the step in ``reason``. Never an exception.
* **VNI trace.** VNI (:func:`depthscope.metrics.vni`, eq. 3.5) of every hidden layer's
  outputs x_l on the fixed probe batch, after 0, 1, ..., ``vni_dense_steps`` updates
  and at the end of every epoch; each entry is (step, layer, vni).
* **Early stop** (off unless the spec sets it: :class:`depthscope.earlystop.EarlyStop`). After an
  epoch that did not reach the target, a run whose output (last hidden) layer's VNI was >
  ``early_stop_vni`` after each of the last ``early_stop_epochs`` epochs stops as a failure before
  its budget ends (reason ``"early stop after epoch t of E: ..."``; ``early_stop_epoch`` = t).
* **At the end** (success, failure or divergence): ``vni_final`` per layer, and
  ``sigma_w2_mu1`` per layer = fan_in Var[W_l] * mean over probe samples and nodes of
  phi'(h_l)^2 (:func:`depthscope.metrics.gradients.sigma_w2_mu1_per_layer`).
* **Gradient norms.** ``grad_norms[l-1]`` = ||dL/dW_l||_F of the minibatch loss,
  averaged over the updates of the last epoch the run took (the partial epoch for a
  diverged run; NaN when that epoch had no update).

Optimizers follow ``torch.optim``'s update rules and defaults exactly: ``sgd``
(SGD), ``momentum`` (SGD, momentum 0.9, dampening 0), ``adam`` (betas (0.9, 0.999),
eps 1e-8), ``rmsprop`` (alpha 0.99, eps 1e-8, no momentum, not centred).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .earlystop import STOP_QUANTITY, EarlyStop, stop_reason
from .metrics import vni as vni_metric
from .metrics.gradients import sigma_w2_mu1_per_layer
from .ensemble import ADAM_BETAS, ADAM_EPS, MOMENTUM, RMSPROP_ALPHA, RMSPROP_EPS, Ensemble
from .nets import NetSpec, build_net
from .store import Value

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
#: why a run failed, see :func:`failure_kind`
FAILURE_KINDS = ("diverged", "collapsed", "dead", "slow", "stuck")
#: output-layer VNI above which a failed run counts as collapsed (the thesis' failed runs: min 0.9029)
COLLAPSE_VNI = 0.9
#: accuracy gain over the last quarter of the epochs above which a failed run was still learning
SLOW_GAIN = 0.02


def failure_kind(success: bool, diverged: bool, vni_output: float | None, accuracies: list[float],
                 collapse_vni: float = COLLAPSE_VNI, slow_gain: float = SLOW_GAIN) -> str | None:
    """Why a run failed (None if it succeeded), from what it recorded; the first rule that holds:

    * ``diverged``: a non-finite loss stopped it;
    * ``collapsed``: the output (last hidden) layer's final VNI R_sq (eq. 3.5, probe batch) > ``collapse_vni``:
      vanishing nodes, the thesis' failure mode (section 5.2);
    * ``dead``: that VNI is undefined because every output-layer node is constant on the probe
      (saturated tanh or dead ReLU units: tr C = 0);
    * ``slow``: still learning when the budget ended: a_E - a_{E-k} > ``slow_gain`` with a_e the
      training accuracy of epoch e, E the last epoch and k = max(1, E // 4);
    * ``stuck``: none of these (its accuracy stopped improving with the VNI at most ``collapse_vni``).
    """
    if success:
        return None
    if diverged:
        return "diverged"
    if vni_output is not None and math.isfinite(vni_output):
        if vni_output > collapse_vni:
            return "collapsed"
    else:
        return "dead"
    e = len(accuracies)
    k = max(1, e // 4)
    if e > k and accuracies[-1] - accuracies[-1 - k] > slow_gain:
        return "slow"
    return "stuck"


@dataclass(frozen=True)
class RunSpec:
    """One training run: the net, the optimizer and the protocol, without data."""

    depth: int
    width: int
    activation: str
    init: str
    optimizer: str
    lr: float
    seed: int
    batch_size: int = 100
    max_epochs: int = 100
    target_accuracy: float = 0.9
    sigma_w2: float | None = None  # None: the activation's critical value
    vni_dense_steps: int = 10  # VNI at steps 0..vni_dense_steps, then at every epoch's end
    classes: int = 10  # readout width
    early_stop_vni: float | None = None  # the early-stop policy (both None: off), see EarlyStop
    early_stop_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of: {', '.join(OPTIMIZERS)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name in ("batch_size", "max_epochs", "classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1 for training, got {self.depth}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not (0.0 <= self.target_accuracy <= 1.0):
            raise ValueError(f"target_accuracy must be in [0, 1], got {self.target_accuracy}")
        if self.vni_dense_steps < 0:
            raise ValueError(f"vni_dense_steps must be >= 0, got {self.vni_dense_steps}")
        self.net_spec(1)  # validates depth, width, activation, init, sigma_w2
        if (self.early_stop_vni is None) != (self.early_stop_epochs is None):
            raise ValueError("early_stop_vni and early_stop_epochs are set together (the policy) or not at all, "
                             f"got {self.early_stop_vni!r} and {self.early_stop_epochs!r}")
        if self.early_stop_vni is not None:
            EarlyStop(self.early_stop_vni, self.early_stop_epochs)  # raises ValueError for a bad policy

    @property
    def early_stop(self) -> EarlyStop | None:
        """The early-stop policy of this run (None: off, the thesis' protocol)."""
        if self.early_stop_vni is None:
            return None
        return EarlyStop(self.early_stop_vni, self.early_stop_epochs)

    def net_spec(self, in_features: int) -> NetSpec:
        """The network of this run for inputs with ``in_features`` features."""
        return NetSpec(self.depth, self.width, self.activation, self.init, self.sigma_w2,
                       in_features=in_features, out_features=self.classes)

    def group_key(self) -> tuple:
        """Runs with equal keys can be trained together in one ensemble by :func:`train_group`."""
        return (self.depth, self.width, self.activation, self.optimizer, self.batch_size,
                self.max_epochs, self.classes)

    def to_dict(self) -> dict:
        """The fields as a dict; the early-stop fields only when the policy is on, so a run without it has the
        dict (and the store key, :func:`depthscope.sweep.stored_spec`) it had before the policy existed."""
        d = asdict(self)
        if self.early_stop is None:
            del d["early_stop_vni"], d["early_stop_epochs"]
        return d


@dataclass
class RunResult:
    """Everything one run records (see the module docstring for definitions)."""

    spec: RunSpec
    success: bool
    epoch_of_success: int | None
    diverged: bool
    reason: str | None
    train_accuracy: list[float]  # per completed epoch
    train_loss: list[float]  # per completed epoch (mean minibatch loss, sample-weighted)
    vni_final: list[float]  # per hidden layer 1..L
    vni_trace: list[tuple[int, int, float]]  # (step, layer, vni)
    sigma_w2_mu1: list[float]  # per hidden layer 1..L
    grad_norms: list[float]  # per hidden layer, mean over the last epoch's updates
    steps: int
    seconds: float
    step_loss: list[float] | None = field(default=None, repr=False)  # per update, if asked for
    early_stop_epoch: int | None = None  # the epoch after which the early-stop policy stopped it

    @property
    def failure(self) -> str | None:
        """:func:`failure_kind` of this run (None if it succeeded)."""
        return failure_kind(self.success, self.diverged, self.vni_final[-1] if self.vni_final else None,
                            self.train_accuracy)

    def to_values(self) -> list[Value]:
        """Rows for :meth:`depthscope.store.Store.record`; non-finite numbers are left out."""
        out = [Value("success", float(self.success)), Value("diverged", float(self.diverged)),
               Value("steps", float(self.steps)), Value("seconds", float(self.seconds))]
        if self.epoch_of_success is not None:
            out.append(Value("epoch_of_success", float(self.epoch_of_success)))
        if self.early_stop_epoch is not None:
            out.append(Value(STOP_QUANTITY, float(self.early_stop_epoch)))
        out += [Value("train_accuracy", a, step=e) for e, a in enumerate(self.train_accuracy, 1)]
        out += [Value("train_loss", a, step=e) for e, a in enumerate(self.train_loss, 1)]
        out += [Value("vni", v, layer=l, step=s) for s, l, v in self.vni_trace]
        out += [Value("vni_final", v, layer=l) for l, v in enumerate(self.vni_final, 1)]
        out += [Value("sigma_w2_mu1", v, layer=l) for l, v in enumerate(self.sigma_w2_mu1, 1)]
        out += [Value("grad_norm", v, layer=l) for l, v in enumerate(self.grad_norms, 1)]
        return [Value(v.quantity, float(v.value), v.layer, v.step) for v in out if math.isfinite(v.value)]


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order in which run ``seed`` visits n samples in epoch ``epoch`` (a permutation, int64)."""
    s = int(np.random.SeedSequence([int(seed), 0x5EED, int(epoch)]).generate_state(2, np.uint64)[0] >> np.uint64(1))
    return torch.randperm(n, generator=torch.Generator().manual_seed(s))


def check_data(x: torch.Tensor, y: torch.Tensor, probe: torch.Tensor, classes: int = 10) -> None:
    """Raise ValueError unless x (n, d) float, y (n,) int64 in [0, classes), probe (P >= 2, d)."""
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float (n, features) tensor, got {x.dtype} shape {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype != torch.int64:
        raise ValueError(f"y must be an int64 ({x.shape[0]},) tensor, got {y.dtype} shape {tuple(y.shape)}")
    if probe.ndim != 2 or probe.shape[1] != x.shape[1] or probe.shape[0] < 2:
        raise ValueError(f"probe must be (P >= 2, {x.shape[1]}), got shape {tuple(probe.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got range [{int(y.min())}, {int(y.max())}]")


def torch_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The torch.optim optimizer that ``name`` stands for (the reference's definition)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=RMSPROP_ALPHA, eps=RMSPROP_EPS)
    raise ValueError(f"unknown optimizer {name!r}; expected one of: {', '.join(OPTIMIZERS)}")


def train_reference(spec: RunSpec, x: torch.Tensor, y: torch.Tensor, probe: torch.Tensor,
                    device: str | torch.device = "cpu", trace_steps: bool = False) -> RunResult:
    """Train one net with nn.Module + autograd + torch.optim: the slow, obviously-right twin."""
    check_data(x, y, probe, spec.classes)
    t0 = time.perf_counter()
    device = torch.device(device)
    net = build_net(spec.net_spec(x.shape[1]), spec.seed).to(device)
    opt = torch_optimizer(spec.optimizer, net.parameters(), spec.lr)
    x, y, probe = x.to(device, torch.float32), y.to(device), probe.to(device, torch.float32)
    n, B, L = x.shape[0], spec.batch_size, spec.depth

    trace: list[tuple[int, int, float]] = []

    @torch.no_grad()
    def record(step: int) -> list[float]:
        vs = [float(vni_metric(xl)) for _, _, xl in net.layers(probe)]
        trace.extend((step, l, v) for l, v in enumerate(vs, 1))
        return vs

    step, accs, losses, step_loss = 0, [], [], []
    success, epoch_of_success, diverged, reason = False, None, False, None
    policy, streak, stopped = spec.early_stop, 0, None
    gn = torch.full((L,), float("nan"), dtype=torch.float64)
    if spec.vni_dense_steps >= 0:
        record(0)
    for epoch in range(1, spec.max_epochs + 1):
        order = epoch_order(spec.seed, epoch, n).to(device)
        correct, loss_sum, gsum, nupd = 0, 0.0, torch.zeros(L, dtype=torch.float64), 0
        for start in range(0, n, B):
            idx = order[start:start + B]
            xb, yb = x[idx], y[idx]
            out = net(xb)
            loss = F.cross_entropy(out, yb)
            lv = float(loss.detach())
            if not math.isfinite(lv):
                diverged, reason = True, f"non-finite loss ({lv}) at step {step + 1} (epoch {epoch})"
                break
            opt.zero_grad(set_to_none=False)
            loss.backward()
            gsum += torch.tensor([float(lin.weight.grad.norm()) for lin in net.hidden], dtype=torch.float64)
            nupd += 1
            opt.step()
            step += 1
            if trace_steps:
                step_loss.append(lv)
            correct += int((out.argmax(1) == yb).sum())
            loss_sum += lv * len(idx)
            if step <= spec.vni_dense_steps:
                record(step)
        if nupd:
            gn = gsum / nupd
        if diverged:
            break
        accs.append(correct / n)
        losses.append(loss_sum / n)
        if step > spec.vni_dense_steps:
            record(step)
        if accs[-1] >= spec.target_accuracy:
            success, epoch_of_success = True, epoch
            break
        if policy is not None:
            # trace[-1]: the output layer (L) after this epoch's last update (recorded above, or by the dense
            # record of that same step)
            streak = streak + 1 if trace[-1][2] > policy.vni else 0
            if streak >= policy.epochs and epoch < spec.max_epochs:
                stopped = epoch
                reason = stop_reason(policy, epoch, spec.max_epochs, accs[-1], spec.target_accuracy)
                break
    if not success and not diverged and stopped is None:
        reason = f"training accuracy {accs[-1]:.4f} below target {spec.target_accuracy} after {spec.max_epochs} epochs"
    with torch.no_grad():
        vfinal = [float(vni_metric(xl)) for _, _, xl in net.layers(probe)]
        smu = [float(v) for v in sigma_w2_mu1_per_layer(net, probe)]
    return RunResult(spec, success, epoch_of_success, diverged, reason, accs, losses, vfinal, trace,
                     smu, [float(v) for v in gn], step, time.perf_counter() - t0,
                     step_loss if trace_steps else None, stopped)


def members_per_ensemble(spec: RunSpec, in_features: int, device: str | torch.device = "cpu",
                         memory_bytes: int | None = None) -> int:
    """How many runs of ``spec``'s shape :func:`train_group` stacks into one ensemble.

    Two limits. Memory: weights, gradients, optimizer state and one scratch copy per
    member, plus the stored activations of one minibatch, within ``memory_bytes``
    (default: 4 GiB on CPU, 60% of the free memory on a GPU). Speed, on CPU
    (:func:`cpu_stack_size`): stacking amortises the per-op cost of small matmuls over K
    members, but once one stacked layer's weights outgrow a core's cache every
    elementwise pass and the update go to memory, so K stops where K N^2 float32 weights
    fill :data:`CPU_STACK_BYTES`, and never below the number of intra-op threads (from
    width 363 up that bound is what remains: one member per thread, each member's
    matmuls already large enough to run near the matmul peak).
    """
    device = torch.device(device)
    L, N, B = spec.depth, spec.width, spec.batch_size
    nparam = N * in_features + (L - 1) * N * N + L * N + (N + 1) * spec.classes
    nstate = {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1}[spec.optimizer]
    per_member = 4 * (nparam * (3 + nstate) + B * (in_features + 2 * L * N))
    if memory_bytes is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_bytes = int(0.6 * free)
        else:
            memory_bytes = 4 << 30
    k = max(1, memory_bytes // per_member)
    if device.type == "cpu":
        k = min(k, cpu_stack_size(N))
    return int(k)


#: On CPU, a stack's hidden layer holds at most this many bytes of weights (members_per_ensemble).
CPU_STACK_BYTES = 1 << 20


def cpu_stack_size(width: int, threads: int | None = None) -> int:
    """K = max(threads, CPU_STACK_BYTES // (4 width^2)); threads defaults to torch's intra-op threads.

    The cache term gives 256 at width 32, 64 at 64, 16 at 128, 4 at 256, 1 from 363 up.
    The thread term: with T threads a stack of at least T lets the batched matmul give
    each thread whole members instead of splitting one member's small matmul across
    threads. Measured (benchmarks/bench_engine.py, docs/training.md), depth 50, width
    500: two threads on a quiet machine ran K = 1 / 2 / 4 at 1.18 / 1.29 / 1.45 x the
    plain loop (a second run: K = 2 / 4 / 8 at 1.63 / 1.42 / 1.40 x); one thread
    (CPU time) ran K = 1 / 4 / 16 at 113 / 120 / 128 ms per member-step.
    """
    t = torch.get_num_threads() if threads is None else threads
    return max(1, t, CPU_STACK_BYTES // (4 * width * width))


def train_group(specs: list[RunSpec], x: torch.Tensor, y: torch.Tensor, probe: torch.Tensor,
                device: str | torch.device = "cpu",
                on_result: Callable[[RunResult], None] | None = None,
                trace_steps: bool = False, max_members: int | None = None) -> list[RunResult]:
    """Train runs with equal :meth:`RunSpec.group_key` together; results in the order of ``specs``.

    Members are stacked into :class:`depthscope.ensemble.Ensemble` s of at most
    ``max_members`` (default :func:`members_per_ensemble`); each keeps its own init,
    seed, data order and learning rate, and leaves the stack (costing nothing more)
    when it succeeds, diverges or runs out of epochs. ``on_result(result)`` is called
    as each member finishes. ``seconds`` of a result is the wall time of its ensemble
    up to its finish, divided by the ensemble's initial size.
    """
    if not specs:
        return []
    keys = {s.group_key() for s in specs}
    if len(keys) != 1:
        raise ValueError(f"train_group needs runs with one group_key, got {len(keys)}: {sorted(keys)}")
    check_data(x, y, probe, specs[0].classes)
    k = max_members or members_per_ensemble(specs[0], x.shape[1], device)
    device = torch.device(device)
    x, y, probe = x.to(device, torch.float32), y.to(device), probe.to(device, torch.float32)
    results: list[RunResult | None] = [None] * len(specs)
    for c in range(0, len(specs), k):
        chunk = list(range(c, min(c + k, len(specs))))

        def done(i: int, r: RunResult, _chunk=chunk) -> None:
            results[_chunk[i]] = r
            if on_result is not None:
                on_result(r)

        _train_ensemble([specs[i] for i in chunk], x, y, probe, device, done, trace_steps)
    return results  # type: ignore[return-value]


def _train_ensemble(specs: list[RunSpec], x, y, probe, device, done, trace_steps: bool) -> None:
    t0 = time.perf_counter()
    s0 = specs[0]
    K0, L, B, E = len(specs), s0.depth, s0.batch_size, s0.max_epochs
    n = x.shape[0]
    ens = Ensemble([(s.net_spec(x.shape[1]), s.seed) for s in specs], s0.optimizer, [s.lr for s in specs], device)
    active = list(range(K0))  # spec index of each ensemble position
    accs = [[] for _ in specs]
    losses = [[] for _ in specs]
    traces: list[list[tuple[int, int, float]]] = [[] for _ in specs]
    step_loss = [[] for _ in specs]
    gnorm = [[float("nan")] * L for _ in specs]
    policies = [s.early_stop for s in specs]
    streak = [0] * len(specs)  # epochs in a row with the output VNI above the member's policy threshold

    def record(step: int) -> None:
        v = ens.probe_metrics(probe, sigma_mu1=False)[0].cpu()
        for k, i in enumerate(active):
            traces[i].extend((step, l, float(v[k, l - 1])) for l in range(1, L + 1))

    def finish(positions: list[int], step: int, epoch: int, success: bool, diverged: bool, reasons,
               stopped: bool = False) -> None:
        v, smu = ens.probe_metrics(probe)
        v, smu = v.cpu(), smu.cpu()
        el = (time.perf_counter() - t0) / K0
        for k, why in zip(positions, reasons):
            i = active[k]
            done(i, RunResult(specs[i], success, epoch if success else None, diverged, why, accs[i], losses[i],
                              v[k].tolist(), traces[i], smu[k].tolist(), gnorm[i], step, el,
                              step_loss[i] if trace_steps else None, epoch if stopped else None))

    def compact(keep: list[int]) -> None:
        nonlocal active
        ens.keep(keep)
        active = [active[k] for k in keep]

    step = 0
    record(0)
    for epoch in range(1, E + 1):
        if not active:
            break
        orders = torch.stack([epoch_order(specs[i].seed, epoch, n) for i in active]).to(device)
        correct = torch.zeros(len(active), dtype=torch.long, device=device)
        loss_sum = torch.zeros(len(active), dtype=torch.float64, device=device)
        gsum = torch.zeros(len(active), L, dtype=torch.float64, device=device)
        nupd = 0
        for start in range(0, n, B):
            idx = orders[:, start:start + B]
            xb, yb = x[idx], y[idx]
            loss, corr, gn, updated = ens.train_step(xb, yb)
            while not updated:  # a member's loss is non-finite: it leaves, the rest redo the step
                lc = loss.cpu()
                bad = ~torch.isfinite(lc)
                badk = bad.nonzero().flatten().tolist()
                for k in badk:
                    if nupd:
                        gnorm[active[k]] = (gsum[k] / nupd).tolist()
                finish(badk, step, epoch, False, True,
                       [f"non-finite loss ({float(lc[k])}) at step {step + 1} (epoch {epoch})" for k in badk])
                keep = (~bad).nonzero().flatten().tolist()
                kt = torch.tensor(keep, dtype=torch.long, device=device)
                compact(keep)
                if not active:
                    break
                orders, correct, loss_sum, gsum, xb, yb = (t.index_select(0, kt) for t in
                                                          (orders, correct, loss_sum, gsum, xb, yb))
                loss, corr, gn, updated = ens.train_step(xb, yb)
            if not active:
                break
            lc = loss.cpu()
            step += 1
            nupd += 1
            correct += corr
            loss_sum += loss.to(torch.float64) * idx.shape[1]
            gsum += gn
            if trace_steps:
                for k, i in enumerate(active):
                    step_loss[i].append(float(lc[k]))
            if step <= s0.vni_dense_steps:
                record(step)
        if not active:
            break
        acc = (correct.to(torch.float64) / n).cpu()
        ls = (loss_sum / n).cpu()
        g = (gsum / max(nupd, 1)).cpu()
        for k, i in enumerate(active):
            accs[i].append(float(acc[k]))
            losses[i].append(float(ls[k]))
            if nupd:
                gnorm[i] = g[k].tolist()
        if step > s0.vni_dense_steps:
            record(step)
        won = [k for k in range(len(active)) if float(acc[k]) >= specs[active[k]].target_accuracy]
        if won:
            finish(won, step, epoch, True, False, [None] * len(won))
        stop = []
        for k, i in enumerate(active):
            pol = policies[i]
            if pol is None or k in won:
                continue
            # the trace's last entry is the output layer after this epoch's last update (record(step) above,
            # or the dense record of that same step)
            streak[i] = streak[i] + 1 if traces[i][-1][2] > pol.vni else 0
            if streak[i] >= pol.epochs and epoch < E:
                stop.append(k)
        if stop:
            finish(stop, step, epoch, False, False,
                   [stop_reason(policies[active[k]], epoch, E, float(acc[k]), specs[active[k]].target_accuracy)
                    for k in stop], stopped=True)
        lost = []
        if epoch == E:
            lost = [k for k in range(len(active)) if k not in won and k not in stop]
            finish(lost, step, epoch, False, False,
                   [f"training accuracy {float(acc[k]):.4f} below target {specs[active[k]].target_accuracy} "
                    f"after {E} epochs" for k in lost])
        keep = [k for k in range(len(active)) if k not in won and k not in lost and k not in stop]
        if len(keep) < len(active):
            compact(keep)
