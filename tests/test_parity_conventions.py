"""The final-step convention of the multistep DPM families (final_step, lower_order_below): the authors' DPM-Solver
code (denoise-to-zero outside the lowered steps) and diffusers' threshold, exactly; default points keep their keys."""
from __future__ import annotations

import pytest
import torch

from diffbench.config import compose_points, config_hash
from diffbench.errors import UsageError
from diffbench.solvers import SOLVERS
from tests.helpers.parity import (
    TOLERANCE,
    ConvDenoiser,
    relative_difference,
    run_diffbench,
    run_diffusers,
    sigma_levels,
)
from tests.helpers.parity_matrix import CASES, GRIDS, scheduler_on_grid

MULTISTEP = ["dpm_solver_2m", "dpm_solver_3m", "dpmpp_2m", "dpmpp_3m", "dpmpp_3m_diffusers", "dpmpp_3m_sde"]


@pytest.mark.parametrize("solver", ["dpmpp_3m", "dpm_solver_3m", "dpmpp_2m"])
def test_separate_final_step_is_the_authors_denoise_to_zero(solver):
    """final_step="separate" on [..., s_min, 0] = lowered multistep on [..., s_min], then x = D(x, s_min)."""
    grid = GRIDS["karras"](6)
    separate, _ = run_diffbench(solver, grid, {"final_step": "separate"})
    ode, _ = run_diffbench(solver, grid[:-1], {"lower_order_final": True})
    assert relative_difference(separate, ConvDenoiser()(ode, float(grid[-2]))) <= TOLERANCE
    counted, _ = run_diffbench(solver, grid)
    assert relative_difference(separate, counted) > 1e-6


def test_lower_order_below_15_is_diffusers_rule():
    """diffusers lowers the step before the step to 0 below 15 steps: lower_order_below=15 at 10 steps matches it."""
    case = CASES["dpmpp_3m_diffusers"]
    scheduler, sigmas = scheduler_on_grid(type(case)(case.scheduler, {**case.config, "lower_order_final": True}),
                                          "karras", 10, "epsilon")
    theirs = run_diffusers(scheduler, sigma_levels(scheduler), sigmas[-1], [])
    ours, _ = run_diffbench("dpmpp_3m_diffusers", sigmas, {"lower_order_below": 15})
    assert relative_difference(ours, theirs) <= TOLERANCE
    assert relative_difference(run_diffbench("dpmpp_3m_diffusers", sigmas)[0], theirs) > 1e-6


@pytest.mark.parametrize("solver", MULTISTEP)
def test_convention_options_on_every_multistep_family(solver):
    options = SOLVERS[solver].options()
    assert options["final_step"] == "counted" and options["lower_order_below"] == 10


def test_default_convention_keeps_config_hashes():
    """The convention options at their defaults are left out of the hash; any other value is hashed."""
    default, = compose_points([["solver=dpmpp_3m"]])
    explicit, = compose_points([["solver=dpmpp_3m", "solver.final_step=counted", "solver.lower_order_below=10"]])
    separate, = compose_points([["solver=dpmpp_3m", "solver.final_step=separate"]])
    assert config_hash(default) == config_hash(explicit) != config_hash(separate)
    assert "final_step" in default.solver  # the row records the convention (solver options are row columns)


def test_bad_convention_is_a_usage_error_before_the_model_runs():
    """The checks come before the first model call, so the plan-time dry run reports them."""
    grid, schedule = GRIDS["karras"](8), ConvDenoiser().schedule
    with pytest.raises(UsageError, match="solver.final_step 'last' is unknown"):
        SOLVERS["dpmpp_3m"].dry_run({"final_step": "last"}, schedule, grid, (2, 6, 6))
    with pytest.raises(UsageError, match="lower_order_below must be >= 1"):
        SOLVERS["dpm_solver_2m"].dry_run({"lower_order_below": 0}, schedule, grid, (2, 6, 6))
    assert torch.isfinite(run_diffbench("dpmpp_2m", GRIDS["logsnr"](3), {"final_step": "separate"})[0]).all()
