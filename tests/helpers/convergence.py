"""Error of a solver against the exact Gaussian PF-ODE on a fixed log-sigma span (for order fits)."""
from __future__ import annotations

from typing import Any

import torch

from diffbench.models.analytic import GaussianDenoiser
from diffbench.sampling import make_plan
from diffbench.solvers import SOLVERS

# Convergence grid: uniform in log-sigma from 20 down to 0.02, no final jump to 0.
SPAN: dict[str, Any] = dict(step_grid="uniform_logsnr", sigma_min=0.02, sigma_max=20.0, final_zero=False)


def error_at(model: GaussianDenoiser, name: str, steps: int, x_T: torch.Tensor,
             options: dict[str, Any] | None = None, final_zero: bool = False) -> float:
    """RMSE of solver `name` (with `options`) at `steps` steps over SPAN (final_zero: its grid then a last step to 0)
    against the model's exact ODE endpoint."""
    nfe = SOLVERS[name].nfe_for(steps, final_zero)
    plan = make_plan(name, nfe, model.schedule, solver_options=options, **{**SPAN, "final_zero": final_zero})
    assert plan.steps == steps
    out = plan.solver.fn(model, x_T, plan.sigmas, noise=None, **plan.options)
    exact = model.exact_ode(x_T, 20.0, 0.0 if final_zero else 0.02)
    return float((out - exact).pow(2).mean().sqrt())
