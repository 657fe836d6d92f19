"""EVODiff: entropy-aware, variance-optimised multistep sampling in data prediction (Li, Chen & Zeng, NeurIPS 2025).

The update follows the authors' EDM code (github.com/ShiguiLi/EVODiff, code_demo/edm_cifar10/samplers/evodiff.py,
order 2 with lower_order_final; there t = kappa = sigma, alpha = 1, as in diffbench's EDM coordinates). Each step
starts from the first-order (DDIM) update and adds a difference of denoiser outputs whose weights are fitted to the
current batch: projection coefficients of denoiser outputs on each other (clamped to [-2, 2]) balance the difference
(r1, r2), and sigmoid-squashed projections set the step's variance-control factors (r_i, eta, zeta). The weights are
computed per sample and channel (inner products over the spatial axes of [B, C, ...] images, over the whole sample
for flat [B, d] samples), so the method is nonlinear in x and batch-invariant.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from diffbench.models import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers.registry import register

CLAMP = 2.0  # projection coefficients are clamped to [-2, 2] (reference)
R_TEMPERATURE = 0.25  # sigmoid temperature of the r_i factor (reference)
ZETA_SHIFT = 0.5  # shift of |zeta*| before its sigmoid (reference)
LONG_RUN = 20  # above this many steps zeta also weighs the consistency of the last two outputs (reference)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Inner products per sample and channel ([B, C, 1, ...]) of images, per sample ([B, 1, ...]) otherwise."""
    keep = 2 if a.dim() >= 3 else 1
    return (a * b).flatten(keep).sum(-1).reshape(*a.shape[:keep], *[1] * (a.dim() - keep))


def _sigmoid(z: Tensor) -> Tensor:
    """Elementwise logistic function of the small [B, C, 1, ...] weights, value by value in Python: torch's
    vectorised exp rounds differently from its scalar tail, which would make sample i depend on the batch size."""
    values = [1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)) for v in z.flatten().tolist()]
    return torch.tensor(values, dtype=z.dtype, device=z.device).reshape(z.shape)


def _projection(a: Tensor, b: Tensor) -> Tensor:
    """(a . b) / (b . b), clamped to [-CLAMP, CLAMP]."""
    return (_dot(a, b) / _dot(b, b)).clamp(-CLAMP, CLAMP)


def _final_step(x: Tensor, sigma: float, sigma_next: float, d: Tensor, d_prev: Tensor) -> Tensor:
    """The last, first-order step with the reference's extrapolation and scale 1 - sqrt(sigma sigma_next)."""
    ratio = sigma_next / sigma
    x_next = ratio * x + (1 - ratio) * d
    r_final = 1 - 0.5 * math.sqrt(ratio if ratio < 0.5 else ratio - 0.5)
    return (1 - math.sqrt(sigma_next * sigma)) * x_next + 0.5 * (1 - ratio) * (d - r_final * d_prev)


def _variance_step(denoiser: Denoiser, x: Tensor, s: tuple[float, float, float], d0: Tensor, d1: Tensor,
                   weight: float, long_run: bool) -> tuple[Tensor, Tensor]:
    """One second-order step from s[1] to s[2] (s[0]: the step before): (x_next, the denoiser output it evaluated)."""
    s1, s0, t = s
    ratio0, ratio01 = t / s0, s0 / s1
    a, h = 1 - ratio0, 1 / t - 1 / s0  # a = sigma_t * h
    x_euler = ratio0 * x + a * d0  # first-order (DDIM) part
    r_logh = math.log(s1 / s0) / math.log(s0 / t)
    base = math.sqrt(ratio0 / ratio01)
    # Balanced difference of the last two outputs and its variance-control factor r_i.
    r1 = (1 - weight) * base + weight * _projection(d0, d1)
    diff1 = d0 - r1 * d1
    r_i = (_sigmoid(R_TEMPERATURE * r1.abs()) * r_logh).clamp(0.25 * r_logh, 1.5 * r_logh)
    x_probe = x_euler + 0.5 * a / r_i * diff1
    d_t = denoiser(x_probe, t)
    # Balanced difference at the new point; eta mixes the two differences.
    diff2 = d_t - ((1 - weight) * base + weight * _projection(d_t, d0)) * d0
    before, after = diff1 / (r_logh * h), r_logh * diff2 / h
    eta = 0.5 * _sigmoid((0.5 * _projection(after + before, after - before)).abs())
    b_theta = -eta / r_logh * diff1 + r_logh * (1 - eta) * diff2
    # zeta rescales the mixed difference from the probe's residual along diff1.
    shift = (_projection(x_probe - x_euler - 0.5 * a / r_i * b_theta, diff1) / a).abs() - ZETA_SHIFT
    if long_run:
        consistency = _sigmoid(_projection(d0, (d0 - d1) / h) * (2 - ratio0**2))
        zeta = _sigmoid(-shift * consistency)
    else:
        zeta = _sigmoid(shift)
    return x_euler + 0.5 * a / zeta * b_theta, d_t


@register("evodiff", order=1, min_steps=2)
def evodiff(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """EVODiff (Li, Chen & Zeng 2025, "EVODiff: Entropy-aware Variance Optimized Diffusion Inference", NeurIPS).

    One evaluation per step: a DDIM first step, second-order variance-optimised steps, and the reference's
    first-order last step. Registered order 1: see tests/test_evodiff.py for what the contract measures.
    """
    s = [float(v) for v in sigmas]
    steps, t_first, t_last = len(s) - 1, s[0], s[-1]
    outputs = [denoiser(x, s[0])]
    # First step: DDIM.
    x = s[1] / s[0] * x + (1 - s[1] / s[0]) * outputs[0]
    outputs.append(denoiser(x, s[1]))
    for i in range(2, steps):
        weight = 0.5 * (1 - ((s[i] + t_last) / (t_first + t_last)) ** 2)  # of the normalised time
        x, d_t = _variance_step(denoiser, x, (s[i - 2], s[i - 1], s[i]), outputs[-1], outputs[-2], weight,
                                steps > LONG_RUN)
        outputs = [outputs[-1], d_t]
    # Last step: first order with the reference's correction.
    return _final_step(x, s[-2], s[-1], outputs[-1], outputs[-2])
