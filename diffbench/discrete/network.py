"""The "real network" discrete model: a tiny transformer trained on sequences of the exact Markov chain.

The network sees tokens with masks (MASK = vocab) and predicts every position's clean token; like MDLM
it carries unmasked tokens over, and it ignores t (masked diffusion is time-agnostic, Zheng et al. 2024).
Its samples are measured exactly against the chain it was trained on (`truth`), so the metrics show
the network's error and the sampler's together. Made by scripts/train_discrete_transformer.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbench import assetstore
from diffbench.discrete.markov import MarkovChain
from diffbench.discrete.registry import register_model
from diffbench.errors import AssetMissing

CHECKPOINT = "markov-transformer.pt"
ASSET = assetstore.Asset(label="the discrete transformer checkpoint", filenames=(CHECKPOINT,),
                         config_key="model.path", package=("diffbench", f"assets/{CHECKPOINT}"),
                         sha256={CHECKPOINT: "69d7a1ee43bb1b2a0d1400d21db380d2e3588c0c6be719cd0eb4b26b6f887da5"})


class MaskedTransformer(nn.Module):
    """Bidirectional pre-norm transformer encoder: tokens [B, L] (MASK = vocab) -> clean-token logits [B, L, V]."""

    def __init__(self, vocab: int, length: int, width: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab + 1, width)
        self.position = nn.Parameter(torch.zeros(length, width))
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(tokens) + self.position))


def masked_loss(net: MaskedTransformer, clean: Tensor, vocab: int, generator: torch.Generator) -> Tensor:
    """Cross-entropy on masked positions, mask ratio t ~ U(0, 1) per sequence (minimised by the exact conditionals)."""
    t = torch.rand(len(clean), 1, generator=generator)
    mask = torch.rand(clean.shape, generator=generator) < t
    logits = net(torch.where(mask, vocab, clean))
    return nn.functional.cross_entropy(logits[mask], clean[mask])


class NetworkDenoiser:
    """A trained MaskedTransformer behind the discrete denoiser contract; `truth` is the chain of its data."""

    def __init__(self, net: MaskedTransformer, truth: MarkovChain):
        self.net, self.truth = net.eval(), truth
        self.vocab, self.length = truth.vocab, truth.length

    @property
    def device(self) -> torch.device:
        return self.truth.device

    def to(self, device: torch.device | str) -> NetworkDenoiser:
        """The network and its chain on `device` (in place)."""
        self.net.to(device)
        self.truth.to(device)
        return self

    @torch.no_grad()
    def __call__(self, tokens: Tensor, t: Tensor) -> Tensor:
        """p(x_i | tokens) [B, L, V] in float64; one-hot at unmasked positions."""
        probs = torch.softmax(self.net(tokens).double(), -1)
        clean = nn.functional.one_hot(tokens.clamp(max=self.vocab - 1), self.vocab).double()
        return torch.where((tokens == self.vocab)[..., None], probs, clean)


def save_checkpoint(path: Path, net: MaskedTransformer, chain: dict[str, Any], arch: dict[str, Any],
                    meta: dict[str, Any]) -> None:
    """Weights (fp32), the chain's and network's options and how it was trained, in one torch file."""
    torch.save({"format": "diffbench-markov-transformer", "chain": chain, "arch": arch, "meta": meta,
                "state": net.state_dict()}, path)


def load_checkpoint(path: str) -> NetworkDenoiser:
    """The denoiser of a checkpoint file (AssetMissing, one line, when absent or not such a file)."""
    found = assetstore.resolve(ASSET, None if path == CHECKPOINT else path)
    try:
        data = torch.load(found, map_location="cpu", weights_only=True)
        truth = MarkovChain(**data["chain"])
        net = MaskedTransformer(truth.vocab, truth.length, **data["arch"])
        net.load_state_dict(data["state"])
    except (RuntimeError, KeyError, TypeError, OSError) as err:
        raise AssetMissing(ASSET.broken_message(found, err)) from None
    return NetworkDenoiser(net, truth)


@register_model("markov_transformer")
def markov_transformer(path: str = CHECKPOINT) -> NetworkDenoiser:
    """A tiny transformer trained on the Markov chain's sequences (model=markov_transformer; the shipped checkpoint)."""
    return load_checkpoint(str(path))
