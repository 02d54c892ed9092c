"""A small ResNet-style CNN on MNIST, watched by depthscope.watch (CPU, about a minute).

Every Conv2d and the Linear readout are watched: nodes are channels, samples are
(image, y, x) positions, at most 4096 of them per layer and step. MNIST is found
as in examples/watch_mnist_mlp.py (--data-dir, $DEPTHSCOPE_DATA, ../shared/data/mnist,
the cache; never downloaded here); without it the CNN trains on random images
(the watch works the same).

    python examples/watch_cnn.py [--data-dir DIR] [--run-dir runs/cnn]
    depthscope watch-report runs/cnn
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from torch import nn

import depthscope

class Block(nn.Module):
    """conv-bn-relu-conv-bn plus the identity (or a strided 1x1 projection), then relu."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


def build_model(channels: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    c = channels
    return nn.Sequential(
        nn.Conv2d(1, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        Block(c, c), Block(c, 2 * c, stride=2), Block(2 * c, 2 * c),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, 10),
    )


def make_batch(batch: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g)


def load_data(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """MNIST as (n, 1, 28, 28) images and labels, or None when its files are not on this machine."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from watch_mnist_mlp import load_mnist

    from depthscope.data import DataNotFound

    try:
        x, y, note = load_mnist(data_dir, download=False)
    except DataNotFound:
        return None
    print(note)
    return x.reshape(-1, 1, 28, 28), y


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--run-dir", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(message)s")
    data = load_data(args.data_dir)
    if data is None:
        print("no MNIST files found: training on random images")
        data = make_batch(2000)
    x, y = data
    model = build_model()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    with depthscope.watch(model, every=args.every, optimizer=opt, run_dir=args.run_dir, run="cnn") as w:
        for step in range(args.steps):
            idx = torch.randint(0, 8000 if len(x) > 8000 else len(x), (64,), generator=g)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            if step % 50 == 0:
                print(f"step {step:4d} loss {loss.item():.3f}")
    print(f"{'module':28s} {'VNI':>6s} {'eff. nodes':>10s} {'grad_rms':>9s}  (last recorded step {w.records[-1]['step']})")
    last = {r["name"]: r for r in w.records if r["step"] == w.records[-1]["step"]}
    for name, r in last.items():
        print(f"{name:28s} {r['vni']:6.3f} {r['effective_nodes']:7.1f}/{int(r['nodes']):<3d} {r['grad_rms']:9.2e}")


if __name__ == "__main__":
    main()
