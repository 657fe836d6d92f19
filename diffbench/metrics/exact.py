"""Exact distribution metrics on analytic models, whose data distribution is known in closed form.

Requested with the metric name ``exact`` (``metrics.names=[solver_error,exact]``); a point gets the
ones its model allows, each with a bootstrap interval over the samples (metrics.error_n_boot replicates):

- ``w2_gauss`` (model=gaussian, data N(mu, diag(s^2))): the 2-Wasserstein distance between the Gaussian
  fit of the samples (mean, unbiased covariance) and the true Gaussian. The plug-in estimate is biased
  upwards by O(d / n); keep d small next to n.
- ``w2_exact`` (model=gaussian, a deterministic solver, no interval): the same distance in closed form.
  On Gaussian data the denoiser is affine, so a linear solver maps its noise z ~ N(0, I) to
  x = a + b * z (elementwise; checked on a third input, else not reported): its output is exactly
  N(a, diag(b^2)) and W2^2 = |a - mu|^2 + |(|b| - s)|^2. It is the value w2_gauss estimates.
- ``mode_tv`` (Gaussian mixtures with stds > 0): total variation between the components' weights and the
  fractions of samples each component explains best (largest posterior responsibility).
- ``hallucination`` (same models): the fraction of samples outside every component's central
  HALLUCINATION_LEVEL ball (|x - mu_k|^2 / s_k^2 above the chi-square quantile with d degrees of freedom):
  samples between the modes. Exact data scores at most 1 - HALLUCINATION_LEVEL (that, for separated modes).
- ``w2_ode`` (any analytic model, with reference solutions): W2 between the Gaussian fits of the samples
  and of the same-noise probability-flow ODE reference solutions (the Gelbrich lower bound of W2; exact
  when both are Gaussian). Unpaired, so it also scores stochastic solvers: ODE-vs-SDE W2.

W2 intervals are the normal bootstrap interval of W2^2 (as for FD, diffbench.metrics.uncertainty), its
bounds square-rooted.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from scipy.stats import chi2
from torch import Tensor

from diffbench.columns import MetricValue
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.uncertainty import Interval, bootstrap, fd_interval
from diffbench.models import Denoiser
from diffbench.models.analytic import GaussianDenoiser, MixtureDenoiser
from diffbench.models.base import CountingDenoiser
from diffbench.noise import NoiseSource
from diffbench.sampling import Plan

HALLUCINATION_LEVEL = 0.999
AFFINE_RTOL = 1e-8


@dataclass(frozen=True)
class BootstrapSettings:
    """How the exact metrics' intervals are made (metrics.error_n_boot, ci_level, ci_includes_reference)."""

    n_boot: int = 200
    level: float = 0.95
    include_reference: bool = False


def root_interval(iv: Interval) -> MetricValue:
    """A squared distance's interval as the distance's (bounds square-rooted)."""
    return MetricValue(math.sqrt(max(iv.estimate, 0.0)), math.sqrt(max(iv.low, 0.0)), math.sqrt(max(iv.high, 0.0)))


def gaussian_w2(model: GaussianDenoiser, rows: np.ndarray, boot: BootstrapSettings) -> MetricValue:
    """W2 between the samples' Gaussian fit (rows [n, d]) and the model's data Gaussian, with its interval."""
    var = model.std.reshape(-1) ** 2
    target = FrechetTarget(model.mean.reshape(-1), torch.diag(var))
    return root_interval(fd_interval(rows, target, boot.n_boot, boot.level))


def affine_pushforward(model: Denoiser, plan: Plan) -> tuple[Tensor, Tensor] | None:
    """(a, b) with the plan's output x = a + b * z for initial noise z, or None if the solver is not affine.

    Runs the solver on z = 0, z = 1 and a random z (float64); the third checks the fitted map.
    """
    shape = tuple(model.shape)  # type: ignore[attr-defined]
    z = torch.stack([torch.zeros(shape), torch.ones(shape),
                     torch.randn(shape, generator=torch.Generator().manual_seed(0))]).double()
    x = z * model.schedule.prior_std(float(plan.sigmas[0]))
    out = plan.solver.fn(CountingDenoiser(model, budget=plan.nfe_declared), x, plan.sigmas,
                         noise=NoiseSource(0, [0, 1, 2]), **plan.options)
    a, b = out[0], out[1] - out[0]
    if not torch.allclose(out[2], a + b * z[2], rtol=AFFINE_RTOL, atol=AFFINE_RTOL * float(out.abs().max())):
        return None
    return a, b


def exact_w2(model: GaussianDenoiser, plan: Plan) -> float | None:
    """Closed-form W2 between a deterministic affine solver's output N(a, b^2) and the data N(mu, s^2)."""
    if plan.solver.is_stochastic(plan.options):
        return None
    ab = affine_pushforward(model, plan)
    if ab is None:
        return None
    a, b = ab
    return math.sqrt(float(((a - model.mean) ** 2).sum() + ((b.abs() - model.std) ** 2).sum()))


def component_scores(model: MixtureDenoiser, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best component by posterior, min_k |x - mu_k|^2 / s_k^2) of each row [n, d]."""
    x = torch.as_tensor(rows, dtype=torch.float64)
    var = model.stds ** 2
    z2 = torch.cdist(x, model.means) ** 2 / var[None]  # [n, K]
    logits = model.log_w[None] - 0.5 * z2 - 0.5 * x.shape[1] * var.log()[None]
    return logits.argmax(1).numpy(), z2.min(1).values.numpy()


def mixture_metrics(model: MixtureDenoiser, rows: np.ndarray, boot: BootstrapSettings) -> dict[str, MetricValue]:
    """mode_tv and hallucination of samples rows [n, d] under the mixture, with intervals."""
    best, z2 = component_scores(model, rows)
    weights = model.log_w.exp().numpy()
    outside = z2 > chi2.ppf(HALLUCINATION_LEVEL, rows.shape[1])

    def tv(idx: np.ndarray) -> float:
        return 0.5 * float(np.abs(np.bincount(best[idx], minlength=len(weights)) / len(idx) - weights).sum())

    values = {}
    for name, statistic in (("mode_tv", tv), ("hallucination", lambda idx: float(outside[idx].mean()))):
        iv = bootstrap(statistic, len(rows), boot.n_boot, boot.level, nonnegative=True)
        values[name] = MetricValue(iv.estimate, iv.low, iv.high)
    return values


def ode_w2(rows: np.ndarray, solutions: np.ndarray, boot: BootstrapSettings) -> MetricValue:
    """W2 between the Gaussian fits of samples [n, d] and of reference ODE solutions [m, d]."""
    target = FrechetTarget(solutions.mean(0), np.atleast_2d(np.cov(solutions, rowvar=False)))
    reference = solutions if boot.include_reference else None
    return root_interval(fd_interval(rows, target, boot.n_boot, boot.level, ref_features=reference))


def exact_metrics(model: Denoiser, plan: Plan | None, rows: np.ndarray, solutions: np.ndarray | None,
                  boot: BootstrapSettings) -> dict[str, MetricValue]:
    """Every exact metric the model allows, for samples rows [n, d] (module docstring)."""
    values: dict[str, MetricValue] = {}
    if isinstance(model, GaussianDenoiser):
        values["w2_gauss"] = gaussian_w2(model, rows, boot)
        closed = exact_w2(model, plan) if plan is not None else None
        if closed is not None:
            values["w2_exact"] = MetricValue(closed)
    if isinstance(model, MixtureDenoiser) and bool((model.stds > 0).all()):
        values.update(mixture_metrics(model, rows, boot))
    if solutions is not None and len(solutions) >= 2:
        values["w2_ode"] = ode_w2(rows, solutions, boot)
    return values


class ExactSamples:
    """A point's samples (float64 rows [n, d]) and reference solutions, kept for the exact metrics when enabled."""

    def __init__(self, model: Denoiser, plan: Plan | None, metrics: DictConfig, enabled: bool):
        self.model, self.plan, self.enabled = model, plan, enabled
        self.boot = BootstrapSettings(int(metrics.get("error_n_boot", 200)), float(metrics.get("ci_level", 0.95)),
                                      bool(metrics.get("ci_includes_reference", False)))
        self.rows: list[np.ndarray] = []
        self.solutions: np.ndarray | None = None

    def update(self, x: Tensor, solutions: Tensor | None) -> None:
        """Keep a batch of samples (and the reference solutions, once)."""
        if not self.enabled:
            return
        self.rows.append(x.detach().reshape(len(x), -1).double().cpu().numpy())
        if solutions is not None and self.solutions is None:
            self.solutions = solutions.detach().reshape(len(solutions), -1).double().cpu().numpy()

    def state(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(rows in the order seen, reference rows) for a rank's share; None when nothing is kept."""
        return (np.concatenate(self.rows), self.solutions) if self.rows else None

    def load(self, shares: Sequence[tuple[Sequence[int], np.ndarray, np.ndarray | None]]) -> None:
        """Set the state to the union of ranks' (sample indices, rows, reference rows), rows in index order."""
        if not shares:
            return
        order = np.argsort([i for indices, _, _ in shares for i in indices], kind="stable")
        self.rows = [np.concatenate([rows for _, rows, _ in shares])[order]]
        self.solutions = next((ref for _, _, ref in shares if ref is not None), None)

    def compute(self) -> dict[str, MetricValue]:
        """The exact metrics of the kept samples ({} when disabled)."""
        if not self.enabled:
            return {}
        return exact_metrics(self.model, self.plan, np.concatenate(self.rows), self.solutions, self.boot)
