"""The final-step convention of the multistep DPM families (final_step, lower_order_below): the authors' DPM-Solver
code (denoise-to-zero outside the lowered steps) and diffusers' threshold, exactly; each name's default is its
reference's; points whose convention did not change keep their keys."""
from __future__ import annotations

import inspect

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

# Each name's default convention: the authors' dpm-solver code where the name is theirs, k-diffusion's where the name
# is k-diffusion's (dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde: nothing lowered before its final denoise), diffusers' for
# dpmpp_3m_diffusers; the *_taylor variants keep the convention of the name they vary.
DEFAULT_CONVENTION = {"dpm_solver_2m": ("separate", 10), "dpm_solver_3m": ("separate", 10),
                      "dpm_solver_3m_taylor": ("separate", 10), "dpmpp_3m": ("separate", 10),
                      "dpmpp_3m_taylor": ("separate", 10), "dpmpp_3m_sde_taylor": ("separate", 10),
                      "dpmpp_2m": ("counted", 10), "dpmpp_2m_sde": ("counted", 10), "dpmpp_3m_sde": ("counted", 10),
                      "dpmpp_3m_diffusers": ("counted", 15)}


@pytest.mark.parametrize("solver", ["dpmpp_3m", "dpm_solver_3m", "dpmpp_2m"])
def test_separate_final_step_is_the_authors_denoise_to_zero(solver):
    """final_step="separate" on [..., s_min, 0] = lowered multistep on [..., s_min], then x = D(x, s_min)."""
    grid = GRIDS["karras"](6)
    separate, _ = run_diffbench(solver, grid, {"final_step": "separate"})
    ode, _ = run_diffbench(solver, grid[:-1], {"lower_order_final": True})
    assert relative_difference(separate, ConvDenoiser()(ode, float(grid[-2]))) <= TOLERANCE
    counted, _ = run_diffbench(solver, grid, {"final_step": "counted"})
    assert relative_difference(separate, counted) > 1e-6


def test_lower_order_below_15_is_diffusers_rule():
    """diffusers lowers the step before the step to 0 below 15 steps: dpmpp_3m_diffusers (lower_order_below=15)
    matches it at 10 steps, dpmpp_3m with diffusers' counting but the authors' threshold 10 does not."""
    case = CASES["dpmpp_3m_diffusers"]
    scheduler, sigmas = scheduler_on_grid(case, "karras", 10, "epsilon")
    theirs = run_diffusers(scheduler, sigma_levels(scheduler), sigmas[-1], [])
    assert relative_difference(run_diffbench("dpmpp_3m_diffusers", sigmas)[0], theirs) <= TOLERANCE
    assert relative_difference(run_diffbench("dpmpp_3m", sigmas, {"final_step": "counted"})[0], theirs) > 1e-6


@pytest.mark.parametrize("solver", sorted(DEFAULT_CONVENTION))
def test_default_convention_of_every_multistep_name(solver):
    """Config defaults (the registered name's options) and Python API defaults (the function's) are the reference's."""
    spec, (final_step, below) = SOLVERS[solver], DEFAULT_CONVENTION[solver]
    assert (spec.options()["final_step"], spec.options()["lower_order_below"]) == (final_step, below)
    if not spec.defaults.keys() & {"final_step", "lower_order_below"}:
        signature = inspect.signature(spec.fn).parameters
        assert (signature["final_step"].default, signature["lower_order_below"].default) == (final_step, below)


def test_convention_stays_settable_on_names_that_differ_in_it():
    """dpmpp_3m and dpmpp_3m_diffusers differ only in their convention defaults, which stay options of both."""
    assert {"final_step", "lower_order_below"}.isdisjoint(SOLVERS["dpmpp_3m"].fixed())
    sigmas = GRIDS["karras"](8)
    diffusers_convention = {"final_step": "counted", "lower_order_below": 15}
    assert relative_difference(run_diffbench("dpmpp_3m", sigmas, diffusers_convention)[0],
                               run_diffbench("dpmpp_3m_diffusers", sigmas)[0]) == 0


def test_default_convention_keeps_config_hashes():
    """Convention options at the values from before they existed are left out of the hash; any other value is hashed."""
    default, = compose_points([["solver=dpmpp_2m"]])
    explicit, = compose_points([["solver=dpmpp_2m", "solver.final_step=counted", "solver.lower_order_below=10"]])
    separate, = compose_points([["solver=dpmpp_2m", "solver.final_step=separate"]])
    assert config_hash(default) == config_hash(explicit) != config_hash(separate)
    authors, = compose_points([["solver=dpmpp_3m"]])
    assert authors.solver.final_step == "separate"  # the row records the convention (solver options are row columns)


def test_bad_convention_is_a_usage_error_before_the_model_runs():
    """The checks come before the first model call, so the plan-time dry run reports them."""
    grid, schedule = GRIDS["karras"](8), ConvDenoiser().schedule
    with pytest.raises(UsageError, match="solver.final_step 'last' is unknown"):
        SOLVERS["dpmpp_3m"].dry_run({"final_step": "last"}, schedule, grid, (2, 6, 6))
    with pytest.raises(UsageError, match="lower_order_below must be >= 1"):
        SOLVERS["dpm_solver_2m"].dry_run({"lower_order_below": 0}, schedule, grid, (2, 6, 6))
    assert torch.isfinite(run_diffbench("dpmpp_2m", GRIDS["logsnr"](3), {"final_step": "separate"})[0]).all()
