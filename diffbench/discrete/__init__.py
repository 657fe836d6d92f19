"""Discrete (masked / absorbing) diffusion: the denoiser contract, exact models, samplers and metrics.

Importing this package registers every sampler and model kind (diffbench.discrete.registry).
"""
from __future__ import annotations

from diffbench.discrete import confidence, first_hitting, hub, markov, mdlm, network, remdm, tau_leaping
from diffbench.discrete.metrics import check_names as check_metric_names
from diffbench.discrete.registry import MODELS, SAMPLERS, DiscreteSpec, get_sampler, make_model
from diffbench.discrete.sampling import DiscretePlan, make_plan

MASK_SCHEDULE = "linear_mask"  # the one masking schedule, alpha(t) = 1 - t, on a uniform grid in t

__all__ = ["MASK_SCHEDULE", "MODELS", "SAMPLERS", "DiscretePlan", "DiscreteSpec", "check_metric_names", "confidence",
           "first_hitting", "get_sampler", "hub", "make_model", "make_plan", "markov", "mdlm", "network", "remdm",
           "tau_leaping"]
