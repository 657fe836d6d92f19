"""RMSE vs RK45 of the multistep DPM solvers under both final-step conventions, on any model (CPU-sized).

Each cell also gives the background level: the mean 8-bit value (0..255, as FID's images are quantised)
of the pixels that are background in the RK45 solution (< -0.9). On MNIST, FID against the data follows it
far more than the RMSE: real digits sit on an exact 0 background.

The GPU-sized FID counterpart is the diffbench-mnist sweep in results/diffbench-mnist/README.md; this
measures the solver error of the same points on a few samples from the same noise, Karras grid ending at 0:

    python scripts/final_step_check.py --n 16 --nfe 6 10
"""
from __future__ import annotations

import argparse
import shlex
import sys

import torch

from diffbench.config import compose
from diffbench.engine.points import ModelCache
from diffbench.sampling import make_plan, sample_batch

SOLVERS = ("dpmpp_2m", "dpmpp_3m", "dpmpp_3m_taylor", "dpm_solver_3m", "dpm_solver_3m_taylor")
FINAL_STEPS = ("counted", "separate")


def level(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean 8-bit value of x's pixels under mask, after the [-1, 1] -> 0..255 quantisation FID sees."""
    return float(((x.clamp(-1, 1) + 1) * 127.5).round()[mask].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="diffbench-mnist")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--nfe", type=int, nargs="+", default=[6, 10])
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS))
    args = ap.parse_args()
    model = ModelCache().get(compose([f"model={args.model}"]).model)
    shape, idx = tuple(model.shape), range(args.n)
    reference = make_plan("rk45", 1, model.schedule, step_grid="karras",
                          solver_options={"rtol": 1e-5, "atol": 1e-5})
    ref = sample_batch(model, reference, idx, 0, shape).x.double()
    background = ref < -0.9
    print(f"# python {shlex.join(sys.argv)}\n# RMSE vs RK45 (rtol = atol = 1e-5) / mean 8-bit background level, "
          f"{args.n} samples, karras, final sigma 0\n# rk45 background {level(ref, background):.2f}\n"
          "# solver nfe " + " ".join(FINAL_STEPS), flush=True)
    for nfe in args.nfe:
        for name in args.solvers:
            cells = []
            for final_step in FINAL_STEPS:
                plan = make_plan(name, nfe, model.schedule, step_grid="karras",
                                 solver_options={"final_step": final_step})
                x = sample_batch(model, plan, idx, 0, shape).x.double()
                cells.append(f"{float((x - ref).pow(2).mean().sqrt()):.4f}/{level(x, background):.2f}")
            print(name, nfe, *cells, flush=True)


if __name__ == "__main__":
    main()
