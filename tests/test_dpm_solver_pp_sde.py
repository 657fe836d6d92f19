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


class BrownianPath:
    """k-diffusion's noise_sampler(sigma, sigma_to) over one Brownian path in sigma built from our draws in order.

    Like BrownianTreeNoiseSampler, a second increment from the same sigma that contains the first one (dpmpp_sde's
    [sigma_next, sigma] after [sigma_mid, sigma]) reuses it: the two normalised increments are correlated.
    """

    def __init__(self, draws: NoiseSource, x: torch.Tensor):
        self.draws, self.x, self.last = draws, x, None

    def __call__(self, sigma, sigma_to):
        sigma, sigma_to = float(sigma), float(sigma_to)
        if self.last is not None and self.last[0] == sigma and sigma_to < self.last[1]:
            _, mid, first = self.last
            a, b = sigma - mid, mid - sigma_to
            return (a**0.5 * first + b**0.5 * self.draws.randn_like(self.x)) / (a + b) ** 0.5
        first = self.draws.randn_like(self.x)
        self.last = (sigma, sigma_to, first)
        return first


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_matches_k_diffusion_on_one_brownian_path(ours, theirs):
    """Float64, random network, Karras grid to 0, eta = 0.7: k-diffusion fed a Brownian path made of our draws in
    order (its BrownianTreeNoiseSampler's law) agrees to 1e-10."""
    sampling = k_sampling()
    model = RandomNetDenoiser(dim=6)
    sigmas = make_sigmas("karras", 10, EDM()).double()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    out = SOLVERS[ours].fn(model, x, sigmas, noise=NoiseSource(7, range(5)), eta=0.7)
    ref = getattr(sampling, theirs)(model, x, sigmas, disable=True, eta=0.7,
                                    noise_sampler=BrownianPath(NoiseSource(7, range(5)), x))
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)


def test_dpmpp_sde_stage_noises_are_one_brownian_path():
    """The two stages' normalised increments have the Brownian-tree correlation sqrt((s - s_mid) / (s - s_next))."""
    from diffbench.solvers.dpm_solver_pp import brownian_pair

    x = torch.zeros(1, 200_000, dtype=torch.float64)
    first, second = (z.flatten() for z in brownian_pair(NoiseSource(3, range(1)), x, 4.0, 1.0, 0.5))
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1]) - (3.0 / 3.5) ** 0.5) < 0.01
    assert abs(float(second.std()) - 1.0) < 0.01


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


def test_independent_noise_path_is_k_diffusion_fed_independent_draws():
    """noise_path=independent keeps the rule before 2026-12-05: the two stage noises drawn independently."""
    model = RandomNetDenoiser(dim=6)
    sigmas = make_sigmas("karras", 10, EDM()).double()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    out = SOLVERS["dpmpp_sde"].fn(model, x, sigmas, noise=NoiseSource(7, range(5)), eta=0.7, noise_path="independent")
    draws = NoiseSource(7, range(5))
    ref = k_sampling().sample_dpmpp_sde(model, x, sigmas, disable=True, eta=0.7,
                                        noise_sampler=lambda sigma, sigma_next: draws.randn_like(x))
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)
    brownian = SOLVERS["dpmpp_sde"].fn(model, x, sigmas, noise=NoiseSource(7, range(5)), eta=0.7)
    assert not torch.allclose(out, brownian, rtol=0, atol=1e-6)
