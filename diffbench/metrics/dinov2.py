"""DINOv2 ViT-L/14 features for FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation
metrics"; the protocol of dgm-eval and of EDM2's calculate_metrics.py).

Each uint8 image is resized to 224 x 224 with a bicubic filter, scaled to [0, 1], normalised with the
ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), and its feature is the CLS token after
the final layer norm (1024-d for ViT-L/14): torch.hub's ``dinov2_vitl14`` output, transformers'
``Dinov2Model`` ``pooler_output``. Resize modes: ``pil_uint8`` (dgm-eval's, and EDM2's ``pil``: Pillow
bicubic on the uint8 RGB image, rounded to uint8) and ``torch_bicubic`` (EDM2's default ``torch``:
``F.interpolate(bicubic, antialias=True)`` on float pixels; fast on GPUs, "almost the same results").

The weights come through transformers (``metrics.fd_dinov2.model``: hub id ``facebook/dinov2-large`` or a
save_pretrained folder). The 37 x 37 position embeddings (518 px training) are interpolated to the 16 x 16
grid of a 224 px input as DINOv2's own code does (bicubic with scale factor (16 + 0.1) / 37, no
antialiasing), not as transformers does (output size 16), so the features are torch.hub's.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from diffbench.assetstore import file_digest, hub_folder, pretrained_weights
from diffbench.errors import AssetMissing, check, first_line
from diffbench.metrics.features import FeatureExtractor, Features, check_images, register_extractor

DINOV2_MODEL = "facebook/dinov2-large"  # ViT-L/14, the network of FD-DINOv2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
HUB_INTERPOLATE_OFFSET = 0.1  # DINOv2's vision_transformer.py: interpolate_offset
EXPECTED = "a DINOv2 hub id (owner/name) or a folder holding a Dinov2Model (save_pretrained)"


def resize_pil_uint8(images: Tensor, size: int) -> Tensor:
    """dgm-eval's resize: each uint8 RGB image through Pillow's bicubic resize, kept as uint8 (float32 out)."""
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([np.asarray(Image.fromarray(a, "RGB").resize((size, size), Image.Resampling.BICUBIC)) for a in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(images.device).float()


def resize_torch_bicubic(images: Tensor, size: int) -> Tensor:
    """EDM2's fast resize: torch bicubic interpolation with antialiasing on float pixels."""
    return F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True)


DINOV2_RESIZERS = {"pil_uint8": resize_pil_uint8, "torch_bicubic": resize_torch_bicubic}


def hub_position_embeddings(position: Tensor, grid: int) -> Tensor:
    """[1, 1 + grid^2, dim]: DINOv2's interpolation of [1, 1 + M^2, dim] position embeddings to a grid x grid input."""
    cls, patches = position[:, :1], position[:, 1:]
    m, dim = math.isqrt(patches.shape[1]), position.shape[-1]
    scale = (grid + HUB_INTERPOLATE_OFFSET) / m
    out = F.interpolate(patches.float().reshape(1, m, m, dim).permute(0, 3, 1, 2), scale_factor=(scale, scale),
                        mode="bicubic", antialias=False)
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(position)], dim=1)


def for_input_size(model: Any, size: int) -> Any:
    """The model with its position embeddings interpolated once for size x size inputs, DINOv2's way."""
    embeddings = model.embeddings
    grid = size // int(model.config.patch_size)
    if embeddings.position_embeddings.shape[1] != 1 + grid * grid:
        embeddings.position_embeddings = nn.Parameter(hub_position_embeddings(embeddings.position_embeddings.data,
                                                                              grid), requires_grad=False)
    return model


@functools.lru_cache(maxsize=2)
def _load(folder: Path) -> Any:
    """Dinov2Model from a folder, loaded once per process."""
    from transformers import Dinov2Model

    try:
        return Dinov2Model.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise AssetMissing(f"metrics.fd_dinov2.model={folder}: cannot load a Dinov2Model ({first_line(e)}); "
                           f"expected {EXPECTED}") from None


class Dinov2Extractor(FeatureExtractor):
    """DINOv2 CLS features at 224 px (ImageNet normalisation); labelled ``dinov2``, so its Frechet distance is
    ``fd_dinov2``."""

    name, input_size = "dinov2", INPUT_SIZE

    def __init__(self, model: Any, resize_mode: str = "torch_bicubic", device: torch.device | str = "cpu",
                 source: str = "", weights_sha1: str | None = None):
        check(resize_mode in DINOV2_RESIZERS, f"metrics.fd_dinov2.resize_mode '{resize_mode}' is unknown; choose "
              f"one of: {', '.join(DINOV2_RESIZERS)}")
        super().__init__("clean", device)
        self.resize_mode, self.source, self.weights_sha1 = resize_mode, source, weights_sha1
        self.model = for_input_size(model, INPUT_SIZE).eval().requires_grad_(False).to(self.device)
        self.dim = int(model.config.hidden_size)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).reshape(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).reshape(1, 3, 1, 1)

    def preprocess(self, images: Tensor) -> Tensor:
        """Bicubic resize to 224 px with the resize mode: float32 pixels in [0, 255] on the device."""
        check_images(images)
        images = images.to(self.device)
        if images.shape[-2:] == (self.input_size, self.input_size):
            return images.float()
        return DINOV2_RESIZERS[self.resize_mode](images, self.input_size)

    def forward(self, pixels: Tensor) -> Features:
        x = (pixels / 255 - self.mean) / self.std
        return Features(self.model(pixel_values=x).pooler_output.float())

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model": self.source, "weights_sha1": self.weights_sha1}


@register_extractor("dinov2")
def dinov2(model: str = DINOV2_MODEL, resize_mode: str = "torch_bicubic",
           device: torch.device | str = "cpu") -> FeatureExtractor:
    """DINOv2 (hub id or save_pretrained folder) CLS features at 224 px, for FD-DINOv2."""
    folder = hub_folder(model, "metrics.fd_dinov2.model", EXPECTED)
    weights = pretrained_weights(folder)
    return Dinov2Extractor(_load(folder.resolve()), resize_mode, device, model,
                           file_digest(weights, "sha1") if weights else None)
