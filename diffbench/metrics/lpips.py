"""LPIPS (Zhang et al. 2018) between each sample and its same-noise reference sample, via torchmetrics.

torchmetrics ships LPIPS's linear heads but its backbone (torchvision's ImageNet AlexNet / VGG16 /
SqueezeNet weights) downloads at construction. Here the backbone file resolves offline first
(diffbench.assetstore: explicit path -> diffbench cache -> torch's hub cache -> opt-in
download), and torchvision is pointed at that file through a private TORCH_HOME, so nothing
downloads silently. Images smaller than the backbone's minimum (AlexNet 32 px, SqueezeNet 24,
VGG 16) are upsampled bilinearly to that minimum.
"""
from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffbench.assetstore import Asset, cache_dir, resolve, verification
from diffbench.errors import AssetMissing, UsageError, check
from diffbench.metrics.features import check_images

# net -> (torchvision's DEFAULT weights URL for its backbone, smallest input side the net accepts)
_TV = "https://download.pytorch.org/models/"
BACKBONES = {"alex": (_TV + "alexnet-owt-7be5be79.pth", 32), "vgg": (_TV + "vgg16-397923af.pth", 16),
             "squeeze": (_TV + "squeezenet1_1-b8a52dc0.pth", 24)}


def backbone_asset(net: str) -> Asset:
    """The torchvision weight file LPIPS(net) needs, with its SHA-256 prefix (from its file name)."""
    check(net in BACKBONES, f"metrics.lpips_net '{net}' is unknown; choose one of: {', '.join(BACKBONES)}")
    url = BACKBONES[net][0]
    filename = url.rsplit("/", 1)[-1]
    return Asset(label=f"LPIPS {net} backbone weights ({filename})", filenames=(filename,),
                 config_key="metrics.lpips_weights",
                 extra_dirs=lambda: [Path(torch.hub.get_dir()) / "checkpoints"], url=url,
                 sha256_prefix={filename: filename.rsplit("-", 1)[-1].split(".")[0]})


@contextmanager
def _torch_home_with(weights: Path, filename: str) -> Iterator[None]:
    """Temporarily point torch.hub at a private cache holding `weights` as `filename` (linked, else copied)."""
    home = cache_dir() / "torch"
    target = home / "hub" / "checkpoints" / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or not target.samefile(weights):
        target.unlink(missing_ok=True)
        try:
            target.symlink_to(weights.resolve())
        except OSError:
            shutil.copyfile(weights, target)
    old_env, old_dir = os.environ.get("TORCH_HOME"), torch.hub.get_dir()
    os.environ["TORCH_HOME"] = str(home)
    pinned = torch.hub.get_dir() != str(home / "hub")  # someone called torch.hub.set_dir
    if pinned:
        torch.hub.set_dir(str(home / "hub"))
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = old_env
        if pinned:
            torch.hub.set_dir(old_dir)


class LPIPS:
    """Streams (sample, reference) uint8 batch pairs; ``result()`` gives the mean LPIPS.

    ``weights_check``: ``verified`` or ``unverified: ...`` (assets.verification) for the backbone file;
    a file that does not load as the backbone is an AssetMissing naming it.
    """

    def __init__(self, net: str = "alex", device: torch.device | str = "cpu", weights: str | None = None):
        asset = backbone_asset(net)
        path = resolve(asset, weights)
        self.weights_check = verification(asset, path)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # slow import: after resolving

        try:
            with _torch_home_with(path, asset.filenames[0]):
                metric = LearnedPerceptualImagePatchSimilarity(net_type=cast(Literal["vgg", "alex", "squeeze"], net),
                                                               reduction="none", normalize=True)
        except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
            raise AssetMissing(asset.broken_message(path, err)) from None
        self.metric, self.device, self.min_size = metric.to(device), torch.device(device), BACKBONES[net][1]
        self.scores: list[np.ndarray] = []

    def _prepare(self, images: Tensor) -> Tensor:
        check_images(images)
        x = images.to(self.device).float() / 255
        if min(x.shape[-2:]) < self.min_size:
            x = F.interpolate(x, size=(self.min_size, self.min_size), mode="bilinear", align_corners=False)
        return x

    @torch.inference_mode()
    def update(self, samples: Tensor, reference: Tensor) -> None:
        """samples, reference: uint8 [B, 3, H, W] for the same indices, in the same order."""
        if samples.shape != reference.shape:
            raise UsageError(f"lpips: samples {tuple(samples.shape)} and reference {tuple(reference.shape)} differ")
        scores = self.metric(self._prepare(samples), self._prepare(reference))
        self.scores.append(scores.reshape(-1).double().cpu().numpy())

    @property
    def per_sample(self) -> np.ndarray:
        return np.concatenate(self.scores) if self.scores else np.zeros(0)

    def result(self) -> dict[str, float]:
        if not self.scores:
            raise UsageError("lpips: no samples were compared")
        return {"lpips": float(self.per_sample.mean())}
