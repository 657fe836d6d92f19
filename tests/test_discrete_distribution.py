"""Discrete samplers agree with the exact Markov chain in distribution (chi-square tests on enumerable cases).

First-hitting sampling is exact for exact conditionals; MDLM's ancestral sampler (run through its
cache, which gives the same samples) approaches it as steps grow. Each test uses disjoint sample
indices for the two samples it compares, and a control shows the test rejects a coarse grid.
"""
from __future__ import annotations

import pytest

from diffbench.discrete import SAMPLERS, make_model
from diffbench.discrete.metrics import chi_square_fit, chi_square_two_sample
from diffbench.discrete.sampling import make_plan, sample_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def sequences(chain, name: str, steps: int, start: int, n: int):
    """Sequence indices of n samples (sample indices start .. start + n - 1)."""
    batch = sample_tokens(chain, make_plan(SAMPLERS[name], steps, chain.length), range(start, start + n), seed=0)
    return chain.sequence_index(batch.tokens)


def agreement(vocab: int, length: int, n: int, steps: int) -> tuple[float, float, float]:
    """p-values: first-hitting vs the truth, ancestral vs the truth, ancestral vs first-hitting."""
    chain = make_model("markov_chain", {"vocab": vocab, "length": length})
    p = chain.probabilities()
    first = sequences(chain, "first_hitting", length, 0, n)
    ancestral = sequences(chain, "mdlm_ancestral_cache", steps, n, n)
    return chi_square_fit(first, p), chi_square_fit(ancestral, p), chi_square_two_sample(ancestral, first, len(p))


def test_ancestral_and_first_hitting_agree_small():
    assert min(agreement(vocab=3, length=3, n=4000, steps=64)) > 0.01


def test_chi_square_rejects_a_two_step_ancestral_sampler():
    """The control: two steps reveal tokens in parallel, so the joint law is off (the test has power)."""
    fit, ancestral_fit, versus = agreement(vocab=3, length=3, n=4000, steps=2)
    assert fit > 0.01 and ancestral_fit < 1e-6 and versus < 1e-6


@pytest.mark.slow
def test_ancestral_and_first_hitting_agree_1e5_samples():
    """The issue's test: V=4, L=5 (1024 sequences), 1e5 samples each, ancestral with 512 steps."""
    assert min(agreement(vocab=4, length=5, n=100_000, steps=512)) > 0.01
