"""Time-step schedules: pure functions returning the decreasing sigma grid a solver walks.

Every function returns a float64 CPU tensor of ``n + 1`` EDM noise levels from sigma_max down to
sigma_min (``final_zero=False``) or of ``n`` levels down to sigma_min followed by 0
(``final_zero=True``, the k-diffusion/EDM convention: the last step denoises fully).
A grid has ``n`` steps either way.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffbench.errors import UsageError, check
from diffbench.schedules import NoiseSchedule


@dataclass(frozen=True)
class Span:
    """The noise range a grid covers, resolved from user options and the schedule's own range."""

    sigma_min: float
    sigma_max: float
    final_zero: bool

    def points(self, n: int) -> int:
        """How many nonzero levels an n-step grid holds."""
        return n if self.final_zero else n + 1


StepFn = Callable[..., Tensor]
STEP_GRIDS: dict[str, StepFn] = {}


def register_steps(name: str) -> Callable[[StepFn], StepFn]:
    """Register a step schedule under a stable name (used by configs and result tables)."""

    def wrap(fn: StepFn) -> StepFn:
        STEP_GRIDS[name] = fn
        return fn

    return wrap


def _finish(levels: Tensor, span: Span) -> Tensor:
    levels = levels.to(torch.float64)
    if span.final_zero:
        levels = torch.cat([levels, levels.new_zeros(1)])
    return levels


def _ramp(count: int) -> Tensor:
    """count points from 0 to 1 (a single point is 0: the grid then holds only sigma_max)."""
    return torch.linspace(0.0, 1.0, count, dtype=torch.float64) if count > 1 else torch.zeros(1, dtype=torch.float64)


@register_steps("uniform_t")
def uniform_t(n: int, schedule: NoiseSchedule, span: Span) -> Tensor:
    """Uniform in the schedule's time t (DDIM's 'uniform' / diffusers' 'linspace')."""
    t_hi, t_lo = schedule.sigma_to_t(span.sigma_max), schedule.sigma_to_t(span.sigma_min)
    return _finish(schedule.t_to_sigma(t_hi + _ramp(span.points(n)) * (t_lo - t_hi)), span)


@register_steps("uniform_logsnr")
def uniform_logsnr(n: int, schedule: NoiseSchedule, span: Span) -> Tensor:
    """Uniform in lambda = -log sigma (DPM-Solver's 'logSNR' spacing)."""
    lo, hi = math.log(span.sigma_min), math.log(span.sigma_max)
    return _finish(torch.exp(hi + _ramp(span.points(n)) * (lo - hi)), span)


@register_steps("karras")
def karras(n: int, schedule: NoiseSchedule, span: Span, rho: float = 7.0) -> Tensor:
    """EDM's rho-spacing in sigma (Karras et al. 2022, eq. 5); rho=7 is their default."""
    check(0 < rho < math.inf, f"steps.rho must be a finite number > 0 (got {rho})")
    lo, hi = span.sigma_min ** (1 / rho), span.sigma_max ** (1 / rho)
    return _finish((hi + _ramp(span.points(n)) * (lo - hi)) ** rho, span)


@register_steps("polynomial")
def polynomial(n: int, schedule: NoiseSchedule, span: Span, power: float = 2.0) -> Tensor:
    """Power spacing in time: t_i^(1/p) uniform (power=2 is DDIM/DPM-Solver's 'quadratic')."""
    check(0 < power < math.inf, f"steps.power must be a finite number > 0 (got {power})")
    t_hi = float(schedule.sigma_to_t(span.sigma_max))
    t_lo = float(schedule.sigma_to_t(span.sigma_min))
    check(t_lo >= 0, "schedule: polynomial spacing needs a schedule with t >= 0")
    lo, hi = t_lo ** (1 / power), t_hi ** (1 / power)
    return _finish(schedule.t_to_sigma((hi + _ramp(span.points(n)) * (lo - hi)) ** power), span)


@register_steps("quadratic")
def quadratic(n: int, schedule: NoiseSchedule, span: Span) -> Tensor:
    """Quadratic spacing in time (DDIM's 'quad'); polynomial with power 2."""
    return polynomial(n, schedule, span, power=2.0)


@register_steps("explicit")
def explicit(n: int, schedule: NoiseSchedule, span: Span,
             sigmas: Sequence[float] = (80.0, 10.0, 1.0, 0.1, 0.0)) -> Tensor:
    """A user-given list of noise levels (e.g. from a paper or an optimiser); n must match it (default: an example)."""
    levels = torch.tensor(list(sigmas), dtype=torch.float64)
    check(len(levels) >= 2, "steps.sigmas: give at least two noise levels")
    check(bool((levels[:-1] > levels[1:]).all()), "steps.sigmas must be strictly decreasing")
    check(len(levels) - 1 == n, f"steps.sigmas holds {len(levels) - 1} steps but {n} were asked for")
    return levels


# Align Your Steps (Sabour et al. 2024): the published 10-step sigma grids (the last step to 0), as shipped in
# diffusers 0.42, diffusers/schedulers/scheduling_utils.py `AysSchedules` (StableDiffusion/StableDiffusionXL/
# StableDiffusionVideo "Sigmas"). They hold for those models' own noise schedules only.
AYS_TABLES: dict[str, tuple[float, ...]] = {
    "sd15": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.0),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.0),
}


@register_steps("ays")
def ays(n: int, schedule: NoiseSchedule, span: Span, table: str = "sd15") -> Tensor:
    """Align Your Steps' published grids (Sabour et al. 2024) for SD1.5 / SDXL / SVD; the span is ignored.

    n = 10 is the table itself; other n interpolate log sigma linearly over the table's positions, the
    authors' recipe for other step counts.
    """
    check(table in AYS_TABLES, f"steps.table '{table}' is unknown; choose one of: {', '.join(AYS_TABLES)}")
    levels = torch.tensor(AYS_TABLES[table][:-1], dtype=torch.float64)
    count = span.points(n)
    position = torch.arange(count, dtype=torch.float64) * (len(levels) - 1) / max(count - 1, 1)
    below = position.floor().long()
    above, frac = (below + 1).clamp(max=len(levels) - 1), position - below
    between = torch.exp(levels[below].log() * (1 - frac) + levels[above].log() * frac)
    return _finish(torch.where(frac == 0, levels[below], between), span)  # table levels exactly as published


# Flow-matching time shift (Esser et al. 2024, SD3 sec. 5.3.2) as diffusers 0.42's FlowMatchEulerDiscreteScheduler
# applies it: static t = s u / (1 + (s - 1) u), or dynamic t = e^mu / (e^mu + 1/u - 1) with mu linear in the image's
# token count (its base_shift 0.5 at 256 tokens, max_shift 1.15 at 4096). Times are on the rectified-flow path.
FLOW_TRAIN_STEPS = 1000
SHIFT_TOKENS, SHIFT_MU = (256, 4096), (0.5, 1.15)


def flow_time_shift(u: Tensor, shift: float, mu: float | None) -> Tensor:
    """Shifted flow times of unshifted times u in (0, 1]: static with `shift`, or dynamic with `mu` when set."""
    if mu is None:
        return shift * u / (1 + (shift - 1) * u)
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


def shift_mu(mu: float | None, seq_len: int | None) -> float | None:
    """The dynamic shift's mu: as given, else from the latent token count (diffusers' calculate_shift), else None."""
    check(mu is None or seq_len is None, "steps: give steps.mu or steps.seq_len, not both")
    if seq_len is None:
        return mu
    check(seq_len >= 1, f"steps.seq_len must be >= 1 (got {seq_len})")
    (lo, hi), (mu_lo, mu_hi) = SHIFT_TOKENS, SHIFT_MU
    return mu_lo + (mu_hi - mu_lo) * (seq_len - lo) / (hi - lo)


def _flow_grid(u: Tensor, span: Span, shift: float, mu: float | None) -> Tensor:
    """EDM levels t / (1 - t) of the shifted times; t = 1 (sigma = inf) becomes the span's sigma_max."""
    check(0 < shift < math.inf, f"steps.shift must be a finite number > 0 (got {shift})")
    t = flow_time_shift(u, shift, mu)
    return _finish((t / (1 - t)).clamp(max=span.sigma_max), span)


@register_steps("flow_shift")
def flow_shift(n: int, schedule: NoiseSchedule, span: Span, shift: float = 3.0, mu: float | None = None,
               seq_len: int | None = None) -> Tensor:
    """SD3's grid (FlowMatchEulerDiscreteScheduler.set_timesteps): shifted times from t = 1; span's sigma_min unused.

    u runs linearly from 1 to the scheduler's sigma_min (1/1000, shifted when static, so the shift acts twice
    at the low end, as in diffusers); shift 3.0 is SD3's. mu or seq_len (latent tokens) select dynamic shifting.
    """
    mu = shift_mu(mu, seq_len)
    low = torch.tensor(1 / FLOW_TRAIN_STEPS, dtype=torch.float64)
    low = low if mu is not None else flow_time_shift(low, shift, None)
    return _flow_grid(1 + _ramp(span.points(n)) * (low - 1), span, shift, mu)


@register_steps("flow_shift_flux")
def flow_shift_flux(n: int, schedule: NoiseSchedule, span: Span, shift: float = 1.0, mu: float | None = None,
                    seq_len: int | None = None) -> Tensor:
    """Flux pipelines' grid: u = linspace(1, 1/n, n), then shifted (schnell: shift 1; dev: seq_len 4096 at 1024 px)."""
    count = span.points(n)
    return _flow_grid(1 + _ramp(count) * (1 / count - 1), span, shift, shift_mu(mu, seq_len))


@register_steps("fitted")
def fitted(n: int, schedule: NoiseSchedule, span: Span, method: str = "gits", calibration_seed: int = 1000,
           calibration_n: int = 32, artefact: str = "", sigmas: Sequence[float] = ()) -> Tensor:
    """A grid fitted per model, solver and NFE by `diffbench fit` (diffbench/fit/); sweeps fill artefact and sigmas."""
    check(bool(artefact) and len(sigmas) > 0, f"steps=fitted (method {method}) has no fitted grid here; "
                                              "run `diffbench fit` with the same overrides first")
    return explicit(n, schedule, span, sigmas)


def resolve_span(schedule: NoiseSchedule, sigma_min: float | None = None, sigma_max: float | None = None,
                 final_zero: bool = True) -> Span:
    """Fill unset ends from the schedule and validate them (sigma_min must be below sigma_max)."""
    lo = schedule.sigma_min if sigma_min is None else float(sigma_min)
    hi = schedule.sigma_max if sigma_max is None else float(sigma_max)
    check(lo > 0, f"steps.sigma_min must be > 0 (got {lo}); use final_zero to end at zero")
    check(lo < hi, f"steps.sigma_min ({lo}) must be below steps.sigma_max ({hi})")
    return Span(lo, hi, bool(final_zero))


def make_sigmas(name: str, n: int, schedule: NoiseSchedule, *, sigma_min: float | None = None,
                sigma_max: float | None = None, final_zero: bool = True, **options: object) -> Tensor:
    """Build the n-step sigma grid of step schedule `name` for a noise schedule."""
    check(name in STEP_GRIDS, f"step schedule '{name}' is unknown; choose one of: {', '.join(STEP_GRIDS)}")
    check(isinstance(n, int) and n >= 1, f"number of steps must be a positive integer (got {n})")
    span = resolve_span(schedule, sigma_min, sigma_max, final_zero)
    try:
        sigmas = STEP_GRIDS[name](n, schedule, span, **options)
    except TypeError as e:
        raise UsageError(f"step schedule '{name}': {e}") from None
    check(bool(torch.isfinite(sigmas).all()), f"step schedule '{name}' produced non-finite noise levels")
    check(bool((sigmas[:-1] > sigmas[1:]).all()),
          f"step schedule '{name}' with {options or 'its defaults'} repeats noise levels "
          "(a degenerate grid); change its options")
    return sigmas
