"""Discrete (masked / absorbing) diffusion: the denoiser contract, exact models, samplers and metrics.

Importing this package registers every sampler and model kind (diffbench.discrete.registry).
"""
from __future__ import annotations

from diffbench.discrete import confidence, first_hitting, markov, mdlm, remdm, tau_leaping
from diffbench.discrete.registry import MODELS, SAMPLERS, DiscreteSpec, get_sampler, make_model

__all__ = ["MODELS", "SAMPLERS", "DiscreteSpec", "confidence", "first_hitting", "get_sampler", "make_model", "markov",
           "mdlm", "remdm", "tau_leaping"]
