"""Train the MNIST classifier behind the `class_accuracy` metric (diffbench/metrics/classifier.py).

Adam on cross-entropy over the MNIST training images (scripts/make_dataset.py --train), each batch
shifted by up to --shift pixels (so slightly off-centre samples still classify), then the test-split
accuracy; writes the fp16 checkpoint (< 2 MB) whose meta records the command, steps and accuracy.

    python scripts/make_dataset.py --train .data/mnist_train.npz
    nice -n 10 python scripts/train_classifier.py --data .data/mnist_train.npz \
        --out diffbench/assets/mnist-classifier.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffbench.metrics.classifier import DigitClassifier, grey, save_classifier

TEST = Path(__file__).resolve().parents[1] / "diffbench" / "assets" / "mnist_test.npz"


def load(path: Path) -> tuple[Tensor, Tensor]:
    """(grey float images [N, 1, 28, 28] in [-1, 1], int64 labels [N]) of an npz from make_dataset.py."""
    with np.load(path) as npz:
        pixels = torch.from_numpy(npz["images"]).permute(0, 3, 1, 2)
        return grey(pixels), torch.from_numpy(npz["labels"].astype(np.int64))


def shift(x: Tensor, pixels: int, g: torch.Generator) -> Tensor:
    """Each image translated by a random (dy, dx) in [-pixels, pixels] (the border filled with background)."""
    if pixels == 0:
        return x
    padded = F.pad(x, (pixels,) * 4, value=-1.0)
    h, w = x.shape[-2:]
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, len(x)), generator=g)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(x))])


@torch.no_grad()
def accuracy(net: DigitClassifier, x: Tensor, y: Tensor) -> float:
    """Share of x classified as y."""
    net.eval()
    predicted = torch.cat([net(part).argmax(1) for part in x.split(1000)])
    return float((predicted == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MNIST training npz (make_dataset.py --train)")
    p.add_argument("--test", type=Path, default=TEST, help="test npz for the reported accuracy")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--shift", type=int, default=2, help="random translation in pixels")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x, y = load(args.data)
    arch = {"classes": 10, "width": args.width, "resolution": x.shape[-1]}
    net = DigitClassifier(**arch)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = int(args.epochs * len(x) / args.batch)
    start = time.perf_counter()
    for step in range(steps):
        net.train()
        for group in opt.param_groups:  # cosine decay to zero
            group["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = torch.randint(len(x), (args.batch,), generator=g)
        loss = F.cross_entropy(net(shift(x[idx], args.shift, g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 200 == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    test_acc = accuracy(net, *load(args.test))
    meta = {"command": "python scripts/train_classifier.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "steps": steps, "batch": args.batch, "train_seconds": round(seconds, 1), "test_accuracy": test_acc,
            "params": sum(q.numel() for q in net.parameters()), "torch": str(torch.__version__)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(args.out, net, arch, meta)
    print(f"done: {steps} steps in {seconds:.0f} s, test accuracy {test_acc:.4f}; "
          f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
