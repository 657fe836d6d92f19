"""Noise schedules against their closed forms, and round trips through every inverse."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.schedules import EDM, VE, RectifiedFlow, VPCosine, VPDiscrete, VPLinear, make_betas, make_schedule

ALL = [VPLinear(), VPCosine(), VPDiscrete(), VE(), EDM(), RectifiedFlow()]


@pytest.mark.parametrize("s", ALL, ids=lambda s: s.name)
def test_inverses_round_trip(s):
    t = torch.linspace(s.t_min, s.t_max, 57, dtype=torch.float64)
    assert torch.allclose(s.t_of_lambda(s.lambda_(t)), t, rtol=1e-9, atol=1e-9)
    assert torch.allclose(s.sigma_to_t(s.t_to_sigma(t)), t, rtol=1e-9, atol=1e-9)
    assert torch.allclose(s.lambda_(t), torch.log(s.alpha(t) / s.sigma(t)), rtol=1e-10, atol=1e-10)
    assert (s.t_to_sigma(t[1:]) > s.t_to_sigma(t[:-1])).all(), "noise must grow with t"


def test_vp_linear_closed_form():
    s, t = VPLinear(0.1, 20.0), torch.tensor([0.3, 0.9], dtype=torch.float64)
    integral = 0.1 * t + 0.5 * (20.0 - 0.1) * t**2  # int_0^t beta
    assert torch.allclose(s.alpha(t), torch.exp(-0.5 * integral))
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(2, dtype=torch.float64))


def test_vp_cosine_closed_form():
    s, t = VPCosine(), torch.tensor([0.2, 0.7], dtype=torch.float64)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2)  # noqa: E731
    expected = torch.tensor([f(0.2) / f(0.0), f(0.7) / f(0.0)], dtype=torch.float64)
    assert torch.allclose(s.alpha(t), expected)


def test_vp_discrete_matches_alphas_cumprod_at_integers():
    betas = make_betas("linear", 1000)
    s = VPDiscrete(betas)
    ac = torch.cumprod(1 - betas, 0)
    idx = torch.tensor([0.0, 10.0, 500.0, 999.0], dtype=torch.float64)
    assert torch.allclose(s.alpha(idx) ** 2, ac[idx.long()], rtol=1e-10)
    assert torch.allclose(s.t_to_sigma(idx), ((1 - ac) / ac).sqrt()[idx.long()], rtol=1e-10)


def test_ve_edm_rf_closed_forms():
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert torch.allclose(VE(0.01, 50.0).sigma(t), 0.01 * (5000.0**t))
    assert torch.allclose(EDM().t_to_sigma(t), t)
    rf = RectifiedFlow()
    assert torch.allclose(rf.alpha(t), 1 - t) and torch.allclose(rf.sigma(t), t)
    assert torch.allclose(rf.t_to_sigma(t), t / (1 - t))


def test_prior_std():
    assert EDM().prior_std(80.0) == 80.0
    vp = VPLinear()
    assert math.isclose(vp.prior_std(vp.sigma_max), math.sqrt(1 + vp.sigma_max**2), rel_tol=1e-9)


def test_bad_schedule_input():
    with pytest.raises(UsageError, match="unknown"):
        make_schedule("nope")
    with pytest.raises(UsageError, match="sigma_min"):
        EDM(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(UsageError, match="no_such_option|unexpected"):
        make_schedule("edm", no_such_option=1)
