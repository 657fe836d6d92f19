"""NFE budget -> time grid -> token samples from per-index noise, with passes counted per sample."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffbench.discrete.contract import CountingDiscreteDenoiser, DiscreteDenoiser, all_masked, time_grid
from diffbench.discrete.registry import DiscreteSpec
from diffbench.noise import NoiseSource


@dataclass(frozen=True)
class DiscretePlan:
    """One sampler configuration on one time grid: everything a batch needs except noise."""

    sampler: DiscreteSpec
    options: dict[str, Any]
    times: Tensor  # t from 1 (all masked) to 0 (clean)
    nfe_declared: int | None

    @property
    def steps(self) -> int:
        return len(self.times) - 1

    @property
    def sigmas(self) -> Tensor:
        """The grid's noise levels for the row's span columns: the mask levels t."""
        return self.times


def make_plan(spec: DiscreteSpec, nfe: int, length: int, options: Mapping[str, Any] | None = None) -> DiscretePlan:
    """Resolve a sampler, NFE budget and sequence length into a plan (UsageError on bad input)."""
    bound = spec.bind(options or {})
    steps = spec.steps_for_nfe(nfe, length)
    return DiscretePlan(spec, bound, time_grid(steps), spec.nfe_for(steps))


@dataclass
class TokenBatch:
    """Token samples [B, L] for a list of indices and the passes each sample took."""

    indices: list[int]
    tokens: Tensor
    passes: Tensor  # [B] int64: forward passes per sample


def sample_tokens(model: DiscreteDenoiser, plan: DiscretePlan, indices: Sequence[int], seed: int) -> TokenBatch:
    """Run the plan's sampler on samples `indices` on the model's device; sample i depends only on (seed, i)."""
    denoiser = CountingDiscreteDenoiser(model, len(indices))
    noise = NoiseSource(seed, indices, model.device)
    x = all_masked(len(indices), model.length, model.vocab, model.device)
    tokens = plan.sampler.fn(denoiser, x, plan.times.to(model.device), noise=noise, **plan.options)
    return TokenBatch(list(indices), tokens, denoiser.counts)
