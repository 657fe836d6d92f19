"""What the diffusers latent adapters (flow transformers, DiT) share: pipeline folders, their parts, the VAE decode."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbench.errors import AssetMissing, UsageError, check
from diffbench.models._network import first_line
from diffbench.models.diffusers import local_folder, read_json


def pipeline_folder(path: str, revision: str | None, parts: Sequence[str], expected: str,
                    also: Sequence[str] = ()) -> Path:
    """A pipeline's save_pretrained folder (or hub snapshot) holding `parts` (transformer, vae, scheduler); the hub
    files fetched include the folders `also` names (text encoders, tokenizers), whose presence is checked later."""
    root = local_folder(path, revision, expected, ["model_index.json", *(f"{part}/*" for part in (*parts, *also))])
    missing = [part for part in parts if not (root / part / _config_name(part)).is_file()]
    if missing:
        raise AssetMissing(f"model.path={root} lacks {', '.join(f'{m}/{_config_name(m)}' for m in missing)}; "
                           f"expected {expected}")
    return root


def _config_name(part: str) -> str:
    return "scheduler_config.json" if part == "scheduler" else "config.json"


def load_pipeline_parts(path: str, revision: str | None, transformer: str,
                        expected: str, also: Sequence[str] = ()) -> tuple[Path, Any, Any]:
    """(folder, the diffusers `transformer` class's network, AutoencoderKL) of a pipeline folder or hub id."""
    root = pipeline_folder(path, revision, ("transformer", "vae", "scheduler"), expected, also)
    return (root, load_part(diffusers_class(transformer), root / "transformer", (transformer,)),
            load_part(diffusers_class("AutoencoderKL"), root / "vae", ("AutoencoderKL",)))


def diffusers_class(name: str) -> Any:
    """A diffusers model class by name; a missing diffusers package is a one-line error."""
    try:
        import diffusers
    except ImportError:
        raise UsageError("latent diffusers models need the diffusers package: pip install 'diffbench[hub]'") from None
    return getattr(diffusers, name)


def latent_shape(transformer: Any, shape: Sequence[int] | None) -> tuple[int, ...]:
    """model.shape if set, else the transformer's native latent [C, H, W] (in_channels, sample_size)."""
    if shape is not None:
        check(len(shape) == 3, f"model.shape must be [C, H, W] latents (got {list(shape)})")
        return tuple(int(s) for s in shape)
    size = int(transformer.config.sample_size)
    return int(transformer.config.in_channels), size, size


def load_part(cls: Any, folder: Path, classes: Sequence[str]) -> nn.Module:
    """cls.from_pretrained(folder) in eval mode, if its config names one of `classes` (UsageError otherwise)."""
    name = read_json(folder / "config.json").get("_class_name")
    if name not in classes:
        raise UsageError(f"{folder}: holds a {name}; expected {' or '.join(classes)}")
    try:
        return cls.from_pretrained(folder).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{folder}: cannot load {name} weights ({first_line(e)})") from None


class VaeDecoder:
    """Latents -> images in [-1, 1] as the pipelines decode: vae.decode(latents / scaling_factor + shift_factor)."""

    def __init__(self, vae: Any, dtype: torch.dtype = torch.float32):
        self.vae, self.dtype = vae.to(dtype), dtype
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(vae.config.shift_factor or 0.0)  # SD3/Flux VAEs have one; SD1.x/DiT's None

    def to_vae(self, latents: Tensor) -> Tensor:
        """The model's latents as the VAE's own latents."""
        return latents / self.scaling + self.shift

    def to_images(self, decoded: Tensor) -> Tensor:
        """The VAE's output as images in [-1, 1]."""
        return decoded

    def __call__(self, latents: Tensor) -> Tensor:
        if next(self.vae.parameters()).device != latents.device:
            self.vae = self.vae.to(latents.device)
        with torch.inference_mode():
            decoded = self.vae.decode(self.to_vae(latents).to(self.dtype), return_dict=False)[0]
        return self.to_images(decoded).to(latents.dtype)


class LatentDecode:
    """Mixin for latent denoisers: `decode` runs their `decoder` (the VAE), or returns x when there is none."""

    decoder: Callable[[Tensor], Tensor] | None = None

    def decode(self, x: Tensor) -> Tensor:
        return x if self.decoder is None else self.decoder(x)
