"""A tiny random masked LM with MDLM's remote-code interface: forward(input_ids, timesteps) -> logits [B, L, V + 1].

Saved with save_pretrained (this file travels with it as the folder's modelling code), it loads the way
kuleshov-group/mdlm-owt does: AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class TinyMDLMConfig(PretrainedConfig):
    """`vocab_size` counts the MASK token, as MDLM's config does (50258 for GPT-2 + MASK)."""

    model_type = "tiny_mdlm"

    def __init__(self, vocab_size: int = 17, length: int = 8, width: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.length, self.width = vocab_size, length, width


class TinyMDLM(PreTrainedModel):
    """Embedding + time embedding + one attention layer + a head over every id, MASK included."""

    config_class = TinyMDLMConfig

    def __init__(self, config: TinyMDLMConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.time = nn.Linear(1, config.width)
        self.mix = nn.TransformerEncoderLayer(config.width, 2, 2 * config.width, dropout=0.0, batch_first=True)
        self.head = nn.Linear(config.width, config.vocab_size)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, timesteps: torch.Tensor, **kwargs) -> MaskedLMOutput:
        h = self.embed(input_ids) + self.time(timesteps.float()[:, None])[:, None]
        return MaskedLMOutput(logits=self.head(self.mix(h)))


def save_tiny_mdlm(folder: Path, vocab: int, length: int, seed: int = 0) -> Path:
    """A random TinyMDLM over `vocab` tokens + MASK saved with its code in `folder`."""
    torch.manual_seed(seed)
    TinyMDLMConfig.register_for_auto_class()
    TinyMDLM.register_for_auto_class("AutoModelForMaskedLM")
    model = TinyMDLM(TinyMDLMConfig(vocab_size=vocab + 1, length=length))
    with torch.no_grad():
        model.head.bias[vocab] = 10.0  # the raw network prefers MASK: SUBS must zero it
    model.save_pretrained(folder)
    return folder
