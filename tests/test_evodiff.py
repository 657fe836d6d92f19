"""EVODiff (diffbench/solvers/evodiff.py): the reference's first and last steps, per-channel weights, nonlinearity.

Its convergence order, NFE and batch invariance are in tests/test_solver_contracts.py (first order on grids ending
at 0; the reference's last-step scale biases grids that stop above 0).
"""
from __future__ import annotations

import math

import torch

from diffbench.metrics.exact import affine_pushforward
from diffbench.models.analytic import gaussian
from diffbench.sampling import make_plan
from diffbench.solvers.evodiff import evodiff


def test_two_steps_are_ddim_then_the_reference_last_step(gauss):
    sigmas = torch.tensor([20.0, 1.5, 0.3], dtype=torch.float64)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0
    d0 = gauss(x, 20.0)
    x1 = 1.5 / 20.0 * x + (1 - 1.5 / 20.0) * d0  # DDIM
    d1 = gauss(x1, 1.5)
    ratio = 0.3 / 1.5  # < 0.5: the reference's r = 1 - sqrt(ratio) / 2
    expected = (1 - math.sqrt(0.3 * 1.5)) * (ratio * x1 + (1 - ratio) * d1) \
        + 0.5 * (1 - ratio) * (d1 - (1 - 0.5 * math.sqrt(ratio)) * d0)
    torch.testing.assert_close(evodiff(gauss, x, sigmas), expected, rtol=1e-14, atol=1e-14)


def test_weights_are_per_channel():
    """On channel-separable data a channel's samples do not depend on the other channels (the reference's bchw)."""
    model = gaussian(shape=(2, 4, 4), mean=0.3, std=0.5)
    plan = make_plan("evodiff", 10, model.schedule)
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    other = x.clone()
    other[:, 1] *= 0.5
    a, b = plan.solver.fn(model, x, plan.sigmas), plan.solver.fn(model, other, plan.sigmas)
    assert torch.equal(a[:, 0], b[:, 0]) and not torch.allclose(a[:, 1], b[:, 1])


def test_its_data_fitted_weights_make_it_nonlinear_where_ddim_is_linear(gauss):
    assert affine_pushforward(gauss, make_plan("evodiff", 8, gauss.schedule)) is None
    assert affine_pushforward(gauss, make_plan("ddim", 8, gauss.schedule)) is not None
