"""Is the third-order data-prediction failure on Karras grids diffbench's bug or the method's? Ask diffusers.

Runs diffusers' EDMDPMSolverMultistepScheduler (DPM-Solver++, orders 2 and 3) and diffbench's dpmpp_2m /
dpmpp_3m / unipc_bh2 on the same model from the same x_T (diffbench's per-index noise), Karras grid,
final sigma 0, and prints each one's RMSE against the same-noise RK45 solution (rtol = atol = 1e-5).
diffusers gets the network's raw output back from diffbench's denoiser D by inverting its EDM
preconditioning (c_skip, c_out for sigma_data = 0.5), so both run the same network. CPU is enough:

    python scripts/diffusers_3m_check.py --n 64 --nfe 10
"""
from __future__ import annotations

import argparse
import shlex
import sys

import torch
from diffusers import EDMDPMSolverMultistepScheduler

from diffbench.config import compose
from diffbench.engine.points import ModelCache
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.sampling import initial_noise, make_plan, sample_batch

OURS = [("dpmpp_2m", {}), ("dpmpp_3m_taylor", {"lower_order_final": False}), ("dpmpp_3m_taylor", {}),
        ("dpmpp_3m_diffusers", {"lower_order_final": False}), ("dpmpp_3m_diffusers", {}), ("dpmpp_3m", {}),
        ("unipc_bh2", {"lower_order_final": False}), ("unipc_bh2", {})]


def diffusers_run(model: Denoiser, n: int, nfe: int, order: int, lower_order_final: bool,
                  sigma_data: float) -> torch.Tensor:
    """diffusers' DPM-Solver++ loop on the model's D (through the inverse of EDM's output preconditioning)."""
    scheduler = EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=sigma_data, rho=7.0,
                                               solver_order=order, algorithm_type="dpmsolver++",
                                               final_sigmas_type="zero", lower_order_final=lower_order_final)
    scheduler.set_timesteps(nfe)
    x = initial_noise(NoiseSource(0, range(n), "cpu"), tuple(model.shape), model.schedule.prior_std(80.0),
                      torch.float64).float()
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            sigma = float(scheduler.sigmas[i])
            c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
            c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
            raw = (model(x.double(), sigma).float() - c_skip * x) / c_out
            x = scheduler.step(raw, t, x).prev_sample
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="diffbench-mnist")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--nfe", type=int, default=10)
    args = ap.parse_args()
    cfg = compose([f"model={args.model}"])
    model = ModelCache().get(cfg.model)
    shape, idx = tuple(model.shape), range(args.n)
    reference = make_plan("rk45", 1, model.schedule, step_grid="karras",
                          solver_options={"rtol": 1e-5, "atol": 1e-5})
    ref = sample_batch(model, reference, idx, 0, shape).x.float()
    rmse = lambda x: float((x.float() - ref).pow(2).mean().sqrt())  # noqa: E731
    print(f"# {'python ' + shlex.join(sys.argv)}\n"
          f"# RMSE vs RK45, {args.n} samples, NFE {args.nfe}, karras, final sigma 0")
    for name, options in OURS:
        plan = make_plan(name, args.nfe, model.schedule, step_grid="karras", solver_options=options)
        print(f"{rmse(sample_batch(model, plan, idx, 0, shape).x):.4f}  diffbench {name} {options or ''}")
    for order, lof in ((2, True), (3, True), (3, False)):
        x = diffusers_run(model, args.n, args.nfe, order, lof, float(model.sigma_data))
        print(f"{rmse(x):.4f}  diffusers EDMDPMSolverMultistepScheduler solver_order={order} lower_order_final={lof}")


if __name__ == "__main__":
    main()
