"""Maths shared by several solver families (never pasted into each)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.noise import NoiseSource


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE's derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part to sigma_down and fresh noise of std sigma_up.

    eta=1 is DDPM's posterior variance (DDIM with eta=1); eta=0 is deterministic DDIM.
    """
    if sigma_to == 0 or eta == 0:
        return sigma_to, 0.0
    up = eta * math.sqrt(max(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2, 0.0))
    up = min(up, sigma_to)
    return math.sqrt(sigma_to**2 - up**2), up


def churn(x: Tensor, sigma: float, gamma: float, s_noise: float, noise: NoiseSource | None) -> tuple[Tensor, float]:
    """EDM's stochastic churn (Karras et al. 2022, Alg. 2 lines 4-6): raise sigma to sigma*(1+gamma)."""
    if gamma <= 0:
        return x, sigma
    if noise is None:
        raise ValueError("a stochastic step needs a NoiseSource")
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise.randn_like(x), sigma_hat


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """EDM's gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax], else 0."""
    check(s_churn >= 0, f"solver.s_churn must be >= 0 (got {s_churn})")
    if s_churn <= 0 or not s_tmin <= sigma <= s_tmax:
        return 0.0
    return min(s_churn / steps, math.sqrt(2) - 1)


def lambdas(sigmas: Tensor) -> list[float]:
    """lambda = -log sigma per grid point (-inf never appears: a final 0 maps to +inf)."""
    return [math.inf if float(s) == 0 else -math.log(float(s)) for s in sigmas]


AFS_DATA_STD = 1.0  # the data scale AMED's reference code assumes (images in [-1, 1])


def analytic_eps(x: Tensor, sigma: float) -> Tensor:
    """AMED's analytical first step (Zhou et al. 2024, AFS): eps(x_T, sigma_max) ~ x_T / sqrt(sigma^2 + 1).

    At sigma_max the denoiser returns almost the data mean (~0), so the noise estimate is x_T scaled
    to unit variance; used in place of the first model evaluation, it saves one NFE.
    """
    return x / math.sqrt(sigma**2 + AFS_DATA_STD**2)


def afs_nfe(steps: int, final_zero: bool, afs: bool = False) -> int:
    """NFE rule of one-evaluation-per-step solvers with the `afs` option: AFS saves the first evaluation."""
    return steps - int(afs)


def phi(k: int, z: float) -> float:
    """phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k, the weights of exponential integrators (phi_0 = e^z).

    A power series near 0 avoids the closed form's cancellation.
    """
    if abs(z) < 1.0:
        return _phi_series(k, z)
    return (math.exp(z) - sum(z**j / math.factorial(j) for j in range(k))) / z**k


def phi_tensor(k: int, z: Tensor) -> Tensor:
    """phi_k elementwise on a tensor of step sizes (the per-sample steps of adaptive solvers)."""
    closed = (torch.exp(z) - sum(z**j / math.factorial(j) for j in range(k))) / z**k
    return torch.where(z.abs() < 1.0, _phi_series(k, z), closed)


def _phi_series(k: int, z: Any) -> Any:
    """phi_k's power series sum_j z^j / (j + k)!, accurate for |z| < 1."""
    return sum(z**j / float(math.factorial(j + k)) for j in range(24))


def taylor_terms(lams: Sequence[float], values: Sequence[Tensor]) -> list[Tensor]:
    """[f, f', f'', ...] at lams[0] of the polynomial through (lams[j], values[j]) (derivatives in lambda).

    Newton divided differences expanded in powers of u = lambda - lams[0]: the Taylor terms that
    multistep exponential integrators (DPM-Solver(++)-kM, DEIS, UniPC) feed to their phi weights.
    """
    table, newton = list(values), [values[0]]
    for level in range(1, len(values)):
        table = [(table[j] - table[j + 1]) / (lams[j] - lams[j + level]) for j in range(len(table) - 1)]
        newton.append(table[0])
    # Coefficients in u of the Newton basis polynomials prod_{i<j} (u - (lams[i] - lams[0])).
    basis, bases = [1.0], [[1.0]]
    for j in range(1, len(values)):
        root = lams[j - 1] - lams[0]
        basis = [(basis[p - 1] if p else 0.0) - root * (basis[p] if p < len(basis) else 0.0)
                 for p in range(len(basis) + 1)]
        bases.append(basis)
    return [values[0]] + [cast(Tensor, math.factorial(p) * sum(bases[j][p] * newton[j] for j in range(p, len(values))))
                          for p in range(1, len(values))]


IntegratorStep = Callable[[Tensor, float, float, list[Tensor]], Tensor]  # (x, sigma, sigma_next, taylor terms) -> x

# How a grid's jump to sigma = 0 counts in the lower_order_final rule. "counted": it is the last of the n
# steps (diffusers with final_sigmas_type="zero"), so the steps lowered are the step to 0 (first order
# anyway) and the one before. "separate": it is the authors' DPM-Solver denoise_to_zero, outside the n - 1
# ODE steps, so the last two steps into the grid's smallest positive sigma are lowered (orders 1, 2).
FINAL_STEPS = ("counted", "separate")

# The weight of third-order multistep steps on their exact Taylor term h^3 phi_3 f'' (f = D or eps): "taylor"
# keeps it (local error O(h^4)); "reference" halves it, as the DPM-Solver authors' code (its D2 in
# multistep_dpm_solver_third_update is h^2 f'' / 2 under the full phi_3 weight), diffusers and k-diffusion do
# (local error O(h^3): order 2 in the limit, 2.4 fitted over 8-32 steps on a Gaussian).
COEFFICIENTS = {"taylor": 1.0, "reference": 0.5}


def d2_scale(coefficients: str) -> float:
    """The factor on the f'' Taylor term of third-order multistep steps (COEFFICIENTS); unknown: a UsageError."""
    check(coefficients in COEFFICIENTS,
          f"solver.coefficients '{coefficients}' is unknown; choose one of: {', '.join(COEFFICIENTS)}")
    return COEFFICIENTS[coefficients]


def order_cap(i: int, sigmas: Tensor, lower_order_final: bool, final_step: str, below: int) -> int:
    """The largest order step i may use under the lower_order_final rule (Lu et al. 2022b's reference code).

    With lower_order_final and fewer than `below` steps (the authors' code: 10; diffusers: 15), step i of
    n may use at most n - i points; which steps make up n is `final_step` (FINAL_STEPS).
    """
    n = len(sigmas) - 1
    steps = n - 1 if final_step == "separate" and float(sigmas[-1]) == 0 else n
    if not lower_order_final or steps >= below or i >= steps:
        return n
    return steps - i


def multistep(x: Tensor, sigmas: Tensor, evaluate: Callable[[Tensor, float], Tensor], step: IntegratorStep,
              order: int, lower_order_final: bool, final_step: str = "counted", lower_order_below: int = 10,
              d2_scale: float = 1.0) -> Tensor:
    """Multistep exponential integrator driver (Lu et al. 2022b, Alg. 2 to any order): one evaluation a step.

    Step i uses the newest k outputs, k = min(order, i + 1) (warm-up), capped by order_cap (the
    lower_order_final rule and the final-step convention); d2_scale multiplies the f'' term of
    third-order steps (COEFFICIENTS).
    """
    check(final_step in FINAL_STEPS,
          f"solver.final_step '{final_step}' is unknown; choose one of: {', '.join(FINAL_STEPS)}")
    check(lower_order_below >= 1, f"solver.lower_order_below must be >= 1 (got {lower_order_below})")
    history: list[tuple[float, Tensor]]
    n, history = len(sigmas) - 1, []
    for i in range(n):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Evaluate once at the current point; keep the newest `order` outputs.
        history = [(-math.log(sigma), evaluate(x, sigma))] + history[:order - 1]
        k = min(order, i + 1, order_cap(i, sigmas, lower_order_final, final_step, lower_order_below))
        lams, values = zip(*history[:k])
        # Exponential-integrator step with the Taylor terms of the interpolating polynomial.
        terms = taylor_terms(lams, values)
        x = step(x, sigma, sigma_next, terms[:2] + [d2_scale * t for t in terms[2:3]] + terms[3:])
    return x


def dynamic_threshold(x0: Tensor, ratio: float, max_val: float) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen; as in DPM-Solver++'s reference code).

    Per sample s = max(ratio-quantile of |x0|, max_val); x0 is clipped to [-s, s] and rescaled by
    max_val / s into [-max_val, max_val] (the reference divides by s: the same for max_val = 1).
    """
    s = x0.abs().reshape(len(x0), -1).quantile(ratio, dim=1).clamp(min=max_val)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) * (max_val / s)
