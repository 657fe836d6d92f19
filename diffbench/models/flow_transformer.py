"""SD3 / Flux-style flow-matching transformers (diffusers) as conditional denoisers on the rectified-flow path.

SD3 (Esser et al. 2024) and Flux are trained on x_t = (1 - t) x0 + t eps with velocity targets eps - x0
(models/flow.py's path) and sampled by FlowMatchEulerDiscreteScheduler from t = 1. t = 1 is sigma = inf in
EDM coordinates, so the schedule stops at t_max = 1 - 1e-8: the network then sees t = 1 in float32, and
x_T = z / (1 - t_max) is the pipelines' initial latent z, so a grid matching the scheduler's (steps.py's
`flow_shift`, `flow_shift_flux`) reproduces the pipeline. The time shift is the step grid's, not the model's.

Conditions are a table of prompt embeddings (PromptEmbeddings) indexed by label, label NO_LABEL being the empty
prompt's (classifier-free guidance's null condition). With model.embeddings empty (the default) the pipeline's own
text encoders make it from conditions=prompts, once per prompt set, cached on disk (models/_text_encoders.py), as
the pipelines encode: SD3 the two CLIPs' penultimate hidden states (concatenated, zero-padded to T5's width) followed
by T5's last hidden state, pooled = both CLIPs' projections; Flux T5's last hidden state, pooled = CLIP's pooler
output. With model.embeddings a file of precomputed embeddings, its rows are the classes (labels index them) and
text encoders are not needed. model.path is a pipeline folder (``save_pretrained``) or hub id with
``transformer/``, ``vae/``, ``scheduler/`` (and the text encoders and tokenizers when they encode the prompts).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbench.errors import UsageError, check
from diffbench.models._latent import LatentDecode, VaeDecoder, latent_shape, load_pipeline_parts
from diffbench.models._network import TorchNet, first_line, parse_dtype
from diffbench.models._text_encoders import EncodeBatch, TextEncoders, half_store, token_ids
from diffbench.models.base import ConditionalDenoiser, PredictionDenoiser
from diffbench.models.registry import register_model
from diffbench.models.text import TextConditional
from diffbench.schedules import RectifiedFlow

T_MAX = 1 - 1e-8  # float32(T_MAX) == 1: the first evaluation is the pipelines' t = 1
EMBEDDING_KEYS = ("prompt_embeds", "pooled_prompt_embeds", "null_prompt_embeds", "null_pooled_prompt_embeds")
EMBEDDINGS = ("a torch or safetensors file of precomputed text embeddings with tensors prompt_embeds [K, L, D], "
              "pooled_prompt_embeds [K, P], null_prompt_embeds [L, D] and null_pooled_prompt_embeds [P] "
              "(the empty prompt's)")


@dataclass(frozen=True)
class PromptEmbeddings:
    """Text conditions by label: row k is prompt k's (sequence and pooled embeddings); NO_LABEL the empty prompt's."""

    embeds: Tensor  # [K, L, D]
    pooled: Tensor  # [K, P]
    null_embeds: Tensor  # [L, D]
    null_pooled: Tensor  # [P]

    def __post_init__(self) -> None:
        check(self.embeds.ndim == 3 and self.pooled.ndim == 2 and len(self.embeds) == len(self.pooled)
              and self.null_embeds.shape == self.embeds.shape[1:] and self.null_pooled.shape == self.pooled.shape[1:],
              f"prompt embeddings: need [K, L, D], [K, P], [L, D], [P] (got {[tuple(t.shape) for t in self.tables]})")

    @property
    def tables(self) -> tuple[Tensor, ...]:
        return self.embeds, self.pooled, self.null_embeds, self.null_pooled

    @property
    def prompts(self) -> int:
        return len(self.embeds)

    def take(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(embeds [B, L, D], pooled [B, P]) of each row's label (NO_LABEL: the empty prompt)."""
        rows = labels.cpu()
        null = (rows < 0)[:, None]
        embeds = torch.where(null[:, :, None], self.null_embeds, self.embeds[rows.clamp(min=0)])
        return embeds, torch.where(null, self.null_pooled, self.pooled[rows.clamp(min=0)])

    @classmethod
    def load(cls, path: str) -> PromptEmbeddings:
        """From a torch (.pt) or safetensors file holding EMBEDDING_KEYS."""
        file = Path(path).expanduser()
        check(bool(path) and file.is_file(), f"model.embeddings={path!r}: no such file; give {EMBEDDINGS}")
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file
                data = load_file(file)
            else:
                data = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # torch and safetensors raise many kinds on bad files
            raise UsageError(f"model.embeddings={path}: unreadable ({first_line(e)}); give {EMBEDDINGS}") from None
        missing = [k for k in EMBEDDING_KEYS if k not in data]
        check(not missing, f"model.embeddings={path} lacks {', '.join(missing)}; give {EMBEDDINGS}")
        return cls(*(data[k].float() for k in EMBEDDING_KEYS))

    @classmethod
    def of(cls, tables: dict[str, Tensor]) -> PromptEmbeddings:
        """From TextEncoders.table's "embeds" and "pooled" (the empty prompt's the last rows)."""
        embeds, pooled = tables["embeds"], tables["pooled"]
        return cls(embeds[:-1], pooled[:-1], embeds[-1], pooled[-1])


def sd3_encode(t5_tokens: int) -> EncodeBatch:
    """StableDiffusion3Pipeline.encode_prompt: CLIP-L and CLIP-G penultimate states (padded to T5's width), then T5."""

    def encode(pairs: list[tuple[Any, Any]], texts: list[str]) -> dict[str, Tensor]:
        clip_length = pairs[0][1].model_max_length  # the pipeline's tokenizer_max_length, for both CLIPs
        hidden, pooled = [], []
        for encoder, tokenizer in pairs[:2]:
            out = encoder(token_ids(tokenizer, texts, clip_length, encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])
        t5, t5_tokenizer = pairs[2]
        t5_states = t5(token_ids(t5_tokenizer, texts, t5_tokens, t5.device))[0]
        clip = torch.cat(hidden, dim=-1)
        clip = nn.functional.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
        return {"embeds": torch.cat([clip, t5_states], dim=-2).cpu(), "pooled": torch.cat(pooled, dim=-1).cpu()}

    return encode


def flux_encode(t5_tokens: int) -> EncodeBatch:
    """FluxPipeline.encode_prompt: T5's last hidden state; pooled = CLIP's pooler output."""

    def encode(pairs: list[tuple[Any, Any]], texts: list[str]) -> dict[str, Tensor]:
        (clip, clip_tokenizer), (t5, t5_tokenizer) = pairs
        pooled = clip(token_ids(clip_tokenizer, texts, clip_tokenizer.model_max_length, clip.device)).pooler_output
        embeds = t5(token_ids(t5_tokenizer, texts, t5_tokens, t5.device))[0]
        return {"embeds": embeds.cpu(), "pooled": pooled.cpu()}

    return encode


class SD3Velocity(nn.Module):
    """SD3Transformer2DModel(x_t, t, prompt embeddings, pooled) -> velocity; it is called at timestep 1000 t."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, x_t: Tensor, t: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
        return self.transformer(hidden_states=x_t, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=t * 1000, return_dict=False)[0]


class FluxVelocity(nn.Module):
    """FluxTransformer2DModel on latents [B, C, H, W]: packed into 2x2 patch tokens with their position ids, as
    FluxPipeline does, called at t (not 1000 t) with the distilled guidance embedding where it has one."""

    def __init__(self, transformer: Any, guidance: float):
        super().__init__()
        self.transformer, self.guidance = transformer, guidance
        self.guided = bool(transformer.config.guidance_embeds)  # FLUX.1-dev's distilled guidance input

    def forward(self, x_t: Tensor, t: Tensor, embeds: Tensor, pooled: Tensor) -> Tensor:
        b, c, h, w = x_t.shape
        tokens = x_t.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(x_t)
        txt_ids = x_t.new_zeros(embeds.shape[1], 3)
        guidance = t.new_full((b,), self.guidance) if self.guided else None
        v = self.transformer(hidden_states=tokens, encoder_hidden_states=embeds, pooled_projections=pooled,
                             timestep=t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        return v.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class FlowTransformerDenoiser(LatentDecode, ConditionalDenoiser):
    """D(x, sigma, labels) of a text-conditioned velocity transformer; `decode` runs the pipeline's VAE."""

    def __init__(self, net: Callable[..., Tensor], embeddings: PromptEmbeddings, shape: Sequence[int],
                 decoder: Callable[[Tensor], Tensor] | None = None, t_max: float = T_MAX,
                 kind: str = "sd3", source: str = ""):
        self.flow = PredictionDenoiser(net, RectifiedFlow(t_max=t_max), "flow")
        self.schedule, self.embeddings, self.shape = self.flow.schedule, embeddings, tuple(shape)
        self.classes, self.decoder, self.kind, self.source = embeddings.prompts, decoder, kind, source
        self.net_dtype = getattr(net, "dtype", torch.float32)

    def denoise_cond(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        return self.flow.predict(x, sigma, *self.embeddings.take(labels))

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": self.kind, "model_path": self.source, "prediction": "flow",
                "net_dtype": str(self.net_dtype).removeprefix("torch."), "classes": self.classes}


class TextFlowTransformer(TextConditional, FlowTransformerDenoiser):
    """A flow transformer over prompt sets (conditions=prompts), encoded by its pipeline's text encoders."""

    def __init__(self, net: Callable[..., Tensor], encoders: TextEncoders, shape: Sequence[int],
                 decoder: Callable[[Tensor], Tensor], kind: str, source: str):
        super().__init__(net, PromptEmbeddings.of(encoders.table(())), shape, decoder, kind=kind, source=source)
        self.encoders, self.classes = encoders, 0

    def use_tables(self, tables: dict[str, Tensor]) -> None:
        self.embeddings = PromptEmbeddings.of(tables)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "text_encoder": self.encoders.identity}


TEXT_FOLDERS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


@dataclass(frozen=True)
class PipelineKind:
    """A flow pipeline kind: its transformer class, what its folder holds, and how it encodes prompts (its
    (encoder, tokenizer) folders, batch encoding, and T5 length: the pipeline's default max_sequence_length)."""

    kind: str
    transformer: str
    expected: str
    parts: tuple[tuple[str, str], ...]
    encode: Callable[[int], EncodeBatch]
    t5_tokens: int


def flow_model(spec: PipelineKind, path: str, embeddings: str, revision: str | None,
               module: Callable[[Any], nn.Module], shape: Callable[[Any], Sequence[int]], dtype: str,
               vae_dtype: str, compile: bool | str) -> FlowTransformerDenoiser:
    """The kind's denoiser: on the embeddings file's rows if one is given, else on prompts its encoders encode."""
    conditions = PromptEmbeddings.load(embeddings) if embeddings else None  # a missing file fails before the weights
    root, transformer, vae = load_pipeline_parts(path, revision, spec.transformer, spec.expected,
                                                 () if conditions else TEXT_FOLDERS)
    net_dtype = parse_dtype(dtype)
    net = TorchNet(module(transformer), net_dtype, compile=compile)
    decoder, size = VaeDecoder(vae, parse_dtype(vae_dtype)), shape(transformer)
    if conditions is not None:
        return FlowTransformerDenoiser(net, conditions, size, decoder, kind=spec.kind, source=path)
    encoders = TextEncoders(root, spec.parts, spec.encode(spec.t5_tokens), [spec.kind, spec.t5_tokens],
                            torch.float64 if net_dtype == torch.float64 else torch.float32, spec.expected,
                            half_store(net_dtype))
    return TextFlowTransformer(net, encoders, size, decoder, spec.kind, path)


SD3 = PipelineKind("sd3", "SD3Transformer2DModel",
                   "a StableDiffusion3Pipeline folder (transformer/, vae/, scheduler/; text_encoder/, text_encoder_2/, "
                   "text_encoder_3/ and their tokenizers unless model.embeddings is set) or its hub id",
                   (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                    ("text_encoder_3", "tokenizer_3")), sd3_encode, 256)


@register_model("sd3")
def sd3(path: str = "", embeddings: str = "", shape: Sequence[int] | None = None, dtype: str = "float32",
        vae_dtype: str = "float32", revision: str | None = None,
        compile: bool | str = False) -> FlowTransformerDenoiser:
    """A diffusers SD3Transformer2DModel with its VAE, on prompts its pipeline's CLIP-L, CLIP-G and T5 encode
    (conditions=prompts) or on a file of precomputed prompt embeddings.

    Args:
        path: a StableDiffusion3Pipeline save_pretrained folder or a hub id (owner/name).
        embeddings: a prompt embeddings file (PromptEmbeddings.load: K prompts, the empty prompt's as null) whose
            rows are the classes; empty: the pipeline's text encoders encode conditions=prompts (T5: 256 tokens).
        shape: latent shape [C, H, W] (default: the transformer's sample_size; pixels = 8x).
        dtype: the precision the transformer runs in (float32, float16, bfloat16).
        vae_dtype: the precision the VAE decodes in.
        revision: the hub revision (branch, tag or commit) for hub ids.
        compile: torch.compile the transformer: false, true or a mode.
    """
    return flow_model(SD3, path, embeddings, revision, SD3Velocity,
                      lambda transformer: latent_shape(transformer, shape), dtype, vae_dtype, compile)


FLUX = PipelineKind("flux", "FluxTransformer2DModel",
                    "a FluxPipeline folder (transformer/, vae/, scheduler/; text_encoder/, text_encoder_2/ and their "
                    "tokenizers unless model.embeddings is set) or its hub id",
                    (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")), flux_encode, 512)
FLUX_LATENT = 128  # latent side at Flux's native 1024 px (the transformer config records no sample size)


@register_model("flux")
def flux(path: str = "", embeddings: str = "", shape: Sequence[int] | None = None, guidance: float = 3.5,
         dtype: str = "float32", vae_dtype: str = "float32", revision: str | None = None,
         compile: bool | str = False) -> FlowTransformerDenoiser:
    """A diffusers FluxTransformer2DModel with its VAE, on prompts its pipeline's CLIP (pooled) and T5 encode
    (conditions=prompts) or on a file of precomputed embeddings; diffbench's guidance=cfg is FluxPipeline's true_cfg.

    Args:
        path: a FluxPipeline save_pretrained folder or a hub id (owner/name).
        embeddings: a prompt embeddings file (PromptEmbeddings.load: K prompts, the empty prompt's as null) whose
            rows are the classes; empty: the pipeline's text encoders encode conditions=prompts (T5: 512 tokens).
        shape: latent shape [C, H, W], H and W even (default: [in_channels / 4, 128, 128], 1024 px).
        guidance: the distilled guidance scale fed to guidance-embedding models (FLUX.1-dev; schnell has none).
        dtype: the precision the transformer runs in (float32, float16, bfloat16).
        vae_dtype: the precision the VAE decodes in.
        revision: the hub revision (branch, tag or commit) for hub ids.
        compile: torch.compile the transformer: false, true or a mode.
    """
    return flow_model(FLUX, path, embeddings, revision, lambda transformer: FluxVelocity(transformer, guidance),
                      lambda transformer: flux_shape(transformer, shape), dtype, vae_dtype, compile)


def flux_shape(transformer: Any, shape: Sequence[int] | None) -> tuple[int, ...]:
    """model.shape if set (checked against the transformer), else [in_channels / 4, 128, 128]: 1024 px."""
    channels = int(transformer.config.in_channels) // 4
    size = tuple(shape) if shape is not None else (channels, FLUX_LATENT, FLUX_LATENT)
    check(len(size) == 3 and size[0] == channels and size[1] % 2 == 0 and size[2] % 2 == 0,
          f"model.shape must be [{channels}, H, W] with H and W even for this Flux transformer (got {list(size)})")
    return size
