"""UniPC: DDIM limit, polynomial exactness of UniP/UniC, free corrector, convergence, AFS."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.base import Denoiser
from diffbench.sampling import make_plan, sample_batch
from diffbench.schedules import EDM
from diffbench.solvers.unipc import unipc_update, unipc_weights
from tests.helpers.convergence import SPAN, error_at
from tests.helpers.models import AnalyticFirstDenoiser


class PathDenoiser(Denoiser):
    """D(x, sigma) = p(lambda) for a polynomial p: the data-prediction ODE then has a closed form."""

    dtype = torch.float64

    def __init__(self, coeffs: list[float]):
        self.poly, self.schedule = np.polynomial.Polynomial(coeffs), EDM()

    def denoise(self, x, sigma):
        lam = -sigma.log().reshape(-1, *([1] * (x.ndim - 1)))
        return torch.full_like(x, 1.0) * torch.as_tensor(self.poly(lam.numpy()), dtype=x.dtype)

    def step(self, x, sigma, sigma_next):
        """Exact x(sigma') = (sigma'/sigma) x + sigma' int_lambda^lambda' e^u p(u) du."""
        lam, lam_next = -math.log(sigma), -math.log(sigma_next)
        u, w = np.polynomial.legendre.leggauss(30)
        u = lam + (lam_next - lam) * (u + 1) / 2
        integral = (lam_next - lam) / 2 * np.sum(w * np.exp(u) * self.poly(u))
        return sigma_next / sigma * x + sigma_next * integral


@pytest.mark.parametrize("final_zero", [True, False])
def test_order1_without_corrector_is_ddim(gauss, final_zero):
    opts = {"corrector": False}
    a = sample_batch(gauss, make_plan("unipc_bh2_o1", 10, gauss.schedule, solver_options=opts, final_zero=final_zero),
                     range(32), seed=0, shape=(4,)).x
    plan = make_plan("ddim", 10, gauss.schedule, final_zero=final_zero)
    b = sample_batch(gauss, plan, range(32), seed=0, shape=(4,)).x
    assert torch.allclose(a, b, rtol=0, atol=1e-5)
    assert float((a - b).abs().max()) < 1e-12


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_predictor_and_corrector_integrate_polynomials_exactly(variant):
    """UniP-3 is exact for quadratic D(lambda), UniC-3 for cubic (the 3x3 and 2x2 solves, no 1/2 shortcut)."""
    sigmas = [3.0, 1.7, 0.9, 0.4]  # history at the first three, step to the last
    for degree, corrected in ((2, False), (3, True)):
        model = PathDenoiser([0.3, -0.7, 0.2, 0.05][:degree + 1])
        x = torch.tensor([[1.5]], dtype=torch.float64)
        history = [(-math.log(s), model(x, s)) for s in sigmas[:3]]
        d_next = model(x, sigmas[3]) if corrected else None
        out = unipc_update(x, sigmas[2], sigmas[3], history, variant, d_next)
        assert abs(float(out) - model.step(1.5, sigmas[2], sigmas[3])) < 1e-12


def test_b_h_cancels_where_the_system_is_solved():
    """bh1 and bh2 differ only through the 1/2 shortcuts of the 1x1 systems."""
    rks, h = [-0.8, -1.9], 0.6
    (b1, p1, c1), (b2, p2, c2) = unipc_weights(rks, h, "bh1"), unipc_weights(rks, h, "bh2")
    assert np.allclose(b1 * np.array(p1), b2 * np.array(p2)) and np.allclose(b1 * np.array(c1), b2 * np.array(c2))
    assert unipc_weights([], h, "bh1")[2] == unipc_weights([], h, "bh2")[2] == [0.5]


@pytest.mark.parametrize("final_zero", [True, False])
def test_corrector_costs_no_evaluation(gauss, final_zero):
    for corrector in (True, False):
        plan = make_plan("unipc_bh1", 7, gauss.schedule, solver_options={"corrector": corrector}, final_zero=final_zero)
        assert plan.steps == 7 and sample_batch(gauss, plan, range(4), seed=0, shape=(4,)).nfe_measured == 7


def test_corrector_improves_accuracy(gauss):
    """UniC raises the order by one: at 64 steps it cuts UniP's error several times."""
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20.0
    for name in ("unipc_bh1_o1", "unipc_bh2_o2", "unipc_bh2"):
        plan_c = make_plan(name, 64, gauss.schedule, **SPAN)
        plan_p = make_plan(name, 64, gauss.schedule, solver_options={"corrector": False}, **SPAN)
        exact = gauss.exact_ode(x_T, 20.0, 0.02)
        err_c = (plan_c.solver.fn(gauss, x_T, plan_c.sigmas, **plan_c.options) - exact).norm()
        err_p = (plan_p.solver.fn(gauss, x_T, plan_p.sigmas, **plan_p.options) - exact).norm()
        assert err_c < err_p / 3, name


@pytest.mark.parametrize("name", ["unipc_bh1", "unipc_bh2"])
def test_order3_converges_at_least_cubically_on_finer_grids(gauss, name):
    """Without lower_order_final, UniPC-3 converges cubically from 24 steps (with it, the default, the last
    first-order step makes the slope tend to 2: test_solver_contracts)."""
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0
    steps = [24, 48, 96]
    errs = [error_at(gauss, name, n, x_T, {"lower_order_final": False}) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert 2.9 <= slope <= 4.3, (slope, errs)


@pytest.mark.parametrize("base", ["unipc_bh1", "unipc_bh2"])
def test_afs_replaces_the_first_evaluation(base):
    """On a model whose eps is the analytic one, AFS changes nothing and saves exactly one NFE."""
    model = AnalyticFirstDenoiser()
    plain = sample_batch(model, make_plan(base, 8, model.schedule), range(8), seed=0, shape=(3,))
    afs = sample_batch(model, make_plan(f"{base}_afs", 7, model.schedule), range(8), seed=0, shape=(3,))
    assert (plain.nfe_measured, afs.nfe_measured) == (8, 7)
    assert torch.allclose(plain.x, afs.x, rtol=0, atol=1e-12)
    with pytest.raises(UsageError, match=f"use solver={base}_afs"):  # afs is fixed by the name
        make_plan(base, 7, model.schedule, solver_options={"afs": True})
