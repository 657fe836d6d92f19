"""The project's own small UNet F(x, c_noise) and its checkpoint format (scripts/train.py writes both).

Architecture: a scaled-down DDPM++ UNet (Song et al. 2021; the SongUNet of Karras et al. 2022):
residual blocks with GroupNorm whose second norm takes a scale/shift from the noise-label embedding,
self-attention at the lowest resolutions, encoder-decoder skip connections, zero-initialised output
layers. It is the raw network of a preconditioned model (EDM: models/edm.py; flow: models/flow.py).

Checkpoint format (``save_checkpoint`` / ``load_checkpoint``): one ``torch.save`` dict that loads
with ``weights_only=True`` (no pickled code):

- ``format``: ``"diffbench-unet/1"``
- ``arch``: the ``UNet`` constructor's keyword arguments
- ``state_dict``: the weights (fp16 in shipped checkpoints; they run in any dtype)
- ``precond``: how F becomes a denoiser, e.g. ``{"kind": "edm", "sigma_data": 0.5,
  "sigma_min": 0.002, "sigma_max": 80.0}`` or ``{"kind": "flow", "time_scale": 1.0}``
- ``shape``: the sample shape [C, H, W]
- ``meta``: provenance (dataset, training steps, final loss, command line)
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffbench.errors import check

FORMAT = "diffbench-unet/1"
SQRT_HALF = math.sqrt(0.5)


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 as in DDPM, fewer for narrow layers (a divisor, at least 4 channels each)."""
    return next(g for g in range(max(1, min(32, channels // 4)), 0, -1) if channels % g == 0)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the noise label (Vaswani et al. 2017; DDPM's timestep embedding) + MLP."""

    def __init__(self, channels: int, emb_channels: int, max_positions: int = 10000):
        super().__init__()
        self.channels, self.max_positions = channels, max_positions
        self.mlp = nn.Sequential(nn.Linear(channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))

    def forward(self, c_noise: Tensor) -> Tensor:
        half = self.channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=c_noise.device) / max(half - 1, 1)
        args = c_noise.float()[:, None] * (1.0 / self.max_positions) ** freqs[None, :]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=1).to(cast(Tensor, self.mlp[0].weight).dtype))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise embedding as an adaptive scale/shift of the second norm."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float):
        super().__init__()
        self.norm0, self.conv0 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * cout)
        self.norm1, self.dropout = nn.GroupNorm(_groups(cout), cout), nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return (h + self.skip(x)) * SQRT_HALF


class Attention(nn.Module):
    """Multi-head self-attention over pixels with a residual connection (heads of 64 channels)."""

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm, self.qkv = nn.GroupNorm(_groups(channels), channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * SQRT_HALF


class Block(nn.Module):
    """A residual block, followed by attention at the resolutions that have it."""

    def __init__(self, cin: int, cout: int, emb_channels: int, dropout: float, attention: bool):
        super().__init__()
        self.res = ResBlock(cin, cout, emb_channels, dropout)
        self.attn = Attention(cout) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2 followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """F(x, c_noise) -> output shaped like x; x: [B, in_channels, resolution, resolution], c_noise: [B].

    Args:
        in_channels: image channels (1 for MNIST).
        resolution: image side; must be divisible by 2^(len(channel_mult) - 1).
        channels: base width; level l has channels * channel_mult[l].
        channel_mult: width multipliers per resolution level (one downsampling between levels).
        num_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions (image sides) with self-attention after each block.
        dropout: dropout rate inside residual blocks.
        classes: class labels 0 .. classes-1 added to the noise embedding (0: unconditional); label -1
            (or `classes`) is the null label that classifier-free guidance evaluates unconditionally.
    """

    def __init__(self, in_channels: int = 1, resolution: int = 28, channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (7,), dropout: float = 0.0, classes: int = 0):
        super().__init__()
        self.classes = classes
        levels = len(channel_mult)
        check(resolution % 2 ** (levels - 1) == 0,
              f"UNet: resolution {resolution} is not divisible by 2^{levels - 1} ({levels} levels)")
        emb = 4 * channels
        self.embed = NoiseEmbedding(channels, emb)
        if classes:
            self.label_embed = nn.Embedding(classes + 1, emb)  # row `classes`: the null label
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        # Encoder: every module's output is kept as a skip connection.
        self.down, skips, c, res = nn.ModuleList(), [channels], channels, resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.down.append(Block(c, channels * mult, emb, dropout, res in attn_resolutions))
                c = channels * mult
                skips.append(c)
            if level < levels - 1:
                self.down.append(Downsample(c))
                res //= 2
                skips.append(c)
        self.mid = nn.ModuleList([Block(c, c, emb, dropout, True), Block(c, c, emb, dropout, False)])
        # Decoder: each block takes one skip connection, concatenated on channels.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.up.append(Block(c + skips.pop(), channels * mult, emb, dropout, res in attn_resolutions))
                c = channels * mult
            if level > 0:
                self.up.append(Upsample(c))
                res *= 2
        self.norm_out = nn.GroupNorm(_groups(c), c)
        self.conv_out = _zero(nn.Conv2d(c, in_channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(c_noise.reshape(-1).expand(x.shape[0]))
        if labels is not None:
            check(self.classes > 0, "UNet: labels given to an unconditional network (classes=0)")
            emb = emb + self.label_embed(torch.where(labels < 0, self.classes, labels))
        h = self.conv_in(x)
        skips = [h]
        for module in self.down:
            h = module(h, emb)
            skips.append(h)
        for module in self.mid:
            h = module(h, emb)
        for module in self.up:
            h = module(h, emb) if isinstance(module, Upsample) else module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def save_checkpoint(path: str | Path, net: UNet, arch: Mapping[str, Any], precond: Mapping[str, Any],
                    shape: Sequence[int], meta: Mapping[str, Any] | None = None,
                    dtype: torch.dtype = torch.float16) -> None:
    """Write a diffbench-unet checkpoint (weights cast to `dtype`; see the module docstring).

    meta is stored as plain JSON data (other objects as their str) so the file loads with weights_only=True.
    """
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in net.state_dict().items()}
    torch.save({"format": FORMAT, "arch": dict(arch), "state_dict": state, "precond": dict(precond),
                "shape": [int(s) for s in shape], "meta": json.loads(json.dumps(dict(meta or {}), default=str))}, path)


def is_checkpoint(obj: object) -> bool:
    """Whether a loaded object is a diffbench-unet checkpoint dict."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def build_from_checkpoint(ckpt: Mapping[str, Any]) -> UNet:
    """The UNet of a loaded checkpoint dict with its weights, in float32, in eval mode."""
    net = UNet(**ckpt["arch"])
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
    return net.eval().requires_grad_(False)
