"""Tiny random-weight CLIP and DINOv2 models saved as save_pretrained folders (no downloads)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = "a photo of cat dog red blue car on the table".split()


def tiny_clip_folder(root: Path, seed: int = 0) -> Path:
    """A CLIPModel (2 layers, width 32, 32 px) with a CLIPProcessor whose tokenizer has a small local vocabulary."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = root / "tiny-clip"
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(set("".join(WORDS))):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    for word in WORDS:
        vocab.setdefault(word + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1, **layers),
                        vision_config=dict(image_size=32, patch_size=8, **layers), projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def tiny_dinov2_folder(root: Path, seed: int = 0) -> Path:
    """A Dinov2Model (2 layers, width 16, patch 14) trained-size 42 px (a 3 x 3 position grid, as 518 px is 37 x 37)."""
    from transformers import Dinov2Config, Dinov2Model

    folder = root / "tiny-dinov2"
    torch.manual_seed(seed)
    model = Dinov2Model(Dinov2Config(image_size=42, patch_size=14, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=2, num_attention_heads=4))
    with torch.no_grad():  # random position embeddings: the interpolation matters
        model.embeddings.position_embeddings.normal_()
    model.save_pretrained(folder)
    return folder
