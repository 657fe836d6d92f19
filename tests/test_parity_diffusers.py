"""Parity with diffusers 0.42's VP schedulers: the same float64 conv network seen through each prediction type.

diffusers runs its own loop in VP coordinates (x_vp = x / sqrt(1 + sigma^2)) with every scheduler
tensor in float64; grids are written into the scheduler (sigmas, or alphas_cumprod at its timesteps),
and its own spacing is read back from it. The full matrix is slow-marked; a fast subset stays.
"""
from __future__ import annotations

import pytest

from tests.helpers.parity import TOLERANCE
from tests.helpers.parity_matrix import DIFFERENT, GRID_NAMES, MATCHING, STEPS, diffusers_parity

pytest.importorskip("diffusers")


@pytest.mark.parametrize("solver", MATCHING)
def test_matches_diffusers_fast(solver):
    assert diffusers_parity(solver, "karras", 6) <= TOLERANCE


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc_bh2"])
def test_parameterisations_match_diffusers(solver, prediction):
    assert diffusers_parity(solver, "logsnr", 6, prediction) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("grid", GRID_NAMES)
@pytest.mark.parametrize("solver", MATCHING)
def test_matches_diffusers(solver, grid, steps):
    assert diffusers_parity(solver, grid, steps) <= TOLERANCE


@pytest.mark.parametrize("solver", sorted(DIFFERENT))
def test_documented_differences_are_real(solver):
    """A counterpart listed as different is far from diffbench's solver (else it belongs in the matrix)."""
    assert diffusers_parity(solver, "karras", 10) > 1e-4
