"""Each registered solver's upstream implementation (the authors' or a library's code of that name) and parity status.

status "parity": equal to upstream to <= 1e-10 relative in float64 (tests/test_parity_*.py);
"differs": the upstream code of that name runs another variant, named in the note; "none": no installable
counterpart, and the note says how correctness is shown instead.
"""
from __future__ import annotations

from typing import NamedTuple

DIFFUSERS, KDIFF = "diffusers 0.42", "k-diffusion 0.1.1"
ORDER_TEST = "convergence order on the exact Gaussian (tests/test_solver_contracts.py)"
AUTHORS_CONVENTION = ("default final-step convention: the authors' dpm-solver code's (final_step=separate: a jump "
                      "to sigma = 0 is its denoise_to_zero; below 10 steps the steps into sigma_min are lowered; "
                      "tests/test_parity_conventions.py); diffusers': final_step=counted, lower_order_below=15")


class Upstream(NamedTuple):
    implementation: str
    status: str  # "parity" | "differs" | "none"
    note: str = ""


def _parity(implementation: str, note: str = "") -> Upstream:
    return Upstream(implementation, "parity", note)


UPSTREAM: dict[str, Upstream] = {
    "ddim": _parity(f"{DIFFUSERS} DDIMScheduler; {KDIFF} sample_euler"),
    "ddpm": _parity(f"{DIFFUSERS} DDIMScheduler(eta=1)"),
    "euler_ancestral": _parity(f"{KDIFF} sample_euler_ancestral"),
    "euler": _parity(f"{KDIFF} sample_euler"),
    "heun": _parity(f"{KDIFF} sample_heun"),
    "deis_1": _parity(f"{DIFFUSERS} DEISMultistepScheduler(solver_order=1)"),
    "deis_2": Upstream(DIFFUSERS, "differs", "diffusers' DEIS is rhoAB (log-rho basis); this is the authors' tAB "
                        "in VP time (zju-pi/diff-sampler); " + ORDER_TEST),
    "deis_3": Upstream(DIFFUSERS, "differs", "as deis_2; " + ORDER_TEST),
    "deis_3_afs": Upstream("none", "none", "deis_3 with AMED's analytic first step; " + ORDER_TEST),
    "dpm_solver_1": _parity(f"{KDIFF} DPMSolver.dpm_solver_1_step"),
    "dpm_solver_2": _parity(f"{KDIFF} DPMSolver.dpm_solver_2_step"),
    "dpm_solver_3": _parity(f"{KDIFF} DPMSolver.dpm_solver_3_step"),
    "dpm_solver_fast": Upstream(KDIFF, "differs", "the reference spaces outer steps uniformly in log-SNR and takes "
                                 "the paper's third-order update; this cuts the grid's evaluations into outer steps "
                                 "(Taylor update); " + ORDER_TEST),
    "dpm_solver_2m": _parity(f"{DIFFUSERS} DPMSolverMultistepScheduler('dpmsolver', 2)", AUTHORS_CONVENTION),
    "dpm_solver_3m": _parity(f"{DIFFUSERS} DPMSolverMultistepScheduler('dpmsolver', 3)", AUTHORS_CONVENTION),
    "dpm_solver_3m_taylor": Upstream("none", "none", "dpm_solver_3m with the exact third-order eps'' weight (the "
                                      "authors' code and diffusers halve it); " + ORDER_TEST),
    "dpm_solver_adaptive": Upstream(KDIFF, "differs", "per-sample step control (the reference controls the batch); "
                                     "accuracy and NFE (tests/test_adaptive.py)"),
    "dpmpp_2m": _parity(f"{DIFFUSERS} DPMSolverMultistepScheduler; {KDIFF} sample_dpmpp_2m",
                        "default final-step convention: k-diffusion's and diffusers' (final_step=counted; the name "
                        "is k-diffusion's); the authors' dpm-solver code's is final_step=separate"),
    "dpmpp_2m_sde": _parity(f"{DIFFUSERS} DPMSolverMultistepScheduler('sde-dpmsolver++'); "
                            f"{KDIFF} sample_dpmpp_2m_sde"),
    "dpmpp_3m": _parity(f"{DIFFUSERS} DPMSolverMultistepScheduler(solver_order=3)", AUTHORS_CONVENTION),
    "dpmpp_3m_taylor": Upstream("none", "none", "dpmpp_3m with the exact third-order D'' weight (the authors' code, "
                                 "diffusers and k-diffusion halve it); " + ORDER_TEST),
    "dpmpp_3m_sde_taylor": Upstream(KDIFF, "differs", "dpmpp_3m with eta=1: exact D'' weight, midpoint warm-up; "
                                     "sample moments on Gaussian data (tests/test_solver_contracts.py)"),
    "dpmpp_3m_diffusers": _parity(f"{DIFFUSERS} DPMSolverMultistepScheduler(solver_order=3)",
                                  "at its defaults: dpmpp_3m with diffusers' final-step convention (final_step="
                                  "counted, lower_order_below=15)"),
    "dpmpp_3m_sde": _parity(f"{KDIFF} sample_dpmpp_3m_sde"),
    "dpmpp_2s": _parity(f"{KDIFF} sample_dpmpp_2s_ancestral(eta=0)"),
    "dpm_solver_v3": Upstream("none", "none", "authors' code needs their EMS files; exact on a Gaussian with "
                               "its EMS, order with ems=none (tests/test_dpm_solver_v3.py)"),
    "dpmpp_2m_hb": Upstream("none", "none", "beta=1 equals dpmpp_2m (tests/test_momentum.py)"),
    "plms_ghvb": Upstream("none", "none", "beta=1 equals PLMS of its order (tests/test_momentum.py)"),
    "ipndm": Upstream("none", "none", ORDER_TEST),
    "ipndm_afs": Upstream("none", "none", "ipndm with AMED's analytic first step; " + ORDER_TEST),
    "plms": _parity(f"{DIFFUSERS} PNDMScheduler(skip_prk_steps=True)"),
    "s_pndm": Upstream("none", "none", "the PNDM authors' S-PNDM (2-step); " + ORDER_TEST),
    "pndm": Upstream(f"{DIFFUSERS} PNDMScheduler (not compared)", "none", "its Runge-Kutta stages sit at the "
                      "model's own mid-time, which the parity denoiser (EDM time) does not share with diffusers' "
                      "discrete VP timesteps; " + ORDER_TEST),
    "rk45": Upstream("none", "none", "agrees with torchdiffeq's dopri5 (tests/test_adaptive.py)"),
    "restart": Upstream("none", "none", "no restarts equals heun; the paper's NFE rule (tests/test_restart.py)"),
    "euler_maruyama": Upstream("none", "none", "sample moments on Gaussian data (tests/test_solver_contracts.py)"),
    "ts_ddim": Upstream("none", "none", "without shift equals ddim; shift rule (tests/test_time_shift.py)"),
    "ts_dpmpp_2m": Upstream("none", "none", "without shift equals dpmpp_2m (tests/test_time_shift.py)"),
    "unipc_bh1_o1": _parity(f"{DIFFUSERS} UniPCMultistepScheduler('bh1', 1)"),
    "unipc_bh2_o1": _parity(f"{DIFFUSERS} UniPCMultistepScheduler('bh2', 1)"),
    "unipc_bh1_o2": _parity(f"{DIFFUSERS} UniPCMultistepScheduler('bh1', 2)"),
    "unipc_bh2_o2": _parity(f"{DIFFUSERS} UniPCMultistepScheduler('bh2', 2)"),
    "unipc_bh1": _parity(f"{DIFFUSERS} UniPCMultistepScheduler('bh1', 3)"),
    "unipc_bh2": _parity(f"{DIFFUSERS} UniPCMultistepScheduler('bh2', 3)"),
    "unipc_bh1_afs": Upstream("none", "none", "unipc_bh1 with AMED's analytic first step; " + ORDER_TEST),
    "unipc_bh2_afs": Upstream("none", "none", "unipc_bh2 with AMED's analytic first step; " + ORDER_TEST),
    # Compared by their own family tests rather than the shared matrix (SEPARATE_PARITY in tests/helpers).
    "lms": _parity(f"{KDIFF} sample_lms", "tests/test_deis.py"),
    "dpmpp_2s_ancestral": _parity(f"{KDIFF} sample_dpmpp_2s_ancestral", "tests/test_dpm_solver_pp_sde.py"),
    "dpmpp_sde": _parity(f"{KDIFF} sample_dpmpp_sde", "tests/test_dpm_solver_pp_sde.py"),
    "sa_solver": _parity(f"{DIFFUSERS} SASolverScheduler", "tests/test_sa_solver.py"),
    "sa_solver_3": _parity(f"{DIFFUSERS} SASolverScheduler(3, 3)", "tests/test_sa_solver.py"),
    "deis_rhoab_3": Upstream("none", "none", "lms's rhoAB with 3 points (lms matches sample_lms); " + ORDER_TEST),
    "deis_rhork_4": Upstream("none", "none", ORDER_TEST),
    "pc_langevin": Upstream("none", "none", "weak order on exact 1-D Gaussian moments (tests/test_sde.py)"),
    "teleport_euler": Upstream("none", "none", "exact Gaussian flow then euler (tests/test_teleport.py)"),
    "teleport_heun": Upstream("none", "none", "exact Gaussian flow then heun (tests/test_teleport.py)"),
    "teleport_dpmpp_2m": Upstream("none", "none", "exact Gaussian flow then dpmpp_2m (tests/test_teleport.py)"),
    "ts_s_pndm": Upstream("none", "none", "without shift equals s_pndm (tests/test_time_shift_pndm.py)"),
    "evodiff": Upstream("none", "none", "authors' EDM code (ShiguiLi/EVODiff, not on PyPI), ported line by line; "
                         "first order on grids ending at 0 " + ORDER_TEST[ORDER_TEST.index("("):]),
    "si_euler_maruyama": Upstream("none", "none", "Euler-Maruyama on the interpolant SDE; sample moments on "
                                   "Gaussian data for every eps (tests/test_solver_contracts.py, test_interpolant.py)"),
}


def upstream_of(name: str) -> Upstream:
    """The solver's entry; a solver registered without one reads as not yet compared."""
    return UPSTREAM.get(name, Upstream("none", "none", "not yet compared"))
