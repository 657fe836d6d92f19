"""SA-Solver: parity with diffusers' SASolverScheduler on the same noise (float64), weak and ODE orders."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.noise import NoiseSource
from diffbench.solvers import SOLVERS
from diffbench.solvers.sa_solver import sa_weights
from tests.helpers.convergence import error_at
from tests.helpers.reference_impls import RandomNetDenoiser
from tests.helpers.weak_order import weak_order


def diffusers_sa_solver(monkeypatch, model, x, predictor_order, corrector_order, eta, noise):
    """diffusers' SASolverScheduler in float64 on its 10-step grid, fed `noise`'s draws: (sigmas, x) in EDM units."""
    sasolver = pytest.importorskip("diffusers.schedulers.scheduling_sasolver")
    scheduler = sasolver.SASolverScheduler(predictor_order=predictor_order, corrector_order=corrector_order,
                                           prediction_type="sample", tau_func=lambda t: math.sqrt(eta))
    scheduler.set_timesteps(10)
    scheduler.sigmas = sigmas = scheduler.sigmas.double()
    monkeypatch.setattr(sasolver, "randn_tensor", lambda shape, **kwargs: noise.randn(shape[1:], torch.float64))
    x_vp = x * float(sigmas[0]) / (1 + sigmas[0] ** 2).sqrt()
    for i, t in enumerate(scheduler.timesteps):
        scale = (1 + sigmas[i] ** 2).sqrt()  # 1 / alpha: VP -> EDM coordinates
        x_vp = scheduler.step(model(x_vp * scale, sigmas[i]), t, x_vp).prev_sample
    return sigmas, x_vp * (1 + sigmas[-1] ** 2).sqrt()


@pytest.mark.parametrize("orders", [(2, 2), (3, 3), (4, 4), (2, 3)])
@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_matches_diffusers_sasolver(monkeypatch, orders, eta):
    """Random network, predictor/corrector orders as given, tau = sqrt(eta) on every step: equal to 1e-10."""
    model = RandomNetDenoiser(dim=6)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas, theirs = diffusers_sa_solver(monkeypatch, model, x, *orders, eta, NoiseSource(7, range(5)))
    ours = SOLVERS["sa_solver"].fn(model, x * float(sigmas[0]), sigmas, noise=NoiseSource(7, range(5)), eta=eta,
                                   predictor_order=orders[0], corrector_order=orders[1])
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10)


def test_one_node_weight_is_the_sde_step():
    """One node: w = 1 - e^(-(1 + eta) h), the exact weight of a constant D in the eta-scaled SDE."""
    h, eta = 0.7, 0.4
    assert sa_weights(1.0, 1.0 + h, [1.0], eta) == pytest.approx([-math.expm1(-(1 + eta) * h)], rel=1e-14)


@pytest.mark.parametrize("name", ["sa_solver", "sa_solver_3"])
def test_weak_order_is_the_registered_order(name):
    """Exact mean + variance error (1-D Gaussian) over 32..128 steps (sa_solver_3: 4.0 over 8..32, pre-asymptotic)."""
    slope, errs = weak_order(name, (32, 48, 64, 96, 128))
    assert abs(slope - SOLVERS[name].order) <= 0.3, (slope, errs)


def test_ode_variant_converges_at_second_order(gauss):
    """eta = 0 on the exact Gaussian PF-ODE: slope 2.4 over 16..64 steps (lower_order_final's first-order last step)."""
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0
    steps = (16, 32, 64)
    errs = [error_at(gauss, "sa_solver", n, x_T, {"eta": 0.0}) for n in steps]
    slope = -math.log(errs[-1] / errs[0]) / math.log(steps[-1] / steps[0])
    assert 1.9 <= slope <= 2.7, (slope, errs)
