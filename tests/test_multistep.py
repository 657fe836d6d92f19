"""iPNDM, DEIS tAB and PNDM/PLMS: coefficients, exact limits, warm-up NFE, AFS."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers import SOLVERS
from diffbench.solvers.deis import deis_time, tab_coefficients
from diffbench.solvers.pndm import AB_COEFFS, adams_bashforth
from tests.helpers.convergence import error_at
from tests.helpers.models import AnalyticFirstDenoiser


def _run(model, name, nfe, n=16, final_zero=True, **options):
    plan = make_plan(name, nfe, model.schedule, solver_options=options, final_zero=final_zero)
    return sample_batch(model, plan, range(n), seed=0, shape=(4,))


def test_ipndm_coefficients_are_adams_bashforth():
    assert AB_COEFFS[4] == pytest.approx((55 / 24, -59 / 24, 37 / 24, -9 / 24), abs=1e-15)
    for k, coeffs in AB_COEFFS.items():
        # Fixed-step AB-k integrates polynomials of degree < k exactly: sum_j b_j (-j)^m = 1 / (m + 1).
        for m in range(k):
            assert sum(b * (-j) ** m for j, b in enumerate(coeffs)) == pytest.approx(1 / (m + 1), abs=1e-14)


def test_adams_bashforth_on_equal_steps_integrates_a_cubic():
    p = np.polynomial.Polynomial([0.4, -1.0, 0.3, 0.2])
    sig, d = 2.0, -0.25
    history = [torch.tensor([p(sig - j * d)]) for j in (3, 2, 1, 0)]  # oldest first
    exact = p.integ()(sig + d) - p.integ()(sig)
    assert float(d * adams_bashforth(history)) == pytest.approx(exact, abs=1e-13)


@pytest.mark.parametrize("name,options", [("ipndm", {"max_order": 1}), ("deis_1", {})])
def test_first_order_limits_equal_ddim(gauss, name, options):
    a = _run(gauss, name, 10, **options).x
    b = _run(gauss, "ddim", 10).x
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_deis_coefficients_integrate_polynomials_in_time(order):
    """sum_j C_j f(t_j) = int f(t(s)) ds for f of degree < order in DEIS's time (vs a fine midpoint rule)."""
    nodes, sigma, sigma_next = [5.0, 9.0, 17.0, 30.0][:order], 5.0, 2.2
    coeffs = tab_coefficients(sigma, sigma_next, nodes)
    f = np.polynomial.Polynomial([0.7, -2.0, 3.0, 1.5][:order])
    s = np.linspace(sigma, sigma_next, 200_001)
    mid, ds = (s[1:] + s[:-1]) / 2, s[1] - s[0]
    assert sum(c * f(deis_time(np.array(n))) for c, n in zip(coeffs, nodes)) == pytest.approx(
        np.sum(f(deis_time(mid))) * ds, rel=1e-8)


def test_deis_time_is_the_vp_time_of_the_edm_range():
    assert deis_time(np.array([0.002, 80.0])) == pytest.approx([1e-3, 1.0], rel=1e-9)


@pytest.mark.parametrize("name,low,high", [("ipndm", 1.9, 2.1), ("deis_2", 1.85, 2.1), ("deis_3", 2.4, 2.9)])
def test_slopes_on_finer_grids(gauss, name, low, high):
    """Beyond the generic 8..32-step window: iPNDM settles at 2 (see pndm.py); deis_3 heads from 2.7 to 2."""
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0
    steps = [32, 64, 128]
    errs = [error_at(gauss, name, n, x_T) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert low <= slope <= high, (slope, errs)


def test_plms_first_step_is_improved_euler(gauss):
    """One S-PNDM step (no zero at the end) is Heun's step: 2 NFE."""
    a, b = _run(gauss, "plms", 2, final_zero=False), _run(gauss, "heun", 2, final_zero=False)
    assert a.nfe_measured == 2 and torch.allclose(a.x, b.x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("final_zero,expected", [(False, [4, 8, 12, 13, 14]), (True, [1, 5, 9, 13, 14])])
def test_pndm_warm_up_costs_four_evaluations_per_step(final_zero, expected):
    assert [SOLVERS["pndm"].nfe_for(n, final_zero) for n in range(1, 6)] == expected
    assert [SOLVERS["plms"].nfe_for(n, final_zero) for n in range(1, 4)] == [2 - final_zero, 3, 4]


def test_pndm_warm_up_step_is_fourth_order(gauss):
    """F-PNDM's pseudo Runge-Kutta step on the EDM schedule is classic RK4: local error O(d^5)."""
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.5
    errs = []
    for d in (0.4, 0.2, 0.1):
        sigmas = torch.tensor([1.0, 1.0 - d], dtype=torch.float64)
        out = SOLVERS["pndm"].fn(gauss, x, sigmas)
        errs.append(float((out - gauss.exact_ode(x, 1.0, 1.0 - d)).abs().max()))
    assert all(math.log2(a / b) > 4.5 for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("base", ["ipndm", "deis_3"])
def test_afs_replaces_the_first_evaluation(base):
    """On a model whose eps is the analytic one, AFS changes nothing and saves exactly one NFE (afs is fixed by
    the name: `<base>_afs` runs it)."""
    model = AnalyticFirstDenoiser()
    plain, afs = _run(model, base, 8), _run(model, f"{base}_afs", 7)
    assert (plain.nfe_measured, afs.nfe_measured) == (8, 7)
    assert torch.allclose(plain.x, afs.x, rtol=0, atol=1e-12)

