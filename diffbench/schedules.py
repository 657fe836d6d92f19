"""Noise schedules: x_t = alpha(t) * x0 + sigma(t) * eps, with lambda(t) = log(alpha / sigma).

Solvers work in the EDM/VE coordinates of the Denoiser contract, x = x_t / alpha(t) with noise level
``sigma_edm = sigma(t) / alpha(t) = exp(-lambda)``; each schedule maps between its own time t and
that noise level so solvers and adapters can move between t, sigma and lambda. Below, "sigma"
alone in a method name means that EDM noise level; ``sigma(t)`` is the schedule's own coefficient.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from diffbench.errors import UsageError, check
from diffbench.noise import NoiseSource

Array = Tensor | float


def _t(x: Array | Sequence[float]) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


class NoiseSchedule(ABC):
    """A forward process x_t = alpha(t) x0 + sigma(t) eps on t in [t_min, t_max]."""

    name: str = ""
    t_min: float
    t_max: float

    @abstractmethod
    def log_alpha(self, t: Array) -> Tensor:
        """log alpha(t)."""

    @abstractmethod
    def lambda_(self, t: Array) -> Tensor:
        """Half log-SNR, lambda(t) = log(alpha(t) / sigma(t))."""

    @abstractmethod
    def t_of_lambda(self, lam: Array) -> Tensor:
        """Inverse of lambda_: the time at which the half log-SNR equals lam."""

    def alpha(self, t: Array) -> Tensor:
        """Signal coefficient alpha(t)."""
        return self.log_alpha(t).exp()

    def sigma(self, t: Array) -> Tensor:
        """The schedule's own noise coefficient sigma(t)."""
        return (self.log_alpha(t) - self.lambda_(t)).exp()

    def t_to_sigma(self, t: Array) -> Tensor:
        """EDM noise level sigma(t) / alpha(t) = exp(-lambda(t))."""
        return (-self.lambda_(t)).exp()

    def sigma_to_t(self, sigma: Array) -> Tensor:
        """Inverse of t_to_sigma."""
        return self.t_of_lambda(-_t(sigma).log())

    def alpha_of_sigma(self, sigma: Array) -> Tensor:
        """alpha at the time whose EDM noise level is sigma (what adapters rescale x by)."""
        return self.alpha(self.sigma_to_t(sigma))

    @property
    def sigma_min(self) -> float:
        return float(self.t_to_sigma(self.t_min))

    @property
    def sigma_max(self) -> float:
        return float(self.t_to_sigma(self.t_max))

    def prior_std(self, sigma: float) -> float:
        """Std of the initial noise x_T in EDM coordinates: the native prior N(0, 1), over alpha."""
        return 1.0 / float(self.alpha_of_sigma(sigma))

    def prior(self, noise: NoiseSource, shape: Sequence[int], sigma: float, dtype: torch.dtype) -> Tensor:
        """Initial samples x_T [B, *shape] at noise level sigma: prior_std(sigma) times each sample's first draw."""
        return noise.randn(shape, dtype) * self.prior_std(sigma)

    def describe(self) -> dict[str, float | str]:
        """The fields that identify this schedule in a results row."""
        return {"schedule": self.name, "t_min": self.t_min, "t_max": self.t_max}


class VPLinear(NoiseSchedule):
    """Continuous VP-SDE with linear beta(t) = beta_0 + t (beta_1 - beta_0) (Song et al. 2021)."""

    name = "vp_linear"

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        check(0 < beta_0 < beta_1, "schedule: need 0 < beta_0 < beta_1")
        self.beta_0, self.beta_1, self.t_min, self.t_max = beta_0, beta_1, t_min, t_max

    def log_alpha(self, t: Array) -> Tensor:
        t = _t(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def lambda_(self, t: Array) -> Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_of_lambda(self, lam: Array) -> Tensor:
        # log(1 + e^{-2 lam}) = -2 log alpha; solve the quadratic in t (DPM-Solver, appendix).
        tmp = torch.logaddexp(torch.zeros_like(_t(lam)), -2.0 * _t(lam))
        db = self.beta_1 - self.beta_0
        return 2.0 * tmp / (torch.sqrt(self.beta_0**2 + 2.0 * db * tmp) + self.beta_0)


class VPCosine(NoiseSchedule):
    """Continuous cosine VP schedule (Nichol & Dhariwal 2021), truncated at t_max as in DPM-Solver."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s, self.t_min, self.t_max = s, t_min, t_max
        self._log_alpha_0 = math.log(math.cos(s / (1.0 + s) * math.pi / 2.0))

    def log_alpha(self, t: Array) -> Tensor:
        return torch.log(torch.cos((_t(t) + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_0

    def lambda_(self, t: Array) -> Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_of_lambda(self, lam: Array) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(_t(lam)), -2.0 * _t(lam))
        return 2.0 * (1.0 + self.s) / math.pi * torch.arccos(torch.exp(log_alpha + self._log_alpha_0)) - self.s


class VPDiscrete(NoiseSchedule):
    """Discrete VP schedule from a beta list (DDPM checkpoints); t is the timestep index in [0, N-1].

    Between integer indices log(sigma_edm) is interpolated linearly, as k-diffusion's DiscreteSchedule
    does, so integer t reproduces the checkpoint's alphas_cumprod exactly and models get called with
    the (float) timestep they were trained on.
    """

    name = "vp_discrete"

    def __init__(self, betas: Sequence[float] | Tensor | None = None, *, kind: str = "linear",
                 num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if betas is None:
            betas = make_betas(kind, num_train_timesteps, beta_start, beta_end)
        betas = _t(betas)
        check(betas.ndim == 1 and len(betas) >= 2, "schedule: betas must be a list of at least 2 values")
        check(bool(((betas > 0) & (betas < 1)).all()), "schedule: every beta must lie in (0, 1)")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        self.log_sigmas = 0.5 * torch.log((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        self.t_min, self.t_max = 0.0, float(len(betas) - 1)

    def _interp(self, x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
        idx = torch.searchsorted(xs, x.clamp(xs[0], xs[-1]).contiguous()).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
        return y0 + (x - x0) / (x1 - x0) * (y1 - y0)

    def lambda_(self, t: Array) -> Tensor:
        grid = torch.arange(len(self.betas), dtype=torch.float64)
        return -self._interp(_t(t), grid, self.log_sigmas)

    def log_alpha(self, t: Array) -> Tensor:
        return -0.5 * torch.logaddexp(torch.zeros_like(_t(t)), -2.0 * self.lambda_(t))

    def t_of_lambda(self, lam: Array) -> Tensor:
        grid = torch.arange(len(self.betas), dtype=torch.float64)
        return self._interp(-_t(lam), self.log_sigmas, grid)

    def describe(self) -> dict[str, float | str]:
        return {**super().describe(), "n_train_steps": len(self.betas)}


def make_betas(kind: str, n: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Beta lists used by DDPM-family checkpoints: 'linear', 'scaled_linear', 'cosine'."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if kind == "cosine":
        steps = torch.arange(n + 1, dtype=torch.float64) / n
        ac = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - ac[1:] / ac[:-1]).clamp(max=0.999)
    check(False, f"schedule: unknown beta kind '{kind}'; use linear, scaled_linear or cosine")
    raise AssertionError  # unreachable


class VE(NoiseSchedule):
    """Variance-exploding SDE (Song et al. 2021): alpha = 1, sigma(t) = s_min (s_max/s_min)^t."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5, t_max: float = 1.0):
        check(0 < sigma_min < sigma_max, "schedule: need 0 < sigma_min < sigma_max")
        self.s_min, self.s_max, self.t_min, self.t_max = sigma_min, sigma_max, t_min, t_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def log_alpha(self, t: Array) -> Tensor:
        return _t(t) * 0.0  # keeps autograd graphs through t (flow adapters differentiate it)

    def lambda_(self, t: Array) -> Tensor:
        return -(math.log(self.s_min) + _t(t) * self._log_ratio)

    def t_of_lambda(self, lam: Array) -> Tensor:
        return (-_t(lam) - math.log(self.s_min)) / self._log_ratio

    def prior_std(self, sigma: float) -> float:
        return sigma


class EDM(NoiseSchedule):
    """EDM (Karras et al. 2022): alpha = 1, sigma(t) = t on [sigma_min, sigma_max]."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        check(0 < sigma_min < sigma_max, "schedule: need 0 < sigma_min < sigma_max")
        self.t_min, self.t_max = sigma_min, sigma_max

    def log_alpha(self, t: Array) -> Tensor:
        return _t(t) * 0.0  # keeps autograd graphs through t (flow adapters differentiate it)

    def lambda_(self, t: Array) -> Tensor:
        return -_t(t).log()

    def t_of_lambda(self, lam: Array) -> Tensor:
        return (-_t(lam)).exp()

    def prior_std(self, sigma: float) -> float:
        return sigma


class PFGMPP(EDM):
    """PFGM++ (Xu et al. 2023) with augmented dimension D: EDM's noise levels sigma = r / sqrt(D).

    Its perturbation kernel p_r(x | y) ~ (|x - y|^2 + r^2)^(-(N + D) / 2) (N: the data dimension) tends to EDM's
    Gaussian N(y, sigma^2 I) as D -> infinity at fixed sigma; its ODE in sigma is EDM's, dx/dsigma = (x - D(x,
    sigma)) / sigma, with D the posterior mean under that kernel (an analytic model reads augment_dim from here).
    The prior is the kernel around 0: x_T = r z / |w| with z ~ N(0, I_N) (the EDM draw) and w ~ N(0, I_D), so
    |x_T|^2 / r^2 = chi2_N / chi2_D is the paper's inverse-beta law and x_T -> sigma_max z as D grows.
    """

    name = "pfgmpp"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, augment_dim: int = 128):
        super().__init__(sigma_min, sigma_max)
        check(isinstance(augment_dim, int) and augment_dim >= 1,
              f"schedule.augment_dim must be an integer >= 1 (got {augment_dim})")
        self.augment_dim = augment_dim

    def prior(self, noise: NoiseSource, shape: Sequence[int], sigma: float, dtype: torch.dtype) -> Tensor:
        z = noise.randn(shape, torch.float64)
        w = noise.randn((self.augment_dim,), torch.float64)
        scale = sigma * math.sqrt(self.augment_dim) / w.norm(dim=1)
        return (z * scale.reshape(-1, *[1] * len(shape))).to(dtype)

    def describe(self) -> dict[str, float | str]:
        return {**super().describe(), "augment_dim": self.augment_dim}


class RectifiedFlow(NoiseSchedule):
    """Linear interpolant x_t = (1 - t) x0 + t eps (rectified flow / flow matching), t in (0, 1).

    t_max stops short of 1, where the EDM noise level t / (1 - t) is infinite.
    """

    name = "rectified_flow"

    def __init__(self, t_min: float = 1e-3, t_max: float = 0.999):
        check(0 < t_min < t_max < 1, "schedule: rectified flow needs 0 < t_min < t_max < 1")
        self.t_min, self.t_max = t_min, t_max

    def log_alpha(self, t: Array) -> Tensor:
        return torch.log1p(-_t(t))

    def lambda_(self, t: Array) -> Tensor:
        t = _t(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_lambda(self, lam: Array) -> Tensor:
        return torch.sigmoid(-_t(lam))


class MeanReverting(NoiseSchedule):
    """Mean-reverting SDE dx = theta (mu - x) dt + sqrt(2 theta) lam dW (IR-SDE, Luo et al. 2023), in y = x - mu.

    Its marginals are x_t = mu + e^{-t} (x0 - mu) + lam sqrt(1 - e^{-2t}) eps with t the accumulated
    theta (IR-SDE's theta_bar; the theta profile only reparameterizes time, so step grids in sigma do not
    see it): in y this is alpha = e^{-t}, sigma(t) = lam sqrt(1 - alpha^2), and its probability-flow ODE is the
    MR PF-ODE that MR Sampler (Li et al. 2025) integrates, so every exponential integrator here (dpmpp_2m,
    unipc, ...) is an MR sampler on it. The model owns mu (y0 = x0 - mu). t_max = log 100 is IR-SDE's
    e^{-theta_bar_T} = 0.01; the prior is the SDE's stationary law N(mu, lam^2 I).
    """

    name = "mean_reverting"

    def __init__(self, stationary_std: float = 1.0, t_min: float = 2e-6, t_max: float = math.log(100.0)):
        check(stationary_std > 0, f"schedule.stationary_std must be > 0 (got {stationary_std})")
        check(0 < t_min < t_max, "schedule: mean_reverting needs 0 < t_min < t_max")
        self.stationary_std, self.t_min, self.t_max = stationary_std, t_min, t_max

    def log_alpha(self, t: Array) -> Tensor:
        return -_t(t)

    def lambda_(self, t: Array) -> Tensor:
        # log(alpha / sigma) = -log lam - log(e^{2t} - 1) / 2
        return -math.log(self.stationary_std) - 0.5 * torch.log(torch.expm1(2.0 * _t(t)))

    def t_of_lambda(self, lam: Array) -> Tensor:
        return 0.5 * torch.log1p(torch.exp(-2.0 * (_t(lam) + math.log(self.stationary_std))))

    def prior_std(self, sigma: float) -> float:
        return self.stationary_std / float(self.alpha_of_sigma(sigma))

    def describe(self) -> dict[str, float | str]:
        return {**super().describe(), "stationary_std": self.stationary_std}


SCHEDULES: dict[str, Callable[..., NoiseSchedule]] = {
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "vp_discrete": VPDiscrete,
    "ve": VE,
    "edm": EDM,
    "pfgmpp": PFGMPP,
    "rectified_flow": RectifiedFlow,
    "mean_reverting": MeanReverting,
}


def make_schedule(name: str, **options: object) -> NoiseSchedule:
    """Build a noise schedule by registry name; unknown names are a UsageError naming the choices."""
    check(name in SCHEDULES, f"noise schedule '{name}' is unknown; choose one of: {', '.join(SCHEDULES)}")
    try:
        return SCHEDULES[name](**options)
    except TypeError as e:
        raise UsageError(f"noise schedule '{name}': {e}") from None

