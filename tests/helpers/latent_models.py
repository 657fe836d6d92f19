"""Tiny random-weight diffusers latent components (SD3 transformer, DiT, AutoencoderKL) built from config dicts."""
from __future__ import annotations

from pathlib import Path

import torch

from diffbench.models.flow_transformer import PromptEmbeddings

LATENT = (4, 8, 8)  # latent [C, H, W] of the tiny transformers; the tiny VAE decodes it to 3 x 16 x 16
SD3_CONFIG = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
                  num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
                  pos_embed_max_size=8)
FLUX_CONFIG = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
                   num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True,
                   axes_dims_rope=(2, 2, 4))
DIT_CONFIG = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                  sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=4)
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                  norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
DIT_BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def randomized(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Seeded default initialisation, with zero-initialised layers drawn too, so outputs depend on every input."""
    torch.manual_seed(seed)
    module.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def sd3_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel
    return randomized(SD3Transformer2DModel(**SD3_CONFIG), seed)


def flux_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel
    return randomized(FluxTransformer2DModel(**FLUX_CONFIG), seed)


def dit_transformer(seed: int = 0):
    from diffusers import DiTTransformer2DModel
    return randomized(DiTTransformer2DModel(**DIT_CONFIG), seed)


def vae(seed: int = 0, shift_factor: float | None = 0.06):
    from diffusers import AutoencoderKL
    return randomized(AutoencoderKL(**VAE_CONFIG, scaling_factor=1.5, shift_factor=shift_factor), seed, 0.1)


def prompt_embeddings(prompts: int = 3, seed: int = 0) -> PromptEmbeddings:
    """Random sequence (L = 5, D = 16) and pooled (P = 8) embeddings of `prompts` prompts and the empty one."""
    g = torch.Generator().manual_seed(seed)
    return PromptEmbeddings(torch.randn(prompts, 5, 16, generator=g), torch.randn(prompts, 8, generator=g),
                            torch.randn(5, 16, generator=g), torch.randn(8, generator=g))


def save_pipeline(root: Path, transformer, scheduler) -> Path:
    """A pipeline folder as save_pretrained writes it: transformer/, vae/, scheduler/ (text encoders left out)."""
    transformer.save_pretrained(root / "transformer")
    vae().save_pretrained(root / "vae")
    scheduler.save_pretrained(root / "scheduler")
    return root
