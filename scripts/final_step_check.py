"""RMSE vs RK45 of the multistep DPM solvers under both final-step conventions, on any model (CPU-sized).

Each cell also gives the haze: the share (%) of background pixels (< -0.9 in the RK45 solution, < -0.5 in the
sample) whose 8-bit value (as FID's images are quantised) is 3 or more. On MNIST, FID against the data follows
it far more than the RMSE does: real digits sit on an exact 0 background.

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


def haze(x: torch.Tensor, background: torch.Tensor) -> float:
    """Share (%) of background pixels left >= 3 of 255 after the [-1, 1] -> 8-bit quantisation FID sees."""
    levels = ((x.clamp(-1, 1) + 1) * 127.5).round()[background & (x < -0.5)]
    return 100 * float((levels >= 3).double().mean())


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
    print(f"# python {shlex.join(sys.argv)}\n# RMSE vs RK45 (rtol = atol = 1e-5) / background haze (%), "
          f"{args.n} samples, karras, final sigma 0\n# rk45 haze {haze(ref, background):.1f}\n"
          "# solver nfe " + " ".join(FINAL_STEPS), flush=True)
    for nfe in args.nfe:
        for name in args.solvers:
            cells = []
            for final_step in FINAL_STEPS:
                plan = make_plan(name, nfe, model.schedule, step_grid="karras",
                                 solver_options={"final_step": final_step})
                x = sample_batch(model, plan, idx, 0, shape).x.double()
                cells.append(f"{float((x - ref).pow(2).mean().sqrt()):.4f}/{haze(x, background):.1f}")
            print(name, nfe, *cells, flush=True)


if __name__ == "__main__":
    main()
