"""An exact test model: a Markov chain over a small vocabulary whose masked conditionals are exact.

Given the unmasked tokens, forward-backward over the chain gives every masked position's exact
conditional p(x_i | unmasked), so a sampler's only errors are its own; sequence probabilities,
marginals, entropy and log-likelihoods are closed form, and V^L sequences are enumerable for small V, L.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from diffbench.discrete.registry import register_model
from diffbench.errors import check

MAX_VOCAB, MAX_LENGTH = 32, 16
MAX_ENUMERABLE = 2**16  # sequences a table of exact probabilities may hold


class MarkovChain:
    """x_0 ~ initial, x_i | x_{i-1} ~ transition[x_{i-1}]: Dirichlet(concentration) rows drawn from `seed`.

    `tail` > 0 mixes every row with the uniform distribution (weight `tail`): a flat tail of rare
    tokens of probability >= tail / vocab, where float32 Gumbel-max truncation acts (discrete_tables.py).
    """

    def __init__(self, vocab: int, length: int, concentration: float, seed: int, tail: float = 0.0):
        check(2 <= vocab <= MAX_VOCAB, f"model.vocab must be in 2..{MAX_VOCAB} (got {vocab})")
        check(1 <= length <= MAX_LENGTH, f"model.length must be in 1..{MAX_LENGTH} (got {length})")
        check(concentration > 0, f"model.concentration must be > 0 (got {concentration})")
        check(0 <= tail < 1, f"model.tail must be in [0, 1) (got {tail})")
        rng = np.random.default_rng(seed)
        self.vocab, self.length = vocab, length
        self.initial = _with_tail(rng.dirichlet([concentration] * vocab), tail)
        self.transition = _with_tail(rng.dirichlet([concentration] * vocab, size=vocab), tail)

    @property
    def device(self) -> torch.device:
        return self.initial.device

    def to(self, device: torch.device | str) -> MarkovChain:
        """The chain with its tables on `device` (in place)."""
        self.initial, self.transition = self.initial.to(device), self.transition.to(device)
        return self

    def __call__(self, tokens: Tensor, t: Tensor) -> Tensor:
        """Exact p(x_i | unmasked tokens) [B, L, V]; time-agnostic, as absorbing diffusion's posterior is."""
        return self.conditionals(tokens)

    def conditionals(self, tokens: Tensor) -> Tensor:
        """Forward-backward over the chain with unmasked positions clamped (MASK = vocab)."""
        obs = self._evidence(tokens)
        fwd, bwd = torch.empty_like(obs), torch.ones_like(obs)
        fwd[:, 0] = _normalise(self.initial * obs[:, 0])
        for i in range(1, self.length):  # Forward pass.
            fwd[:, i] = _normalise((fwd[:, i - 1] @ self.transition) * obs[:, i])
        for i in range(self.length - 2, -1, -1):  # Backward pass.
            bwd[:, i] = _normalise((obs[:, i + 1] * bwd[:, i + 1]) @ self.transition.T)
        return _normalise(fwd * bwd)

    def _evidence(self, tokens: Tensor) -> Tensor:
        """[B, L, V]: one-hot at unmasked positions, all ones at masked ones."""
        clamped = torch.nn.functional.one_hot(tokens.clamp(max=self.vocab - 1), self.vocab).double()
        return torch.where((tokens == self.vocab)[..., None], torch.ones_like(clamped), clamped)

    def log_prob(self, tokens: Tensor) -> Tensor:
        """Exact log p(x) [B] of clean sequences [B, L]."""
        logp = self.initial.log()[tokens[:, 0]]
        return logp + self.transition.log()[tokens[:, :-1], tokens[:, 1:]].sum(1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n exact draws [n, L] from the chain (training data for the network model)."""
        x = torch.empty(n, self.length, dtype=torch.int64)
        x[:, 0] = torch.multinomial(self.initial.cpu(), n, replacement=True, generator=generator)
        for i in range(1, self.length):
            x[:, i] = torch.multinomial(self.transition.cpu()[x[:, i - 1]], 1, generator=generator)[:, 0]
        return x

    def marginals(self) -> Tensor:
        """Exact per-position marginals [L, V]."""
        rows = [self.initial]
        for _ in range(1, self.length):
            rows.append(rows[-1] @ self.transition)
        return torch.stack(rows)

    def entropy(self) -> float:
        """Exact sequence entropy in nats: H(x_0) + sum_i E[H(transition[x_{i-1}])]."""
        row_entropy = -(self.transition * self.transition.log()).sum(1)
        h0 = -(self.initial * self.initial.log()).sum()
        return float(h0 + (self.marginals()[:-1] @ row_entropy).sum())

    @property
    def enumerable(self) -> bool:
        """Whether all V^L sequences fit a table of exact probabilities."""
        return self.vocab**self.length <= MAX_ENUMERABLE

    def probabilities(self) -> Tensor:
        """Exact p of every sequence [V^L], indexed by `sequence_index`."""
        check(self.enumerable, f"{self.vocab}^{self.length} sequences are too many to enumerate (max {MAX_ENUMERABLE})")
        every = torch.tensor(list(itertools.product(range(self.vocab), repeat=self.length)), device=self.device)
        return self.log_prob(every).exp()

    def sequence_index(self, tokens: Tensor) -> Tensor:
        """Each sequence's index in `probabilities` (base-V digits, position 0 most significant)."""
        powers = self.vocab ** torch.arange(self.length - 1, -1, -1, device=tokens.device)
        return (tokens * powers).sum(1)


def _with_tail(rows: np.ndarray, tail: float) -> Tensor:
    """Probability rows mixed with the uniform distribution (weight `tail`), as a float64 tensor."""
    return torch.from_numpy((1 - tail) * rows + tail / rows.shape[-1])


def _normalise(p: Tensor) -> Tensor:
    """Rows of the last axis scaled to sum to one."""
    return p / p.sum(-1, keepdim=True)


@register_model("markov_chain")
def markov_chain(vocab: int = 4, length: int = 5, concentration: float = 0.5, seed: int = 0,
                 tail: float = 0.0) -> MarkovChain:
    """The exact Markov-chain test model (model=markov_chain; model=markov_tail has a flat tail of rare tokens)."""
    return MarkovChain(int(vocab), int(length), float(concentration), int(seed), float(tail))
