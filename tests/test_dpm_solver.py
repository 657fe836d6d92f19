"""DPM-Solver / DPM-Solver++: exact reductions to DDIM/DDPM, one evaluation per multistep step,
adaptive accuracy against the Gaussian's exact solution, thresholding, and the shared phi maths.

The generic contracts (order, NFE, moments, batch invariance) run in test_solver_contracts.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.base import CountingDenoiser
from diffbench.noise import NoiseSource
from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers import SOLVERS
from diffbench.solvers._common import dynamic_threshold, phi, taylor_terms
from diffbench.solvers.dpm_solver import fast_orders
from diffbench.solvers.dpm_solver_pp import data_prediction_step
from tests.helpers.convergence import SPAN

MULTISTEP = ["dpm_solver_2m", "dpm_solver_3m", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde"]


def _run(model, name, nfe, options=None, n=16, **grid):
    plan = make_plan(name, nfe, model.schedule, solver_options=options, **grid)
    return sample_batch(model, plan, range(n), seed=0, shape=model.shape)


@pytest.mark.parametrize("final_zero", [True, False])
def test_dpm_solver_1_equals_ddim(gauss, final_zero):
    a = _run(gauss, "dpm_solver_1", 10, final_zero=final_zero).x
    b = _run(gauss, "ddim", 10, final_zero=final_zero).x
    assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_first_order_dpmpp_update_equals_ddim(gauss):
    """One DPM-Solver++ step from D alone is DDIM's step; a 1-step dpmpp_2m run is one such step."""
    sigmas = [80.0, 7.0, 0.3, 0.002]
    x = NoiseSource(0, range(16)).randn((4,), torch.float64) * 80.0
    x_pp, x_ddim = x, x
    for sigma, sigma_next in zip(sigmas, sigmas[1:]):
        x_pp = data_prediction_step(x_pp, sigma, sigma_next, [gauss(x_pp, sigma)])
        d = gauss(x_ddim, sigma)
        x_ddim = d + sigma_next / sigma * (x_ddim - d)
    assert torch.allclose(x_pp, x_ddim, rtol=0, atol=1e-5)
    for final_zero in (True, False):
        a = _run(gauss, "dpmpp_2m", 1, final_zero=final_zero).x
        b = _run(gauss, "ddim", 1, final_zero=final_zero).x
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_first_order_sde_step_equals_ddpm(gauss):
    """SDE-DPM-Solver++ with eta=1 and one step is DDPM's ancestral step on the same noise draw."""
    a = _run(gauss, "dpmpp_2m_sde", 1, **SPAN).x
    b = _run(gauss, "ddpm", 1, **SPAN).x
    assert torch.allclose(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", MULTISTEP)
def test_multistep_reuses_one_evaluation_per_step(gauss, name):
    for final_zero in (True, False):
        for steps in (1, 2, 3, 7, 12):
            plan = make_plan(name, steps, gauss.schedule, final_zero=final_zero)
            counter = CountingDenoiser(gauss)
            x = torch.randn(5, 4, dtype=torch.float64) * 80.0
            plan.solver.fn(counter, x, plan.sigmas, noise=NoiseSource(0, range(5)), **plan.options)
            assert counter.calls == steps == plan.steps


def test_lower_order_final_changes_only_short_runs(gauss):
    """The reference code's trick: with fewer than 10 steps the last steps drop order."""
    for steps, changed in ((6, True), (12, False)):
        a = _run(gauss, "dpmpp_3m", steps, {"lower_order_final": False}, **SPAN).x
        b = _run(gauss, "dpmpp_3m", steps, **SPAN).x  # the default: on
        assert (not torch.equal(a, b)) == changed


def test_adaptive_reaches_tolerance_and_records_nfe(gauss):
    """Error vs the exact PF-ODE solution stays within 20x the tolerance; tighter costs more NFE."""
    x_T = NoiseSource(0, range(64)).randn((4,), torch.float64) * gauss.schedule.prior_std(20.0)
    exact = gauss.exact_ode(x_T, 20.0, 0.02)
    nfes = []
    for tol in (1e-3, 1e-5):
        batch = _run(gauss, "dpm_solver_adaptive", 1, {"rtol": tol, "atol": tol}, n=64, **SPAN)
        assert float((batch.x - exact).abs().max()) < 20 * tol
        nfes.append(batch.nfe_measured)
    assert 10 < nfes[0] < nfes[1] < 1000, nfes
    assert _run(gauss, "dpm_solver_adaptive", 1, {"order": 2}, final_zero=True).nfe_measured > 2


def test_adaptive_rejects_bad_options(gauss):
    with pytest.raises(UsageError, match="order"):
        _run(gauss, "dpm_solver_adaptive", 1, {"order": 4})


def test_fast_orders_follow_the_paper():
    """K = n // 3 + 1 outer steps: 3s with tail [2, 1], [1] or [2] (Lu et al. 2022a, Sec. 3.4)."""
    assert fast_orders(6) == [3, 2, 1] and fast_orders(7) == [3, 3, 1] and fast_orders(8) == [3, 3, 2]
    assert fast_orders(1) == [1] and fast_orders(2) == [2] and fast_orders(0) == []
    for n in range(1, 40):
        assert sum(fast_orders(n)) == n and len(fast_orders(n)) == n // 3 + 1


@pytest.mark.parametrize("final_zero", [True, False])
def test_fast_evaluates_each_grid_point_once(gauss, final_zero):
    """NFE = grid steps: outer steps of 3/2/1 intervals use their inner grid points as stages."""
    calls: list[float] = []

    def spy(x, sigma):
        calls.append(sigma)
        return gauss(x, sigma)

    for nfe in (5, 6, 7):
        calls.clear()
        plan = make_plan("dpm_solver_fast", nfe, gauss.schedule, final_zero=final_zero)
        plan.solver.fn(spy, torch.ones(2, 4, dtype=torch.float64), plan.sigmas)
        assert calls == [float(s) for s in plan.sigmas[:nfe]]


def test_dynamic_threshold_clips_as_documented():
    x0 = torch.tensor([[0.5, -0.2, 0.9, -0.1], [3.0, -1.0, 2.0, -4.0]], dtype=torch.float64)
    out = dynamic_threshold(x0, ratio=0.5, max_val=1.0)
    # Row 0: the median |x0| (0.35) is below max_val, so s = 1 and nothing changes.
    assert torch.equal(out[0], x0[0])
    # Row 1: s = median |x0| = 2.5; clip to [-2.5, 2.5], then rescale by 1 / 2.5.
    assert torch.allclose(out[1], torch.tensor([1.0, -0.4, 0.8, -1.0], dtype=torch.float64))
    assert torch.allclose(dynamic_threshold(x0, 0.5, 2.0)[1], torch.tensor([2.0, -0.8, 1.6, -2.0], dtype=torch.float64))


def test_thresholded_samples_stay_in_range(gauss):
    """Data with a mean at 2 ends outside [-1, 1]; thresholding keeps each x0 estimate inside it."""
    plain = _run(gauss, "dpmpp_2m", 10).x
    clipped = _run(gauss, "dpmpp_2m", 10, {"thresholding": True}).x
    assert float(plain.abs().max()) > 1.5 and float(clipped.abs().max()) <= 1.0 + 1e-12
    with pytest.raises(UsageError, match="thresholding_ratio"):
        _run(gauss, "dpmpp_2s", 5, {"thresholding": True, "thresholding_ratio": 1.5})


def test_phi_series_and_closed_form_agree():
    """phi_k(z) via its power series (|z| < 1) and its closed form (else) agree at the switch."""
    for k in range(4):
        below, above = phi(k, 1 - 1e-12), phi(k, 1 + 1e-12)
        assert abs(below - above) < 1e-10
        assert abs(phi(k, 1e-8) - 1 / math.factorial(k)) < 1e-8


def test_third_order_data_step_is_exact_for_quadratic_d():
    """With D quadratic in lambda, [D, D', D''] from taylor_terms and the phi weights integrate the
    ODE x' = e^-h x + int_0^h e^(u-h) D du exactly (the D'' weight is h^3 phi_3(-h), in full)."""
    a, b, c = 0.3, -1.2, 0.7
    quad = lambda lam: a + b * lam + c * lam**2  # noqa: E731
    sigma, sigma_next = 2.0, 0.5
    lam, h = -math.log(sigma), math.log(sigma / sigma_next)
    lams = [lam, lam - 0.4, lam - 0.9]
    terms = taylor_terms(lams, [torch.tensor([quad(v)], dtype=torch.float64) for v in lams])
    assert torch.allclose(torch.cat(terms), torch.tensor([quad(lam), b + 2 * c * lam, 2 * c], dtype=torch.float64))
    x = torch.tensor([1.5], dtype=torch.float64)
    u = np.linspace(0.0, h, 20001)
    integrand = np.exp(u - h) * quad(lam + u)
    simpson = integrand[0] + integrand[-1] + 4 * integrand[1:-1:2].sum() + 2 * integrand[2:-1:2].sum()
    integral = (u[1] - u[0]) / 3 * simpson
    exact = math.exp(-h) * 1.5 + integral
    assert abs(float(data_prediction_step(x, sigma, sigma_next, terms)) - exact) < 1e-12


def test_registered_orders():
    """Orders as fitted on the contract grid (docstrings explain where they differ from nominal)."""
    orders = {"dpm_solver_1": 1, "dpm_solver_2": 2, "dpm_solver_3": 3, "dpm_solver_fast": 3, "dpm_solver_2m": 2,
              "dpm_solver_3m": 2, "dpm_solver_3m_taylor": 3, "dpmpp_2s": 2, "dpmpp_2m": 2, "dpmpp_3m": 2,
              "dpmpp_3m_taylor": 3, "dpmpp_2m_sde": 2, "dpmpp_3m_sde": 2}
    assert {n: SOLVERS[n].order for n in orders} == orders
    assert SOLVERS["dpm_solver_adaptive"].adaptive
