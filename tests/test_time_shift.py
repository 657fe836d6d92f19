"""Time-shift samplers: no shift = the plain method; the variance match on exact marginals."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import gaussian
from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers.ancestral import ancestral
from diffbench.solvers.momentum import dpmpp_2m_hb
from diffbench.solvers.time_shift import TimeShiftedDenoiser, ts_ddim, ts_dpmpp_2m
from diffbench.steps import make_sigmas

NO_BOUNDS = (0.0, math.inf)


def _x(shape, seed=0, scale=80.0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("options", [{"window": 0.0, "cutoff": 0.0}, {"cutoff": 1.0}])
def test_without_shift_ts_ddim_is_ddim(mixture, options):
    sigmas = make_sigmas("karras", 8, mixture.schedule)
    x = _x((16, 1, 4, 4))
    assert torch.allclose(ts_ddim(mixture, x, sigmas, **options), ancestral(mixture, x, sigmas, eta=0.0),
                          rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("final_zero", [True, False])
@pytest.mark.parametrize("options", [{"window": 0.0, "cutoff": 0.0}, {"cutoff": 1.0}])
def test_without_shift_ts_dpmpp_2m_is_2m(mixture, options, final_zero):
    """The plain 2M path is dpmpp_2m_hb at beta=1 (itself checked against a reference in test_momentum)."""
    sigmas = make_sigmas("karras", 8, mixture.schedule, final_zero=final_zero)
    x = _x((16, 1, 4, 4))
    plain = dpmpp_2m_hb(mixture, x, sigmas, beta=1.0)
    assert torch.allclose(ts_dpmpp_2m(mixture, x, sigmas, **options), plain, rtol=1e-12, atol=1e-12)


def test_default_shift_acts_above_the_cutoff_only(mixture):
    """On the default EDM grid the levels above 0.3 of [0.002, 80] shift, so results differ from DDIM."""
    sigmas = make_sigmas("karras", 8, mixture.schedule)
    x = _x((16, 1, 4, 4))
    assert not torch.allclose(ts_ddim(mixture, x, sigmas), ancestral(mixture, x, sigmas, eta=0.0))
    low = make_sigmas("karras", 8, mixture.schedule, sigma_max=20.0)  # every level below 24: no shift
    assert torch.allclose(ts_ddim(mixture, x, low), ancestral(mixture, x, low, eta=0.0), rtol=1e-12, atol=1e-12)


def _marginal(model, sigma, inflate=1.0, n=64, seed=0):
    """Samples of the exact forward marginal at sigma (noise scaled by `inflate`), EDM coordinates."""
    g = torch.Generator().manual_seed(seed)
    return model.sample_data(n, g) + inflate * sigma * torch.randn(n, *model.shape, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("schedule,sigma", [("edm", 10.0), ("edm", 40.0), ("vp_linear", 1.0)])
def test_shift_is_zero_on_exact_marginals(schedule, sigma):
    """Exact Gaussian marginals with the data variance modelled: no shift beyond the estimate's noise."""
    model = gaussian(shape=(16384,), mean=0.3, std=0.5, schedule=schedule)
    shift = TimeShiftedDenoiser(model, window=0.08, cutoff=0.0, data_var=0.25)
    _, sigma_s = shift.shift(_marginal(model, sigma), sigma, NO_BOUNDS)
    log_ratio = (sigma_s / sigma).log()
    assert abs(float(log_ratio.median())) < 0.01 and float(log_ratio.abs().mean()) < 0.03


@pytest.mark.parametrize("sigma", [10.0, 40.0])
def test_extra_noise_is_matched_to_a_higher_level(sigma):
    """EDM (alpha = 1): a sample carrying 5% more noise is matched to a level ~5% higher."""
    model = gaussian(shape=(16384,), mean=0.3, std=0.5)
    shift = TimeShiftedDenoiser(model, window=0.08, cutoff=0.0, data_var=0.25)
    _, sigma_s = shift.shift(_marginal(model, sigma, inflate=1.05), sigma, NO_BOUNDS)
    assert float((sigma_s / sigma).median()) == pytest.approx(1.05, abs=0.01)


def test_paper_rule_shifts_up_by_the_neglected_data_variance():
    """data_var=0 (Var(x_t) ~ 1 - alpha_bar): exact samples match sigma_s^2 ~ sigma^2 + data variance."""
    model = gaussian(shape=(16384,), mean=0.0, std=1.0)
    sigma = 4.0
    _, sigma_s = TimeShiftedDenoiser(model, 0.08, 0.0, 0.0).shift(_marginal(model, sigma), sigma, NO_BOUNDS)
    assert float(sigma_s.median()) == pytest.approx(math.sqrt(sigma**2 + 1.0), abs=0.06)


def test_vp_shift_keeps_the_network_input():
    """The shifted state re-expresses the same x_t = alpha x at the new level."""
    model = gaussian(shape=(256,), std=0.5, schedule="vp_linear")
    sched, sigma = model.schedule, 5.0
    x = _marginal(model, sigma, inflate=1.2)
    x_s, sigma_s = TimeShiftedDenoiser(model, 0.1, 0.0, 0.0).shift(x, sigma, NO_BOUNDS)
    assert bool((sigma_s != sigma).any())
    alpha_s = sched.alpha_of_sigma(sigma_s)[:, None]
    assert torch.allclose(x_s * alpha_s, x * float(sched.alpha_of_sigma(sigma)), rtol=1e-12)


def test_shifted_levels_stay_within_a_quarter_step(gauss):
    """Even with noisy 4-D variance estimates, levels keep to their quarter-step bounds (no blow-up)."""
    sigmas = make_sigmas("karras", 10, gauss.schedule)
    shift = TimeShiftedDenoiser(gauss, window=0.5, cutoff=0.0, data_var=0.0)
    x = _x((256, 4), seed=2)
    for i in range(len(sigmas) - 1):
        x_s, sigma_s, denoised = shift(x, sigmas, i)
        prev = float(sigmas[i - 1]) if i else math.inf
        lo, hi = float(sigmas[i]) ** 0.75 * float(sigmas[i + 1]) ** 0.25, float(sigmas[i]) ** 0.75 * prev**0.25
        assert bool(((sigma_s > lo) & (sigma_s < hi)).all())
        x = denoised + float(sigmas[i + 1]) / sigma_s[:, None] * (x_s - denoised)
    plan = make_plan("ts_dpmpp_2m", 10, gauss.schedule, solver_options={"cutoff": 0.0, "window": 0.5})
    assert bool(torch.isfinite(sample_batch(gauss, plan, range(256), seed=0, shape=(4,)).x).all())


@pytest.mark.parametrize("options", [{"window": -0.1}, {"cutoff": 1.5}, {"data_var": -1.0}])
def test_bad_options_are_usage_errors(gauss, options):
    plan = make_plan("ts_ddim", 6, gauss.schedule, solver_options=options)
    with pytest.raises(UsageError):
        plan.solver.fn(gauss, torch.zeros(2, 4, dtype=torch.float64), plan.sigmas, **plan.options)


def test_one_element_samples_are_a_usage_error():
    model = gaussian(shape=(1,))
    plan = make_plan("ts_ddim", 6, model.schedule)
    with pytest.raises(UsageError, match="2 elements"):
        sample_batch(model, plan, range(4), seed=0, shape=(1,))
