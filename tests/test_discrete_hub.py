"""Public masked-diffusion checkpoints (diffbench.discrete.hub) on a tiny random MDLM-interface model, offline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffbench import columns as col
from diffbench.discrete.hub import mdlm_hub
from diffbench.engine.sweep import run_sweep
from tests.helpers.cli import run_cli
from tests.helpers.tiny_mdlm import save_tiny_mdlm

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, LENGTH = 16, 8


@pytest.fixture(scope="module")
def mdlm_dir(tmp_path_factory):
    return save_tiny_mdlm(tmp_path_factory.mktemp("mdlm"), VOCAB, LENGTH)


def hub_args(folder, tmp_path, *extra: str) -> list[str]:
    """experiment=mdlm_owt pointed at the tiny model's folder."""
    return ["experiment=mdlm_owt", f"model.path={folder}", f"model.length={LENGTH}", f"model.vocab={VOCAB}",
            "n_samples=8", "batch_size=4", f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}", *extra]


def test_probabilities_follow_subs(mdlm_dir):
    model = mdlm_hub(str(mdlm_dir), length=LENGTH, vocab=VOCAB)
    tokens = torch.randint(VOCAB + 1, (6, LENGTH), generator=torch.Generator().manual_seed(0))
    probs = model(tokens, torch.full((6,), 0.5, dtype=torch.float64))
    logits = model.net(input_ids=tokens, timesteps=torch.zeros(6)).logits.double()
    assert torch.softmax(logits, -1)[..., VOCAB].min() > 0.5  # the raw network mostly predicts MASK
    masked = tokens == VOCAB
    assert probs.shape == (6, LENGTH, VOCAB) and torch.allclose(probs.sum(-1), torch.ones(6, LENGTH).double())
    assert torch.allclose(probs[masked], torch.softmax(logits[..., :VOCAB], -1)[masked])  # MASK zeroed, renormalised
    assert torch.equal(probs[~masked].argmax(-1), tokens[~masked]) and bool((probs[~masked].max(-1).values == 1).all())


def test_time_reaches_the_network_only_with_time_conditioning(mdlm_dir):
    tokens = torch.full((2, LENGTH), VOCAB)
    early, late = torch.full((2,), 0.9, dtype=torch.float64), torch.full((2,), 0.1, dtype=torch.float64)
    agnostic = mdlm_hub(str(mdlm_dir), length=LENGTH, vocab=VOCAB)
    assert torch.equal(agnostic(tokens, early), agnostic(tokens, late))
    conditioned = mdlm_hub(str(mdlm_dir), length=LENGTH, vocab=VOCAB, time_conditioning=True)
    assert not torch.allclose(conditioned(tokens, early), conditioned(tokens, late))


def test_sample_command_runs_on_a_hub_model(mdlm_dir, tmp_path, capsys):
    summary, samples = tmp_path / "s.json", tmp_path / "s.npz"
    code, printed, _ = run_cli(capsys, "sample", *hub_args(mdlm_dir, tmp_path, "solver=mdlm_ancestral", "nfe=4"),
                               "--json", str(summary), "-o", str(samples))
    assert code == 0 and "no exact truth" in printed
    tokens = np.load(samples)["tokens"]
    assert tokens.shape == (8, LENGTH) and tokens.min() >= 0 and tokens.max() < VOCAB  # no MASK left
    data = json.loads(summary.read_text())
    assert data["nfe_measured"] == 4 and 0 < data["unigram_entropy"] <= np.log(VOCAB)


def test_sweep_runs_on_a_hub_model(mdlm_dir, tmp_path):
    outcome = run_sweep(hub_args(mdlm_dir, tmp_path, "solver=mdlm_ancestral_cache,first_hitting",
                                 "nfe=8"), progress=False)
    assert (outcome.ran, outcome.failed) == (2, 0)
    df = outcome.frame().set_index(col.SOLVER)
    assert df.loc["first_hitting", col.NFE_MEASURED] == LENGTH
    assert df.loc["mdlm_ancestral_cache", col.NFE_MEASURED] <= 8
    assert df["unigram_entropy"].between(0, np.log(VOCAB)).all()


@pytest.mark.parametrize("extra, needles", [
    (("metrics.names=[tv,nll_gap]",), ("known distribution", "unigram entropy", "--lm")),
    (("model.path=no-such-org/no-such-mdlm",), ("no-such-org/no-such-mdlm", "Hugging Face cache",
                                                "DIFFBENCH_ALLOW_DOWNLOAD=1")),
])
def test_bad_hub_input_is_one_line(mdlm_dir, tmp_path, capsys, monkeypatch, extra, needles):
    monkeypatch.delenv("DIFFBENCH_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(capsys, "sample", *hub_args(mdlm_dir, tmp_path, "solver=mdlm_ancestral", "nfe=4"), *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and all(n in err for n in needles), err
    assert not (tmp_path / "out").exists()


def test_sedd_names_what_it_needs(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", "experiment=mdlm_owt", "model=sedd-small", "solver=mdlm_ancestral",
                           "nfe=4", f"out={tmp_path / 'out'}")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "louaaron/sedd-small" in err and "Score-Entropy-Discrete-Diffusion" in err and "flash-attn" in err
