"""Where do vanishing nodes appear in a small GPT, with and without residual connections and LayerNorm?

A GPT-style character model (12 pre-LayerNorm blocks of causal self-attention + MLP, random
init N(0, 0.02) as GPT-2's) is trained for a few hundred steps on a text shipped in the
repository (its own docs/*.md, about 100 KB) in four variants: residual + LayerNorm (the
usual block), LayerNorm without residuals, residuals without LayerNorm, and neither.
``depthscope.watch`` records every block's output (the residual stream where there is one)
every ``--every`` steps into one store, a run per variant; the figure is drawn from the
store alone: the VNI of each block at the first and the last recorded step, per variant.

    python examples/gpt_vanishing_nodes.py --out runs/gpt_depth          # ~minutes on 2 CPU cores
    python examples/gpt_vanishing_nodes.py --steps 20 --layers 4 --out /tmp/g   # a quick look

Prints a table (final VNI per block and final training loss per variant) and writes
``gpt_vni_by_block.png``/``.svg`` in ``--out``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import depthscope
from depthscope.store import Store

VARIANTS = {  # name: (residual, layernorm)
    "residual+layernorm": (True, True),
    "layernorm only": (False, True),
    "residual only": (True, False),
    "neither": (False, False),
}
ROOT = Path(__file__).resolve().parents[1]


class Block(nn.Module):
    def __init__(self, width: int, heads: int, residual: bool, layernorm: bool):
        super().__init__()
        self.heads, self.residual = heads, residual
        self.ln1 = nn.LayerNorm(width) if layernorm else nn.Identity()
        self.ln2 = nn.LayerNorm(width) if layernorm else nn.Identity()
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        return self.mlp(self.ln2(self.attn(self.ln1(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int,
                 residual: bool, layernorm: bool):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList([Block(width, heads, residual, layernorm) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width) if layernorm else nn.Identity()
        self.head = nn.Linear(width, vocab)
        for p in self.parameters():  # GPT-2's initialisation: N(0, 0.02) weights, zero biases
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            else:
                nn.init.zeros_(p)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def corpus() -> str:
    """The text: the repository's docs/*.md and README.md, in sorted order."""
    files = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files if f.exists())


def train_variant(name: str, data: torch.Tensor, vocab: int, args: argparse.Namespace, out: Path) -> float:
    residual, layernorm = VARIANTS[name]
    torch.manual_seed(args.seed)
    model = GPT(vocab, args.context, args.width, args.layers, args.heads, residual, layernorm)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    run = name.replace("+", "_").replace(" ", "_")
    modules = [f"blocks.{i}" for i in range(args.layers)]  # each block's output: the residual stream
    loss = torch.tensor(float("nan"))
    with depthscope.watch(model, every=args.every, optimizer=opt, modules=modules, run_dir=out, run=run) as w:
        for _ in range(args.steps):
            i = torch.randint(0, len(data) - args.context - 1, (args.batch,), generator=g)
            x = torch.stack([data[j:j + args.context] for j in i])
            y = torch.stack([data[j + 1:j + args.context + 1] for j in i])
            opt.zero_grad()
            loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
            loss.backward()
            opt.step()
    s = Store(out)
    try:
        s.set_meta(f"gpt_example/{run}/final_loss", loss.item())
    finally:
        s.close()
    return loss.item()


def figure(out: Path, layers: int) -> list[Path]:
    """VNI of each block at the first and last recorded step, one line per variant: from the store only."""
    from matplotlib.figure import Figure

    store = Store(out, create=False)
    try:
        rows = store.rows("watch", "vni")
    finally:
        store.close()
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for name in VARIANTS:
        run = name.replace("+", "_").replace(" ", "_")
        mine = [r for r in rows if r.get("run") == run]
        if not mine:
            continue
        steps = sorted({r["step"] for r in mine})
        for ax, step in zip(axes, (steps[0], steps[-1])):
            by_layer = sorted((r["layer"], r["value"]) for r in mine if r["step"] == step)
            ax.plot([l for l, _ in by_layer], [v for _, v in by_layer], marker="o", label=name)
            ax.set_title(f"step {step}" + (" (initialisation)" if step == 0 else ""))
    for ax in axes:
        ax.set_xlabel("block (1 = nearest the input)")
        ax.set_xticks(range(1, layers + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("VNI of the block output (1 = one effective node)")
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(fontsize=8)
    fig.suptitle("Small GPT on the repository's docs: vanishing nodes by block")
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        p = out / f"gpt_vni_by_block.{ext}"
        fig.savefig(p, dpi=120)
        paths.append(p)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/gpt_depth"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (on a busy machine 1 is much faster than contended threads)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.width % args.heads:
        ap.error(f"--width {args.width} must be a multiple of --heads {args.heads}")
    text = corpus()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text], dtype=torch.long)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"text: {len(text)} characters, {len(chars)} distinct; {args.layers} blocks of width {args.width}")
    finals = {}
    for name in VARIANTS:
        t0 = time.perf_counter()
        loss = train_variant(name, data, len(chars), args, args.out)
        finals[name] = loss
        print(f"{name:>20}: final loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)")
    store = Store(args.out, create=False)
    try:
        rows = store.rows("watch", "vni")
    finally:
        store.close()
    print("\nVNI of each block's output at the last recorded step (uniform random: ~1/width =", f"{1 / args.width:.3f})")
    print(f"{'variant':>20} " + " ".join(f"{i + 1:>5}" for i in range(args.layers)))
    for name in VARIANTS:
        run = name.replace("+", "_").replace(" ", "_")
        mine = [r for r in rows if r.get("run") == run]
        last = max(r["step"] for r in mine)
        vals = dict((r["layer"], r["value"]) for r in mine if r["step"] == last)
        print(f"{name:>20} " + " ".join(f"{vals[i + 1]:5.3f}" if i + 1 in vals else "    -"
                                         for i in range(args.layers)))
    print("(-: no VNI, the block's output had zero variance: the signal itself vanished)")
    for p in figure(args.out, args.layers):
        print("wrote", p)


if __name__ == "__main__":
    main()
