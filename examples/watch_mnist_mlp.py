"""A deep tanh MLP on MNIST, trained at a large learning rate, watched by depthscope.watch.

At a large learning rate the hidden layers' nodes become collinear (VNI -> 1,
thesis ch. 5): the watch logs a warning naming the first layer to collapse and
the step, before the test accuracy stalls. Runs on CPU in about a minute, offline.

Data: MNIST through ``depthscope.data`` (pixels / 255, centred per pixel), then
divided by its overall standard deviation so inputs have unit variance. The files
are looked for in --data-dir, then $DEPTHSCOPE_DATA, then ../shared/data/mnist beside
the repository (as scripts/run.sh does), then depthscope's cache; the training split
when present, else the 10,000 test images. The first --samples images are split
80% train / 20% held out. With --no-download a missing dataset is an error instead
of a download.

    python examples/watch_mnist_mlp.py --lr 0.5          # collapses
    python examples/watch_mnist_mlp.py --lr 0.05         # trains
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
from torch import nn

import depthscope
from depthscope.data import load_dataset_info

#: Where scripts/run.sh finds the real MNIST files: ../shared/data/mnist beside the repository root.
SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def data_dir_for(data_dir: str | os.PathLike | None) -> Path | None:
    """--data-dir when given; else None when $DEPTHSCOPE_DATA is set (depthscope.data reads it);
    else the shared MNIST beside the repository when it exists; else None (depthscope.data's cache)."""
    if data_dir is not None:
        return Path(data_dir)
    if os.environ.get("DEPTHSCOPE_DATA"):
        return None
    return SHARED_MNIST if SHARED_MNIST.is_dir() else None


def load_mnist(data_dir: str | os.PathLike | None = None, *, samples: int = 10_000,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(x, y, note): the first ``samples`` MNIST images of the training split (else the test split),
    x (samples, 784) centred per pixel and scaled to unit overall variance; ``note`` names the files."""
    x, y, info = load_dataset_info("mnist", "any", data_dir_for(data_dir), limit=samples, download=download)
    note = f"{info.n} MNIST {info.split} images from {info.images.parent}" + (f" ({info.note})" if info.note else "")
    return x / x.std(), y, note


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
    ap.add_argument("--data-dir", default=None, help="directory holding the MNIST IDX files (see the module docstring)")
    ap.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing dataset")
    ap.add_argument("--samples", type=int, default=10_000, help="images used: 80%% train, 20%% held out")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--run-dir", default=None, help="also write the rows to this store (then: depthscope watch-report DIR)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.samples < 10:
        ap.error(f"--samples must be at least 10, got {args.samples}")
    logging.basicConfig(format="%(levelname)s %(message)s")

    x, y, note = load_mnist(args.data_dir, samples=args.samples, download=not args.no_download)
    print(note)
    n_train = int(0.8 * x.shape[0])
    xtr, ytr, xte, yte = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    model = build_model(args.depth, args.width, args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    acc_log: list[tuple[int, float]] = []
    with depthscope.watch(model, every=args.every, optimizer=opt, run_dir=args.run_dir, run=f"lr{args.lr:g}",
                          modules=nn.Linear) as w:
        for epoch in range(args.epochs):
            for idx in torch.randperm(n_train, generator=g).split(100):
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
    return {"first_alert": first, "accuracy": acc_log, "alerts": w.alerts, "data": note, "records": w.records}


if __name__ == "__main__":
    main()
