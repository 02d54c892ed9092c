"""K feed-forward nets of one shape with stacked weights: batched forward, hand-written backprop, optimizers.

Layout (K members, L hidden layers of width N, D inputs, C classes)::

    W1 (K, N, D)      layer 1           Wh (L-1, K, N, N)  layers 2..L
    b  (L, K, N)      hidden biases     Wr (K, C, N), br (K, C)  readout

Every layer is one ``torch.baddbmm`` over the K members, the backward pass is
written out by hand (the MLP's backprop is four lines per layer; the activation's
backward uses the same aten kernels autograd uses, or autograd itself for
activations without a known kernel), and each optimizer is a few in-place ops over
the five stacked tensors with a per-member learning rate. Members can be removed
(:meth:`Ensemble.keep`) when they finish, so finished runs cost nothing.

The reference for all of this is one ``nn.Module`` trained by autograd and
``torch.optim`` (:func:`depthscope.train.train_reference`); tests compare them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .activations import derivative, get_activation
from .nets import NetSpec, layer_params

MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8

_aten = torch.ops.aten


def _act_backward(name: str):
    """(da, h, a) -> dh for activations with a fused aten backward kernel; None otherwise."""
    if name == "tanh":
        return lambda da, h, a: _aten.tanh_backward(da, a)
    if name == "relu":
        return lambda da, h, a: _aten.threshold_backward(da, a, 0)
    if name == "sigmoid":
        return lambda da, h, a: _aten.sigmoid_backward(da, a)
    if name == "hard_tanh":
        return lambda da, h, a: _aten.hardtanh_backward(da, a, -1.0, 1.0)
    if name == "linear":
        return lambda da, h, a: da
    return None


def batched_vni(x: torch.Tensor) -> torch.Tensor:
    """R_sq = ||X^T X||_F^2 / tr(X^T X)^2 (eq. 3.5) of each member's centred x[k] (K, S, N), float64.

    The batched twin of :func:`depthscope.metrics.vni`: one bmm for the K Gram matrices
    (through the smaller of N x N and S x S).
    """
    if x.ndim != 3 or x.shape[1] < 2:
        raise ValueError(f"expected (members, samples >= 2, nodes), got shape {tuple(x.shape)}")
    xc = x.to(torch.float64)
    xc = xc - xc.mean(dim=1, keepdim=True)
    gram = torch.bmm(xc.transpose(1, 2), xc) if xc.shape[2] <= xc.shape[1] else torch.bmm(xc, xc.transpose(1, 2))
    tr = torch.diagonal(gram, dim1=1, dim2=2).sum(1)
    return (gram * gram).sum((1, 2)) / tr**2


class Ensemble:
    """K nets of one :class:`NetSpec` shape (feed-forward, with readout), trained together.

    ``members`` is a list of (NetSpec, seed); all specs must share depth, width,
    activation, in/out features (they may differ in init and sigma_w2).
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
        self._back = _act_backward(s0.activation)
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
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.lr = torch.tensor(lrs, dtype=torch.float32, device=dev)
        nstate = {"sgd": 0, "momentum": 1, "adam": 2, "rmsprop": 1}[optimizer]
        self.state = [[torch.zeros_like(p) for p in self.params] for _ in range(nstate)]
        self.t = 0  # optimizer steps taken (Adam's bias correction)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def params(self) -> list[torch.Tensor]:
        return [self.W1, self.Wh, self.b, self.Wr, self.br]

    def _set_params(self, ps: list[torch.Tensor]) -> None:
        self.W1, self.Wh, self.b, self.Wr, self.br = ps

    def weight(self, layer: int) -> torch.Tensor:
        """(K, N, fan_in) weights of hidden layer ``layer`` (1-based)."""
        return self.W1 if layer == 1 else self.Wh[layer - 2]

    def keep(self, idx: list[int]) -> None:
        """Keep only the members at positions ``idx`` (compaction)."""
        ix = torch.tensor(idx, dtype=torch.long, device=self.device)
        sel = lambda ts: [t.index_select(d, ix) for t, d in zip(ts, self.kdim)]
        self._set_params(sel(self.params))
        self.grads = sel(self.grads)
        self.state = [sel(s) for s in self.state]
        self.lr = self.lr.index_select(0, ix)
        self.K = len(idx)

    def _lr_view(self, i: int) -> torch.Tensor:
        shape = [1] * self.params[i].ndim
        shape[self.kdim[i]] = self.K
        return self.lr.view(shape)

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
                if self._back is None:
                    hs.append(h)
        logits = torch.baddbmm(self.br.unsqueeze(1), a, self.Wr.transpose(1, 2))
        return (logits, acts, hs) if keep_acts else logits

    def step(self, x: torch.Tensor, y: torch.Tensor, grad_norms: bool = True):
        """Forward, backward, no update. Returns (loss (K,), correct (K,), grad_norms (K, L) or None).

        Gradients land in ``self.grads``; call :meth:`update` to apply them.
        """
        B = x.shape[1]
        logits, acts, hs = self.forward(x, keep_acts=True)
        logp = torch.log_softmax(logits, dim=-1)
        yi = y.unsqueeze(-1)
        loss = -logp.gather(-1, yi).squeeze(-1).mean(1)
        correct = (logits.argmax(-1) == y).sum(1)
        g = logp.exp_()
        g.scatter_add_(-1, yi, torch.full_like(yi, -1, dtype=g.dtype))
        g.div_(B)
        gW1, gWh, gb, gWr, gbr = self.grads
        aL = acts[-1]
        torch.bmm(g.transpose(1, 2), aL, out=gWr)
        torch.sum(g, 1, out=gbr)
        da = torch.bmm(g, self.Wr)
        for l in range(self.L, 0, -1):
            a, a_prev = acts[l], acts[l - 1]
            if self._back is not None:
                dh = self._back(da, None, a)
            else:
                h = hs[l - 1].detach().requires_grad_(True)
                with torch.enable_grad():
                    (dh,) = torch.autograd.grad(self.phi(h), h, da)
            torch.bmm(dh.transpose(1, 2), a_prev, out=gW1 if l == 1 else gWh[l - 2])
            torch.sum(dh, 1, out=gb[l - 1])
            if l > 1:
                da = torch.bmm(dh, self.weight(l))
        gn = None
        if grad_norms:
            gn = torch.empty(self.K, self.L, device=self.device)
            gn[:, 0] = torch.linalg.vector_norm(gW1, dim=(1, 2))
            if self.L > 1:
                gn[:, 1:] = torch.linalg.vector_norm(gWh, dim=(2, 3)).T
        return loss, correct, gn

    @torch.no_grad()
    def update(self) -> None:
        """One optimizer step with torch.optim's rule for ``self.optimizer`` and per-member lr."""
        self.t += 1
        ps, gs = self.params, self.grads
        for i, (p, g) in enumerate(zip(ps, gs)):
            lr = self._lr_view(i)
            if self.optimizer == "sgd":
                p.addcmul_(g, lr, value=-1.0)
            elif self.optimizer == "momentum":
                buf = self.state[0][i]
                buf.mul_(MOMENTUM).add_(g)
                p.addcmul_(buf, lr, value=-1.0)
            elif self.optimizer == "adam":
                m, v = self.state[0][i], self.state[1][i]
                b1, b2 = ADAM_BETAS
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1 = 1 - b1**self.t
                bc2_sqrt = math.sqrt(1 - b2**self.t)
                denom = v.sqrt().div_(bc2_sqrt).add_(ADAM_EPS)
                p.addcdiv_(m * (lr / bc1), denom, value=-1.0)
            else:  # rmsprop
                sq = self.state[0][i]
                sq.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
                denom = sq.sqrt().add_(RMSPROP_EPS)
                p.addcdiv_(g * lr, denom, value=-1.0)

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
