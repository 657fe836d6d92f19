"""DEIS rhoAB / LMS: exact Lagrange weights, and parity with k-diffusion's sample_lms in float64."""
from __future__ import annotations

import pytest
import torch

from diffbench.schedules import EDM
from diffbench.solvers import SOLVERS
from diffbench.solvers.deis import rhoab_coefficients
from diffbench.solvers.pndm import AB_COEFFS
from diffbench.steps import make_sigmas
from tests.helpers.reference_impls import RandomNetDenoiser, k_sampling


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_rhoab_weights_are_adams_bashforth_on_equal_steps(k):
    """On equal sigma steps the integrated Lagrange basis is the fixed-step Adams-Bashforth weights times h."""
    nodes = [5.0 + 0.5 * j for j in range(k)]  # newest first, steps of h = -0.5
    weights = rhoab_coefficients(5.0, 4.5, nodes)
    assert weights == pytest.approx([-0.5 * c for c in AB_COEFFS[k]], rel=1e-12)


def test_lms_matches_k_diffusion_sample_lms():
    """lms (4 points) equals k-diffusion's sample_lms on a random network, Karras grid ending at 0, to 1e-10."""
    sampling = k_sampling()
    model = RandomNetDenoiser(dim=6)
    sigmas = make_sigmas("karras", 12, EDM()).double()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    ours = SOLVERS["lms"].fn(model, x, sigmas, **SOLVERS["lms"].options())
    theirs = sampling.sample_lms(model, x, sigmas, disable=True)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10)


def test_rhork_local_error_is_fifth_order_and_its_step_to_zero_is_d(gauss):
    """One RK4 step's error shrinks ~2^5 = 32x when the step halves (sigma 10 -> 9 vs 9.5); a step to 0 returns D."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10.0

    def local_error(h: float) -> float:
        sigmas = torch.tensor([10.0, 10.0 - h], dtype=torch.float64)
        return float((SOLVERS["deis_rhork_4"].fn(gauss, x, sigmas) - gauss.exact_ode(x, 10.0, 10.0 - h)).abs().max())

    ratio = local_error(1.0) / local_error(0.5)
    assert 24 <= ratio <= 40, ratio
    to_zero = SOLVERS["deis_rhork_4"].fn(gauss, x, torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert torch.equal(to_zero, gauss(x, 0.5))
