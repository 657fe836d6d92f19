"""Discrete diffusion: per-index noise, the exact Markov-chain model, NFE counting, every sampler's contract."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from diffbench.discrete import SAMPLERS, make_model
from diffbench.discrete.contract import CountingDiscreteDenoiser, sample_categorical
from diffbench.discrete.sampling import make_plan, sample_tokens
from diffbench.errors import UsageError
from diffbench.noise import NoiseSource
from diffbench.solvers import SOLVERS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chain():
    return make_model("markov_chain", {"vocab": 4, "length": 5})


def test_uniforms_depend_only_on_seed_and_index():
    whole = NoiseSource(3, range(10)).rand((2, 5))
    part = NoiseSource(3, [7, 2]).rand((2, 5))
    assert torch.equal(part, whole[[7, 2]])
    assert whole.dtype == torch.float64 and 0 < whole.min() and whole.max() < 1
    assert not torch.equal(whole, NoiseSource(4, range(10)).rand((2, 5)))


def test_conditionals_equal_brute_force_enumeration(chain):
    every = torch.tensor(list(itertools.product(range(4), repeat=5)))
    p = chain.probabilities()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert chain.entropy() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-12)
    tokens = torch.tensor([[4, 1, 4, 4, 0], [4, 4, 4, 4, 4], [2, 4, 3, 4, 1]])
    got = chain.conditionals(tokens)
    for b, row in enumerate(tokens):
        consistent = ((every == row) | (row == 4)).all(1)
        for i in range(5):
            brute = torch.zeros(4, dtype=torch.float64).index_add_(0, every[consistent, i], p[consistent])
            assert torch.allclose(got[b, i], brute / brute.sum(), atol=1e-12)


def test_marginals_equal_enumeration(chain):
    every = torch.tensor(list(itertools.product(range(4), repeat=5)))
    p = chain.probabilities()
    brute = torch.stack([torch.zeros(4, dtype=torch.float64).index_add_(0, every[:, i], p) for i in range(5)])
    assert torch.allclose(chain.marginals(), brute, atol=1e-12)


def test_bad_model_options_are_usage_errors():
    with pytest.raises(UsageError, match="model.vocab"):
        make_model("markov_chain", {"vocab": 64})
    with pytest.raises(UsageError, match="no option"):
        make_model("markov_chain", {"width": 3})


def test_names_do_not_clash_with_continuous_solvers():
    assert not set(SAMPLERS) & set(SOLVERS)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samples_are_clean_and_batch_size_invariant(chain, name):
    spec = SAMPLERS[name]
    plan = make_plan(spec, 5 if spec.one_pass_per_token else 4, chain.length)
    whole = sample_tokens(chain, plan, range(12), seed=1)
    parts = [sample_tokens(chain, plan, idx, seed=1) for idx in (range(5), range(5, 12))]
    assert torch.equal(whole.tokens, torch.cat([b.tokens for b in parts]))
    assert torch.equal(whole.passes, torch.cat([b.passes for b in parts]))
    assert whole.tokens.min() >= 0 and whole.tokens.max() < chain.vocab  # no MASK left
    if plan.nfe_declared is not None:
        assert (whole.passes == plan.nfe_declared).all()


class Recording:
    """A model that records every input it is given (to count the steps that changed a token)."""

    def __init__(self, model):
        self.model, self.vocab, self.length, self.device = model, model.vocab, model.length, model.device
        self.inputs: list[torch.Tensor] = []

    def __call__(self, tokens, t):
        self.inputs.append(tokens.clone())
        return self.model(tokens, t)


def test_cached_nfe_counts_steps_that_changed_a_token(chain):
    steps, n = 20, 64
    uncached = Recording(chain)
    exact = sample_tokens(uncached, make_plan(SAMPLERS["mdlm_ancestral"], steps, 5), range(n), seed=2)
    cached = sample_tokens(chain, make_plan(SAMPLERS["mdlm_ancestral_cache"], steps, 5), range(n), seed=2)
    assert torch.equal(cached.tokens, exact.tokens)  # caching is exact for a time-agnostic denoiser
    states = torch.stack(uncached.inputs)  # [steps, n, L]: the state each step starts from
    changed = (states[1:] != states[:-1]).any(2).sum(0)  # steps (but the last) that changed a token
    assert torch.equal(cached.passes, 1 + changed)
    assert cached.passes.max() < steps and (exact.passes == steps).all()


def test_counting_wrapper_counts_rows_passed():
    chain = make_model("markov_chain", {"vocab": 3, "length": 2})
    counter = CountingDiscreteDenoiser(chain, 4)
    x = torch.full((4, 2), 3)
    counter(x, torch.ones(4))
    counter(x[[1, 3]], torch.ones(2), torch.tensor([1, 3]))
    assert counter.counts.tolist() == [1, 2, 1, 2] and counter.nfe_per_sample == 1.5


def test_nfe_rules(chain):
    assert make_plan(SAMPLERS["first_hitting"], 5, 5).steps == 5
    with pytest.raises(UsageError, match="one pass per token"):
        make_plan(SAMPLERS["first_hitting"], 4, 5)
    with pytest.raises(UsageError, match="<= 5"):
        make_plan(SAMPLERS["llada_confidence"], 6, 5)
    with pytest.raises(UsageError, match="precision"):
        make_plan(SAMPLERS["mdlm_ancestral"], 4, 5, {"precision": "float16"})
    assert make_plan(SAMPLERS["mdlm_ancestral_cache"], 8, 5).nfe_declared is None


def test_float32_gumbel_truncates_rare_categories():
    """A category of probability 1e-9 wins on a uniform 1e-12 below 1 in float64, never in float32 (24 bits)."""
    probs = torch.tensor([[1e-9, 1.0]], dtype=torch.float64)
    u = torch.tensor([[1.0 - 1e-12, 0.5]], dtype=torch.float64)
    assert int(sample_categorical(probs, u, "float64")) == 0
    assert int(sample_categorical(probs, u, "float32")) == 1


def test_float32_draws_a_rare_category_at_the_truncated_rate():
    """Against a weight-1 category, one of weight w wins in float32 at r / (e^r - 1) of its float64 rate, r = 2^-24 / w.

    It wins only when its uniform is within ~64 w of 1, so uniforms are drawn there (rates are per unit of that band).
    """
    w, band, n = 2.0**-24, 64 * 2.0**-24, 400_000
    gen = torch.Generator().manual_seed(0)
    u = torch.stack([1 - band * torch.rand(n, generator=gen, dtype=torch.float64),
                     torch.rand(n, generator=gen, dtype=torch.float64)], 1)
    probs = torch.tensor([w, 1.0], dtype=torch.float64).expand(n, 2)
    wins = {p: float((sample_categorical(probs, u, p) == 0).double().mean()) for p in ("float64", "float32")}
    assert wins["float64"] * band == pytest.approx(w, rel=0.05)  # the exact rate w / (1 + w)
    r = 2.0**-24 / w
    assert wins["float32"] / wins["float64"] == pytest.approx(r / math.expm1(r), rel=0.05)


def remasked_positions(chain, eta: float) -> int:
    """How often a revealed token was masked again between consecutive ReMDM steps."""
    model = Recording(chain)
    sample_tokens(model, make_plan(SAMPLERS["remdm"], 16, 5, {"eta": eta}), range(64), seed=3)
    states = torch.stack(model.inputs)
    return int(((states[:-1] != chain.vocab) & (states[1:] == chain.vocab)).sum())


def test_remdm_remasks_only_with_eta(chain):
    assert remasked_positions(chain, 0.0) == 0
    assert remasked_positions(chain, 0.5) > 0
    with pytest.raises(UsageError, match="eta"):
        make_plan(SAMPLERS["remdm"], 6, 5, {"eta": 2.0})


@pytest.mark.slow
def test_float32_ancestral_sampling_moves_samples_to_likelier_tokens():
    """Many ancestral steps on a chain with a flat tail (each tail token ~3e-4): float32 drops rare tokens.

    Same noise in both runs, so every sample float32 changes was changed by the truncation: it must
    gain log-likelihood, and the float32 samples must hold fewer tokens of probability < 1e-3.
    """
    chain = make_model("markov_chain", {"vocab": 32, "length": 4, "concentration": 0.02, "tail": 0.01})
    runs = {p: sample_tokens(chain, make_plan(SAMPLERS["mdlm_ancestral_cache"], 20_000, 4, {"precision": p}),
                             range(128), seed=0).tokens for p in ("float64", "float32")}
    changed = (runs["float64"] != runs["float32"]).any(1)
    gain = chain.log_prob(runs["float32"][changed]) - chain.log_prob(runs["float64"][changed])
    rare = {p: int((chain.transition[tokens[:, :-1], tokens[:, 1:]] < 1e-3).sum()) for p, tokens in runs.items()}
    assert int(changed.sum()) >= 2 and bool((gain > 0).all())
    assert rare["float32"] < rare["float64"]
