"""High-accuracy reference solutions of the probability-flow ODE: Dormand-Prince RK45, per-sample steps."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffbench.models.base import Denoiser, expand_as
from diffbench.noise import NoiseSource
from diffbench.solvers._control import State, integrate, rms
from diffbench.solvers.registry import register

# Dormand & Prince (1980), RK5(4)7M: stage nodes, stage weights, 5th-order weights and their
# difference from the embedded 4th-order weights (the error estimate).
NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
STAGES = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
ERROR = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
         -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0


@register("rk45", order=5, nfe=None)
def rk45(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
         rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """Adaptive Dormand-Prince RK5(4) (Dormand & Prince 1980; Hairer et al., Solving ODEs I, II.4) on
    dx/dlambda = D(x, e^-lambda) - x, lambda = -log sigma, with each sample's own step-size control.

    Error ratio per sample: RMS of (5th - 4th order) / (atol + rtol max(|x|, |x'|)); accepted at <= 1,
    h <- h clamp(0.9 E^(-1/5), 0.2, 10) (at most h after a rejection); first step by Hairer's rule.
    Integrates from the grid's first to its last nonzero sigma; a grid ending at 0 then takes
    x0_hat = D(x, sigma_min). Rejected steps are evaluations too: the counting wrapper sees them all.
    """
    levels = sigmas[sigmas > 0]
    lam_start, lam_end = -math.log(float(levels[0])), -math.log(float(levels[-1]))

    def f(y: Tensor, lam: Tensor) -> Tensor:
        return denoiser(y, torch.exp(-lam).to(y)) - y

    def trial(state: State, lam: Tensor, lam_next: Tensor) -> tuple[State, State, Tensor]:
        y, h = state["x"], expand_as(lam_next - lam, state["x"])
        k = [state["f"]]
        for node, row in zip(NODES[1:], STAGES[1:]):
            k.append(f(y + h * sum(a * kj for a, kj in zip(row, k) if a), lam + node * (lam_next - lam)))
        y_next = y + h * sum(b * kj for b, kj in zip(STAGES[-1], k) if b)  # FSAL: k[6] = f(y_next)
        scale = atol + rtol * torch.maximum(y.abs(), y_next.abs())
        err = rms(h * sum(e * kj for e, kj in zip(ERROR, k) if e) / scale)
        return {"x": y_next, "f": k[6]}, state, err

    def next_h(h: Tensor, err: Tensor) -> Tensor:
        factor = (SAFETY * err.clamp(min=1e-10) ** -0.2).clamp(MIN_FACTOR, MAX_FACTOR)
        return h * torch.where(err <= 1, factor, factor.clamp(max=1.0))

    lam0 = torch.full((len(x),), lam_start, dtype=x.dtype, device=x.device)
    f0 = f(x, lam0)
    h = initial_step(f, x, f0, lam0, rtol, atol)
    x = integrate({"x": x, "f": f0}, lam_start, lam_end, h, trial, next_h, "rk45", denoiser)["x"]
    return denoiser(x, float(levels[-1])) if float(sigmas[-1]) == 0 else x


def initial_step(f: Callable[[Tensor, Tensor], Tensor], y: Tensor, f0: Tensor, lam: Tensor, rtol: float,
                 atol: float) -> Tensor:
    """Hairer's starting step per sample (Solving ODEs I, II.4): one evaluation at lam + h0."""
    scale = atol + rtol * y.abs()
    d0, d1 = rms(y / scale), rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp(min=1e-300))
    f1 = f(y + expand_as(h0, y) * f0, lam + h0)
    d2 = rms((f1 - f0) / scale) / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / big.clamp(min=1e-300)) ** 0.2)
    return torch.minimum(100 * h0, h1)
