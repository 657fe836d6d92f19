"""Restart sampling: the paper's NFE rule, restart levels, reduction to Heun, option errors."""
from __future__ import annotations

import pytest
import torch

from diffbench.errors import UsageError
from diffbench.models.base import CountingDenoiser
from diffbench.noise import NoiseSource
from diffbench.solvers.euler import heun
from diffbench.solvers.restart import restart, restart_index, restart_nfe
from diffbench.steps import make_sigmas

CONFIGS = [
    [[3, 2, 0.06, 0.30]],
    [[4, 1, 19.35, 40.79], [4, 1, 1.09, 1.92], [4, 5, 0.59, 1.09], [6, 6, 0.06, 0.30]],  # paper, ImageNet-64
    [[2, 3, 0.5, 2.0], [5, 1, 0.5, 3.0]],  # two intervals restarting from the same level
    [[3, 0, 0.06, 0.30]],
]


def _run(model, sigmas, n=5, seed=0, **options):
    noise = NoiseSource(seed, range(n))
    x = noise.randn((4,), torch.float64) * float(sigmas[0])
    counter = CountingDenoiser(model)
    return restart(counter, x, sigmas, noise=noise, **options), counter.calls


@pytest.mark.parametrize("restarts", CONFIGS)
@pytest.mark.parametrize("steps,final_zero", [(1, True), (1, False), (2, True), (7, True), (7, False), (18, True)])
def test_measured_nfe_is_the_papers_rule(gauss, restarts, steps, final_zero):
    """Main pass 2n - 1 (or 2n) plus 2 K (N_restart - 1) per interval, as in the paper's hyperparam.py."""
    sigmas = make_sigmas("karras", steps, gauss.schedule, final_zero=final_zero)
    out, calls = _run(gauss, sigmas, restarts=restarts)
    assert calls == restart_nfe(steps, final_zero, restarts)
    assert bool(torch.isfinite(out).all())


def test_nfe_rule_matches_the_papers_table():
    """ImageNet-64 config of the README: 36 main levels, NFE 203 (Table 5 of the paper)."""
    restarts = [[4, 1, 19.35, 40.79], [4, 1, 1.09, 1.92], [4, 5, 0.59, 1.09], [4, 5, 0.30, 0.59], [6, 6, 0.06, 0.30]]
    assert restart_nfe(36, True, restarts) == 203


def test_restart_level_is_the_nearest_below_t_max(gauss):
    sigmas = torch.tensor([80.0, 10.0, 2.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    assert restart_index(sigmas, 0.06, 0.3) == 4
    assert restart_index(sigmas, 1.2, 1.9) == 3  # 2.0 is nearer to 1.2 but above t_max
    assert restart_index(sigmas, 70.0, 90.0) == 1  # never the first level
    assert restart_index(torch.tensor([80.0, 0.0], dtype=torch.float64), 0.06, 0.3) == 1  # one step to 0
    with pytest.raises(UsageError, match="no grid level below t_max"):
        restart_index(sigmas, 0.01, 0.05)


@pytest.mark.parametrize("restarts", [[], [[3, 0, 0.06, 0.30]]])
def test_without_restarts_it_is_heun(gauss, restarts):
    sigmas = make_sigmas("karras", 9, gauss.schedule)
    out, _ = _run(gauss, sigmas, restarts=restarts)
    x = NoiseSource(0, range(5)).randn((4,), torch.float64) * float(sigmas[0])
    assert torch.equal(out, heun(gauss, x, sigmas))


def test_restarts_change_the_sample_and_use_fresh_noise(gauss):
    sigmas = make_sigmas("karras", 9, gauss.schedule)
    a, _ = _run(gauss, sigmas, seed=0)
    b, _ = _run(gauss, sigmas, seed=1)
    x = NoiseSource(0, range(5)).randn((4,), torch.float64) * float(sigmas[0])
    assert not torch.allclose(a, heun(gauss, x, sigmas), atol=1e-6)
    assert not torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("restarts", [[[3, 2, 0.06]], [[1, 2, 0.06, 0.3]], [[3, -1, 0.06, 0.3]],
                                      [[3, 2, 0.3, 0.06]], [[2.5, 2, 0.06, 0.3]]])
def test_bad_restart_intervals_are_usage_errors(gauss, restarts):
    sigmas = make_sigmas("karras", 9, gauss.schedule)
    with pytest.raises(UsageError, match="solver.restarts"):
        _run(gauss, sigmas, restarts=restarts)
    with pytest.raises(UsageError, match="solver.restarts"):
        restart_nfe(9, True, restarts)
