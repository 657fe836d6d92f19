"""CLIP score (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning").

Per sample: 100 * max(cos(E_image, E_prompt), 0) with transformers' CLIPModel embeddings, the images and
prompts prepared by the model's CLIPProcessor exactly as torchmetrics' ``CLIPScore`` prepares them (the
processor's resize and centre crop, prompts padded and cut to the text model's context length), so a
sample's score equals torchmetrics' on that one pair (tests/test_t2i_metrics.py). The point's value is
the mean over samples; torchmetrics clamps the mean instead of each sample, which agrees whenever no
cosine is negative (true of real CLIP models on images and prompts).

``ClipExtractor`` (extractor ``clip``) gives the normalised image embeddings as features, for CMMD.
Weights: ``metrics.clip_score.model`` / ``metrics.cmmd.model``, a hub id (from the Hugging Face cache,
downloaded only with DIFFBENCH_ALLOW_DOWNLOAD=1) or a ``save_pretrained`` folder with the model and
its processor.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffbench.assetstore import file_digest, hub_folder, pretrained_weights
from diffbench.errors import AssetMissing, UsageError, first_line
from diffbench.metrics.features import FeatureExtractor, Features, check_images, register_extractor

CLIP_SCORE_MODEL = "openai/clip-vit-large-patch14"  # torchmetrics' default, the common text-to-image choice
EXPECTED = "a CLIP hub id (owner/name) or a folder holding a CLIPModel and its CLIPProcessor (save_pretrained)"


def embedding(output: Any) -> Tensor:
    """The projected embedding of CLIPModel.get_*_features (a tensor, or transformers 5's output's pooler_output)."""
    return output if isinstance(output, Tensor) else output.pooler_output


def normalised(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm."""
    return x / x.norm(p=2, dim=-1, keepdim=True)


class ClipModel:
    """A CLIPModel with its CLIPProcessor on a device: normalised image and prompt embeddings."""

    def __init__(self, model: Any, processor: Any, device: torch.device | str = "cpu", source: str = "",
                 weights_sha1: str | None = None):
        self.device = torch.device(device)
        self.model, self.processor = model.eval().requires_grad_(False).to(self.device), processor
        self.source, self.weights_sha1 = source, weights_sha1
        self.context = int(self.model.config.text_config.max_position_embeddings)
        crop = getattr(processor.image_processor, "crop_size", None) or {}
        self.input_size = int(crop.get("height", self.model.config.vision_config.image_size))

    @torch.inference_mode()
    def images(self, images: Tensor) -> Tensor:
        """float32 [B, dim]: unit-norm embeddings of uint8 images [B, 3, H, W]."""
        check_images(images)
        pixels = self.processor(images=[i.cpu() for i in images], return_tensors="pt")["pixel_values"]
        return normalised(embedding(self.model.get_image_features(pixels.to(self.device))).float())

    @torch.inference_mode()
    def prompts(self, texts: Sequence[str]) -> Tensor:
        """float32 [B, dim]: unit-norm embeddings of prompts (cut to the text model's context length)."""
        tokens = self.processor(text=list(texts), return_tensors="pt", padding=True)
        ids, mask = (tokens[k][..., :self.context].to(self.device) for k in ("input_ids", "attention_mask"))
        return normalised(embedding(self.model.get_text_features(ids, mask)).float())

    def scores(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """float32 [B]: each image's CLIP score with its prompt, 100 * max(cos, 0)."""
        if len(texts) != len(images):
            raise UsageError(f"clip_score: {len(images)} images but {len(texts)} prompts")
        return (100 * (self.images(images) * self.prompts(texts)).sum(-1)).clamp(min=0)

    def identity(self) -> dict[str, Any]:
        """What names the model in rows and reference keys: its source and weights hash."""
        return {"model": self.source, "weights_sha1": self.weights_sha1}


@functools.lru_cache(maxsize=4)
def _load(folder: Path, config_key: str) -> tuple[Any, Any]:
    """CLIPModel and CLIPProcessor from a folder, loaded once per process."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise AssetMissing(f"{config_key}={folder}: cannot load a CLIPModel and CLIPProcessor "
                           f"({first_line(e)}); expected {EXPECTED}") from None


def load_clip(path: str, device: torch.device | str = "cpu", config_key: str = "metrics.clip_score.model") -> ClipModel:
    """A CLIP model by hub id or folder (offline first); AssetMissing naming `config_key` when it is missing."""
    folder = hub_folder(path, config_key, EXPECTED)
    model, processor = _load(folder.resolve(), config_key)
    weights = pretrained_weights(folder)
    return ClipModel(model, processor, device, path, file_digest(weights, "sha1") if weights else None)


class ClipExtractor(FeatureExtractor):
    """Normalised CLIP image embeddings as features (CMMD's, Jayasumana et al. 2024), the processor resizing."""

    name = "clip"

    def __init__(self, clip: ClipModel):
        super().__init__("clean", clip.device)
        self.clip = clip
        self.input_size = clip.input_size
        self.dim = int(clip.model.config.projection_dim)
        self.resize_mode = "clip_processor"

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 images as they are: the CLIP processor resizes and crops them."""
        check_images(images)
        return images

    def forward(self, pixels: Tensor) -> Features:
        return Features(self.clip.images(pixels))

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), **self.clip.identity()}


@register_extractor("clip")
def clip(model: str = CLIP_SCORE_MODEL, device: torch.device | str = "cpu") -> FeatureExtractor:
    """CLIP image embeddings (unit norm) of a hub id or save_pretrained folder."""
    return ClipExtractor(load_clip(model, device, "metrics.cmmd.model"))
