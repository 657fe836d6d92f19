"""Ancestral / stochastic DPM-Solver++(2S): parity with k-diffusion on the same noise, weak orders, eta = 0 limits."""
from __future__ import annotations

import pytest
import torch

from diffbench.noise import NoiseSource
from diffbench.schedules import EDM
from diffbench.solvers import SOLVERS
from diffbench.steps import make_sigmas
from tests.helpers.reference_impls import RandomNetDenoiser, k_sampling
from tests.helpers.weak_order import weak_order

PAIRS = [("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral"), ("dpmpp_sde", "sample_dpmpp_sde")]


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_matches_k_diffusion_on_the_same_noise(ours, theirs):
    """Float64, random network, Karras grid to 0, eta = 0.7: k-diffusion fed our draws in order agrees to 1e-10."""
    sampling = k_sampling()
    model = RandomNetDenoiser(dim=6)
    sigmas = make_sigmas("karras", 10, EDM()).double()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    out = SOLVERS[ours].fn(model, x, sigmas, noise=NoiseSource(7, range(5)), eta=0.7)
    draws = NoiseSource(7, range(5))
    ref = getattr(sampling, theirs)(model, x, sigmas, disable=True, eta=0.7,
                                    noise_sampler=lambda sigma, sigma_next: draws.randn_like(x))
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "dpmpp_sde"])
def test_eta_zero_is_dpmpp_2s(gauss, name):
    """Without noise both are DPM-Solver++(2S) (r = 1/2), evaluation for evaluation."""
    sigmas = make_sigmas("karras", 8, gauss.schedule).double()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80.0
    plain = SOLVERS["dpmpp_2s"].fn(gauss, x, sigmas)
    assert torch.allclose(SOLVERS[name].fn(gauss, x, sigmas, eta=0.0), plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["dpmpp_2s_ancestral", "dpmpp_sde"])
def test_weak_order_is_the_registered_order(name):
    """Exact mean + variance error on 1-D Gaussian data over 32..128 steps: slope within 0.3 of `order`."""
    slope, errs = weak_order(name, (32, 48, 64, 96, 128))
    assert abs(slope - SOLVERS[name].order) <= 0.3, (slope, errs)
