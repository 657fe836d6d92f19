"""PFGM++ (schedules.PFGMPP): its prior's law, its exact denoiser on points, and the D -> infinity EDM limit."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import MixtureDenoiser, gaussian
from diffbench.noise import NoiseSource
from diffbench.sampling import make_plan, sample_batch
from diffbench.schedules import EDM, PFGMPP

pytestmark = pytest.mark.usefixtures("one_thread")
POINTS = torch.tensor([[1.0, 0.0, 0.5], [-1.0, 0.5, 0.0], [0.0, -1.0, -0.5], [0.3, 0.3, 1.0]], dtype=torch.float64)


def points(augment_dim: int | None) -> MixtureDenoiser:
    schedule = EDM(0.002, 80.0) if augment_dim is None else PFGMPP(0.002, 80.0, augment_dim)
    return MixtureDenoiser(POINTS, 0.0, schedule=schedule)


def test_the_denoiser_tends_to_edm_at_rate_one_over_d():
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0
    sigma = torch.full((32,), 0.7, dtype=torch.float64)
    edm = points(None)(x, sigma)
    gaps = {d: float((points(d)(x, sigma) - edm).abs().max()) for d in (10**3, 10**5, 10**7)}
    assert gaps[10**7] < 1e-5
    # log-kernel difference -(d + D)/2 log(1 + q / (D s^2)) + q / (2 s^2) = O(1/D): the gap times D is constant.
    assert gaps[10**3] * 10**3 == pytest.approx(gaps[10**5] * 10**5, rel=0.05)
    assert gaps[10**5] * 10**5 == pytest.approx(gaps[10**7] * 10**7, rel=0.01)


def test_the_prior_is_the_inverse_beta_law_along_the_edm_draw():
    n, sigma = 8000, 80.0
    for d in (4, 64):
        x = PFGMPP(augment_dim=d).prior(NoiseSource(0, range(n)), (3,), sigma, torch.float64)
        ratio = x.pow(2).sum(1) / (3 * sigma**2)  # F(3, d) distributed: mean d / (d - 2)
        expected = d / (d - 2)
        se = float(ratio.std()) / math.sqrt(n)
        assert abs(float(ratio.mean()) - expected) < 4 * se
    z = NoiseSource(0, range(16)).randn((3,), torch.float64)  # EDM's x_T / sigma: the first draw
    x = PFGMPP(augment_dim=10**4).prior(NoiseSource(0, range(16)), (3,), sigma, torch.float64)
    scale = x / (sigma * z)
    assert torch.allclose(scale, scale[:, :1].expand_as(scale), rtol=1e-12)  # the same direction as z
    assert float((scale - 1).abs().max()) < 0.03  # |w| / sqrt(D) -> 1 (std 1 / sqrt(2 D) = 0.007)


def test_sampling_runs_from_the_pfgmpp_prior_and_tends_to_edm_sampling():
    model = points(16)
    # Stopping at sigma 0.5 keeps the samples between the points (at 0 they all land on one: no gap to measure).
    plan = make_plan("heun", 10, model.schedule, sigma_min=0.5, sigma_max=20.0, final_zero=False)
    x_T = model.schedule.prior(NoiseSource(0, range(8)), (3,), 20.0, torch.float64)
    out = sample_batch(model, plan, range(8), seed=0, shape=(3,)).x
    torch.testing.assert_close(out, plan.solver.fn(model, x_T, plan.sigmas), rtol=1e-12, atol=1e-12)
    # From one x_T, PFGM++'s ODE solution tends to EDM's as D grows (the denoisers differ by O(1/D)).
    edm = plan.solver.fn(points(None), x_T, plan.sigmas)
    gaps = [float((plan.solver.fn(points(d), x_T, plan.sigmas) - edm).abs().max()) for d in (10**2, 10**4, 10**6)]
    assert gaps[2] < 1e-5 and gaps[0] > 50 * gaps[1] > 2500 * gaps[2]  # measured 7.3e-3, 7.6e-5, 7.6e-7


@pytest.mark.parametrize("build", [lambda: PFGMPP(augment_dim=0),
                                   lambda: MixtureDenoiser(POINTS, 0.1, schedule=PFGMPP(augment_dim=8)),
                                   lambda: gaussian(schedule="pfgmpp")])
def test_bad_pfgmpp_input_is_a_usage_error(build):
    with pytest.raises(UsageError):
        build()
