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


def save_tiny_pipeline(folder: Path, prediction: str = "epsilon") -> Path:
    """Build the tiny pipeline (seeded weights) with an SD-1.5-like Euler scheduler config and save it to folder."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = character_tokenizer(folder / "_vocab")
    torch.manual_seed(0)
    size = len(tokenizer.get_vocab())
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=size, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=TOKENS, bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=size - 1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 8], norm_num_groups=4, latent_channels=4,
        sample_size=16, layers_per_block=1)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1, prediction_type=prediction)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
