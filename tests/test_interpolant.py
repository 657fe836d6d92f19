"""Stochastic-interpolant sampling (solvers/interpolant.py) on a flow model's linear interpolant with exact fields."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.models.analytic import gaussian
from diffbench.sampling import make_plan, sample_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def flow_gaussian():
    """Gaussian data under rectified flow's x_t = (1 - t) x0 + t z: exact velocity and score."""
    return gaussian(shape=(2,), mean=[1.0, -0.5], std=[0.5, 1.5], schedule="rectified_flow")


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
def test_every_eps_keeps_the_data_marginal(eps):
    model = flow_gaussian()
    plan = make_plan("si_euler_maruyama", 200, model.schedule, solver_options={"eps": eps})
    x = sample_batch(model, plan, range(8000), seed=2, shape=(2,)).x
    se = model.std / math.sqrt(len(x))
    assert ((x.mean(0) - model.mean).abs() <= 0.03 + 4 * se).all(), x.mean(0)
    assert ((x.std(0) / model.std - 1).abs() <= 0.06).all(), x.std(0)


def test_eps_zero_is_euler_on_the_flow_ode():
    """The deterministic member converges to the exact ODE endpoint at first order in t."""
    model = flow_gaussian()
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for nfe in (16, 32, 64):
        plan = make_plan("si_euler_maruyama", nfe, model.schedule, solver_options={"eps": 0.0},
                         step_grid="uniform_t", final_zero=False, sigma_min=0.05)
        sigma_max = float(plan.sigmas[0])
        x = x_T * model.schedule.prior_std(sigma_max)
        out = plan.solver.fn(model, x, plan.sigmas, **plan.options)
        errors.append(float((out - model.exact_ode(x, sigma_max, float(plan.sigmas[-1]))).pow(2).mean().sqrt()))
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(0.8 < s < 1.2 for s in slopes), (errors, slopes)
