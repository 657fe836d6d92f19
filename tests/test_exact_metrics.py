"""Exact distribution metrics (diffbench/metrics/exact.py): Monte-Carlo estimates inside their bootstrap
intervals around closed forms, and the rows of a sweep that asks for them."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diffbench.engine.sweep import run_sweep
from diffbench.metrics.exact import (
    BootstrapSettings,
    affine_pushforward,
    exact_w2,
    gaussian_w2,
    mixture_metrics,
    ode_w2,
)
from diffbench.models.analytic import MixtureDenoiser
from diffbench.models.mixtures import gmm
from diffbench.sampling import make_plan, sample_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: conftest's one torch thread
N = 4096
BOOT = BootstrapSettings(n_boot=200, level=0.99)


def inside(value: float, metric) -> bool:
    return metric.lo <= value <= metric.hi


def samples(model, plan, n: int = N) -> np.ndarray:
    return sample_batch(model, plan, range(n), seed=0, shape=model.shape).x.reshape(n, -1).numpy()


def diagonal_w2(mean_a, std_a, mean_b, std_b) -> float:
    """W2 between two diagonal Gaussians."""
    return math.sqrt(float(((mean_a - mean_b) ** 2).sum() + ((std_a - std_b) ** 2).sum()))


@pytest.mark.parametrize("solver,nfe", [("euler", 4), ("euler", 8), ("dpmpp_2m", 5), ("heun", 7)])
def test_gaussian_w2_interval_holds_the_closed_form_of_the_solver_output(gauss, solver, nfe):
    plan = make_plan(solver, nfe, gauss.schedule)
    closed = exact_w2(gauss, plan)
    assert closed is not None and closed > 0.01  # a real discretisation error, not a vanishing one
    estimate = gaussian_w2(gauss, samples(gauss, plan), BOOT)
    assert inside(closed, estimate), (closed, estimate)


def test_affine_pushforward_reproduces_the_samples_and_rejects_nonlinear_maps(gauss):
    plan = make_plan("euler", 6, gauss.schedule)
    a, b = affine_pushforward(gauss, plan)
    z = torch.randn(5, *gauss.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = plan.solver.fn(gauss, z * float(plan.sigmas[0]), plan.sigmas)
    torch.testing.assert_close(x, a + b * z, rtol=1e-10, atol=1e-10)
    mixture = gmm(dim=2)
    assert affine_pushforward(mixture, make_plan("euler", 6, mixture.schedule)) is None
    assert exact_w2(gauss, make_plan("euler_ancestral", 6, gauss.schedule)) is None  # stochastic


def test_exact_w2_falls_at_second_order_with_heun(gauss):
    errors = [exact_w2(gauss, make_plan("heun", nfe, gauss.schedule)) for nfe in (9, 19, 39)]  # 5, 10, 20 steps
    assert errors[0] > 4 * errors[1] > 16 * errors[2]  # measured ratios 5.7 and 4.9


def test_ode_w2_interval_holds_the_closed_form_between_a_solver_and_the_exact_ode(gauss):
    plan = make_plan("euler", 6, gauss.schedule)
    a, b = affine_pushforward(gauss, plan)
    sigma_max = float(plan.sigmas[0])
    c = gauss.std / torch.sqrt(gauss.std**2 + sigma_max**2)  # exact ODE: x0 = mean + (x_T - mean) c
    closed = diagonal_w2(a, b.abs(), gauss.mean * (1 - c), c * sigma_max)
    z = torch.randn(N, *gauss.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solutions = gauss.exact_ode(z * sigma_max, sigma_max, 0.0).numpy()
    estimate = ode_w2(samples(gauss, plan), solutions, BootstrapSettings(200, 0.99, include_reference=True))
    assert inside(closed, estimate), (closed, estimate)


def test_mode_tv_and_hallucination_intervals_hold_their_closed_forms():
    model = gmm(dim=2, components=8, radius=2.0, std=0.2)
    weights = torch.linspace(1, 3, 8, dtype=torch.float64)
    weights /= weights.sum()
    skewed = MixtureDenoiser(model.means, 0.2, weights).sample_data(N, torch.Generator().manual_seed(0))
    between = (model.means + model.means.roll(1, 0)) / 2  # midpoints of neighbouring modes: 3.8 std from both
    h = 0.1
    n_between = int(h * N)
    rows = torch.cat([skewed[n_between:], between.repeat(n_between // 8 + 1, 1)[:n_between]]).numpy()
    values = mixture_metrics(model, rows, BOOT)
    true_tv = 0.5 * float((weights - 1 / 8).abs().sum())
    # The midpoints are assigned to the neighbours in turn; count them as moved mass exactly.
    best_rate = torch.bincount(torch.arange(n_between) % 8, minlength=8).double() / N
    mixed = (1 - h) * weights + best_rate.roll(0)
    expected_tv = 0.5 * float((mixed - 1 / 8).abs().sum())
    assert inside(expected_tv, values["mode_tv"]) and abs(expected_tv - true_tv) < 0.05
    assert inside(h + (1 - h) * 0.001, values["hallucination"])
    clean = model.sample_data(N, torch.Generator().manual_seed(2)).numpy()
    assert mixture_metrics(model, clean, BOOT)["hallucination"].value < 0.004  # exact data: ~0.001


def test_a_sweep_reports_the_exact_metrics_its_model_allows(tmp_path):
    common = ["metrics=error_only", "metrics.names=[solver_error,exact]", "n_samples=64", "nfe=6",
              "metrics.error_samples=32", "metrics.error_n_boot=20", f"cache_dir={tmp_path / 'cache'}"]
    run_sweep([*common, "model=gaussian", "solver=euler,euler_ancestral", f"out={tmp_path / 'g'}"], progress=False)
    run_sweep([*common, "model=gmm", "solver=euler", f"out={tmp_path / 'm'}"], progress=False)
    g = pd.read_parquet(tmp_path / "g" / "results.parquet").set_index("solver.name")
    m = pd.read_parquet(tmp_path / "m" / "results.parquet")
    assert g.loc["euler", "w2_gauss_lo"] <= g.loc["euler", "w2_gauss"] <= g.loc["euler", "w2_gauss_hi"]
    assert g.loc["euler", "w2_exact"] > 0 and pd.isna(g.loc["euler_ancestral", "w2_exact"])
    assert (g["w2_ode"] > 0).all() and "mode_tv" not in g
    assert {"mode_tv", "hallucination", "w2_ode"} <= set(m.columns) and "w2_gauss" not in m
