"""DPM-Solver++ with data prediction (Lu et al. 2022b), in EDM coordinates.

With lambda = -log sigma and h = lambda' - lambda, the exact probability-flow ODE solution is
x' = (sigma'/sigma) x + int_0^h e^(u-h) D(lambda + u) du; a Taylor expansion of D in lambda gives
x' = e^-h x + sum_k h^(k+1) phi_{k+1}(-h) D^(k). k = 0 is DDIM. The SDE variants (ibid., App.)
integrate the reverse SDE scaled by eta >= 0 (eta = 1: the diffusion SDE) exactly in its linear part:
h is replaced by (1 + eta) h in the weights and fresh noise of std sigma' sqrt(1 - e^(-2 eta h)) is added.
A step to sigma' = 0 is the data-prediction limit x' = D (the model is never called at 0).

Every variant takes optional dynamic thresholding of the model's x0 (off by default).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import ancestral_step, d2_scale, dynamic_threshold, multistep, phi
from diffbench.solvers.registry import last_step_single, register

DataFn = Callable[[Tensor, float], Tensor]


def data_prediction_step(x: Tensor, sigma: float, sigma_next: float, terms: Sequence[Tensor], eta: float = 0.0,
                         midpoint: bool = False) -> Tensor:
    """DPM-Solver++'s step from the Taylor terms [D, D', ...] of D in lambda (Lu et al. 2022b, Sec. 4).

    x' = e^(-he) x + sum_k he^(k+1) phi_{k+1}(-he) / (1+eta)^k D^(k) with he = (1 + eta) h; eta > 0
    gives the SDE variant's mean (the caller adds its noise).
    midpoint: the paper's second-order form, weight h * w_0 / 2 on D' (DPM-Solver++(2S)/(2M), Alg. 1-2).
    """
    if sigma_next == 0:
        return terms[0]
    h = math.log(sigma / sigma_next)
    he = (1 + eta) * h
    weights = [he ** (k + 1) * phi(k + 1, -he) / (1 + eta) ** k for k in range(len(terms))]
    if midpoint and len(terms) == 2:
        weights[1] = 0.5 * h * weights[0]
    return math.exp(-he) * x + sum(w * t for w, t in zip(weights, terms))


def data_model(denoiser: Denoiser, thresholding: bool, ratio: float, max_val: float) -> DataFn:
    """The data prediction D(x, sigma), optionally dynamically thresholded (off by default)."""
    if not thresholding:
        return denoiser
    check(0 < ratio <= 1, f"solver.thresholding_ratio must be in (0, 1] (got {ratio})")
    check(max_val > 0, f"solver.thresholding_max_val must be > 0 (got {max_val})")
    return lambda x, sigma: dynamic_threshold(denoiser(x, sigma), ratio, max_val)


def sde_multistep(x: Tensor, sigmas: Tensor, noise: NoiseSource | None, order: int,
                  eta: float, s_noise: float, lower_order_final: bool, model: DataFn, d2_weight: float = 1.0,
                  midpoint: bool = True, final_step: str = "counted", lower_order_below: int = 10) -> Tensor:
    """DPM-Solver++(kM), with fresh noise of std sigma' sqrt(1 - e^(-2 eta h)) per step when eta > 0.

    d2_weight multiplies the D'' Taylor term of third-order steps (_common.COEFFICIENTS); midpoint picks the
    second-order steps' form (data_prediction_step), else their exact Taylor weight h^2 phi_2(-h).
    """
    check(eta >= 0, f"solver.eta must be >= 0 (got {eta})")
    if eta > 0 and noise is None:
        raise ValueError("DPM-Solver++ SDE (eta > 0) needs a NoiseSource")

    def step(x: Tensor, sigma: float, sigma_next: float, terms: list[Tensor]) -> Tensor:
        # Exponential-integrator step of the (eta-scaled) linear part with the Taylor terms of D.
        x = data_prediction_step(x, sigma, sigma_next, terms, eta, midpoint=midpoint)
        # Exact noise of the linear SDE over the step.
        if eta > 0 and sigma_next > 0:
            assert noise is not None  # checked above
            std = sigma_next * math.sqrt(-math.expm1(-2 * eta * math.log(sigma / sigma_next)))
            x = x + noise.randn_like(x) * s_noise * std
        return x

    return multistep(x, sigmas, model, step, order, lower_order_final, final_step, lower_order_below, d2_weight)


@register("dpmpp_2m_sde", order=2, stochastic="eta", eta=1.0)
@register("dpmpp_2m", order=2, stochastic="eta")
def dpmpp_2m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None, eta: float = 0.0,
             s_noise: float = 1.0, lower_order_final: bool = True, final_step: str = "counted",
             lower_order_below: int = 10, thresholding: bool = False, thresholding_ratio: float = 0.995,
             thresholding_max_val: float = 1.0) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2); eta > 0 is SDE-DPM-Solver++(2M) (ibid., App.; eta=1 default).

    The SDE variant's order 2 is its weak order measured on Gaussian data (output mean and variance).
    final_step and lower_order_below: the lower_order_final convention (solvers/_common.py FINAL_STEPS).
    The default "counted" is k-diffusion's sample_dpmpp_2m / sample_dpmpp_2m_sde (where the names come
    from) and diffusers': a grid's jump to sigma = 0 is the last, first-order step, and nothing else is
    lowered. The authors' DPM-Solver code treats that jump as a separate denoise_to_zero and takes the
    step into sigma_min at first order below 10 steps: final_step="separate".
    """
    model = data_model(denoiser, thresholding, thresholding_ratio, thresholding_max_val)
    return sde_multistep(x, sigmas, noise, 2, eta, s_noise, lower_order_final, model, final_step=final_step,
                         lower_order_below=lower_order_below)


@register("dpmpp_3m_diffusers", order=2, stochastic="eta", final_step="counted", lower_order_below=15)
@register("dpmpp_3m_sde_taylor", order=2, stochastic="eta", eta=1.0, coefficients="taylor")
@register("dpmpp_3m_taylor", order=3, stochastic="eta", coefficients="taylor")
@register("dpmpp_3m", order=2, stochastic="eta")
def dpmpp_3m(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None, eta: float = 0.0,
             s_noise: float = 1.0, lower_order_final: bool = True, final_step: str = "separate",
             lower_order_below: int = 10, coefficients: str = "reference", thresholding: bool = False,
             thresholding_ratio: float = 0.995, thresholding_max_val: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022b, App.; the authors' dpm-solver code); eta > 0 is its SDE variant.

    D'' comes from the quadratic through the last three outputs. Defaults follow the authors' code:
    coefficients="reference" gives D'' half its exact third-order weight h^3 phi_3(-h), as the authors'
    multistep_dpm_solver_third_update (diffusers and k-diffusion copy it): an O(h^3) local error,
    order 2 in the limit (2.4 fitted over 8-32 steps), hence registered order 2; "taylor" (registered
    as dpmpp_3m_taylor, order 3) keeps the exact weight, ~4x smaller error at 128 steps but worse on
    long final log-SNR steps. final_step="separate": a grid's jump to sigma = 0 is the authors'
    denoise_to_zero, outside the steps that lower_order_final lowers (below 10 steps, the last two
    steps into sigma_min take orders 1, 2). diffusers counts the jump as the last step and lowers
    below 15 (final_step="counted", lower_order_below=15: dpmpp_3m_diffusers, equal to its
    DPMSolverMultistepScheduler(solver_order=3)); on Karras grids that keeps a third-order
    data-prediction step into sigma_min, whose extrapolation of D to the far end of a long step
    overshoots (3x8x8 image mixture, NFE 6/10 RMSE: 0.15/0.064 vs dpmpp_3m_diffusers 0.49/0.13;
    results/solver_error_table_image.md, results/SOLVER_ERROR.md). With eta=1 and the exact weight
    it is `dpmpp_3m_sde_taylor` (`dpmpp_3m_sde` is k-diffusion's form, which differs in three ways);
    its weak order is 2.
    """
    scale = d2_scale(coefficients)
    model = data_model(denoiser, thresholding, thresholding_ratio, thresholding_max_val)
    return sde_multistep(x, sigmas, noise, 3, eta, s_noise, lower_order_final, model, scale,
                         final_step=final_step, lower_order_below=lower_order_below)


@register("dpmpp_3m_sde", order=2, stochastic="eta")
def dpmpp_3m_sde(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None, eta: float = 1.0,
                 s_noise: float = 1.0, lower_order_final: bool = False, final_step: str = "counted",
                 lower_order_below: int = 10, thresholding: bool = False, thresholding_ratio: float = 0.995,
                 thresholding_max_val: float = 1.0) -> Tensor:
    """SDE-DPM-Solver++(3M) (Lu et al. 2022b, App.; k-diffusion's sample_dpmpp_3m_sde, where the name comes from).

    As k-diffusion 0.1.1: the second-order warm-up step takes the exact Taylor weight
    h^2 phi_2(-h) on D' (k-diffusion's phi_2; dpmpp_3m_sde_taylor takes the midpoint form h w_0 / 2
    of Alg. 2), the third-order step half the exact D'' weight (coefficients="reference", as in
    the DPM-Solver authors' 3M), and no step is lowered before the final denoise (lower_order_final
    False). dpmpp_3m_sde_taylor (the exact third-order weight, midpoint warm-up, lowering below 10
    steps) has the smaller local error on smooth grids; this form is the one published SDE-3M
    numbers use. diffusers' DPMSolverMultistepScheduler("sde-dpmsolver++", solver_order=3) differs
    from both: its D2 weight ((1 - e^(-2h) - 2h) / (2h)^2 - 0.5) does not vanish as h -> 0 (it
    tends to -1), so it is not a consistent third-order term; no parity is claimed with it.
    """
    model = data_model(denoiser, thresholding, thresholding_ratio, thresholding_max_val)
    return sde_multistep(x, sigmas, noise, 3, eta, s_noise, lower_order_final, model, d2_scale("reference"),
                         midpoint=False, final_step=final_step, lower_order_below=lower_order_below)


@register("dpmpp_2s", order=2, nfe=last_step_single(2))
def dpmpp_2s(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
             thresholding: bool = False, thresholding_ratio: float = 0.995,
             thresholding_max_val: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1; r = 1/2): two evaluations per step, one on a step to 0."""
    model = data_model(denoiser, thresholding, thresholding_ratio, thresholding_max_val)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        # First-order step to the midpoint in lambda, evaluated there.
        sigma_mid = math.sqrt(sigma * sigma_next)
        denoised_mid = model(data_prediction_step(x, sigma, sigma_mid, [denoised]), sigma_mid)
        # Second-order update from the slope of D between sigma and the midpoint.
        slope = (denoised_mid - denoised) / (0.5 * math.log(sigma / sigma_next))
        x = data_prediction_step(x, sigma, sigma_next, [denoised, slope], midpoint=True)
    return x


def ancestral_move(x: Tensor, sigma: float, sigma_to: float, denoised: Tensor, eta: float, s_noise: float,
                   noise: NoiseSource | None, draw: Tensor | None = None) -> Tensor:
    """First-order data-prediction move to sigma_down, then noise of std sigma_up (the ancestral split): `draw`,
    else a fresh standard normal from `noise`."""
    sigma_down, sigma_up = ancestral_step(sigma, sigma_to, eta)
    x = data_prediction_step(x, sigma, sigma_down, [denoised])
    if sigma_up > 0:
        if draw is None:
            if noise is None:
                raise ValueError("an ancestral DPM-Solver++ step (eta > 0) needs a NoiseSource")
            draw = noise.randn_like(x)
        x = x + draw * s_noise * sigma_up
    return x


NOISE_PATHS = ("brownian", "independent")  # dpmpp_sde's two stage noises: one Brownian path, or independent draws


def brownian_pair(noise: NoiseSource, x: Tensor, sigma: float, sigma_mid: float,
                  sigma_next: float) -> tuple[Tensor, Tensor]:
    """Normalised increments of one Brownian path in sigma over [sigma_mid, sigma] and [sigma_next, sigma].

    They are correlated, rho = sqrt((sigma - sigma_mid) / (sigma - sigma_next)), exactly as k-diffusion's
    BrownianTreeNoiseSampler draws them for sample_dpmpp_sde's two stages; independent draws change the law.
    """
    first, rest = noise.randn_like(x), noise.randn_like(x)
    rho = math.sqrt((sigma - sigma_mid) / (sigma - sigma_next))
    return first, rho * first + math.sqrt(1 - rho**2) * rest


def check_ancestral(eta: float, s_noise: float) -> None:
    """eta in [0, 1] keeps sigma_down > 0 before the last step (so the NFE rule holds); s_noise >= 0."""
    check(0 <= eta <= 1 and s_noise >= 0,
          f"solver.eta must be in [0, 1] and solver.s_noise >= 0 (got {eta}, {s_noise})")


@register("dpmpp_2s_ancestral", order=2, nfe=last_step_single(2), stochastic="eta", eta=1.0)
def dpmpp_2s_ancestral(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
                       eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1; k-diffusion's sample_dpmpp_2s_ancestral).

    Each step is a 2S step (r = 1/2) to sigma_down followed by fresh noise of std sigma_up, the
    DDPM split of the step (eta = 1); eta = 0 is dpmpp_2s. A step to sigma = 0 returns D (one call).
    Registered order 2: its weak order on Gaussian data (exact mean + variance error: fitted slope 1.71
    over 8..32 steps, 1.95 over 32..128; tests/test_dpm_solver_pp_sde.py).
    """
    check_ancestral(eta, s_noise)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        sigma_down, _ = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = denoised
            continue
        # Midpoint (in lambda) of the deterministic part, evaluated there.
        sigma_mid = math.sqrt(sigma * sigma_down)
        denoised_mid = denoiser(data_prediction_step(x, sigma, sigma_mid, [denoised]), sigma_mid)
        # 2S update with the midpoint estimate, then the ancestral noise up to sigma_next.
        x = ancestral_move(x, sigma, sigma_next, denoised_mid, eta, s_noise, noise)
    return x


@register("dpmpp_sde", order=2, nfe=last_step_single(2), stochastic="eta", eta=1.0)
def dpmpp_sde(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
              eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5, noise_path: str = "brownian") -> Tensor:
    """Stochastic DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1 with ancestral noise; k-diffusion's sample_dpmpp_sde).

    Both stages are ancestral moves: to the intermediate level sigma^(1-r) sigma'^r, then to sigma'
    with D mixed as (1 - 1/(2r)) D + 1/(2r) D_mid. Their noises are the increments of one Brownian path in
    sigma over [sigma_mid, sigma] and [sigma', sigma] (noise_path="brownian": k-diffusion's Brownian-tree law);
    noise_path="independent" draws them independently, diffbench's rule before 2026-12-05 (another law: weak
    order ~0.9). eta = 0 with r = 1/2 is dpmpp_2s. A step to sigma = 0 returns D. Registered order 2: its weak
    order on Gaussian data is 2.16 over 32..128 steps (tests/test_dpm_solver_pp_sde.py).
    """
    check_ancestral(eta, s_noise)
    check(0 < r < 1, f"solver.r must be in (0, 1) (got {r})")
    check(noise_path in NOISE_PATHS, f"solver.noise_path must be one of {', '.join(NOISE_PATHS)} (got {noise_path})")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            x = denoised
            continue
        # Stage 1: ancestral move to the intermediate level, evaluated there.
        sigma_mid = sigma ** (1 - r) * sigma_next**r
        draws: tuple[Tensor | None, Tensor | None] = (None, None)
        if eta > 0 and noise is not None and noise_path == "brownian":
            draws = brownian_pair(noise, x, sigma, sigma_mid, sigma_next)
        denoised_mid = denoiser(ancestral_move(x, sigma, sigma_mid, denoised, eta, s_noise, noise, draws[0]),
                                sigma_mid)
        # Stage 2: ancestral move to sigma_next with the second-order combination of both estimates.
        mixed = (1 - 1 / (2 * r)) * denoised + 1 / (2 * r) * denoised_mid
        x = ancestral_move(x, sigma, sigma_next, mixed, eta, s_noise, noise, draws[1])
    return x
