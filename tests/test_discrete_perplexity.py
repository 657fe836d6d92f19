"""Generative perplexity under a causal LM: a tiny random GPT-2 built from its config, saved to a folder."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffbench.discrete.perplexity import generative_perplexity, load_causal_lm
from diffbench.errors import AssetMissing, UsageError
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A 1-layer GPT-2 with random weights and a 64-token vocabulary, saved as a local model folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(folder)
    return folder


def test_perplexity_equals_the_lms_own_loss(gpt2_dir):
    lm = load_causal_lm(str(gpt2_dir))
    tokens = torch.randint(64, (10, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = float(lm(input_ids=tokens, labels=tokens).loss)  # transformers' shifted mean cross-entropy
    assert generative_perplexity(tokens, lm, batch_size=3) == pytest.approx(math.exp(loss), rel=1e-5)


def test_a_uniform_lm_has_perplexity_equal_to_its_vocabulary(gpt2_dir):
    lm = load_causal_lm(str(gpt2_dir))
    with torch.no_grad():
        lm.get_output_embeddings().weight.zero_()  # tied to the input embeddings: every logit 0
    assert generative_perplexity(torch.randint(64, (4, 8)), lm) == pytest.approx(64.0)


def test_bad_input_and_missing_lms_are_one_line(gpt2_dir, monkeypatch):
    lm = load_causal_lm(str(gpt2_dir))
    with pytest.raises(UsageError, match="outside the LM's vocabulary of 64"):
        generative_perplexity(torch.full((2, 4), 64), lm)
    monkeypatch.delenv("DIFFBENCH_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetMissing, match="causal LM 'no-such-org/no-such-lm' not found") as info:
        load_causal_lm("no-such-org/no-such-lm")
    assert "\n" not in str(info.value)


def test_sample_command_reports_generative_perplexity(gpt2_dir, tmp_path, capsys):
    summary, samples = tmp_path / "s.json", tmp_path / "s.npz"
    code, printed, _ = run_cli(capsys, "sample", "experiment=discrete_markov", "solver=first_hitting", "nfe=5",
                               "n_samples=16", "--lm", str(gpt2_dir), "--json", str(summary), "-o", str(samples),
                               f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}")
    assert code == 0 and "generative perplexity" in printed
    tokens = torch.from_numpy(np.load(samples)["tokens"])
    expected = generative_perplexity(tokens, load_causal_lm(str(gpt2_dir)))
    assert json.loads(summary.read_text())["gen_ppl"] == pytest.approx(expected)
