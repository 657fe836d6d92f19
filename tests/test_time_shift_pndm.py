"""TS-PNDM (time-shifted S-PNDM): no shift = s_pndm exactly; a shift moves the result, within the NFE rule."""
from __future__ import annotations

import pytest
import torch

from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers.pndm import plms
from diffbench.solvers.time_shift import ts_s_pndm
from diffbench.steps import make_sigmas


def _x(seed=0):
    return torch.randn(16, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 80.0


@pytest.mark.parametrize("final_zero", [True, False])
@pytest.mark.parametrize("options", [{"window": 0.0, "cutoff": 0.0}, {"cutoff": 1.0}])
def test_without_shift_ts_s_pndm_is_s_pndm(mixture, options, final_zero):
    sigmas = make_sigmas("karras", 8, mixture.schedule, final_zero=final_zero)
    x = _x()
    assert torch.allclose(ts_s_pndm(mixture, x, sigmas, **options), plms(mixture, x, sigmas, max_order=2),
                          rtol=1e-12, atol=1e-12)


def test_shifting_changes_samples_at_the_same_nfe(mixture):
    """Above the cutoff the evaluation levels move (the mixture's samples are not at their marginal variance)."""
    plan = make_plan("ts_s_pndm", 9, mixture.schedule, solver_options={"window": 0.2, "cutoff": 0.0})
    shifted = sample_batch(mixture, plan, range(16), seed=0, shape=(1, 4, 4))
    plain = sample_batch(mixture, make_plan("s_pndm", 9, mixture.schedule), range(16), seed=0, shape=(1, 4, 4))
    assert shifted.nfe_measured == plain.nfe_measured == 9
    assert not torch.allclose(shifted.x, plain.x, atol=1e-6)
