"""depthscope.watch on the shapes of real models (issue 13 §0): GPT-2's Conv1D and blocks, a ResNet with
zero-initialised last BN gammas (timm's zero_init_last), conv -> bn -> relu in an nn.Sequential."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from depthscope.metrics import vni
from depthscope.watch import Watch, watch
from depthscope.watch.alerts import grad_findings

STAT_RTOL = 1e-6


def close(a, b, rtol=1e-10, atol=0.0, what=""):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=rtol, atol=atol, err_msg=what)


# -- a faithful stand-in for transformers' GPT-2 (transformers.pytorch_utils.Conv1D and GPT2Block) ----
class Conv1D(nn.Module):
    """transformers' Conv1D: weight (in, out), applied as x @ W + b (copied from transformers 4.x/5.x)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.c_attn, self.c_proj = Conv1D(3 * d, d), Conv1D(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d)), None  # (output, present) as GPT2Attention


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.c_fc, self.c_proj, self.act = Conv1D(4 * d, d), Conv1D(d, 4 * d), nn.GELU()

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = nn.LayerNorm(d), Attention(d, heads), nn.LayerNorm(d), MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))[0]
        x = x + self.mlp(self.ln_2(x))
        return (x, None)  # GPT2Block returns a tuple whose second entry is None without a cache


class TinyGPT2(nn.Module):
    def __init__(self, vocab=50, d=16, layers=3, heads=2, ctx=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for blk in self.h:
            x = blk(x)[0]
        return self.lm_head(self.ln_f(x))


def test_gpt2_default_watches_every_conv1d_the_blocks_and_lm_head_and_says_so(caplog):
    torch.manual_seed(0)
    model = TinyGPT2()
    ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o))
             for n, m in model.named_modules() if n in ("h.1", "h.2.attn.c_attn")]
    caplog.set_level(logging.INFO, logger="depthscope.watch")
    with watch(model, every=1) as w:
        loss = nn.functional.cross_entropy(model(ids).reshape(-1, 50), ids.reshape(-1))
        loss.backward()
    for h in hooks:
        h.remove()
    conv1d = [n for n, m in model.named_modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 12
    assert set(w.names) == set(conv1d) | {"h.0", "h.1", "h.2", "lm_head"}
    assert not any(n.startswith(("wte", "wpe", "ln")) for n in w.names)  # embeddings and norms are not linear
    line = [m for m in caplog.messages if "watching" in m]
    assert len(line) == 1 and "16 modules of TinyGPT2" in line[0] and "Conv1D 12" in line[0] \
        and "3 block (Block 3)" in line[0], line
    assert w.description == line[0]

    recs = {r["name"]: r for r in w.records}
    # the block's output is a tuple (hidden, None): its first tensor, the residual stream (B*T, D)
    close(recs["h.1"]["vni"], vni(seen["h.1"][0].detach().reshape(48, 16)), rtol=STAT_RTOL)
    close(recs["h.2.attn.c_attn"]["vni"], vni(seen["h.2.attn.c_attn"].detach().reshape(48, 48)), rtol=STAT_RTOL)
    for name in conv1d:  # Conv1D stores (in, out): fan_in is its first axis
        wt = model.get_submodule(name).weight.detach().double()
        close(recs[name]["sigma_w2"], wt.shape[0] * wt.var(unbiased=False), rtol=1e-12, what=name)
        assert math.isfinite(recs[name]["grad_rms"]) and recs[name]["calls"] == 1
    wt = model.lm_head.weight.detach().double()
    close(recs["lm_head"]["sigma_w2"], 16 * wt.var(unbiased=False), rtol=1e-12)


def test_linear_like_is_a_2d_weight_on_the_feature_axis_not_an_embedding():
    from depthscope.watch import is_linear_like

    assert is_linear_like(nn.Linear(3, 4)) and is_linear_like(Conv1D(4, 3))
    assert not is_linear_like(nn.Embedding(5, 3)) and not is_linear_like(nn.LayerNorm(3))
    assert not is_linear_like(nn.Conv2d(2, 3, 3)) and not is_linear_like(nn.Bilinear(2, 2, 3))

    class OutIn(nn.Module):  # another library's linear layer: weight (out, in) as nn.Linear, its own class
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            return x @ self.weight.T

    m = OutIn()
    with watch(m, every=1) as w:
        m(torch.randn(7, 3))
    wt = m.weight.detach().double()
    assert w.names == [""] and w.records[0]["nodes"] == 5
    close(w.records[0]["sigma_w2"], 3 * wt.var(unbiased=False), rtol=1e-12)  # fan_in = 3, the input size


# -- timm's zero_init_last: the last BN gamma of every residual block starts at 0 --------------------
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # zero_init_last
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x):
        sc = x if self.downsample is None else self.downsample(x)
        x = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(x + sc)


class TinyResNet(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1))
        self.layer3 = nn.Sequential(BasicBlock(2 * width, 4 * width, 2), BasicBlock(4 * width, 4 * width, 1))
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.act1(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


def _train_resnet(steps=5, every=1, **kw):
    torch.manual_seed(0)
    model = TinyResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 12, 12, generator=g), torch.randint(0, 5, (16,), generator=g)
    with watch(model, every=every, optimizer=opt, **kw) as w:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return w


def test_zero_init_last_resnet_gives_zero_grad_alerts_and_no_false_exploding():
    w = _train_resnet()
    block_convs = {f"layer{i}.{j}.conv{c}" for i in (1, 2, 3) for j in (0, 1) for c in (1, 2)}
    zero = {a.name for a in w.alerts if a.kind == "zero_grad"}
    assert zero == block_convs and all(a.step == 0 for a in w.alerts if a.kind == "zero_grad")
    assert not [a for a in w.alerts if a.kind == "exploding_grad"], [a.message for a in w.alerts]
    # the trap is real: by the cross-section alone (the rule before), the healthy stem, downsampling
    # convs and head are >100x the median of the still-tiny block convs at a later step
    steps = sorted({r["step"] for r in w.records})
    measured = {(r["layer"], "grad_rms") for r in w.records}
    naive = [f for s in steps[1:] for f in grad_findings([r for r in w.records if r["step"] == s], 100.0, {},
                                                         measured) if f[1] == "exploding_grad"]
    assert len(naive) >= 3, naive


class ResNet18(nn.Module):
    """timm's resnet18 layout (torchvision-free, as the project's tests must be): 7x7/2 stem conv -> bn1 -> act1
    (attributes, not an nn.Sequential) -> 3x3/2 max-pool, stages of [2, 2, 2, 2] BasicBlocks at 64..512
    channels with timm's zero_init_last, global pool, fc: 20 convs + fc, the 21 weight layers of §0's finding
    (105 records in 5 steps)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        chans, cin = (64, 128, 256, 512), 64
        for i, c in enumerate(chans, 1):
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, c, 1 if i == 1 else 2), BasicBlock(c, c, 1)))
            cin = c
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def test_resnet18_zero_init_last_no_false_exploding_and_sigma_w2_mu1_through_bn():
    """§0 on resnet18 itself: timm's zero_init_last gave 5 false exploding_grad alerts at step 2 and NaN
    sigma_w2_mu1 on all 105 records. Here: zero_grad alerts for exactly the 16 block convs (step 0), no
    exploding_grad, and sigma_w2_mu1 finite wherever a ReLU follows the conv's BatchNorm (the stem and every
    block's conv1), NaN only where an addition comes between (conv2, downsampling convs)."""
    torch.manual_seed(0)
    model = ResNet18()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    seen = []  # the stem ReLU's input at each step: its share of positives is mu_1 of relu there
    hook = model.act1.register_forward_pre_hook(lambda m, a: seen.append((a[0].detach() > 0).double().mean()))
    with watch(model, every=1, optimizer=opt) as w:
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    hook.remove()
    stem = sorted((r for r in w.records if r["name"] == "conv1"), key=lambda r: r["step"])
    close([r["sigma_w2_mu1"] for r in stem], [r["sigma_w2"] * f for r, f in zip(stem, seen)], rtol=1e-12)
    weights = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert len(weights) == 21 and weights <= set(w.names)
    weight_recs = [r for r in w.records if r["name"] in weights]
    assert len(weight_recs) == 105
    block_convs = {f"layer{i}.{j}.conv{c}" for i in (1, 2, 3, 4) for j in (0, 1) for c in (1, 2)}
    zero = {a.name for a in w.alerts if a.kind == "zero_grad"}
    assert zero == block_convs and all(a.step == 0 for a in w.alerts if a.kind == "zero_grad")
    assert not [a for a in w.alerts if a.kind == "exploding_grad"], [a.message for a in w.alerts]
    relu_after_bn = {"conv1"} | {f"layer{i}.{j}.conv1" for i in (1, 2, 3, 4) for j in (0, 1)}
    for r in weight_recs:
        finite = math.isfinite(r["sigma_w2_mu1"])
        assert finite == (r["name"] in relu_after_bn), (r["name"], r["step"], r["sigma_w2_mu1"])
        if finite:  # mu_1 of relu is the share of positive inputs: strictly inside (0, 1) times sigma_w2
            assert 0 < r["sigma_w2_mu1"] < r["sigma_w2"]


def test_exploding_gradient_that_grows_is_still_caught():
    """A layer whose gradient grows 1e4-fold between records while the others stay: exploding_grad."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.c = (nn.Linear(8, 8) for _ in range(3))
            self.scale = 1.0

        def forward(self, x):  # a's gradient (only) is multiplied by a factor that jumps at step 2
            h = self.a(x)
            return self.c(self.b(h.detach() + (h - h.detach()) * self.scale))

    model = Net()
    with watch(model, every=1) as w:
        for step in range(4):
            model.zero_grad()
            model.scale = 1.0 if step < 2 else 1e4
            model(torch.randn(16, 8)).pow(2).mean().backward()
            w.step()
    ex = [(a.name, a.step) for a in w.alerts if a.kind == "exploding_grad"]
    assert ex == [("a", 2)], [a.message for a in w.alerts]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_the_alert(bad):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with watch(model, every=1) as w:
        model(torch.randn(8, 4)).sum().backward()
        model[2].weight.grad[0, 0] = bad  # e.g. an overflow in mixed precision
        w.step()
    assert [(a.name, a.kind) for a in w.alerts if a.kind.endswith("grad")] == [("2", "nonfinite_grad")]


def test_nan_output_gradient_raises_the_alert():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with watch(model, every=1, modules="0") as w:
        y = model(torch.randn(8, 4))
        (y * torch.tensor(float("nan"))).sum().backward()
        w.step()
    assert ("0", "nonfinite_grad") in [(a.name, a.kind) for a in w.alerts]


# -- sigma_w2 mu_1 through normalisation: conv -> bn -> relu --------------------------------------
@pytest.mark.parametrize("inplace", [False, True])
def test_sigma_w2_mu1_through_batchnorm_reads_the_activation_input(inplace):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=inplace),
                          nn.Conv2d(6, 6, 3, padding=1), nn.MaxPool2d(2), nn.Tanh(),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 3), nn.Dropout(0.0), nn.Tanh())
    with torch.no_grad():
        model[1].bias.fill_(0.3)  # relu' = 1 on a fraction of inputs that is not 1/2
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = {}
    hs = [model[i].register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach().clone()))
          for i in (2, 9)]
    with watch(model, every=1) as w:
        model(x)
    for h in hs:
        h.remove()
    recs = {r["name"]: r for r in w.records}
    frac = (seen[2] > 0).double().mean()  # mu_1 of relu at its own input, the BN output
    close(recs["0"]["sigma_w2_mu1"], recs["0"]["sigma_w2"] * frac, rtol=1e-12)
    mu1 = (1 - torch.tanh(seen[9].double()) ** 2).pow(2).mean()  # through Dropout
    close(recs["7"]["sigma_w2_mu1"], recs["7"]["sigma_w2"] * mu1, rtol=1e-6)
    assert math.isnan(recs["3"]["sigma_w2_mu1"])  # a MaxPool between conv and tanh: not known, NaN


def test_modules_returning_no_tensor_warn_once_and_tuples_with_none_are_read(caplog):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return {"note": "no tensor", "n": 3}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.odd, self.tup = Odd(), nn.Linear(4, 4)

        def forward(self, x):
            self.odd(x)
            return self.tup(x)

    caplog.set_level(logging.WARNING, logger="depthscope.watch")
    model = Net()
    with watch(model, every=1, modules=["odd", "tup"]) as w:
        for _ in range(3):
            model(torch.randn(6, 4))
            w.step()
    assert [m for m in caplog.messages if "'odd'" in m and "no floating-point tensor" in m].__len__() == 1
    assert {r["name"] for r in w.records} == {"tup"}

    class Dict(nn.Module):
        def forward(self, x):
            return {"past": None, "hidden": x * 2, "ids": torch.zeros(2, dtype=torch.long)}

    d = Dict()
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    with watch(d, every=1, modules=[Dict]) as w:
        d(x)
    close(w.records[0]["vni"], vni(x * 2), rtol=STAT_RTOL)
