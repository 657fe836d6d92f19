"""Parity with k-diffusion 0.1.1's sampling.py: same float64 conv denoiser, grid, initial and injected noise.

The full matrix (solver x grid x steps) is slow-marked; one Karras case per solver stays in the fast suite.
"""
from __future__ import annotations

import pytest
import torch

from tests.helpers.parity import GRIDS, TOLERANCE, k_sampling, relative_difference, run_diffbench, run_k

try:
    k_sampling()
    HAVE_K = True
except ImportError:  # k-diffusion, torchsde or torchdiffeq missing (pip install 'diffbench[test]')
    HAVE_K = False
pytestmark = pytest.mark.skipif(not HAVE_K, reason="needs k-diffusion, torchsde, torchdiffeq (diffbench[test])")

# diffbench solver -> (k-diffusion function, its options); the grid is passed unchanged (ends at 0).
K_CASES: dict[str, tuple[str, dict]] = {
    "euler": ("sample_euler", {}),
    "ddim": ("sample_euler", {}),
    "heun": ("sample_heun", {}),
    "euler_ancestral": ("sample_euler_ancestral", {"eta": 1.0}),
    "dpmpp_2s": ("sample_dpmpp_2s_ancestral", {"eta": 0.0}),
    "dpmpp_2m": ("sample_dpmpp_2m", {}),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {"eta": 1.0, "solver_type": "midpoint"}),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {"eta": 1.0}),
}
STEPS = (6, 10)


def k_parity(solver: str, grid: str, steps: int) -> float:
    """Max relative difference between diffbench's solver and its k-diffusion counterpart."""
    sigmas = GRIDS[grid](steps)
    function, options = K_CASES[solver]
    ours, noise = run_diffbench(solver, sigmas)
    return relative_difference(ours, run_k(function, sigmas, noise, **options))


@pytest.mark.parametrize("solver", sorted(K_CASES))
def test_matches_k_diffusion_fast(solver):
    assert k_parity(solver, "karras", 6) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("solver", sorted(K_CASES))
def test_matches_k_diffusion(solver, grid, steps):
    assert k_parity(solver, grid, steps) <= TOLERANCE


def test_parity_is_sensitive():
    """The comparison can fail: a different solver on the same inputs is far from the reference."""
    sigmas = GRIDS["karras"](6)
    ours, _ = run_diffbench("heun", sigmas)
    assert relative_difference(ours, run_k("sample_euler", sigmas, [])) > 1e-3
    assert ours.dtype == torch.float64
