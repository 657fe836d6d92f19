"""Momentum samplers (HB on DPM-Solver++(2M), GHVB on PLMS): beta=1 reduction, orders, stability."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.base import Denoiser, expand_as
from diffbench.sampling import make_plan
from diffbench.schedules import EDM
from diffbench.solvers import SOLVERS
from diffbench.solvers.momentum import _GHVB, dpmpp_2m_hb, ghvb_combine, plms_ghvb
from diffbench.steps import make_sigmas
from tests.helpers.convergence import SPAN

AB = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
      5: [1901 / 720, -2774 / 720, 2616 / 720, -1274 / 720, 251 / 720]}


def reference_2m(denoiser, x, sigmas):
    """Reference DPM-Solver++(2M) (Lu et al. 2022) in sigma, written independently of momentum.py."""
    prev, h_last = None, 0.0
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d = denoiser(x, s)
        if s_next == 0:
            return d
        h = math.log(s / s_next)
        used = d if prev is None else (1 + h / (2 * h_last)) * d - h / (2 * h_last) * prev
        x = (s_next / s) * x - math.expm1(-h) * used
        prev, h_last = d, h
    return x


def reference_plms(denoiser, x, sigmas, order):
    """Reference PLMS: Adams-Bashforth-k on eps = (x - D) / sigma with lower orders while warming up."""
    eps_hist = []
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        eps_hist = (eps_hist + [(x - denoiser(x, s)) / s])[-order:]
        coef = AB[len(eps_hist)]
        x = x + (s_next - s) * sum(c * e for c, e in zip(coef, reversed(eps_hist)))
    return x


@pytest.mark.parametrize("final_zero", [True, False])
def test_hb_with_beta_one_is_plain_dpmpp_2m(mixture, final_zero):
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    sigmas = make_sigmas("karras", 9, mixture.schedule, final_zero=final_zero)
    got = dpmpp_2m_hb(mixture, x, sigmas, beta=1.0)
    assert torch.allclose(got, reference_2m(mixture, x, sigmas), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(dpmpp_2m_hb(mixture, x, sigmas, beta=0.8), got, atol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_ghvb_with_beta_one_is_plain_plms(mixture, order):
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 80
    sigmas = make_sigmas("karras", 10, mixture.schedule, final_zero=True)
    got = plms_ghvb(mixture, x, sigmas, order=order, beta=1.0)
    assert torch.allclose(got, reference_plms(mixture, x, sigmas, order), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", sorted(_GHVB))
def test_ghvb_weights_sum_to_one_and_are_adams_bashforth_at_beta_one(order):
    for beta in (0.3, 0.8, 1.0):
        ones = [torch.ones(1, dtype=torch.float64) for _ in range(order)]
        assert float(ghvb_combine(ones, order, beta)) == pytest.approx(1.0, abs=1e-12)
    basis = [torch.zeros(order, dtype=torch.float64).index_fill(0, torch.tensor([j]), 1.0) for j in range(order)]
    weights = ghvb_combine(basis[::-1], order, 1.0)  # newest first in the result
    assert weights.tolist() == pytest.approx(AB[order], abs=1e-12)


def _slope(model, name, options):
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0
    exact = model.exact_ode(x_T, 20.0, 0.02)
    errs = []
    for steps in (8, 12, 16, 24, 32):
        plan = make_plan(name, steps, model.schedule, solver_options=options, **SPAN)
        out = plan.solver.fn(model, x_T, plan.sigmas, **plan.options)
        errs.append(float((out - exact).pow(2).mean().sqrt()))
    return -float(np.polyfit(np.log([8, 12, 16, 24, 32]), np.log(errs), 1)[0])


def test_orders_on_the_contract_grid(gauss):
    """HB is first order for beta < 1 (the paper's theorem); GHVB keeps order 2; beta=1 recovers 2M's ~2."""
    assert abs(_slope(gauss, "dpmpp_2m_hb", {"beta": 0.5}) - 1) <= 0.3
    assert abs(_slope(gauss, "dpmpp_2m_hb", {"beta": 1.0}) - 2) <= 0.3
    assert abs(_slope(gauss, "plms_ghvb", {"order": 2, "beta": 0.5}) - 2) <= 0.3
    assert SOLVERS["dpmpp_2m_hb"].order == 1 and SOLVERS["plms_ghvb"].order == 2


class _Linear(Denoiser):
    """eps(x, sigma) = c x: the linear test equation dx/dsigma = c x of stability analysis."""

    dtype = torch.float64

    def __init__(self, c: float):
        self.c, self.schedule = c, EDM()

    def denoise(self, x, sigma):
        return x * (1 - self.c * expand_as(sigma, x))


def test_ghvb_widens_the_stability_region():
    """At z = c * dsigma = -1.1 Adams-Bashforth 2 (beta=1) is unstable; GHVB with beta=0.5 is not."""
    sigmas = torch.linspace(100.0, 40.0, 61, dtype=torch.float64)  # uniform steps of 1
    x = torch.ones(1, 1, dtype=torch.float64)
    assert float(plms_ghvb(_Linear(1.1), x, sigmas, order=2, beta=1.0).abs()) > 1e2
    assert float(plms_ghvb(_Linear(1.1), x, sigmas, order=2, beta=0.5).abs()) < 1e-6


@pytest.mark.parametrize("name,options", [("dpmpp_2m_hb", {"beta": 0.0}), ("dpmpp_2m_hb", {"beta": 1.5}),
                                          ("plms_ghvb", {"beta": -0.1}), ("plms_ghvb", {"order": 6})])
def test_bad_options_are_usage_errors(gauss, name, options):
    plan = make_plan(name, 6, gauss.schedule, solver_options=options)
    with pytest.raises(UsageError):
        plan.solver.fn(gauss, torch.zeros(2, 4, dtype=torch.float64), plan.sigmas, **plan.options)
