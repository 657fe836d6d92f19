"""Exact denoisers in closed form: Gaussian, Gaussian mixture and empirical data (mixture of deltas).

They need no weights, run on any sample shape (2-D points or images) and give solvers a model with
known answers: for Gaussian data the probability-flow ODE has an exact solution (``exact_ode``),
which the convergence tests use as ground truth. All arithmetic is elementwise or a per-row
reduction (no matmul), so sample i is bitwise the same in any batch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser, expand_as
from diffbench.models.registry import register_model
from diffbench.schedules import EDM, PFGMPP, NoiseSchedule, make_schedule


class GaussianDenoiser(Denoiser):
    """Data ~ N(mean, diag(std^2)): D(x, sigma) = mean + std^2 / (std^2 + sigma^2) (x - mean)."""

    dtype = torch.float64

    def __init__(self, mean: Tensor, std: Tensor, schedule: NoiseSchedule | None = None):
        self.mean, self.std = mean.double(), std.double().expand_as(mean.double()).clone()
        check(bool((self.std > 0).all()), "model.std must be > 0")
        self.schedule = schedule or EDM()
        check(not isinstance(self.schedule, PFGMPP), "model: the pfgmpp schedule's exact denoiser needs points "
              "(image_mixture with std 0), not a Gaussian")
        self.shape = tuple(self.mean.shape)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        var = self.std.to(x) ** 2
        s2 = expand_as(sigma, x) ** 2
        return self.mean.to(x) + var / (var + s2) * (x - self.mean.to(x))

    def exact_ode(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """The probability-flow ODE solution from noise level sigma_from to sigma_to (may be 0)."""
        var, mean = self.std.to(x) ** 2, self.mean.to(x)
        return mean + (x - mean) * torch.sqrt((var + sigma_to**2) / (var + sigma_from**2))

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws from the data distribution."""
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return self.mean + self.std * z

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "gaussian", "dim": self.mean.numel()}


class MixtureDenoiser(Denoiser):
    """Data ~ sum_k w_k N(mu_k, s_k^2 I); s_k = 0 gives the empirical (mixture of deltas) denoiser.

    D(x, sigma) = sum_k r_k(x) (mu_k + s_k^2/(s_k^2+sigma^2) (x - mu_k)), with posterior
    responsibilities r_k computed in log space. Under a PFGM++ schedule (schedules.PFGMPP, augmented dimension
    D; points only, s_k = 0) r_k ~ w_k (|x - mu_k|^2 + D sigma^2)^(-(d + D) / 2), its kernel's posterior.
    """

    dtype = torch.float64

    def __init__(self, means: Tensor, stds: Tensor | float = 0.0, weights: Tensor | None = None,
                 schedule: NoiseSchedule | None = None, chunk: int = 64):
        means = means.double()
        k = means.shape[0]
        self.means = means.reshape(k, -1)
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights.double()
        check(w.shape == (k,) and bool((w > 0).all()), "model.weights: need one positive weight per component")
        check(bool((self.stds >= 0).all()), "model.stds must be >= 0")
        self.log_w = (w / w.sum()).log()
        self.shape, self.chunk = tuple(means.shape[1:]), chunk
        self.schedule = schedule or EDM()
        check(not isinstance(self.schedule, PFGMPP) or not bool(self.stds.any()),
              "model: the pfgmpp schedule's exact denoiser needs points (std 0)")

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise_prior(x, sigma, self.log_w.to(x)[None])

    def _log_kernel(self, sq: Tensor, var: Tensor, d: int) -> Tensor:
        """log p(x | component k) up to a constant, [B, K]: Gaussian, or PFGM++'s kernel (points)."""
        if isinstance(self.schedule, PFGMPP):
            aug = self.schedule.augment_dim
            return -0.5 * (d + aug) * (sq + aug * var).log()
        return -0.5 * sq / var - 0.5 * d * var.log()

    def denoise_prior(self, x: Tensor, sigma: Tensor, log_prior: Tensor) -> Tensor:
        """The mixture's denoiser under per-row log component weights log_prior ([B, K] or [1, K]; -inf drops one)."""
        check(tuple(x.shape[1:]) == self.shape,
              f"sample shape {tuple(x.shape[1:])} does not match the model's {self.shape}")
        flat = x.reshape(x.shape[0], -1)
        var = self.stds.to(flat)[None, :] ** 2 + sigma[:, None] ** 2  # [B, K]
        sq = self._sq_dist(flat)  # [B, K]
        d = flat.shape[1]
        logits = log_prior + self._log_kernel(sq, var, d)
        resp = torch.softmax(logits, dim=1)
        shrink = self.stds.to(flat)[None, :] ** 2 / var  # [B, K]
        mean_part = self._weighted_means(resp * (1 - shrink))
        return (mean_part + (resp * shrink).sum(1, keepdim=True) * flat).reshape(x.shape)

    def _sq_dist(self, flat: Tensor) -> Tensor:
        """||x_b - mu_k||^2 by broadcasting over component chunks (no matmul: batch-invariant)."""
        means = self.means.to(flat)
        parts = [((flat[:, None, :] - means[None, k:k + self.chunk]) ** 2).sum(-1)
                 for k in range(0, len(means), self.chunk)]
        return torch.cat(parts, dim=1)

    def _weighted_means(self, coef: Tensor) -> Tensor:
        """sum_k coef[b, k] mu_k, accumulated component by component (batch-invariant)."""
        means = self.means.to(coef)
        out = torch.zeros(coef.shape[0], means.shape[1], dtype=coef.dtype, device=coef.device)
        for k in range(len(means)):
            out += coef[:, k:k + 1] * means[k]
        return out

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws from the mixture."""
        comp = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, self.means.shape[1]), generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.stds[comp, None] * z
        return x.reshape(n, *self.shape)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "mixture", "components": len(self.means),
                "dim": self.means.shape[1]}


def _schedule(schedule: NoiseSchedule | dict | str | None) -> NoiseSchedule | None:
    """Accept a schedule object, a registry name, or a config mapping {name: ..., **options}."""
    if isinstance(schedule, str):
        return make_schedule(schedule)
    if isinstance(schedule, dict):
        opts = dict(schedule)
        return make_schedule(str(opts.pop("name")), **opts)
    return schedule


@register_model("gaussian")
def gaussian(shape: Sequence[int] = (2,), mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0,
             schedule: NoiseSchedule | dict | str | None = None) -> GaussianDenoiser:
    """An isotropic or diagonal Gaussian on samples of `shape`."""
    schedule = _schedule(schedule)
    m = torch.as_tensor(mean, dtype=torch.float64).expand(tuple(shape)).clone()
    s = torch.as_tensor(std, dtype=torch.float64).expand(tuple(shape)).clone()
    return GaussianDenoiser(m, s, schedule)


@register_model("image_mixture")
def image_mixture(shape: Sequence[int] = (3, 16, 16), components: int = 8, std: float = 0.1, seed: int = 0,
                  schedule: NoiseSchedule | dict | str | None = None) -> MixtureDenoiser:
    """A Gaussian mixture whose means are smooth, image-like patterns in [-1, 1] (deterministic in seed).

    Each mean is a sum of a few random low-frequency sinusoids per channel: structured enough that
    image features (Inception) tell components apart, cheap enough for CPU sweeps.
    """
    check(len(shape) == 3, f"model.shape must be (channels, height, width) for image_mixture (got {tuple(shape)})")
    c, h, w = shape
    schedule = _schedule(schedule)
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64),
                            torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    means = torch.zeros(components, c, h, w, dtype=torch.float64)
    for _ in range(3):
        fy, fx = (torch.rand(2, components, c, 1, 1, generator=g, dtype=torch.float64) * 3.0)
        phase = torch.rand(components, c, 1, 1, generator=g, dtype=torch.float64) * 2 * math.pi
        means += torch.sin(2 * math.pi * (fy * yy + fx * xx) + phase)
    means = torch.tanh(means)
    return MixtureDenoiser(means, stds=std, schedule=schedule)
