"""Train the project's small UNet (diffbench/models/unet.py) with EDM preconditioning (Karras et al. 2022).

Recipe (EDM's, scaled down; Karras et al. 2022, Table 1 and Sec. 5):
- data: uint8 images from an npz (``images`` [N, H, W, C] or [N, C, H, W]), scaled to [-1, 1];
- denoiser D(x, sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4), sigma_data = 0.5;
- training noise ln(sigma) ~ N(P_mean=-1.2, P_std=1.2), loss weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2;
- Adam (lr 1e-3 after a linear warm-up, constant after), EDM's EMA with a half-life of 5% of the
  images seen, capped at --ema-halflife-kimg; bf16 autocast and channels-last on CUDA, float32 on CPU.
Training stops after --steps steps or --minutes of wall-clock time, whichever comes first; --init
continues from a checkpoint's EMA weights (with a fresh optimiser), so short runs can be chained.
Class-conditional (--classes N, labels from the npz's ``labels``): the UNet adds a label embedding, and
--label-dropout of the training labels become the null label, so one network is also the unconditional
model that classifier-free guidance needs (Ho & Salimans 2022: p_uncond 0.1-0.2); its samples use CFG
at --sample-guidance, labels cycling 0 .. N-1.

Writes to --out: ``checkpoint.pt`` (EMA weights, fp16, the diffbench-unet format that model kind
``edm`` loads), ``samples.png`` (an 8x8 grid from diffbench's Heun sampler), ``samples.npz``
(``--samples`` uint8 images for metrics) and ``log.json`` (settings, loss curve, throughput).

    python scripts/make_dataset.py --train .data/mnist_train.npz
    python scripts/train.py --data .data/mnist_train.npz --out runs/train-mnist --minutes 7
    python scripts/train.py --data .data/mnist_train.npz --out runs/train-cond --classes 10 --label-dropout 0.1
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffbench.data import to_uint8
from diffbench.models import make_model
from diffbench.models.base import NO_LABEL
from diffbench.models.conditions import ConditionSet
from diffbench.models.edm import edm_coefficients
from diffbench.models.guidance import GuidedModel, make_guidance
from diffbench.models.unet import UNet, build_from_checkpoint, save_checkpoint
from diffbench.sampling import make_plan, sample_batch

P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 0.5


def load_images(path: Path, device: torch.device) -> Tensor:
    """The npz's images as float32 [N, C, H, W] in [-1, 1] on `device`."""
    with np.load(path) as npz:
        arr = npz["images"] if "images" in npz else npz[next(iter(npz.keys()))]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise SystemExit(f"{path}: need uint8 images [N, H, W, C] or [N, C, H, W]; got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device).float() / 127.5 - 1


def load_labels(path: Path, classes: int, device: torch.device) -> Tensor:
    """The npz's int64 `labels` [N] on `device`, each in 0 .. classes-1 (exits otherwise)."""
    with np.load(path) as npz:
        if "labels" not in npz:
            raise SystemExit(f"{path}: --classes needs a `labels` array next to the images")
        labels = torch.from_numpy(npz["labels"].astype(np.int64))
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise SystemExit(f"{path}: labels span {int(labels.min())}..{int(labels.max())}, outside --classes {classes}")
    return labels.to(device)


def denoise(net: UNet, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
    """EDM's preconditioned denoiser around the raw network (the same coefficients model kind `edm` uses)."""
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in edm_coefficients(sigma, SIGMA_DATA))
    return c_skip * x + c_out * net(c_in * x, c_noise.flatten(), labels).float()


def edm_loss(net: UNet, images: Tensor, labels: Tensor | None = None, dropout: float = 0.0) -> Tensor:
    """EDM's weighted denoising loss at log-normally drawn noise levels (Karras et al. 2022, eq. 8).

    With labels, a `dropout` share of them (drawn per row) becomes the null label (classifier-free training).
    """
    sigma = (torch.randn(len(images), device=images.device) * P_STD + P_MEAN).exp()
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    noisy = images + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(images)
    if labels is not None:
        labels = torch.where(torch.rand(len(labels), device=labels.device) < dropout, NO_LABEL, labels)
    return (weight.reshape(-1, 1, 1, 1) * (denoise(net, noisy, sigma, labels) - images) ** 2).mean()


def update_ema(ema: UNet, net: UNet, images_seen: int, batch: int, halflife_kimg: float) -> None:
    """EDM's EMA: half-life of min(halflife_kimg, 5% of the images seen) thousand images."""
    halflife = min(halflife_kimg * 1000, images_seen * 0.05)
    beta = 0.5 ** (batch / max(halflife, 1e-8))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - beta)


def save_grid(images: Tensor, path: Path, columns: int = 8) -> None:
    """uint8 [B, 3, H, W] -> one PNG grid."""
    b, c, h, w = images.shape
    rows = math.ceil(b / columns)
    grid = torch.zeros(3, rows * h, columns * w, dtype=torch.uint8)
    for i, img in enumerate(images.cpu()):
        grid[:, (i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = img
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def sample(checkpoint: Path, n: int, nfe: int, device: torch.device, guidance: float = 1.0) -> Tensor:
    """n samples (uint8 [n, 3, H, W]) from the saved checkpoint through diffbench's EDM adapter and Heun solver.

    A class-conditional checkpoint samples labels i mod classes with CFG at scale `guidance`.
    """
    model = make_model("edm", {"path": str(checkpoint)})
    classes = getattr(model, "classes", 0)
    if classes:
        labels = ConditionSet("cyclic", torch.arange(n) % classes)
        model = GuidedModel(model, labels, make_guidance({"name": "cfg", "scale": guidance}))
    plan = make_plan("heun", nfe, model.schedule, step_grid="karras")
    x = sample_batch(model, plan, range(n), seed=0, shape=model.shape, device=device, dtype=torch.float32).x
    return to_uint8(x)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="npz of uint8 images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--steps", type=int, default=1_000_000, help="maximum optimiser steps")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget for training")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=500, help="linear learning-rate warm-up steps")
    p.add_argument("--ema-halflife-kimg", type=float, default=250.0)
    p.add_argument("--init", type=Path, help="continue from this checkpoint's (EMA) weights and architecture")
    p.add_argument("--channels", type=int, default=48, help="UNet base width")
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--num-blocks", type=int, default=2)
    p.add_argument("--attn-resolutions", type=int, nargs="*", default=[7])
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--samples", type=int, default=1000, help="samples written to samples.npz after training")
    p.add_argument("--sample-nfe", type=int, default=35, help="Heun NFE for those samples (EDM: 35)")
    p.add_argument("--classes", type=int, default=0, help="class-conditional on the npz's labels (0: unconditional)")
    p.add_argument("--label-dropout", type=float, default=0.1, help="share of training labels set to the null label")
    p.add_argument("--sample-guidance", type=float, default=2.0, help="CFG scale of a conditional model's samples")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def build(args: argparse.Namespace, images: Tensor) -> tuple[UNet, dict[str, Any], dict[str, Any] | None]:
    """(network on the device, its arch, the --init checkpoint or None)."""
    _, channels, height, width = images.shape
    if height != width:
        raise SystemExit(f"{args.data}: images must be square (got {height}x{width})")
    init = torch.load(args.init, map_location="cpu", weights_only=True) if args.init else None
    if init is not None:
        arch, net = init["arch"], build_from_checkpoint(init)
    else:
        arch = {"in_channels": channels, "resolution": height, "channels": args.channels,
                "channel_mult": args.channel_mult, "num_blocks": args.num_blocks,
                "attn_resolutions": args.attn_resolutions, "dropout": args.dropout, "classes": args.classes}
        net = UNet(**arch)
    # channels_last lets cuDNN use its NHWC kernels for these narrow convolutions.
    fmt = torch.channels_last if images.device.type == "cuda" else torch.contiguous_format
    return net.requires_grad_(True).train().to(images.device, memory_format=fmt), arch, init


def train(net: UNet, images: Tensor, labels: Tensor | None,
          args: argparse.Namespace) -> tuple[UNet, list[dict[str, float]], int, float]:
    """Adam on EDM's loss (labels: with dropout) until --steps or --minutes; (EMA network, log, steps, seconds)."""
    device = images.device
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    log, running, step, start = [], [], 0, time.perf_counter()
    while step < args.steps and time.perf_counter() - start < args.minutes * 60:
        # One Adam step on a random batch (with EDM's guard against non-finite gradients).
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        rows = torch.randint(len(images), (args.batch,), device=device)
        with autocast:
            loss = edm_loss(net, images[rows], None if labels is None else labels[rows], args.label_dropout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        opt.step()
        step += 1
        update_ema(ema, net, step * args.batch, args.batch, args.ema_halflife_kimg)
        running.append(loss.detach())
        # Progress: the mean loss over the last log_every steps.
        if step % args.log_every == 0 or step == args.steps:
            log.append({"step": step, "loss": float(torch.stack(running).mean()),
                        "seconds": round(time.perf_counter() - start, 1)})
            running = []
            print(f"step {step} loss {log[-1]['loss']:.4f} ({log[-1]['seconds']} s)", flush=True)
    return ema, log, step, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    images = load_images(args.data, device)
    net, arch, init = build(args, images)
    labels = load_labels(args.data, net.classes, device) if net.classes else None
    print(f"UNet {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M params, {len(images)} images "
          f"{tuple(images.shape[1:])}, device {device}", flush=True)
    ema, log, steps, seconds = train(net, images, labels, args)

    # Save the EMA network, then sample from the saved file through diffbench itself.
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "checkpoint.pt"
    meta = {"init": init["meta"] if init is not None else None, "dataset": args.data.name, "images": len(images),
            "steps": steps, "images_seen": steps * args.batch, "train_seconds": round(seconds, 1),
            "final_loss": log[-1]["loss"] if log else None,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "command": "python scripts/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "train": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    precond = {"kind": "edm", "sigma_data": SIGMA_DATA, "sigma_min": 0.002, "sigma_max": 80.0}
    save_checkpoint(checkpoint, ema, arch, precond, tuple(images.shape[1:]), meta)
    pixels = sample(checkpoint, args.samples, args.sample_nfe, device, args.sample_guidance)
    save_grid(pixels[:64], args.out / "samples.png")
    native = pixels[:, :images.shape[1]].permute(0, 2, 3, 1).cpu().numpy()  # [N, H, W, C] in the data's channels
    np.savez_compressed(args.out / "samples.npz", images=native)
    summary = {**meta, "log": log, "images_per_second": round(steps * args.batch / max(seconds, 1e-9), 1)}
    (args.out / "log.json").write_text(json.dumps(summary, indent=1))
    print(f"done: {steps} steps in {seconds:.0f} s, loss {meta['final_loss']}; wrote {args.out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
