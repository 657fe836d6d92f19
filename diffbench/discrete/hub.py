"""Public masked-diffusion checkpoints behind the discrete denoiser contract: MDLM via transformers; SEDD named.

MDLM (Sahoo et al. 2024; kuleshov-group/mdlm-owt) loads as a transformers AutoModelForMaskedLM with
trust_remote_code: forward(input_ids, timesteps) -> logits [B, L, V + 1] over the GPT-2 vocabulary
(V = 50257) plus the MASK id V. Its SUBS parameterisation gives the denoiser's probabilities: the
MASK logit is set to -inf before the softmax (masked positions never predict MASK) and unmasked
positions carry their token over. mdlm-owt was trained without time conditioning, so, as MDLM's
`_process_sigma` does, `timesteps` is zero unless time_conditioning is on (then the log-linear
sigma(t) = -log(1 - (1 - eps) t) of MDLM's default noise). Hub models have no exact truth: only
samples, their unigram entropy and `diffbench sample --lm` perplexity measure them.

SEDD (Lou et al. 2024; louaaron/sedd-small) is not a transformers model: it needs the `model` package
of github.com/louaaron/Score-Entropy-Discrete-Diffusion (SEDD.from_pretrained) and flash-attn (CUDA
only), and it outputs scores, not probabilities; its model kind says so in one line.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import torch
from torch import Tensor

from diffbench.assetstore import HUB_FILES, hub_folder
from diffbench.discrete.registry import register_model
from diffbench.errors import AssetMissing, UsageError, first_line

MDLM_HUB_ID = "kuleshov-group/mdlm-owt"
SEDD_HUB_ID = "louaaron/sedd-small"
GPT2_VOCAB = 50257  # MDLM's MASK id is this: the GPT-2 vocabulary's size
LOGLINEAR_EPS = 1e-3  # MDLM's log-linear noise: sigma(t) = -log(1 - (1 - eps) t)
REMOTE_CODE = [*HUB_FILES, "*.py"]  # trust_remote_code models ship their modelling code


class HubMaskedLM:
    """A masked LM with MDLM's forward(input_ids, timesteps) behind the contract: SUBS probabilities [B, L, V]."""

    def __init__(self, net: Any, vocab: int, length: int, time_conditioning: bool):
        self.net, self.vocab, self.length, self.time_conditioning = net.eval(), vocab, length, time_conditioning

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> HubMaskedLM:
        """The network on `device` (in place)."""
        self.net.to(device)
        return self

    def sigma(self, t: Tensor) -> Tensor:
        """The `timesteps` MDLM's backbone gets at times t [B]: zeros without time conditioning."""
        if not self.time_conditioning:
            return torch.zeros_like(t, dtype=torch.float32)
        return (-torch.log1p(-(1 - LOGLINEAR_EPS) * t.double())).float()

    @torch.no_grad()
    def __call__(self, tokens: Tensor, t: Tensor) -> Tensor:
        """SUBS: softmax of the logits with MASK at -inf at masked positions, one-hot at unmasked ones (float64)."""
        logits = self.net(input_ids=tokens, timesteps=self.sigma(t)).logits[..., :self.vocab + 1].double()
        logits[..., self.vocab] = -torch.inf
        probs = torch.softmax(logits, -1)[..., :self.vocab]
        kept = tokens != self.vocab  # one-hot rows written in place: [B, L, V] is ~0.4 GB a sequence for GPT-2
        probs[kept] = torch.nn.functional.one_hot(tokens[kept], self.vocab).double()
        return probs


@contextmanager
def no_progress_bar() -> Iterator[None]:
    """transformers' weight-loading bar off (stderr keeps only diffbench's lines), restored after."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_masked_lm(path: str, revision: str | None = None) -> Any:
    """The transformers masked LM of a local folder or hub id (offline unless downloads are allowed)."""
    from huggingface_hub.constants import HF_HUB_CACHE
    from transformers import AutoModelForMaskedLM

    folder = hub_folder(path, "model.path", f"a save_pretrained folder or a hub id in the Hugging Face cache "
                                            f"({HF_HUB_CACHE})", revision, REMOTE_CODE)
    try:
        with no_progress_bar():
            return AutoModelForMaskedLM.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True)
    except (OSError, ValueError, ImportError) as err:
        why = first_line(err)[:160]
        raise AssetMissing(f"model.path={path}: {folder} is not a loadable masked LM ({why})") from None


@register_model("mdlm_hub")
def mdlm_hub(path: str = MDLM_HUB_ID, revision: str | None = None, length: int = 1024, vocab: int = GPT2_VOCAB,
             time_conditioning: bool = False) -> HubMaskedLM:
    """A public MDLM checkpoint (model=mdlm-owt): sequences of `length` GPT-2 tokens, MASK id = vocab."""
    net = load_masked_lm(str(path), revision)
    outputs = int(net.config.vocab_size)
    if outputs < vocab + 1:
        raise UsageError(f"model.vocab={vocab}: the network has {outputs} outputs, fewer than vocab + 1 (the MASK id)")
    return HubMaskedLM(net, vocab, length, time_conditioning)


@register_model("sedd_hub")
def sedd_hub(path: str = SEDD_HUB_ID) -> NoReturn:
    """SEDD checkpoints (model=sedd-small) are not transformers models: a one-line error says what they need."""
    raise UsageError(f"model.path={path}: SEDD checkpoints cannot load through transformers; they need the `model` "
                     "package of github.com/louaaron/Score-Entropy-Discrete-Diffusion and flash-attn (CUDA), and "
                     f"give scores, not probabilities; use model=mdlm-owt ({MDLM_HUB_ID})")
