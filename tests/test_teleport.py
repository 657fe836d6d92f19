"""Analytical teleportation: exact on isotropic Gaussian data, handover order, grid compression, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import gaussian
from diffbench.sampling import make_plan
from diffbench.schedules import EDM
from diffbench.solvers.teleport import compressed_grid, gaussian_flow
from diffbench.steps import make_sigmas
from tests.helpers.convergence import error_at

MEAN, STD = 0.3, 0.5
MATCHED = {"teleport_sigma": 4.0, "data_mean": MEAN, "data_std": STD}


@pytest.fixture
def iso():
    """Isotropic Gaussian data: the model teleportation assumes, so teleporting is exact."""
    return gaussian(shape=(4,), mean=MEAN, std=STD)


@pytest.fixture
def x_T():
    return torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0


def test_gaussian_flow_is_the_exact_ode(iso, x_T):
    assert torch.allclose(gaussian_flow(x_T, 20.0, 3.0, MEAN, STD), iso.exact_ode(x_T, 20.0, 3.0), rtol=0, atol=1e-12)


def test_compressed_uniform_logsnr_grid_is_the_grid_below_teleport_sigma():
    full = make_sigmas("uniform_logsnr", 9, EDM()).double()
    below = make_sigmas("uniform_logsnr", 9, EDM(), sigma_max=10.0).double()
    assert torch.allclose(compressed_grid(full, 10.0), below, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name,order", [("teleport_heun", 2), ("teleport_dpmpp_2m", 2)])
def test_order_with_matching_statistics_is_the_handover_solvers(iso, x_T, name, order):
    """Teleporting 20 -> 4 exactly, the error is the handed-over solver's on [0.02, 4]: its order, over 10..32 steps."""
    steps = (10, 12, 16, 24, 32)
    errs = [error_at(iso, name, n, x_T, MATCHED) for n in steps]
    slope = -float(np.polyfit(np.log(steps), np.log(errs), 1)[0])
    assert abs(slope - order) <= 0.3, (slope, errs)


def test_teleporting_beats_the_plain_solver_at_equal_nfe(iso, x_T):
    """Same 8 Heun steps spent on [0.02, 4] after an exact jump rather than on [0.02, 20]: error 0.031 against 0.059."""
    assert error_at(iso, "teleport_heun", 8, x_T, MATCHED) < 0.7 * error_at(iso, "heun", 8, x_T)


def test_mismatched_statistics_leave_the_closed_form_bias(x_T):
    """Data N(0, 1) teleported as N(0, 0.5^2) to sigma = 4: the bias is the two Gaussian flows' gap, carried exactly."""
    model = gaussian(shape=(4,), mean=0.0, std=1.0)
    out = error_at(model, "teleport_heun", 400, x_T, {"teleport_sigma": 4.0, "data_std": 0.5})
    # The exact flow after teleporting maps the sigma=4 discrepancy linearly to sigma=0.02.
    gap = (math.sqrt((0.25 + 16) / (0.25 + 400)) - math.sqrt(17 / 401)) * math.sqrt((1 + 0.02**2) / 17)
    expected = abs(gap) * float(x_T.pow(2).mean().sqrt())
    assert out == pytest.approx(expected, rel=2e-3)  # Heun at 400 steps: 0.1% short of the limit


def test_teleport_sigma_below_the_grid_is_a_usage_error(iso):
    with pytest.raises(UsageError, match="teleport_sigma"):
        make_plan("teleport_heun", 9, iso.schedule, solver_options={"teleport_sigma": 0.001}, shape=(4,))
