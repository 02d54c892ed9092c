"""K feed-forward nets of one shape with stacked weights: batched forward, hand-written backprop, optimizers.

Layout (K members, L hidden layers of width N, D inputs, C classes)::

    W1 (K, N, D)      layer 1           Wh (L-1, K, N, N)  layers 2..L
    b  (L, K, N)      hidden biases     Wr (K, C, N), br (K, C)  readout

Every layer is one ``torch.baddbmm`` over the K members, the backward pass is
written out by hand (the MLP's backprop is four lines per layer; the activation's
backward uses the same aten kernels autograd uses, in place, or autograd itself for
activations without a known kernel), and each optimizer is a few in-place ops with a
per-member learning rate. :meth:`Ensemble.train_step` applies each layer's update as
soon as its gradient exists (in cache, no stored gradients); :meth:`Ensemble.step` +
:meth:`Ensemble.update` is its plain twin. Members can be removed
(:meth:`Ensemble.keep`) when they finish, so finished runs cost nothing.

The reference for all of this is one ``nn.Module`` trained by autograd and
``torch.optim`` (:func:`depthscope.train.train_reference`); tests compare them.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .activations import Activation, derivative, get_activation
from .nets import NetSpec, layer_params
from .metrics.vni import vni as vni_metric

MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8

_aten = torch.ops.aten


def tanh_(t: torch.Tensor) -> torch.Tensor:
    """t <- tanh(t) in place; on CPU float32 through numpy's SIMD tanh.

    torch's CPU tanh costs as much per layer as the layer's matmul at width 128 (about
    9 cycles per element here); numpy's vectorised float32 tanh is 3-5x faster and
    within 2 ulp of it (tested against torch.tanh), so the engine's results stay equal
    to the reference at float32 rounding level. Other devices and layouts use torch.
    """
    if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() and not t.requires_grad:
        a = t.numpy()
        np.tanh(a, out=a)
        return t
    return t.tanh_()


Kernel = Callable[..., torch.Tensor]


def _act_kernels(act: Activation) -> tuple[Kernel, Kernel] | None:
    """In-place (forward_, backward_) kernels of a built-in activation; None for any other.

    forward_(h) overwrites the pre-activations h with a = phi(h); backward_(da, a)
    overwrites da with dh = da * phi'(h), computed from the output a with the aten
    backward kernels autograd uses. Keyed on the registered function itself, so an
    activation re-registered under a built-in name falls back to autograd.
    """
    fn = act.fn
    if fn is torch.tanh:
        return tanh_, lambda da, a: _aten.tanh_backward.grad_input(da, a, grad_input=da)
    if fn is torch.relu:
        return torch.relu_, lambda da, a: _aten.threshold_backward.grad_input(da, a, 0, grad_input=da)
    if fn is torch.sigmoid:
        return torch.sigmoid_, lambda da, a: _aten.sigmoid_backward.grad_input(da, a, grad_input=da)
    if fn is F.hardtanh:
        return F.hardtanh_, lambda da, a: _aten.hardtanh_backward.grad_input(da, a, -1.0, 1.0, grad_input=da)
    if fn is _LINEAR:
        return (lambda h: h), (lambda da, a: da)
    return None


_LINEAR = get_activation("linear").fn


def batched_vni(x: torch.Tensor) -> torch.Tensor:
    """R_sq = ||X^T X||_F^2 / tr(X^T X)^2 (eq. 3.5) of each member's centred x[k] (K, S, N), float64.

    The batched twin of :func:`depthscope.metrics.vni`, which it calls on the whole (K, S, N)
    stack (one batched matmul for the K Gram matrices through the smaller of N x N and S x S),
    so degenerate members (constant, inf/NaN, huge or tiny values) read as :func:`vni` reads them.
    """
    if x.ndim != 3:
        raise ValueError(f"expected (members, samples, nodes), got shape {tuple(x.shape)}")
    return vni_metric(x)


class Ensemble:
    """K nets of one :class:`NetSpec` shape (feed-forward, with readout), trained together.

    ``members`` is a list of (NetSpec, seed); all specs must share depth, width,
    activation, in/out features (they may differ in init and sigma_w2).

    Two ways to train: :meth:`train_step` (forward, backward and the optimizer update of
    each layer as soon as its gradient exists, while it is still in cache: the fast
    path the trainer uses) and :meth:`step` then :meth:`update` (all gradients into
    ``grads`` first, then one update over the stacked tensors: the plain twin the tests
    compare it with).
    """

    def __init__(self, members: list[tuple[NetSpec, int]], optimizer: str, lrs: list[float],
                 device: str | torch.device = "cpu"):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        s0 = members[0][0]
        for s, _ in members:
            if (s.depth, s.width, s.activation, s.n_in, s.out_features, s.arch) != \
                    (s0.depth, s0.width, s0.activation, s0.n_in, s0.out_features, s0.arch):
                raise ValueError(f"ensemble members must share one shape; got {s0} and {s}")
        if s0.arch != "feedforward" or s0.out_features is None or s0.depth < 1:
            raise ValueError("the ensemble trains feed-forward nets with a readout and depth >= 1")
        if optimizer not in ("sgd", "momentum", "adam", "rmsprop"):
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of: sgd, momentum, adam, rmsprop")
        self.device = torch.device(device)
        self.L, self.N, self.D, self.C = s0.depth, s0.width, s0.n_in, s0.out_features
        self.activation = s0.activation
        self.phi = get_activation(s0.activation)
        self._kernels = _act_kernels(self.phi)
        self.optimizer = optimizer
        self.K = len(members)
        L, dev = self.L, self.device

        def stack(layer: int, part: int) -> torch.Tensor:
            return torch.stack([layer_params(s, seed, layer)[part] for s, seed in members]).to(dev)

        self.W1 = stack(1, 0)
        self.Wh = (torch.stack([stack(l, 0) for l in range(2, L + 1)]) if L > 1
                   else torch.zeros(0, self.K, self.N, self.N, device=dev))
        self.b = torch.stack([stack(l, 1) for l in range(1, L + 1)])
        self.Wr = stack(-1, 0)
        self.br = stack(-1, 1)
        self.kdim = [0, 1, 1, 0, 0]  # member dimension of each tensor in self.params
        self._grads: list[torch.Tensor] | None = None  # allocated by the first step()
        self.lr = torch.tensor(lrs, dtype=torch.float32, device=dev)
        nstate = {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1}[optimizer]
        self.state = [[torch.zeros_like(p) for p in self.params] for _ in range(nstate)]
        self.t = 0  # optimizer steps taken (Adam's bias correction)
        self._bufs: dict[int, dict[str, list]] = {}  # per batch size: activations, dL/da
        self._scratch: dict | None = None  # train_step's gradients
        self._v: dict[str, list] | None = None  # per-layer views (see _views)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def params(self) -> list[torch.Tensor]:
        return [self.W1, self.Wh, self.b, self.Wr, self.br]

    def _set_params(self, ps: list[torch.Tensor]) -> None:
        self.W1, self.Wh, self.b, self.Wr, self.br = ps

    @property
    def grads(self) -> list[torch.Tensor]:
        """Gradients of :attr:`params` from the last :meth:`step` (:meth:`train_step` does not fill them)."""
        if self._grads is None:
            self._grads = [torch.zeros_like(p) for p in self.params]
        return self._grads

    def weight(self, layer: int) -> torch.Tensor:
        """(K, N, fan_in) weights of hidden layer ``layer`` (1-based)."""
        return self.W1 if layer == 1 else self.Wh[layer - 2]

    def keep(self, idx: list[int]) -> None:
        """Keep only the members at positions ``idx`` (compaction)."""
        ix = torch.tensor(idx, dtype=torch.long, device=self.device)
        sel = lambda ts: [t.index_select(d, ix) for t, d in zip(ts, self.kdim)]
        self._set_params(sel(self.params))
        if self._grads is not None:
            self._grads = sel(self._grads)
        self.state = [sel(s) for s in self.state]
        self.lr = self.lr.index_select(0, ix)
        self.K = len(idx)
        self._bufs, self._scratch, self._v = {}, None, None

    def _views(self) -> dict[str, list]:
        """Per-layer views of the parameters, optimizer state and lr, made once (until
        :meth:`keep` replaces the tensors): indexing a tensor costs microseconds per
        call, a Python list nanoseconds, and a step touches every layer a dozen times."""
        if self._v is None:
            K, L = self.K, self.L
            W = [self.W1] + [self.Wh[j] for j in range(L - 1)]
            self._v = {
                "W": W, "Wt": [w.transpose(1, 2) for w in W],
                "bias": [self.b[l].unsqueeze(1) for l in range(L)],
                # optimizer state of W_l (layer 1: tensor 0, layers 2..L: slices of tensor 1)
                "sW": [[s[0] for s in self.state]] + [[s[1][j] for s in self.state] for j in range(L - 1)],
                "lr3": self.lr.view(K, 1, 1), "lr2": self.lr.view(K, 1),
            }
        return self._v

    def _buffers(self, B: int) -> dict[str, list]:
        """Preallocated per batch size B (a full and a last partial minibatch at most):
        activations a_1..a_L (L, K, B, N), pre-activations when the activation has no
        in-place kernel, two (K, B, N) buffers for dL/da, gradient scratch, as lists of views."""
        buf = self._bufs.get(B)
        if buf is None:
            if len(self._bufs) >= 2:
                self._bufs = {}
            K, L, N, dev = self.K, self.L, self.N, self.device
            A, DA = torch.empty(L, K, B, N, device=dev), torch.empty(2, K, B, N, device=dev)
            buf = {"A": list(A.unbind(0)), "DA": list(DA.unbind(0)),
                   "H": list(torch.empty(L, K, B, N, device=dev).unbind(0)) if self._kernels is None else None}
            self._bufs[B] = buf
        return buf

    def _scratch_grads(self) -> dict:
        """train_step's gradients: W1, b (and its rows), Wr, br, and one (K, N, N) for layers 2..L."""
        if self._scratch is None:
            gW1, gb, gWr, gbr = (torch.empty_like(p) for p in (self.W1, self.b, self.Wr, self.br))
            gh = torch.empty(self.K, self.N, self.N, device=self.device)
            self._scratch = {"gW": [gW1] + [gh] * (self.L - 1), "gb": gb, "gb_rows": list(gb.unbind(0)),
                             "gWr": gWr, "gbr": gbr}
        return self._scratch

    # -- forward / backward -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep_acts: bool = False):
        """Logits (K, B, C) of a batch x (K, B, D); with ``keep_acts`` also the list [x, a_1..a_L] (and h's)."""
        acts, hs = [x], []
        a = x
        for l in range(1, self.L + 1):
            h = torch.baddbmm(self.b[l - 1].unsqueeze(1), a, self.weight(l).transpose(1, 2))
            a = self.phi(h)
            if keep_acts:
                acts.append(a)
                if self._kernels is None:
                    hs.append(h)
        logits = torch.baddbmm(self.br.unsqueeze(1), a, self.Wr.transpose(1, 2))
        return (logits, acts, hs) if keep_acts else logits

    def _forward_into(self, x: torch.Tensor, buf: dict[str, list]) -> torch.Tensor:
        """h_l = a_{l-1} W_l^T + b_l (one baddbmm into the buffer), a_l = phi(h_l) in place; logits."""
        v, A, H = self._views(), buf["A"], buf["H"]
        a = x
        if H is None:
            fwd = self._kernels[0]
            for bias, wt, h in zip(v["bias"], v["Wt"], A):
                a = fwd(torch.baddbmm(bias, a, wt, out=h))
        else:
            for bias, wt, h, out in zip(v["bias"], v["Wt"], H, A):
                a = out.copy_(self.phi(torch.baddbmm(bias, a, wt, out=h)))
        return torch.baddbmm(self.br.unsqueeze(1), a, self.Wr.transpose(1, 2))

    @staticmethod
    def _loss(logits: torch.Tensor, y: torch.Tensor):
        """Mean cross-entropy (K,), correct count (K,), dloss/dlogits = (softmax - onehot) / B."""
        B = logits.shape[1]
        logp = torch.log_softmax(logits, dim=-1)
        yi = y.unsqueeze(-1)
        loss = -logp.gather(-1, yi).squeeze(-1).mean(1)
        correct = (logits.argmax(-1) == y).sum(1)
        g = logp.exp_()
        g.scatter_add_(-1, yi, torch.full_like(yi, -1, dtype=g.dtype))
        g.div_(B)
        return loss, correct, g

    def _backward(self, x: torch.Tensor, g: torch.Tensor, buf: dict[str, list],
                  fused: bool, grad_norms: bool) -> torch.Tensor | None:
        """Backprop from dloss/dlogits g; per layer l = L..1 (a_0 = x, dh_l = da_l * phi'(h_l)):

            dW_l = dh_l^T a_{l-1},  db_l = sum_b dh_l,  da_{l-1} = dh_l W_l  (before W_l changes).

        ``fused``: each layer's weight gradient goes to a cache-sized scratch and its
        optimizer update is applied at once (the update rule treats every element on its
        own); the biases are updated together at the end. Else all gradients land in
        :attr:`grads` for :meth:`update`. Returns ||dW_l||_F (K, L) or None.
        """
        L, v, DA = self.L, self._views(), buf["DA"]
        acts = [x] + buf["A"]  # a_0 .. a_L
        if fused:
            self._tick()
            s = self._scratch_grads()
            gWs, gb, gb_rows, gWr, gbr = s["gW"], s["gb"], s["gb_rows"], s["gWr"], s["gbr"]
        else:
            gW1, gWh, gb, gWr, gbr = self.grads
            gWs, gb_rows = [gW1] + list(gWh.unbind(0)), list(gb.unbind(0))
        gnT = torch.empty(L, self.K, device=self.device) if grad_norms else None
        gn_rows = gnT.unbind(0) if grad_norms else None
        cur = 0  # dL/da_l lives in DA[cur]; dh_l overwrites it, da_{l-1} goes to the other one
        da = DA[cur]
        torch.bmm(g, self.Wr, out=da)
        torch.bmm(g.transpose(1, 2), acts[L], out=gWr)
        torch.sum(g, 1, out=gbr)
        if fused:
            self._apply(self.Wr, gWr, v["lr3"], [s[3] for s in self.state])
            self._apply(self.br, gbr, v["lr2"], [s[4] for s in self.state])
        back = self._kernels[1] if self._kernels is not None else None
        Ws, sWs, lr3 = v["W"], v["sW"], v["lr3"]
        for l in range(L, 0, -1):
            if back is not None:
                dh = back(da, acts[l])
            else:
                h = buf["H"][l - 1].detach().requires_grad_(True)
                with torch.enable_grad():
                    (dh,) = torch.autograd.grad(self.phi(h), h, da)
            W, gW = Ws[l - 1], gWs[l - 1]
            if l > 1:
                cur = 1 - cur
                da = torch.bmm(dh, W, out=DA[cur])
            torch.bmm(dh.transpose(1, 2), acts[l - 1], out=gW)
            torch.sum(dh, 1, out=gb_rows[l - 1])
            if grad_norms:
                torch.linalg.vector_norm(gW, dim=(1, 2), out=gn_rows[l - 1])
            if fused:
                self._apply(W, gW, lr3, sWs[l - 1])
        if fused:
            self._apply(self.b, gb, v["lr2"], [s[2] for s in self.state])
        return gnT.T.clone() if grad_norms else None

    @torch.no_grad()
    def train_step(self, x: torch.Tensor, y: torch.Tensor, grad_norms: bool = True):
        """One training step: forward, and unless a loss is non-finite, backward + update.

        Returns (loss (K,), correct (K,), grad_norms (K, L) or None, updated). When any
        member's loss is not finite nothing is updated (``updated`` False, norms None),
        so the caller can retire the diverged members and repeat the step for the rest.
        Equal to :meth:`step` followed by :meth:`update` (tested).
        """
        buf = self._buffers(x.shape[1])
        loss, correct, g = self._loss(self._forward_into(x, buf), y)
        if not bool(torch.isfinite(loss).all()):
            return loss, correct, None, False
        return loss, correct, self._backward(x, g, buf, True, grad_norms), True

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, grad_norms: bool = True):
        """Forward, backward, no update. Returns (loss (K,), correct (K,), grad_norms (K, L) or None).

        Gradients land in ``self.grads``; call :meth:`update` to apply them.
        """
        buf = self._buffers(x.shape[1])
        loss, correct, g = self._loss(self._forward_into(x, buf), y)
        return loss, correct, self._backward(x, g, buf, False, grad_norms)

    def _tick(self) -> None:
        self.t += 1
        b1, b2 = ADAM_BETAS
        self._bc1 = 1 - b1**self.t
        self._bc2_sqrt = math.sqrt(1 - b2**self.t)

    def _apply(self, p: torch.Tensor, g: torch.Tensor, lr: torch.Tensor, st: list[torch.Tensor]) -> None:
        """Update p (any slice of a parameter) from its gradient g, lr broadcast over members, state st.

        torch.optim's rules: sgd p -= lr g; momentum buf = 0.9 buf + g, p -= lr buf;
        adam m = lerp(m, g, 0.1), v = 0.999 v + 0.001 g^2, p -= lr/bc1 m / (sqrt(v)/sqrt(bc2) + eps);
        rmsprop s = 0.99 s + 0.01 g^2, p -= lr g / (sqrt(s) + eps).
        """
        if self.optimizer == "sgd":
            p.addcmul_(g, lr, value=-1.0)
        elif self.optimizer == "momentum":
            buf = st[0]
            buf.mul_(MOMENTUM).add_(g)
            p.addcmul_(buf, lr, value=-1.0)
        elif self.optimizer == "adam":
            m, v = st
            b1, b2 = ADAM_BETAS
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().div_(self._bc2_sqrt).add_(ADAM_EPS)
            p.addcdiv_(m * (lr / self._bc1), denom, value=-1.0)
        else:  # rmsprop
            sq = st[0]
            sq.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
            denom = sq.sqrt().add_(RMSPROP_EPS)
            p.addcdiv_(g * lr, denom, value=-1.0)

    @torch.no_grad()
    def update(self) -> None:
        """One optimizer step with torch.optim's rule for ``self.optimizer`` and per-member lr."""
        self._tick()
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            shape = [1] * p.ndim
            shape[self.kdim[i]] = self.K
            self._apply(p, g, self.lr.view(shape), [s[i] for s in self.state])

    # -- probe metrics ------------------------------------------------------------------------
    @torch.no_grad()
    def probe_metrics(self, probe: torch.Tensor, sigma_mu1: bool = True):
        """Per member and layer on the probe batch (P, D): (vni (K, L), sigma_w2_mu1 (K, L) or None).

        vni: eq. 3.5 of x_l; sigma_w2_mu1: fan_in Var[W_l] * mean phi'(h_l)^2, in float64.
        """
        a = probe.to(self.device, torch.float32).unsqueeze(0).expand(self.K, -1, -1)
        v = torch.empty(self.K, self.L, dtype=torch.float64, device=self.device)
        smu = torch.empty_like(v) if sigma_mu1 else None
        for l in range(1, self.L + 1):
            w = self.weight(l)
            h = torch.baddbmm(self.b[l - 1].unsqueeze(1), a, w.transpose(1, 2))
            a = self.phi(h)
            v[:, l - 1] = batched_vni(a)
            if sigma_mu1:
                wv = w.to(torch.float64).flatten(1).var(dim=1, unbiased=False) * w.shape[2]
                mu1 = derivative(self.activation, h).to(torch.float64).pow(2).mean((1, 2))
                smu[:, l - 1] = wv * mu1
        return v, smu
