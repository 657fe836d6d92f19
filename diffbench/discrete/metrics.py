"""Exact sample quality of token samples under a known model (diffbench.discrete.markov).

Sequence TV and KL(empirical || true) need all V^L sequences (enumerable models); per-position
marginal TV, unigram entropy and likelihood work at any size. Every metric is lower-is-better (the
entropy and likelihood ones are gaps to the true value), with a bootstrap interval over samples.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from diffbench.columns import MetricValue
from diffbench.discrete.markov import MarkovChain
from diffbench.errors import check
from diffbench.metrics.uncertainty import bootstrap

SEQUENCE_METRICS = ("tv", "kl")  # need an enumerable model
METRICS = (*SEQUENCE_METRICS, "tv_marginal", "unigram_entropy_gap", "nll_gap")

Statistic = Callable[[np.ndarray], float]


def entropy(p: np.ndarray) -> float:
    """Entropy in nats of a probability vector."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def exact_model(model: Any) -> MarkovChain:
    """The chain samples are measured against: the model itself, or the chain a network was trained on (`truth`)."""
    return model if isinstance(model, MarkovChain) else model.truth


def has_truth(model: Any) -> bool:
    """Whether samples of `model` can be measured exactly (hub checkpoints have no known distribution)."""
    return isinstance(model, MarkovChain) or hasattr(model, "truth")


class SampleEntropy:
    """Token samples [N, L] of a model without exact truth: no metrics, only the samples' unigram entropy."""

    def __init__(self, tokens: Tensor, vocab: int):
        self.counts = np.bincount(tokens.cpu().numpy().ravel(), minlength=vocab)

    def values(self, names: Sequence[str], n_boot: int, level: float) -> dict[str, MetricValue]:
        """No exact metric applies (check_names refuses every name)."""
        return {}

    def extra(self) -> dict[str, Any]:
        """The samples' unigram entropy (nats), the one row column beside NFE and time."""
        return {"unigram_entropy": entropy(self.counts / self.counts.sum())}


def token_quality(model: Any, tokens: Tensor) -> TokenQuality | SampleEntropy:
    """Exact quality under the model's truth, or only the samples' entropy for a model without one."""
    return TokenQuality(model, tokens) if has_truth(model) else SampleEntropy(tokens, model.vocab)


class TokenQuality:
    """The exact metrics of token samples [N, L] under `model` (or its `truth`), each a statistic of sample indices."""

    def __init__(self, model: Any, tokens: Tensor):
        model = exact_model(model)
        self.model, self.n = model, len(tokens)
        tokens = tokens.to(model.device)
        self.tokens = tokens.cpu().numpy()
        self.nll = (-model.log_prob(tokens)).cpu().numpy()
        self.marginals = model.marginals().cpu().numpy()
        self.unigram_true = self.marginals.mean(0)
        self.entropy_true = model.entropy()
        if model.enumerable:
            self.seq = model.sequence_index(tokens).cpu().numpy()
            self.p = model.probabilities().cpu().numpy()

    def empirical(self, idx: np.ndarray) -> np.ndarray:
        """Empirical sequence distribution of the samples idx [V^L]."""
        return np.bincount(self.seq[idx], minlength=len(self.p)) / len(idx)

    def tv(self, idx: np.ndarray) -> float:
        return 0.5 * float(np.abs(self.empirical(idx) - self.p).sum())

    def kl(self, idx: np.ndarray) -> float:
        q = self.empirical(idx)
        seen = q > 0
        return float((q[seen] * np.log(q[seen] / self.p[seen])).sum())

    def position_counts(self, idx: np.ndarray) -> np.ndarray:
        """Empirical per-position marginals [L, V] of the samples idx."""
        v = self.model.vocab
        onehot = np.eye(v)[self.tokens[idx]]
        return onehot.mean(0)

    def tv_marginal(self, idx: np.ndarray) -> float:
        return 0.5 * float(np.abs(self.position_counts(idx) - self.marginals).sum(1).mean())

    def unigram_entropy(self, idx: np.ndarray) -> float:
        return entropy(self.position_counts(idx).mean(0))

    def unigram_entropy_gap(self, idx: np.ndarray) -> float:
        return abs(self.unigram_entropy(idx) - entropy(self.unigram_true))

    def nll_gap(self, idx: np.ndarray) -> float:
        return abs(float(self.nll[idx].mean()) - self.entropy_true)

    def values(self, names: Sequence[str], n_boot: int, level: float) -> dict[str, MetricValue]:
        """Each named metric, with a bootstrap interval when n_boot >= 2."""
        return {name: self._value(getattr(self, name), n_boot, level) for name in names}

    def _value(self, statistic: Statistic, n_boot: int, level: float) -> MetricValue:
        if n_boot < 2:
            return MetricValue(statistic(np.arange(self.n)))
        iv = bootstrap(statistic, self.n, n_boot, level)
        return MetricValue(iv.estimate, iv.low, iv.high)

    def extra(self) -> dict[str, Any]:
        """Row columns beside the metrics: the sample and true entropies and mean NLL (nats)."""
        everything = np.arange(self.n)
        return {"unigram_entropy": self.unigram_entropy(everything), "unigram_entropy_true": entropy(self.unigram_true),
                "nll": float(self.nll.mean()), "entropy_true": self.entropy_true}


def check_names(names: Sequence[str], model: Any) -> None:
    """Metric names a discrete point can compute (UsageError naming the valid ones)."""
    if not names:
        return
    check(has_truth(model),
          f"metrics {', '.join(names)} need a model with a known distribution; {type(model).__name__} (a hub "
          "checkpoint) has none: set metrics.names=[] and read the samples, their unigram entropy, or "
          "`diffbench sample --lm <causal LM>` perplexity")
    model = exact_model(model)
    unknown = [n for n in names if n not in METRICS]
    check(not unknown, f"metrics {', '.join(unknown)} do not apply to discrete models; use metrics=discrete "
                       f"(names from: {', '.join(METRICS)})")
    sequence = [n for n in names if n in SEQUENCE_METRICS]
    check(not sequence or model.enumerable,
          f"metrics {', '.join(sequence)} need an enumerable model ({model.vocab}^{model.length} sequences are too "
          "many); "
          "drop them from metrics.names")


def chi_square_two_sample(a: Tensor, b: Tensor, cells: int, min_expected: float = 5.0) -> float:
    """p-value of a chi-square test that two samples of cell indices share one distribution.

    Cells expected to hold fewer than `min_expected` pooled samples are merged into one.
    """
    from scipy.stats import chi2_contingency

    table = np.stack([np.bincount(a.numpy(), minlength=cells), np.bincount(b.numpy(), minlength=cells)]).astype(float)
    small = table.sum(0) < min_expected
    table = np.concatenate([table[:, ~small], table[:, small].sum(1, keepdims=True)], 1)
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table)[1])


def chi_square_fit(a: Tensor, p: Tensor, min_expected: float = 5.0) -> float:
    """p-value of a chi-square goodness-of-fit test of cell indices `a` against probabilities p."""
    from scipy.stats import chisquare

    observed = np.bincount(a.numpy(), minlength=len(p)).astype(float)
    expected = p.numpy() * len(a)
    small = expected < min_expected
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return float(chisquare(observed[keep], expected[keep])[1])
