"""Generative perplexity: exp of the mean per-token NLL of token samples under a user-supplied causal LM.

As in MDLM / SEDD evaluations (GPT-2 large scores the samples), the samples' token ids are the LM's
ids (a text model sampled in the LM tokenizer's vocabulary). The LM is any transformers
AutoModelForCausalLM: a local folder, or a hub id found offline in the Hugging Face cache (a download
only with DIFFBENCH_ALLOW_DOWNLOAD=1); missing offline is one line (AssetMissing). Low generative
perplexity alone rewards low entropy (Zheng et al. 2024): read it with the samples' entropy.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffbench.assetstore import ALLOW_DOWNLOAD_ENV, download_allowed
from diffbench.errors import AssetMissing, check


def load_causal_lm(name: str, device: torch.device | str = "cpu") -> Any:
    """A causal LM from a local folder or a hub id (offline unless downloads are allowed), in eval mode."""
    from transformers import AutoModelForCausalLM

    local = Path(name).expanduser()
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(local) if local.is_dir() else name,
                                                  local_files_only=not download_allowed())
    except (OSError, ValueError) as err:
        why = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise AssetMissing(f"causal LM '{name}' not found ({why}); give a local model folder, put it in the "
                           f"Hugging Face cache, or set {ALLOW_DOWNLOAD_ENV}=1 to download it") from None
    return lm.eval().to(device)


@torch.no_grad()
def generative_perplexity(tokens: Tensor, lm: Any, batch_size: int = 64) -> float:
    """exp(mean NLL per predicted token) of sequences [N, L] (LM token ids) under `lm`, each given those before."""
    check(tokens.shape[1] >= 2, f"generative perplexity needs sequences of length >= 2 (got {tokens.shape[1]})")
    vocab = int(lm.config.vocab_size)
    check(int(tokens.max()) < vocab, f"token id {int(tokens.max())} is outside the LM's vocabulary of {vocab}")
    device = next(lm.parameters()).device
    total = 0.0
    for start in range(0, len(tokens), batch_size):
        ids = tokens[start:start + batch_size].to(device)
        logits = lm(input_ids=ids).logits[:, :-1].double()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1),
                                                         reduction="sum"))
    return math.exp(total / (tokens.shape[0] * (tokens.shape[1] - 1)))
