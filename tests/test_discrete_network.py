"""The trained-network discrete model: training lowers the masked loss, the contract holds, and the shipped
checkpoint has learned its chain's conditionals (its samples are measured exactly against that chain)."""
from __future__ import annotations

import json

import pytest
import torch

from diffbench.discrete import SAMPLERS, make_model
from diffbench.discrete.markov import MarkovChain
from diffbench.discrete.metrics import TokenQuality
from diffbench.discrete.network import MaskedTransformer, NetworkDenoiser, masked_loss
from diffbench.discrete.sampling import make_plan, sample_tokens
from diffbench.errors import AssetMissing
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shipped():
    return make_model("markov_transformer", {})


def random_masks(chain: MarkovChain, n: int, seed: int) -> torch.Tensor:
    """Chain sequences with each position masked with probability 1/2."""
    gen = torch.Generator().manual_seed(seed)
    clean = chain.sample(n, gen)
    return torch.where(torch.rand(clean.shape, generator=gen) < 0.5, chain.vocab, clean)


def test_training_lowers_the_masked_loss_and_the_denoiser_keeps_the_contract():
    chain = MarkovChain(vocab=3, length=3, concentration=0.5, seed=0)
    torch.manual_seed(0)
    net = MaskedTransformer(3, 3, width=16, depth=1)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen, data = torch.Generator().manual_seed(0), chain.sample(2000, torch.Generator().manual_seed(1))
    losses = []
    for _ in range(60):
        loss = masked_loss(net, data[torch.randint(2000, (128,), generator=gen)], 3, gen)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    tokens = random_masks(chain, 64, 2)
    probs = NetworkDenoiser(net, chain)(tokens, torch.ones(64))
    assert probs.dtype == torch.float64 and torch.allclose(probs.sum(-1), torch.ones(64, 3, dtype=torch.float64))
    unmasked = tokens != 3
    assert bool((probs.argmax(-1)[unmasked] == tokens[unmasked]).all())
    assert bool((probs.max(-1).values[unmasked] == 1).all())


def test_shipped_checkpoint_learned_the_exact_conditionals(shipped):
    chain = shipped.truth
    tokens = random_masks(chain, 2048, 3)
    exact, learned = chain.conditionals(tokens), shipped(tokens, torch.ones(len(tokens)))
    masked = tokens == chain.vocab
    kl = (exact * (exact.clamp_min(1e-30).log() - learned.clamp_min(1e-30).log())).sum(-1)[masked]
    assert float(kl.mean()) < 0.05  # a guess of uniform conditionals: log 8 - 1.55 = 0.53 nats


def test_network_samples_are_close_to_its_chain(shipped):
    plan = make_plan(SAMPLERS["first_hitting"], shipped.length, shipped.length)
    quality = TokenQuality(shipped, sample_tokens(shipped, plan, range(4000), seed=0).tokens)
    values = quality.values(["tv_marginal", "nll_gap"], 0, 0.95)
    assert values["tv_marginal"].value < 0.1 and values["nll_gap"].value < 0.7  # shipped: 0.06 and 0.35 (chain: 0.006)


def test_sample_command_measures_the_network_against_its_chain(shipped, tmp_path, capsys):
    summary = tmp_path / "s.json"
    code, _, _ = run_cli(capsys, "sample", "model=markov_transformer", "steps=linear_mask", "metrics=discrete",
                         "solver=first_hitting", f"nfe={shipped.length}", "n_samples=64", "--json", str(summary),
                         f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}")
    assert code == 0 and json.loads(summary.read_text())["entropy_true"] == pytest.approx(shipped.truth.entropy())


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(AssetMissing, match="model.path"):
        make_model("markov_transformer", {"path": str(tmp_path / "none.pt")})
    code, _, err = run_cli(capsys, "sample", "model=markov_transformer", f"model.path={tmp_path / 'none.pt'}",
                           "steps=linear_mask", "metrics=discrete", "solver=first_hitting", "nfe=5",
                           f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "discrete transformer checkpoint" in err
