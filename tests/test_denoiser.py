"""The denoiser contract: conversions from every parameterisation, counting, analytic models."""
from __future__ import annotations

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import GaussianDenoiser, MixtureDenoiser, gaussian
from diffbench.models.base import CountingDenoiser, PredictionDenoiser, expand_as, from_x0, schedule_derivatives
from diffbench.schedules import EDM, VE, RectifiedFlow, VPCosine, VPDiscrete, VPLinear


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "flow", "score"])
@pytest.mark.parametrize("schedule", [VPLinear(), VPCosine(), VPDiscrete(), VE(), EDM(), RectifiedFlow()],
                         ids=lambda s: s.name)
def test_every_parameterisation_recovers_the_exact_denoiser(prediction, schedule):
    """A perfect native network wrapped by PredictionDenoiser equals the exact Gaussian D(x, sigma)."""
    exact = gaussian(shape=(3,), mean=[0.3, -0.2, 1.0], std=[0.7, 1.2, 0.4], schedule=schedule)

    def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, std = expand_as(schedule.alpha(t), x_t), expand_as(schedule.sigma(t), x_t)
        x0 = exact.denoise(x_t / alpha, std.flatten() / alpha.flatten())
        derivs = tuple(expand_as(d, x_t) for d in schedule_derivatives(schedule, t))
        return from_x0(x0, prediction, x_t, alpha, std, derivs)

    wrapped = PredictionDenoiser(net, schedule, prediction, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    sigma = torch.tensor([0.05, 0.5, 1.0, 4.0, 20.0], dtype=torch.float64).clamp(max=schedule.sigma_max)
    assert torch.allclose(wrapped(x, sigma), exact(x, sigma), rtol=1e-6, atol=1e-7)


def test_counting_wrapper_counts_and_casts():
    inner = gaussian(shape=(2,))
    inner.dtype = torch.float32
    counter = CountingDenoiser(inner)
    x = torch.ones(4, 2, dtype=torch.float64)
    out = counter(x, 1.0)
    counter(x, 2.0)
    assert counter.calls == 2 and out.dtype == torch.float64
    with pytest.raises(UsageError, match="sigma <= 0"):
        counter(x, 0.0)


def test_deferred_sigma_check_catches_a_call_at_zero_after_the_solver():
    counter = CountingDenoiser(gaussian(shape=(2,)), deferred=True)
    x = torch.ones(4, 2, dtype=torch.float64)
    counter(x, 1.0)
    counter.check_sigmas()  # every call so far above zero
    counter(x, torch.tensor([0.5, 0.0, 0.5, 0.5], dtype=torch.float64))  # one row at zero: no error yet
    counter(x, 2.0)
    with pytest.raises(UsageError, match="sigma <= 0"):
        counter.check_sigmas()


def test_mixture_with_one_component_is_the_gaussian():
    mean = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    mix = MixtureDenoiser(mean, stds=0.8)
    g = GaussianDenoiser(mean[0], torch.full((3,), 0.8, dtype=torch.float64))
    x = torch.randn(6, 3, dtype=torch.float64)
    assert torch.allclose(mix(x, 0.7), g(x, 0.7))


def test_empirical_denoiser_snaps_to_nearest_point_at_low_noise():
    pts = torch.tensor([[0.0, 0.0], [4.0, 4.0]], dtype=torch.float64)
    emp = MixtureDenoiser(pts, stds=0.0)
    x = torch.tensor([[0.3, -0.2], [3.5, 4.4]], dtype=torch.float64)
    assert torch.allclose(emp(x, 0.05), pts, atol=1e-6)


def test_mixture_shape_mismatch_is_a_usage_error():
    mix = MixtureDenoiser(torch.zeros(2, 3, dtype=torch.float64), stds=1.0)
    with pytest.raises(UsageError, match="shape"):
        mix(torch.zeros(4, 5, dtype=torch.float64), 1.0)
