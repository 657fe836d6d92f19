"""Step grids: shapes, ends, monotonicity and the known closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.schedules import EDM, VPLinear
from diffbench.steps import STEP_GRIDS, make_sigmas

# ays: published absolute levels; flow_shift*: the flow schedulers' own times (tests/test_flow_transformer.py)
GRIDS = [n for n in STEP_GRIDS if n not in ("explicit", "ays", "fitted", "flow_shift", "flow_shift_flux")]


@pytest.mark.parametrize("final_zero", [True, False])
@pytest.mark.parametrize("name", GRIDS)
@pytest.mark.parametrize("schedule", [EDM(), VPLinear()], ids=["edm", "vp_linear"])
def test_grid_shape_and_ends(name, schedule, final_zero):
    for n in (1, 2, 7):
        s = make_sigmas(name, n, schedule, sigma_min=0.05, sigma_max=20.0, final_zero=final_zero)
        assert len(s) == n + 1 and s.dtype == torch.float64
        assert math.isclose(float(s[0]), 20.0, rel_tol=1e-9)
        assert (s[1:] < s[:-1]).all()
        if final_zero:
            assert float(s[-1]) == 0 and (n == 1 or math.isclose(float(s[-2]), 0.05, rel_tol=1e-9))
        else:
            assert math.isclose(float(s[-1]), 0.05, rel_tol=1e-9)


def test_karras_closed_form():
    s = make_sigmas("karras", 3, EDM(), sigma_min=0.002, sigma_max=80.0, final_zero=False, rho=7.0)
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    expected = [(hi + i / 3 * (lo - hi)) ** 7 for i in range(4)]
    assert torch.allclose(s, torch.tensor(expected, dtype=torch.float64))


def test_logsnr_is_uniform_in_lambda():
    s = make_sigmas("uniform_logsnr", 5, VPLinear(), final_zero=False)
    lam = -s.log()
    assert torch.allclose(lam.diff(), lam.diff()[:1].expand(5))


def test_quadratic_in_time():
    vp = VPLinear()
    s = make_sigmas("quadratic", 4, vp, final_zero=False)
    t = vp.sigma_to_t(s)
    assert torch.allclose(t.sqrt().diff(), t.sqrt().diff()[:1].expand(4), atol=1e-9)


def test_explicit_and_errors():
    s = make_sigmas("explicit", 2, EDM(), sigmas=[10.0, 1.0, 0.0])
    assert s.tolist() == [10.0, 1.0, 0.0]
    with pytest.raises(UsageError, match="strictly decreasing"):
        make_sigmas("explicit", 2, EDM(), sigmas=[1.0, 10.0, 0.0])
    with pytest.raises(UsageError, match="sigma_min"):
        make_sigmas("karras", 5, EDM(), sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(UsageError, match="unknown"):
        make_sigmas("nope", 5, EDM())
    with pytest.raises(UsageError, match="positive"):
        make_sigmas("karras", 0, EDM())
