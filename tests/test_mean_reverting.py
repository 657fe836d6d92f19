"""The mean-reverting schedule (IR-SDE, Luo et al. 2023) against the MR-SDE's closed forms; its probability-flow
ODE written in IR-SDE's own coordinates against the EDM ODE that diffbench's solvers integrate; MR sampling on
the exact Gaussian (the MR test model: data N(m, s^2) around the mean mu, i.e. y0 = x0 - mu ~ N(m - mu, s^2))."""
from __future__ import annotations

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import GaussianDenoiser
from diffbench.sampling import make_plan, sample_batch
from diffbench.schedules import MeanReverting, make_schedule

LAM, MU = 0.7, 1.5
DATA_MEAN, DATA_STD = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([0.5, 0.2], dtype=torch.float64)


def mr_model() -> GaussianDenoiser:
    """Gaussian data around the MR mean MU, as the y = x - mu model the schedule diffuses."""
    return GaussianDenoiser(DATA_MEAN - MU, DATA_STD, MeanReverting(LAM))


def test_marginals_are_the_mr_sdes():
    s = MeanReverting(LAM)
    t = torch.linspace(s.t_min, s.t_max, 41, dtype=torch.float64)
    assert torch.allclose(s.t_of_lambda(s.lambda_(t)), t, rtol=1e-9, atol=1e-12)
    assert torch.allclose(s.sigma_to_t(s.t_to_sigma(t)), t, rtol=1e-9, atol=1e-12)
    assert torch.allclose(s.alpha(t), torch.exp(-t)) and (s.t_to_sigma(t[1:]) > s.t_to_sigma(t[:-1])).all()
    assert torch.allclose(s.sigma(t) ** 2, LAM**2 * (1 - torch.exp(-2 * t)), rtol=1e-10)
    # Moments of dy = -y dt + sqrt(2) lam dW (theta = 1 in accumulated-theta time): d var / dt = -2 var + 2 lam^2.
    tt = t[1:].clone().requires_grad_(True)
    var = s.sigma(tt) ** 2
    (d_var,) = torch.autograd.grad(var.sum(), tt)
    assert torch.allclose(d_var, -2 * var.detach() + 2 * LAM**2, rtol=1e-8)
    assert abs(s.prior_std(s.sigma_max) * float(s.alpha(s.t_max)) - LAM) < 1e-12  # stationary N(mu, lam^2)
    assert abs(float(s.alpha(s.t_max)) - 0.01) < 1e-12  # IR-SDE's e^{-theta_bar_T}


def test_ir_sde_pf_ode_is_the_edm_ode_in_y():
    """IR-SDE's ODE drift theta (mu - x) - g^2 / 2 * score (g^2 = 2 theta lam^2) equals, at x = mu + alpha x_edm,
    the time derivative of the EDM ODE dx_edm / dsigma = (x_edm - D) / sigma that every solver integrates."""
    model, s = mr_model(), MeanReverting(LAM)
    x = MU + torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t_val in (1e-3, 0.1, 0.8, 3.0):
        t = torch.tensor(t_val, dtype=torch.float64, requires_grad=True)
        sigma_e = s.t_to_sigma(t)
        (d_sigma_e,) = torch.autograd.grad(sigma_e, t)
        t, sigma_e = t.detach(), float(sigma_e.detach())
        alpha = float(s.alpha(t))
        mean_t, var_t = MU + alpha * (DATA_MEAN - MU), alpha**2 * DATA_STD**2 + float(s.sigma(t)) ** 2
        ir_drift = (MU - x) + LAM**2 * (x - mean_t) / var_t  # theta = 1; minus g^2/2 times the exact score
        x_e = (x - MU) / alpha
        dx_e = (x_e - model.denoise(x_e, torch.tensor(sigma_e, dtype=torch.float64))) / sigma_e * float(d_sigma_e)
        edm_drift = -alpha * x_e + alpha * dx_e  # d/dt (mu + alpha x_edm) with d alpha / dt = -alpha
        assert torch.allclose(edm_drift, ir_drift, rtol=1e-10, atol=1e-12), t_val


@pytest.mark.parametrize(("solver", "nfe"), [("dpmpp_2m", 60), ("dpmpp_2m_sde", 60)])
def test_mr_sampling_recovers_the_data_around_mu(solver, nfe):
    """Samples from the stationary prior N(mu, lam^2), shifted back by mu, have the data's moments."""
    model, n = mr_model(), 4000
    plan = make_plan(solver, nfe, model.schedule, step_grid="karras", final_zero=True)
    x0 = MU + sample_batch(model, plan, range(n), seed=0, shape=model.shape).x
    assert torch.allclose(x0.mean(0), DATA_MEAN, atol=4 * float(DATA_STD.max()) / n**0.5)
    assert torch.allclose(x0.std(0), DATA_STD, rtol=0.03)


def test_bad_mean_reverting_options():
    with pytest.raises(UsageError, match="stationary_std"):
        make_schedule("mean_reverting", stationary_std=0.0)
    with pytest.raises(UsageError, match="t_min"):
        MeanReverting(t_min=2.0, t_max=1.0)
