"""Time-shift samplers (Li et al. 2024, ICLR, "Alleviating Exposure Bias in Diffusion Models through
Sampling with Shifted Time Steps").

Exposure bias leaves a sample x at a scheduled level sigma with more (or less) noise than the
forward process puts there. The paper's Time-Shift Sampler therefore evaluates the
model, and takes the step, from the level t_s in a window around the scheduled time whose marginal
variance best matches the sample's own per-sample variance, while the time is above a cutoff
(the variance estimate is dominated by noise only there). The network input x_t = alpha x stays the
same; in EDM coordinates the state is re-expressed at the shifted level, x_s = x alpha(t) / alpha(t_s).

Options, as fractions of the model's time range [t_min, t_max] (the paper's values in training steps
of a 1000-step DDPM divided by 1000): ``window`` (w; candidates t +- w/2) and ``cutoff`` (t_c; no
shift for t <= t_c). ``data_var`` is the per-element data variance the variance model assumes,
Var(x_t) = alpha^2 (data_var + sigma^2); 0 is the paper's rule Var(x_t) ~ 1 - alpha_bar_t, which
neglects the data term (hence the cutoff). With window=0, or every level at or below the cutoff,
each sampler is exactly its plain method.
"""
from __future__ import annotations

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser, expand_as
from diffbench.noise import NoiseSource
from diffbench.solvers._common import to_d
from diffbench.solvers.pndm import adams_bashforth
from diffbench.solvers.registry import SOLVERS, register

CANDIDATES = 65  # odd: the middle candidate is the scheduled level itself


class TimeShiftedDenoiser:
    """Wraps a denoiser so that step i of a grid evaluates it at the best-coupled level t_s.

    Candidates lie in [t - w/2, t + w/2] and within a quarter step (in log sigma) of the scheduled
    level toward either neighbour, so shifted levels stay ordered and multistep step ratios bounded
    (the authors' examples use windows of at most about a fifth of the step spacing); the scheduled
    level is always a candidate.
    """

    def __init__(self, denoiser: Denoiser, window: float, cutoff: float, data_var: float):
        check(window >= 0, f"solver.window must be >= 0 (got {window}); 0 switches the time shift off")
        check(0 <= cutoff <= 1, f"solver.cutoff is a fraction of the time range, in [0, 1] (got {cutoff})")
        check(data_var >= 0, f"solver.data_var must be >= 0 (got {data_var})")
        self.denoiser, self.window, self.cutoff, self.data_var = denoiser, window, cutoff, data_var

    def __call__(self, x: Tensor, sigmas: Tensor, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """(x_s, sigma_s [B], D(x_s, sigma_s)) for step i of the grid `sigmas`."""
        sigma = float(sigmas[i])
        prev = float(sigmas[i - 1]) if i > 0 else float("inf")
        bounds = sigma**0.75 * float(sigmas[i + 1]) ** 0.25, sigma**0.75 * prev**0.25
        x_s, sigma_s = self.shift(x, sigma, bounds)
        return x_s, sigma_s, self.denoiser(x_s, sigma_s)

    def shift(self, x: Tensor, sigma: float, bounds: tuple[float, float]) -> tuple[Tensor, Tensor]:
        """Each sample re-expressed at its level t_s (bounds[0] < sigma_s < bounds[1]): x alpha(t) / alpha(t_s)."""
        schedule = self.denoiser.schedule
        t, span = float(schedule.sigma_to_t(sigma)), schedule.t_max - schedule.t_min
        if self.window <= 0 or t <= schedule.t_min + self.cutoff * span:
            return x, torch.full((len(x),), sigma, dtype=x.dtype, device=x.device)
        check(x[0].numel() >= 2, "time-shift sampling estimates a per-sample variance: samples need >= 2 elements")
        # Candidate levels over the window, clipped to the schedule and the bounds; the middle one is sigma.
        offsets = torch.linspace(-0.5, 0.5, CANDIDATES, dtype=torch.float64) * (self.window * span)
        levels = schedule.t_to_sigma((t + offsets).clamp(schedule.t_min, schedule.t_max))
        levels[CANDIDATES // 2] = sigma
        alphas = schedule.alpha_of_sigma(levels)
        alpha = alphas[CANDIDATES // 2]
        inside = ((levels > bounds[0]) & (levels < bounds[1])).to(x.device)
        levels_x, alphas_x = levels.to(x), alphas.to(x)
        # Per-sample variance of the network input alpha x against each level's marginal variance.
        var = x.reshape(len(x), -1).var(dim=1) * float(alpha) ** 2
        mismatch = (var[:, None] - alphas_x**2 * (self.data_var + levels_x**2)).abs()
        best = mismatch.masked_fill(~inside[None, :], float("inf")).argmin(dim=1)
        return x * expand_as((alpha / alphas).to(x)[best], x), levels_x[best]


@register("ts_ddim", order=1)
def ts_ddim(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
            window: float = 0.08, cutoff: float = 0.3, data_var: float = 0.0) -> Tensor:
    """TS-DDIM (Li et al. 2024, Time-Shift Sampler on DDIM, eta=0): each DDIM step starts from the level t_s.

    Order 1 is DDIM's, which it is wherever no shift happens (e.g. the contract test's grid, below the
    cutoff); a shift deliberately leaves the ODE solution and does not vanish as steps shrink.
    Defaults: w=80, t_c=300 of 1000 (the authors' ADM README example, CIFAR-10 DDIM).
    """
    model = TimeShiftedDenoiser(denoiser, window, cutoff, data_var)
    for i in range(len(sigmas) - 1):
        # Shifted time step: the model at the level whose marginal variance matches the sample's.
        x_s, sigma_s, denoised = model(x, sigmas, i)
        # DDIM step from the shifted level to the scheduled next one.
        x = denoised + expand_as(float(sigmas[i + 1]) / sigma_s, x) * (x_s - denoised)
    return x


@register("ts_dpmpp_2m", order=2)
def ts_dpmpp_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                window: float = 0.03, cutoff: float = 0.3, data_var: float = 0.0) -> Tensor:
    """TS-DPM-Solver++(2M) (Li et al. 2024, TS on multistep DPM-Solver): 2M steps from shifted levels.

    The multistep history uses the shifted levels actually evaluated (h_last in their lambda); a
    final step to sigma=0 returns the denoiser's estimate. Order 2 is 2M's wherever no shift happens
    (see ts_ddim). Defaults: w=30, t_c=300 of 1000 (the authors' TS-DPM README example, DPM-Solver).
    """
    model = TimeShiftedDenoiser(denoiser, window, cutoff, data_var)
    old = lam_old = None
    for i in range(len(sigmas) - 1):
        sigma_next = float(sigmas[i + 1])
        # Shifted time step, then the model at that level.
        x_s, sigma_s, denoised = model(x, sigmas, i)
        if sigma_next == 0:
            # Data-prediction limit of the last step.
            return denoised
        lam, h = -sigma_s.log(), (sigma_s / sigma_next).log()
        direction = denoised
        if old is not None:
            assert lam_old is not None  # set with old
            # Second-order multistep estimate (linear in lambda through the previous estimate).
            direction = denoised + (denoised - old) * expand_as(h / (2 * (lam - lam_old)), x)
        # Exponential-integrator step (DDIM form) from sigma_s to sigma_next.
        x = expand_as(sigma_next / sigma_s, x) * x_s - expand_as(torch.expm1(-h), x) * direction
        old, lam_old = denoised, lam
    return x


@register("ts_s_pndm", order=2, nfe=SOLVERS["s_pndm"].nfe)
def ts_s_pndm(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
            window: float = 0.08, cutoff: float = 0.3, data_var: float = 0.0) -> Tensor:
    """TS-PNDM (Li et al. 2024, the Time-Shift Sampler on S-PNDM): pseudo linear multistep from shifted levels.

    Each step evaluates the model at the level t_s and transfers from there (DDIM's transfer in EDM
    coordinates, x_s + (sigma' - sigma_s) eps) with PLMS's combination of noise estimates: a pseudo
    improved-Euler first step, then the 2-step Adams-Bashforth on the estimates at the shifted levels.
    Order 2 is S-PNDM's wherever no shift happens (see ts_ddim); defaults are ts_ddim's.
    """
    model = TimeShiftedDenoiser(denoiser, window, cutoff, data_var)
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma_next = float(sigmas[i + 1])
        # Shifted time step: the model at the level whose marginal variance matches the sample's.
        x_s, sigma_s, denoised = model(x, sigmas, i)
        step = sigma_next - expand_as(sigma_s, x)
        eps = (x_s - denoised) / expand_as(sigma_s, x)
        history = (history + [eps])[-2:]
        if i == 0 and sigma_next > 0:
            # Pseudo improved Euler: average eps at both ends of the transfer.
            x_end = x_s + step * eps
            eps = (eps + to_d(x_end, sigma_next, denoiser(x_end, sigma_next))) / 2
        else:
            # Pseudo linear multistep (the DDIM limit on a first step to sigma = 0).
            eps = adams_bashforth(history)
        x = x_s + step * eps
    return x
