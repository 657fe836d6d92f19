"""Stable Diffusion UNets (diffusers UNet2DConditionModel: SD 1.x, 2.x, SDXL) as prompt-conditional latent denoisers.

model.path is a diffusers pipeline folder (``save_pretrained``: model_index.json, unet/, vae/,
scheduler/, text_encoder/ + tokenizer/, for SDXL also text_encoder_2/ + tokenizer_2/) or a hub id
(the Hugging Face cache; downloaded only with DIFFBENCH_ALLOW_DOWNLOAD=1). The UNet runs on its
scheduler config's discrete VP betas with its prediction type (epsilon or v), as models/diffusers.py
does for UNet2DModel; diffbench's solvers and step grids replace the pipeline's scheduler.

Prompts are the classes (models/text.py). A prompt set is encoded once, as the pipelines encode
(SD 1.x/2.x: the text encoder's last hidden state; SDXL: both encoders' penultimate hidden states
concatenated, the second one's pooled projection, and the added time ids of the image size), and
cached under the cache's ``text/`` keyed by (encoder identity, prompts hash). NO_LABEL is the empty
prompt (zeros where the pipeline sets force_zeros_for_empty_prompt, as SDXL does), so CFG's
unconditional rows are the pipeline's. `decode` maps latents to images in [-1, 1] with the VAE.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbench.errors import UsageError, check
from diffbench.models._network import TorchNet, first_line, parse_dtype
from diffbench.models._text_encoders import EncodeBatch, TextEncoders, half_store, token_ids
from diffbench.models.base import NO_LABEL, PredictionDenoiser
from diffbench.models.diffusers import DDPM_DEFAULTS, PREDICTIONS, local_folder, read_json, scheduler_betas
from diffbench.models.registry import register_model
from diffbench.models.text import TextConditional
from diffbench.schedules import VPDiscrete

EXPECTED = "a Stable Diffusion pipeline folder (save_pretrained: model_index.json, unet/, vae/, text_encoder/, " \
           "tokenizer/) or a hub id owner/name"
PIPELINE_FILES = ("model_index.json", "*/config.json", "scheduler/*.json", "tokenizer*/*",
                  "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                  "text_encoder*/model.safetensors")
ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))


@dataclass(frozen=True)
class PromptTable:
    """Per-prompt UNet conditions: rows 0 .. P-1 the prompts, row P the empty prompt (NO_LABEL)."""

    hidden: Tensor  # [P + 1, tokens, width]: encoder_hidden_states
    pooled: Tensor | None  # [P + 1, width_2]: SDXL's pooled text embeddings, else None

    @classmethod
    def of(cls, tensors: dict[str, Tensor]) -> PromptTable:
        """The table of TextEncoders.table's tensors."""
        return cls(tensors["hidden"], tensors.get("pooled"))

    def context(self, labels: Tensor) -> tuple[Tensor, ...]:
        """The condition tensors of rows with these labels."""
        rows = torch.where(labels == NO_LABEL, len(self.hidden) - 1, labels).cpu()
        return (self.hidden[rows],) if self.pooled is None else (self.hidden[rows], self.pooled[rows])


def sd_encode(xl: bool) -> EncodeBatch:
    """How the SD pipelines encode a batch: {"hidden": hidden states[, "pooled": SDXL's pooled projection]}."""

    def encode(pairs: list[tuple[Any, Any]], texts: list[str]) -> dict[str, Tensor]:
        hidden: list[Tensor] = []
        out: Any = None
        for encoder, tokenizer in pairs:
            out = encoder(token_ids(tokenizer, texts, tokenizer.model_max_length, encoder.device),
                          output_hidden_states=xl)
            hidden.append(out.hidden_states[-2] if xl else out[0])
        tensors = {"hidden": torch.cat(hidden, dim=-1)}
        if xl:
            tensors["pooled"] = out[0]  # the last encoder's projected pooled output
        return {name: t.cpu() for name, t in tensors.items()}

    return encode


class LatentDecoder:
    """The pipeline's VAE decoder: latents z -> images in [-1, 1], in batches, on z's device."""

    def __init__(self, vae: Any, dtype: torch.dtype, batch: int):
        check(batch >= 1, f"model.decode_batch must be >= 1 (got {batch})")
        self.vae, self.dtype, self.batch, self.device = vae.to(dtype), dtype, batch, torch.device("cpu")
        config = vae.config
        self.scale = float(config.scaling_factor)
        self.shift = float(getattr(config, "shift_factor", None) or 0.0)
        self.factor = 2 ** (len(config.block_out_channels) - 1)

    @torch.inference_mode()
    def __call__(self, z: Tensor) -> Tensor:
        if z.device != self.device:
            self.vae, self.device = self.vae.to(z.device), z.device
        parts = [self.vae.decode(part.to(self.dtype) / self.scale + self.shift, return_dict=False)[0]
                 for part in z.split(self.batch)]
        return torch.cat(parts).to(z.dtype)


class ConditionalUNet(nn.Module):
    """UNet2DConditionModel(x_t, t, text hidden states[, pooled]) -> its prediction; SDXL adds its time ids."""

    def __init__(self, unet: nn.Module, time_ids: Tensor | None):
        super().__init__()
        self.unet = unet
        self.register_buffer("time_ids", time_ids if time_ids is not None else torch.zeros(0), persistent=False)

    def forward(self, x_t: Tensor, t: Tensor, hidden: Tensor, pooled: Tensor | None = None) -> Tensor:
        time_ids: Tensor = self.time_ids  # type: ignore[assignment]
        added = (None if pooled is None
                 else {"text_embeds": pooled, "time_ids": time_ids.to(pooled).expand(len(x_t), -1)})
        return self.unet(x_t, t, encoder_hidden_states=hidden, added_cond_kwargs=added, return_dict=False)[0]


class StableDiffusionDenoiser(TextConditional, PredictionDenoiser):
    """A Stable Diffusion UNet as D(x, sigma, labels) over a prompt set, with its latent shape and VAE decode."""

    def __init__(self, net: TorchNet, schedule: VPDiscrete, prediction: str, shape: tuple[int, ...],
                 encoders: TextEncoders, decoder: LatentDecoder, source: str):
        dtype = torch.float64 if net.dtype == torch.float64 else torch.float32  # float64 only for parity tests
        PredictionDenoiser.__init__(self, net, schedule, prediction, dtype)  # type: ignore[arg-type]
        self.shape, self.encoders, self.decoder, self.source = shape, encoders, decoder, source
        self.image_shape = (3, shape[1] * decoder.factor, shape[2] * decoder.factor)
        self.use_tables(encoders.table(()))

    def denoise_cond(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        context = self.table.context(labels)
        return self.predict(x, sigma, *context)

    def use_tables(self, tables: dict[str, Tensor]) -> None:
        self.table = PromptTable.of(tables)

    def decode(self, x: Tensor) -> Tensor:
        return self.decoder(x)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "stable_diffusion", "model_path": self.source,
                "text_encoder": self.encoders.identity}


def load_part(folder: Path, class_name: str) -> Any:
    """A diffusers model class's from_pretrained on a pipeline sub-folder; UsageError when unloadable."""
    import diffusers

    check((folder / "config.json").is_file(), f"{folder.parent}: no {folder.name}/config.json; expected {EXPECTED}")
    try:
        return getattr(diffusers, class_name).from_pretrained(folder).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{folder}: cannot load {class_name} weights ({first_line(e)}); expected {EXPECTED}") from None


def sdxl_time_ids(height: int, width: int) -> Tensor:
    """SDXL's added time ids: original size, crop top-left (0, 0), target size (the pipeline's defaults)."""
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float64)


@register_model("stable_diffusion")
def stable_diffusion(path: str = "", scheduler: Mapping[str, Any] | None = None, dtype: str = "float32",
                     vae_dtype: str = "float32", height: int | None = None, width: int | None = None,
                     decode_batch: int = 8, revision: str | None = None, channels_last: bool = False,
                     compile: bool | str = False) -> StableDiffusionDenoiser:
    """A Stable Diffusion pipeline's UNet (SD 1.x/2.x/SDXL), text encoder(s) and VAE as a latent text-to-image model.

    Args:
        path: a local pipeline folder (save_pretrained) or a hub id (owner/name).
        scheduler: scheduler-config keys overriding the folder's (e.g. {prediction_type: v_prediction}).
        dtype: the precision the UNet runs in (float32, float16, bfloat16; float64 for parity tests);
            text encoders run in float32 (float64 when dtype is float64).
        vae_dtype: the precision of the VAE decoder (SDXL's VAE overflows in float16).
        height, width: image size in pixels (null: the UNet's sample_size times the VAE's factor).
        decode_batch: latents decoded per VAE call.
        revision: the hub revision (branch, tag or commit) for hub ids.
        channels_last: run the UNet in channels-last memory format (often faster on GPUs).
        compile: torch.compile the UNet: false, true or a mode (reduce-overhead uses CUDA graphs).
    """
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError("model kind 'stable_diffusion' needs diffusers and transformers: "
                         "pip install 'diffbench[hub]'") from None
    root = local_folder(path, revision, EXPECTED, PIPELINE_FILES)
    check((root / "model_index.json").is_file(), f"model.path={path}: no model_index.json; expected {EXPECTED}")
    where = str(root / "scheduler" / "scheduler_config.json")
    config = {**DDPM_DEFAULTS, **read_json(Path(where)), **dict(scheduler or {})}
    prediction = config["prediction_type"]
    check(prediction in PREDICTIONS and prediction != "sample",
          f"{where}: prediction_type '{prediction}' is not supported; use epsilon or v_prediction")
    unet: Any = load_part(root / "unet", "UNet2DConditionModel")
    decoder = LatentDecoder(load_part(root / "vae", "AutoencoderKL"), parse_dtype(vae_dtype), decode_batch)
    size = unet.config.sample_size
    rows, cols = (size, size) if isinstance(size, int) else size
    height, width = height or rows * decoder.factor, width or cols * decoder.factor
    check(height % decoder.factor == 0 and width % decoder.factor == 0,
          f"model.height/width must be multiples of the VAE's factor {decoder.factor} (got {height}x{width})")
    xl = unet.config.addition_embed_type == "text_time"
    net_dtype = parse_dtype(dtype)
    net = TorchNet(ConditionalUNet(unet, sdxl_time_ids(height, width) if xl else None), net_dtype, channels_last,
                   compile)
    encoders = TextEncoders(root, ENCODERS[:2 if xl else 1], sd_encode(xl), [xl],
                            torch.float64 if net_dtype == torch.float64 else torch.float32, EXPECTED,
                            half_store(net_dtype))
    shape = (int(unet.config.in_channels), height // decoder.factor, width // decoder.factor)
    return StableDiffusionDenoiser(net, VPDiscrete(scheduler_betas(config, where)), PREDICTIONS[prediction], shape,
                                   encoders, decoder, path)
