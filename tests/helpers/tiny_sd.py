"""A tiny random-weight Stable Diffusion pipeline (UNet2DConditionModel, AutoencoderKL, CLIP text encoder and a
tokenizer over a 60-token character vocabulary), saved with save_pretrained: offline, seconds to build."""
from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TOKENS = 16  # the tokenizer's max length (CLIP's 77 is not needed here)
PROMPTS = ("a cat on a mat", "a red bicycle", "two dogs in the snow")


def character_tokenizer(folder: Path):
    """A CLIPTokenizer whose vocabulary is single characters (with and without the end-of-word mark), no merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + " ,.")
    vocab = {token: i for i, token in enumerate(chars + [c + "</w>" for c in chars]
                                                + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TOKENS)


def text_encoder(size: int, projection: bool = False):
    """A 2-layer CLIP text encoder of width 16 over the character vocabulary (with a projection head: SDXL's 2nd)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=size, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                            num_hidden_layers=2, max_position_embeddings=TOKENS, bos_token_id=size - 2,
                            eos_token_id=size - 1, pad_token_id=size - 1, projection_dim=16)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def unet(xl: bool = False):
    """A two-level UNet2DConditionModel on 4x8x8 latents; SDXL's adds the pooled text and time-id embedding."""
    from diffusers import UNet2DConditionModel

    extra = (dict(addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=16 + 6 * 8) if xl else {})
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 if xl else 16, norm_num_groups=4, attention_head_dim=4, **extra)


def save_tiny_pipeline(folder: Path, prediction: str = "epsilon", xl: bool = False) -> Path:
    """Build the tiny pipeline (seeded weights; SD 1.x-like, or SDXL-like with two encoders) and save it to folder.

    Its scheduler config is SD 1.5's Euler one ("leading" spacing, steps_offset 1): integer timesteps.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    tokenizer = character_tokenizer(folder / "_vocab")
    size = len(tokenizer.get_vocab())
    torch.manual_seed(0)
    encoders = (dict(text_encoder=text_encoder(size), text_encoder_2=text_encoder(size, projection=True),
                     tokenizer_2=tokenizer) if xl else dict(text_encoder=text_encoder(size)))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], norm_num_groups=4, latent_channels=4,
        sample_size=16, layers_per_block=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1, prediction_type=prediction)
    parts = dict(vae=vae, tokenizer=tokenizer, unet=unet(xl), scheduler=scheduler, **encoders)
    pipe = (StableDiffusionXLPipeline(**parts) if xl else StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False))
    pipe.save_pretrained(folder)
    return folder


def save_random_sd15(folder: Path) -> Path:
    """A random-weight pipeline of Stable Diffusion 1.5's sizes (860M-param UNet at 64x64 latents = 512 px, its
    83M-param VAE, a CLIP ViT-L-sized text encoder) over the character tokenizer: throughput without weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = character_tokenizer(folder / "_vocab")
    tokenizer.model_max_length = 77
    size = len(tokenizer.get_vocab())
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=size, hidden_size=768, intermediate_size=3072,
                                        num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                        bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=size - 1))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.x's UNet
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def t5_encoder(size: int, width: int = 32):
    """A 1-layer T5 encoder of width `width` over the character vocabulary (the T5-XXL slot of SD3 / Flux)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=size, d_model=width, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=size - 1, eos_token_id=size - 1)
    return T5EncoderModel(config)


def save_tiny_sd3(folder: Path) -> Path:
    """A tiny StableDiffusion3Pipeline (two CLIPs with projections, a T5, the tiny SD3 transformer reading their
    32-wide embeddings, an AutoencoderKL with a shift factor, FlowMatchEulerDiscreteScheduler shift 3.0), saved.

    The T5 slot's tokenizer is the character CLIPTokenizer: no sentencepiece model is needed offline.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from tests.helpers.latent_models import SD3_CONFIG, randomized, vae

    tokenizer = character_tokenizer(folder / "_vocab")
    size = len(tokenizer.get_vocab())
    torch.manual_seed(0)
    clips = dict(text_encoder=text_encoder(size, projection=True), text_encoder_2=text_encoder(size, projection=True))
    transformer = randomized(SD3Transformer2DModel(**{**SD3_CONFIG, "joint_attention_dim": 32,
                                                      "pooled_projection_dim": 32}), 0)
    StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae(),
                             tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=tokenizer,
                             text_encoder_3=t5_encoder(size), **clips).save_pretrained(folder)
    return folder


def save_tiny_flux(folder: Path) -> Path:
    """A tiny FluxPipeline (a CLIP for the pooled embedding, a 16-wide T5, the tiny Flux transformer with a guidance
    embedding, the shifted AutoencoderKL, FlowMatchEulerDiscreteScheduler without dynamic shifting), saved."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from tests.helpers.latent_models import FLUX_CONFIG, randomized, vae

    tokenizer = character_tokenizer(folder / "_vocab")
    size = len(tokenizer.get_vocab())
    torch.manual_seed(0)
    transformer = randomized(FluxTransformer2DModel(**{**FLUX_CONFIG, "pooled_projection_dim": 16}), 0)
    FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(), tokenizer=tokenizer,
                 tokenizer_2=tokenizer, text_encoder=text_encoder(size),
                 text_encoder_2=t5_encoder(size, width=16)).save_pretrained(folder)
    return folder
