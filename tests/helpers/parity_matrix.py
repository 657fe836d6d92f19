"""The parity matrix: diffbench solvers against diffusers 0.42 and k-diffusion 0.1.1 counterparts.

Shared by tests/test_parity_*.py and scripts/parity_table.py (docs/PARITY.md). Every case runs the
same float64 conv denoiser, grid and noise on both sides (tests/helpers/parity.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tests.helpers.parity import (
    GRIDS,
    SIGMA_MAX,
    SIGMA_MIN,
    ConvDenoiser,
    discrete_levels,
    float64,
    initial_noise,
    k_sampling,
    relative_difference,
    run_diffbench,
    run_diffusers,
    run_k,
    run_k_singlestep,
    sigma_levels,
)

STEPS = (6, 10)

# k-diffusion ---------------------------------------------------------------------------------------

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
# Singlestep DPM-Solver-k against k-diffusion's DPMSolver.dpm_solver_k_step on grids of positive levels
# (the reference cannot step to sigma = 0); `steps` are grid steps.
K_SINGLESTEP = {"dpm_solver_1": 1, "dpm_solver_2": 2, "dpm_solver_3": 3}
SINGLESTEP_STEPS = (3, 5)
K_DIFFERENT = {
    "dpm_solver_fast": "k-diffusion (as the authors' code) spaces its outer steps uniformly in log-SNR whatever "
                       "their order and takes the paper's third-order update; dpm_solver_fast cuts the grid's "
                       "evaluations into outer steps and takes the Taylor update",
}


def k_parity(solver: str, grid: str, steps: int) -> float:
    """Max relative difference between diffbench's solver and its k-diffusion counterpart."""
    if solver in K_SINGLESTEP:
        sigmas = GRIDS[grid](steps + 1)[:-1]
        return relative_difference(run_diffbench(solver, sigmas)[0], run_k_singlestep(K_SINGLESTEP[solver], sigmas))
    sigmas = GRIDS[grid](steps)
    function, options = K_CASES[solver]
    ours, noise = run_diffbench(solver, sigmas)
    return relative_difference(ours, run_k(function, sigmas, noise, **options))


def k_fast_difference(steps: int = 6) -> float:
    """dpm_solver_fast on a uniform log-SNR grid of `steps` evaluations vs k-diffusion's sample_dpm_fast."""
    sigmas = GRIDS["logsnr"](steps + 1)[:-1]
    theirs = k_sampling().sample_dpm_fast(ConvDenoiser(), initial_noise(SIGMA_MAX), SIGMA_MIN, SIGMA_MAX, steps,
                                          disable=True)
    return relative_difference(run_diffbench("dpm_solver_fast", sigmas)[0], theirs)


# diffusers -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A diffusers scheduler configured as the counterpart of one diffbench solver."""

    scheduler: str
    config: dict
    discrete: bool = False  # timestep-indexed (DDIM, PNDM): levels from alphas_cumprod
    final_zero: bool = True  # the reference's grid ends at sigma = 0 (else at its last positive level)
    step: dict = field(default_factory=dict)  # options of scheduler.step
    ours: dict = field(default_factory=dict)  # diffbench options that select the reference's convention


MULTISTEP = "DPMSolverMultistepScheduler"
CASES: dict[str, Case] = {
    "ddim": Case("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, discrete=True, step={"eta": 0.0}),
    "ddpm": Case("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, discrete=True, step={"eta": 1.0}),
    "plms": Case("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": True}, discrete=True),
    "dpmpp_2m": Case(MULTISTEP, {"solver_order": 2, "final_sigmas_type": "zero"}),
    "dpmpp_2m_sde": Case(MULTISTEP, {"solver_order": 2, "algorithm_type": "sde-dpmsolver++",
                                     "final_sigmas_type": "zero"}),
    "dpmpp_3m": Case(MULTISTEP, {"solver_order": 3, "final_sigmas_type": "zero"},
                     ours={"final_step": "counted", "lower_order_below": 15}),
    "dpmpp_3m_diffusers": Case(MULTISTEP, {"solver_order": 3, "final_sigmas_type": "zero"}),
    "dpm_solver_2m": Case(MULTISTEP, {"solver_order": 2, "algorithm_type": "dpmsolver", "lower_order_final": False,
                                         "final_sigmas_type": "sigma_min"},
                          final_zero=False, ours={"lower_order_final": False}),
    "dpm_solver_3m": Case(MULTISTEP, {"solver_order": 3, "algorithm_type": "dpmsolver", "lower_order_final": False,
                                         "final_sigmas_type": "sigma_min"},
                          final_zero=False, ours={"lower_order_final": False}),
    "unipc_bh1": Case("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1",
                                                  "final_sigmas_type": "sigma_min"}, final_zero=False),
    "unipc_bh2": Case("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2", "lower_order_final": True}),
    "unipc_bh2_o2": Case("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
    "unipc_bh2_o1": Case("UniPCMultistepScheduler", {"solver_order": 1, "solver_type": "bh2"}),
    "unipc_bh1_o2": Case("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh1",
                                                     "final_sigmas_type": "sigma_min"}, final_zero=False),
    "unipc_bh1_o1": Case("UniPCMultistepScheduler", {"solver_order": 1, "solver_type": "bh1",
                                                     "final_sigmas_type": "sigma_min"}, final_zero=False),
    "deis_1": Case("DEISMultistepScheduler", {"solver_order": 1}, final_zero=False),
    "deis_2": Case("DEISMultistepScheduler", {"solver_order": 2, "lower_order_final": False}, final_zero=False),
    "deis_3": Case("DEISMultistepScheduler", {"solver_order": 3, "lower_order_final": False}, final_zero=False),
}
# Counterparts that run a different variant, each documented in the solver's docstring: parity is not claimed.
DIFFERENT = {
    "deis_2": "diffusers' DEIS is rhoAB in log rho; deis_k is the authors' tAB in VP time",
    "deis_3": "diffusers' DEIS is rhoAB in log rho; deis_k is the authors' tAB in VP time",
}
MATCHING = sorted(set(CASES) - set(DIFFERENT))
GRID_NAMES = ("karras", "logsnr", "own")  # "own": the scheduler's default timestep spacing


def scheduler_on_grid(case: Case, grid: str, steps: int, prediction: str):
    """The configured scheduler with `steps` steps on the grid; returns it and the grid as sigmas (float64)."""
    import diffusers

    scheduler = getattr(diffusers, case.scheduler)(prediction_type=prediction, **case.config)
    scheduler.set_timesteps(steps)
    float64(scheduler)
    if case.discrete:
        return scheduler, _discrete_grid(scheduler, grid, steps)
    if grid != "own":
        scheduler.sigmas = GRIDS[grid](steps) if case.final_zero else GRIDS[grid](steps + 1)[:-1]
    return scheduler, scheduler.sigmas.clone()


def _discrete_grid(scheduler, grid: str, steps: int) -> torch.Tensor:
    """Timestep-indexed schedulers: write the grid into alphas_cumprod at the distinct timesteps (or read it)."""
    timesteps = list(dict.fromkeys(int(t) for t in scheduler.timesteps))
    if grid != "own":
        for t, sigma in zip(timesteps, GRIDS[grid](steps)[:-1]):
            scheduler.alphas_cumprod[t] = 1 / (1 + sigma**2)
    ac = scheduler.alphas_cumprod[timesteps]
    return torch.cat([torch.sqrt((1 - ac) / ac), torch.zeros(1, dtype=torch.float64)])


def diffusers_parity(solver: str, grid: str, steps: int, prediction: str = "epsilon") -> float:
    """Max relative difference between diffbench's solver and its diffusers counterpart."""
    case = CASES[solver]
    scheduler, sigmas = scheduler_on_grid(case, grid, steps, prediction)
    ours, noise = run_diffbench(solver, sigmas, case.ours)
    levels = discrete_levels(scheduler) if case.discrete else sigma_levels(scheduler)
    return relative_difference(ours, run_diffusers(scheduler, levels, sigmas[-1], noise, prediction, **case.step))


# The whole matrix, for the table -------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """One reference implementation's side of the matrix."""

    name: str  # package and version
    solvers: list[str]
    grids: tuple[str, ...]
    steps: tuple[int, ...]
    parity: Callable[[str, str, int], float]
    different: dict[str, str] = field(default_factory=dict)


def references() -> list[Reference]:
    """Both references with their cases (each solver's grids and step counts as the slow tests run them)."""
    return [
        Reference("k-diffusion 0.1.1 (sampling.py)", sorted(K_CASES), tuple(GRIDS), STEPS, k_parity, K_DIFFERENT),
        Reference("k-diffusion 0.1.1 (DPMSolver steps)", sorted(K_SINGLESTEP), tuple(GRIDS), SINGLESTEP_STEPS,
                  k_parity),
        Reference("diffusers 0.42", MATCHING, GRID_NAMES, STEPS, diffusers_parity, DIFFERENT),
    ]
