"""A deep tanh MLP on MNIST, trained at a large learning rate, watched by depthscope.watch.

At a large learning rate the hidden layers' nodes become collinear (VNI -> 1,
thesis ch. 5): the watch logs a warning naming the first layer to collapse and
the step, before the test accuracy stalls. Runs on CPU in about a minute, offline:
it reads the MNIST test set (10k images, IDX gz) from --data-dir and splits it
8000 train / 2000 test.

    python examples/watch_mnist_mlp.py --lr 0.5          # collapses
    python examples/watch_mnist_mlp.py --lr 0.01         # trains
"""
from __future__ import annotations

import argparse
import gzip
import logging
import struct
from pathlib import Path

import torch
from torch import nn

import depthscope

DEFAULT_DATA = "/work/shared/data/mnist"


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (optionally .gz) as a tensor (the format of yann.lecun.com/exdb/mnist)."""
    raw = gzip.open(path, "rb").read() if str(path).endswith(".gz") else Path(path).read_bytes()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)


def load_mnist(data_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    d = Path(data_dir)
    x = read_idx(d / "t10k-images-idx3-ubyte.gz").reshape(-1, 784).float() / 255.0
    y = read_idx(d / "t10k-labels-idx1-ubyte.gz").long()
    return (x - x.mean()) / x.std(), y


def build_model(depth: int = 20, width: int = 64, seed: int = 0) -> nn.Sequential:
    """depth tanh layers at the critical initialisation sigma_w^2 = 1 (W ~ N(0, 1/fan_in)), then a readout."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    fan_in = 784
    for _ in range(depth):
        lin = nn.Linear(fan_in, width)
        with torch.no_grad():
            lin.weight.normal_(0.0, fan_in ** -0.5, generator=g)
            lin.bias.zero_()
        layers += [lin, nn.Tanh()]
        fan_in = width
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--run-dir", default=None, help="also write the rows to this store (then: depthscope watch-report DIR)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(message)s")

    x, y = load_mnist(args.data_dir)
    xtr, ytr, xte, yte = x[:8000], y[:8000], x[8000:], y[8000:]
    model = build_model(args.depth, args.width, args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    acc_log: list[tuple[int, float]] = []
    with depthscope.watch(model, every=args.every, optimizer=opt, run_dir=args.run_dir, run=f"lr{args.lr:g}",
                          modules=nn.Linear) as w:
        for epoch in range(args.epochs):
            for idx in torch.randperm(8000, generator=g).split(100):
                step = w.step_count
                if step % 50 == 0:
                    with torch.no_grad():
                        acc = float((model(xte).argmax(1) == yte).float().mean())
                    acc_log.append((step, acc))
                    last = w.history("vni")[w.names[-2]]
                    print(f"step {step:4d}  test accuracy {acc:.3f}  "
                          f"VNI of the last hidden layer {last[-1][1] if last else float('nan'):.3f}")
                opt.zero_grad()
                nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
                opt.step()  # advances the watch (optimizer=opt)
    vni_alerts = [a for a in w.alerts if a.kind == "vni"]
    first = vni_alerts[0].step if vni_alerts else None
    print(f"first VNI alert: step {first}; final test accuracy {acc_log[-1][1]:.3f}")
    return {"first_alert": first, "accuracy": acc_log, "alerts": w.alerts}


if __name__ == "__main__":
    main()
