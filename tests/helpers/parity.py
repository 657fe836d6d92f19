"""Parity with reference implementations: a tiny random conv denoiser, shared grids and noise, reference loaders.

Both sides see the same float64 network, the same sigma grid (ending at 0), the same initial noise and
the same injected noise (the draws of diffbench's NoiseSource, replayed to the reference in order).
k-diffusion is loaded from its `sampling.py` alone (its package __init__ imports training deps);
diffusers' VP schedulers run their own loop on the same network in VP coordinates.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.schedules import EDM
from diffbench.solvers import SOLVERS

SEED, BATCH, SHAPE = 3, 2, (2, 6, 6)
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5
TOLERANCE = 1e-10


class TinyConvNet(nn.Module):
    """A random two-layer conv net F(x, c_noise) in float64 (not an analytic model: no closed form)."""

    def __init__(self, channels: int = SHAPE[0], hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1, dtype=torch.float64)
        self.cond = nn.Linear(1, hidden, dtype=torch.float64)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1, dtype=torch.float64)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        h = self.inp(x) + self.cond(c_noise.reshape(-1, 1))[:, :, None, None]
        return self.out(torch.tanh(h))


class ConvDenoiser(Denoiser):
    """TinyConvNet under EDM's preconditioning (Karras et al. 2022, Table 1): D = c_skip x + c_out F(c_in x, ...)."""

    dtype = torch.float64
    schedule = EDM()

    def __init__(self):
        self.net = TinyConvNet()

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.to(torch.float64).reshape(-1, 1, 1, 1)
        total = s**2 + SIGMA_DATA**2
        f = self.net(x / total.sqrt(), s.log().reshape(-1) / 4)
        return SIGMA_DATA**2 / total * x + s * SIGMA_DATA / total.sqrt() * f


class RecordingNoise(NoiseSource):
    """diffbench's NoiseSource that keeps every draw, for replay to a reference implementation."""

    def __init__(self, seed: int, indices: Sequence[int]):
        super().__init__(seed, indices)
        self.drawn: list[Tensor] = []

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        z = super().randn(shape, dtype)
        self.drawn.append(z)
        return z


def initial_noise(sigma_max: float) -> Tensor:
    """x_T = sigma_max * z with z diffbench's draw 0 for samples 0..BATCH-1, in float64."""
    return NoiseSource(SEED, range(BATCH)).randn(SHAPE, torch.float64) * sigma_max


def run_diffbench(solver: str, sigmas: Tensor, options: dict | None = None) -> tuple[Tensor, list[Tensor]]:
    """The registered solver on the grid; returns the sample and the injected noise it drew (after x_T)."""
    spec = SOLVERS[solver]
    noise = RecordingNoise(SEED, range(BATCH))
    noise.randn(SHAPE)  # draw 0 is the initial noise, as in sampling.sample_batch
    x = spec.fn(ConvDenoiser(), initial_noise(float(sigmas[0])), sigmas, noise=noise, **spec.bind(options or {}))
    return x, noise.drawn[1:]


def relative_difference(ours: Tensor, theirs: Tensor) -> float:
    """max |ours - theirs| / max |theirs|."""
    return float((ours - theirs).abs().max() / theirs.abs().max())


# Grids (all end at sigma = 0) ---------------------------------------------------------------------

def karras(n: int, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5, n steps from SIGMA_MAX to SIGMA_MIN, then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = SIGMA_MIN ** (1 / rho), SIGMA_MAX ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def logsnr(n: int) -> Tensor:
    """Uniform in log sigma (= uniform logSNR), n steps, then 0."""
    levels = torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), n, dtype=torch.float64).exp()
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """The VP-SDE's time-uniform spacing (Song et al. 2021b; k-diffusion's get_sigmas_vp), then 0."""
    t = torch.linspace(1, eps_s, n, dtype=torch.float64)
    levels = torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1)
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])


GRIDS: dict[str, Callable[[int], Tensor]] = {"karras": karras, "logsnr": logsnr, "vp": vp}


# k-diffusion -------------------------------------------------------------------------------------

def k_sampling() -> types.ModuleType:
    """k-diffusion's sampling.py alone, under a stub parent package holding the two utils it uses."""
    if "_kdiffusion.sampling" in sys.modules:
        return sys.modules["_kdiffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or spec.origin is None:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1)")
    parent, utils = types.ModuleType("_kdiffusion"), types.ModuleType("_kdiffusion.utils")
    parent.__path__ = []
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    utils.append_zero = lambda x: torch.cat([x, x.new_zeros([1])])
    parent.utils = utils
    sys.modules.update({"_kdiffusion": parent, "_kdiffusion.utils": utils})
    path = Path(spec.origin).parent / "sampling.py"
    loader = importlib.util.spec_from_file_location("_kdiffusion.sampling", path)
    module = importlib.util.module_from_spec(loader)
    sys.modules["_kdiffusion.sampling"] = module
    loader.loader.exec_module(module)
    return module


def run_k(function: str, sigmas: Tensor, noise: list[Tensor], **options) -> Tensor:
    """k-diffusion's sampler on the same denoiser and grid, its noise_sampler replaying `noise`."""
    fn = getattr(k_sampling(), function)
    draws = iter(noise)
    if "noise_sampler" in inspect.signature(fn).parameters:
        options["noise_sampler"] = lambda sigma, sigma_next: next(draws, 0.0)  # 0: a call for noise of std 0
    return fn(ConvDenoiser(), initial_noise(float(sigmas[0])), sigmas, disable=True, **options)


# diffusers (VP schedulers) -----------------------------------------------------------------------

def float64(scheduler):
    """Every float tensor of a scheduler in float64, so its step coefficients carry float64 precision."""
    for key, value in vars(scheduler).items():
        if torch.is_tensor(value) and value.is_floating_point():
            setattr(scheduler, key, value.double())
    return scheduler


def vp_output(x_vp: Tensor, sigma: Tensor, prediction: str) -> Tensor:
    """The network's output in diffusers' VP coordinates x_vp = alpha x (alpha = 1/sqrt(1+sigma^2))."""
    alpha = 1 / torch.sqrt(1 + sigma**2)
    x0 = ConvDenoiser()(x_vp / alpha, sigma.reshape(1))
    eps = (x_vp - alpha * x0) / (alpha * sigma)
    return {"epsilon": eps, "sample": x0, "v_prediction": alpha * eps - alpha * sigma * x0}[prediction]


def run_diffusers(scheduler, levels: Callable[[int, Tensor], Tensor], sigma_end: Tensor, noise: list[Tensor],
                  prediction: str = "epsilon", **step_options) -> Tensor:
    """diffusers' sampling loop on the conv network; levels(i, t) is the noise level of the i-th model call.

    Starts from diffbench's x_T moved to VP coordinates, returns the result moved back to EDM coordinates
    at the grid's last level `sigma_end`; `noise` is passed as each step's variance_noise.
    """
    sigma_max = levels(0, scheduler.timesteps[0])
    x = initial_noise(float(sigma_max)) / torch.sqrt(1 + sigma_max**2)
    draws = iter(noise)
    with float64_steps(scheduler):
        for i, t in enumerate(scheduler.timesteps):
            output = vp_output(x, levels(i, t), prediction)
            # A step that injects no noise (the last) still takes a variance_noise: zeros.
            extra = {"variance_noise": next(draws, torch.zeros_like(x))} if noise else {}
            x = scheduler.step(output, t, x, **step_options, **extra).prev_sample
    return x * torch.sqrt(1 + sigma_end**2)


class _Float64Torch(types.ModuleType):
    """torch, except that torch.float32 is float64: diffusers' steps cast the sample to float32 by name."""

    float32 = torch.float64

    def __getattr__(self, name: str):
        return getattr(torch, name)


@contextmanager
def float64_steps(scheduler) -> Iterator[None]:
    """Run the scheduler's module with its float32 upcasts promoted to float64 (restored afterwards)."""
    module = sys.modules[type(scheduler).__module__]
    module.torch = _Float64Torch("torch")
    try:
        yield
    finally:
        module.torch = torch


def sigma_levels(scheduler) -> Callable[[int, Tensor], Tensor]:
    """Noise levels of sigma-indexed schedulers (DPM-Solver, UniPC, DEIS): scheduler.sigmas[i]."""
    return lambda i, t: scheduler.sigmas[i]


def discrete_levels(scheduler) -> Callable[[int, Tensor], Tensor]:
    """Noise levels of timestep-indexed schedulers (DDIM, PNDM): sigma of alphas_cumprod[t]."""
    return lambda i, t: torch.sqrt((1 - scheduler.alphas_cumprod[t]) / scheduler.alphas_cumprod[t])


def run_k_singlestep(order: int, sigmas: Tensor) -> Tensor:
    """k-diffusion's DPMSolver.dpm_solver_{order}_step over each interval of a grid of positive levels."""
    solver = k_sampling().DPMSolver(ConvDenoiser())
    step = getattr(solver, f"dpm_solver_{order}_step")
    x = initial_noise(float(sigmas[0]))
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = step(x, solver.t(sigma), solver.t(sigma_next))[0]
    return x
