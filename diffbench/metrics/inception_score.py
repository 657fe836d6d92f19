"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), mean and std over splits.

Follows the original TF code as StyleGAN's metrics do: the samples are cut into ``splits``
consecutive parts, each part's score uses its own marginal p(y), and the std is numpy's (ddof=0).
The class probabilities come from the extractor's logits (TF Inception: 1008 classes, no bias).
"""
from __future__ import annotations

import numpy as np
import torch

from diffbench.errors import check


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS from classifier logits [n, classes] -> (mean, std over the splits)."""
    n = len(logits)
    check(1 <= splits <= n, f"metrics.is_splits must be between 1 and the sample count {n} (got {splits})")
    log_p = torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits:(i + 1) * n // splits]
        # log of the part's marginal p(y) = mean_x p(y|x), computed in log space.
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))
