"""DiT (Peebles & Xie 2023): diffusers' DiTTransformer2DModel with its VAE as a class-conditional latent denoiser.

The network predicts eps (and, in its second half of channels, the learned variance, ignored: diffbench's
solvers bring their own steps) on the discrete VP schedule of its scheduler config (1000 linear betas),
called at the continuous timestep t of each noise level. Label NO_LABEL is the null class, the label
embedding's last row (index num_embeds_ada_norm, as DiTPipeline's 1000 for ImageNet).
model.path is a DiTPipeline folder (``save_pretrained``: transformer/, vae/, scheduler/) or a hub id.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffbench.errors import check
from diffbench.models._latent import LatentDecode, VaeDecoder, latent_shape, load_pipeline_parts
from diffbench.models._network import TorchNet, parse_dtype
from diffbench.models.base import NO_LABEL, ConditionalDenoiser, PredictionDenoiser
from diffbench.models.diffusers import DDPM_DEFAULTS, read_json, scheduler_betas
from diffbench.models.registry import register_model
from diffbench.schedules import VPDiscrete

EXPECTED = "a DiTPipeline folder (transformer/, vae/, scheduler/) or its hub id, e.g. facebook/DiT-XL-2-256"


class DiTEps(nn.Module):
    """DiTTransformer2DModel(x_t, t, labels) -> eps (the learned-variance channels dropped)."""

    def __init__(self, transformer: nn.Module, channels: int):
        super().__init__()
        self.transformer, self.channels = transformer, channels

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return self.transformer(x_t, timestep=t, class_labels=labels, return_dict=False)[0][:, :self.channels]


class DiTDenoiser(LatentDecode, ConditionalDenoiser):
    """D(x, sigma, labels) of a class-conditional DiT; `decode` runs the pipeline's VAE."""

    def __init__(self, net: Callable[..., Tensor], schedule: VPDiscrete, classes: int, shape: Sequence[int],
                 decoder: Callable[[Tensor], Tensor] | None = None, source: str = ""):
        self.eps = PredictionDenoiser(net, schedule, "eps")
        self.schedule, self.classes, self.shape = schedule, classes, tuple(shape)
        self.decoder, self.source, self.net_dtype = decoder, source, getattr(net, "dtype", torch.float32)

    def denoise_cond(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        null = torch.full_like(labels, self.classes)
        return self.eps.predict(x, sigma, torch.where(labels == NO_LABEL, null, labels))

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "dit", "model_path": self.source, "prediction": "eps",
                "net_dtype": str(self.net_dtype).removeprefix("torch."), "classes": self.classes}


@register_model("dit")
def dit(path: str = "", shape: Sequence[int] | None = None, dtype: str = "float32", vae_dtype: str = "float32",
        revision: str | None = None, compile: bool | str = False) -> DiTDenoiser:
    """A diffusers DiTTransformer2DModel with its VAE, class-conditional (classes 0 .. num_embeds_ada_norm - 1).

    Args:
        path: a DiTPipeline save_pretrained folder or a hub id (owner/name).
        shape: latent shape [C, H, W] (default: the transformer's sample_size; pixels = 8x).
        dtype: the precision the transformer runs in (float32, float16, bfloat16).
        vae_dtype: the precision the VAE decodes in.
        revision: the hub revision (branch, tag or commit) for hub ids.
        compile: torch.compile the transformer: false, true or a mode.
    """
    root, transformer, vae = load_pipeline_parts(path, revision, "DiTTransformer2DModel", EXPECTED)
    config: Any = transformer.config
    scheduler_file = root / "scheduler" / "scheduler_config.json"
    where, scheduler = str(scheduler_file), {**DDPM_DEFAULTS, **read_json(scheduler_file)}
    check(scheduler["prediction_type"] == "epsilon", f"{where}: DiT predicts epsilon, the config says "
          f"{scheduler['prediction_type']}")
    check(config.num_embeds_ada_norm is not None, f"{root / 'transformer'}: not a class-conditional DiT")
    net = TorchNet(DiTEps(transformer, int(config.in_channels)), parse_dtype(dtype), compile=compile)
    return DiTDenoiser(net, VPDiscrete(scheduler_betas(scheduler, where)), int(config.num_embeds_ada_norm),
                       latent_shape(transformer, shape), VaeDecoder(vae, parse_dtype(vae_dtype)), path)
