"""Contracts every registered solver must meet; new solvers are picked up automatically.

- deterministic solvers: fitted convergence order on the exact Gaussian PF-ODE within 0.3 of `order`;
- measured NFE equals the declared count at every budget 1..20 it accepts, else a clear error;
- stochastic solvers: sample mean / std match the data Gaussian (tolerances stated below);
- sample i is bitwise identical for batch sizes 1, 7 and 64.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.analytic import gaussian
from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers import SOLVERS
from tests.helpers.convergence import DETERMINISTIC, SPAN, ZERO_END, error_at, fitted_slope, order_options

FIXED = sorted(n for n, s in SOLVERS.items() if not s.adaptive)
# Stochastic cases: always-stochastic solvers, plus those made stochastic by an option (eta, churn).
_SWITCH = {"s_churn": 40.0, "eta": 0.5, "eps": 1.0}
STOCHASTIC = sorted([(n, {}) for n, s in SOLVERS.items() if s.is_stochastic()]
                    + [(n, {s.stochastic: _SWITCH[s.stochastic]}) for n, s in SOLVERS.items()
                       if isinstance(s.stochastic, str) and not s.is_stochastic()], key=lambda c: c[0])


# Where a solver's asymptotic regime starts later on this problem, fit further out (measured, see note):
# iPNDM's fixed Adams-Bashforth weights on a first-order start reach slope 2 from ~16 steps; so do PLMS's
# 4-step weights (1.64 over 8..32, 2.00 over 16..64).
# DPM-Solver-3 singlestep leaves its pre-asymptotic bump (3.30 over 8..32) by 16 steps (3.17).
# dpmpp_3m / dpm_solver_3m (half the D'' weight, the reference's) tend to 2 from above: 2.43 over 8..32, 2.20 over
# 16..64, 2.06 over 32..128 (the *_taylor forms reach 2 as well, but only past 64 steps, through their first-order
# warm-up: 3.14 over 8..32).
# lower_order_final (the reference codes' default, benchmarked): multistep DPM-Solver(++) lower the last orders below
# 10 steps, so their windows start at 10 (dpmpp_2m 1.82, dpmpp_3m_taylor 2.81 over 10..32; from 8 the 8-step point is
# off the line: 1.66 and 3.91). UniPC lowers the last steps at every step count (its last step is UniP-1 without
# corrector): UniPC-3 is erratic below ~48 steps (5.05 / 4.46 over 8..32, 1.89 / 2.33 over 24..96) and tends to
# order 2 (2.06 bh1 / 2.12 bh2 over 64..256), which is what it is held to (ASYMPTOTIC); p = 1, 2 keep p + 1 there.
WINDOW = {"dpmpp_3m": (16, 24, 32, 48, 64), "dpmpp_3m_diffusers": (16, 24, 32, 48, 64),
          "dpm_solver_3m": (16, 24, 32, 48, 64), "ipndm": (16, 24, 32, 48, 64), "plms": (16, 24, 32, 48, 64),
          "dpm_solver_3": (16, 24, 32, 48, 64),
          "dpmpp_2m": (10, 12, 16, 24, 32), "dpmpp_3m_taylor": (10, 12, 16, 24, 32),
          "teleport_dpmpp_2m": (10, 12, 16, 24, 32),
          "unipc_bh1": (64, 96, 128, 192, 256), "unipc_bh2": (64, 96, 128, 192, 256),
          "evodiff": (16, 24, 32, 48, 64)}
ASYMPTOTIC = {"unipc_bh1": 2, "unipc_bh2": 2}
# Its default EMS on the mixture (250 levels x 1024 samples) take ~70 s to compute, and each of the 75 batches
# below looks them up (>10 s even for a tiny EMS grid): batch invariance runs the degenerate EMS here; with
# ems=auto it is tested in test_dpm_solver_v3 (test_ems_are_not_sampling_nfe_and_keep_batches_invariant).
BATCH_OPTIONS = {"dpm_solver_v3": {"ems": "none"}}


def fitted_order(model, name: str, x_T: torch.Tensor) -> tuple[float, list[float]]:
    """Fitted order of `name` on the Gaussian over its WINDOW of step counts, and the errors."""
    steps = [s * SOLVERS[name].min_steps for s in WINDOW.get(name, (8, 12, 16, 24, 32))]
    errs = [error_at(model, name, s, x_T, order_options(name, SPAN["sigma_max"]), name in ZERO_END) for s in steps]
    return fitted_slope(name, steps, errs), errs


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_convergence_order(gauss, name):
    """Fitted slope within 0.3 of the registered order (x_T ~ N(0, 20^2), 256 samples)."""
    x_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20.0
    slope, errs = fitted_order(gauss, name, x_T)
    order = ASYMPTOTIC.get(name, SOLVERS[name].order)
    assert order - 0.3 <= slope <= order + 0.3, f"{name}: fitted order {slope:.2f}, errors {errs}"


@pytest.mark.parametrize("final_zero", [True, False])
@pytest.mark.parametrize("name", FIXED)
def test_measured_nfe_matches_declared(gauss, name, final_zero):
    for budget in range(1, 21):
        try:
            plan = make_plan(name, budget, gauss.schedule, final_zero=final_zero)
        except UsageError as e:
            assert "nearest valid" in str(e)
            continue
        batch = sample_batch(gauss, plan, range(3), seed=0, shape=(4,))
        assert batch.nfe_measured == budget == plan.nfe_declared


def test_nfe_budget_error_names_neighbours(gauss):
    with pytest.raises(UsageError, match=r"nfe=4.*nearest valid: 3 or 5"):
        make_plan("heun", 4, gauss.schedule, final_zero=True)


@pytest.mark.parametrize("name,options", STOCHASTIC, ids=[f"{n}-{o}" for n, o in STOCHASTIC])
def test_stochastic_moments(name, options):
    """10k samples on N(mu, s^2) in 2-D: |mean - mu| <= 0.03 + 4 SE, |std / s - 1| <= 0.06."""
    model = gaussian(shape=(2,), mean=[1.0, -0.5], std=[0.5, 1.5])
    plan = make_plan(name, _nfe_near(name, 200), model.schedule, solver_options=options)
    x = sample_batch(model, plan, range(10_000), seed=1, shape=(2,)).x
    mean, std = x.mean(0), x.std(0)
    se = model.std / math.sqrt(len(x))
    assert ((mean - model.mean).abs() <= 0.03 + 4 * se).all(), (mean, model.mean)
    assert ((std / model.std - 1).abs() <= 0.06).all(), (std, model.std)


def _nfe_near(name: str, target: int) -> int:
    spec = SOLVERS[name]
    if spec.adaptive:
        return target
    steps = range(spec.min_steps, target + spec.min_steps)
    return min((spec.nfe_for(n, True) for n in steps), key=lambda b: abs(b - target))


@pytest.mark.parametrize("name", FIXED)
def test_batch_size_invariance(mixture, name):
    """Sample i is bitwise identical whatever the batch it is computed in."""
    spec = SOLVERS[name]
    options = {spec.stochastic: _SWITCH[spec.stochastic]} if isinstance(spec.stochastic, str) else {}
    plan = make_plan(name, _nfe_near(name, 8), mixture.schedule,
                     solver_options={**options, **BATCH_OPTIONS.get(name, {})})
    idx = list(range(64))
    full = sample_batch(mixture, plan, idx, seed=3, shape=(1, 4, 4)).x
    for bs in (1, 7):
        parts = [sample_batch(mixture, plan, idx[i:i + bs], seed=3, shape=(1, 4, 4)).x for i in range(0, 64, bs)]
        assert torch.equal(torch.cat(parts), full), f"{name}: batch size {bs} changed samples"


def test_euler_equals_ddim(gauss):
    plan_e = make_plan("euler", 10, gauss.schedule)
    plan_d = make_plan("ddim", 10, gauss.schedule)
    a = sample_batch(gauss, plan_e, range(16), seed=0, shape=(4,)).x
    b = sample_batch(gauss, plan_d, range(16), seed=0, shape=(4,)).x
    assert torch.allclose(a, b, rtol=0, atol=1e-10)


