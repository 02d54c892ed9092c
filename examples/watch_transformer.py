"""torch.nn.TransformerEncoder learning to reverse token sequences, watched by depthscope.watch (CPU).

Watched by default: each encoder layer's output, its self-attention output, and
its feed-forward Linears (linear1, linear2). Nodes are the model dimension,
samples are (sequence, position) pairs. ``self_attn.out_proj`` is listed but never
recorded: MultiheadAttention uses its weight without calling the module.

    python examples/watch_transformer.py [--run-dir runs/tf]
"""
from __future__ import annotations

import argparse
import logging

import torch
from torch import nn

import depthscope


class Reverser(nn.Module):
    def __init__(self, vocab: int = 16, seq: int = 16, d: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.pos))


def build_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Reverser()


def make_batch(batch: int = 64, seed: int = 0, vocab: int = 16, seq: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch, seq), generator=g)
    return x, x.flip(1)


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--run-dir", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(message)s")
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with depthscope.watch(model, every=args.every, optimizer=opt, run_dir=args.run_dir, run="transformer") as w:
        for step in range(args.steps):
            x, y = make_batch(seed=step)
            opt.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == args.steps - 1:
                acc = (logits.argmax(-1) == y).float().mean().item()
                print(f"step {step:4d} loss {loss.item():.3f} token accuracy {acc:.3f}")
    last_step = w.records[-1]["step"]
    print(f"{'module':32s} {'VNI':>6s} {'eff. nodes':>10s} {'grad_rms':>9s}  (step {last_step})")
    for r in w.records:
        if r["step"] == last_step:
            print(f"{r['name']:32s} {r['vni']:6.3f} {r['effective_nodes']:7.1f}/{int(r['nodes']):<3d} {r['grad_rms']:9.2e}")


if __name__ == "__main__":
    main()
