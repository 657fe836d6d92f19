"""Pseudo numerical methods: PNDM / PLMS (Liu et al. 2022) and iPNDM (Zhang & Chen 2023).

In EDM coordinates DDIM's transfer phi(x, eps, sigma -> sigma') is x + (sigma' - sigma) * eps with
eps = (x - D) / sigma, so PNDM's "pseudo" linear multistep is Adams-Bashforth on eps in sigma with the
classic fixed-step coefficients. The families differ in their start: PLMS (`plms`, up to 4 steps)
and S-PNDM (`s_pndm`, 2 steps) take one pseudo improved-Euler step, F-PNDM (`pndm`) three pseudo
Runge-Kutta steps, iPNDM raises the order one step at a time (1 NFE per step throughout).

Honest order: the fixed coefficients assume equal steps; on a grid whose step sizes vary smoothly
(uniform logSNR, Karras) they match the integral of eps only to second order (an O(h^3) mismatch
per step), so all of them are registered as order 2. iPNDM's error on the 8..32-step convergence
grid is still pre-asymptotic there (fitted slope 1.5; 1.95 on 16..64 steps, 2.0 beyond).
"""
from __future__ import annotations

from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import Denoiser
from diffbench.noise import NoiseSource
from diffbench.solvers._common import afs_nfe, analytic_eps, to_d
from diffbench.solvers.registry import register

# Adams-Bashforth weights for fixed steps, newest eps first.
AB_COEFFS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def adams_bashforth(history: list[Tensor]) -> Tensor:
    """Fixed-step Adams-Bashforth combination of the eps history (oldest first, at most 4)."""
    return sum(c * eps for c, eps in zip(AB_COEFFS[len(history)], reversed(history)))  # type: ignore[return-value]


def _plms_nfe(steps: int, final_zero: bool) -> int:
    """PLMS and S-PNDM: 2 NFE for the improved-Euler start, then 1 per step; a first step to 0 is one denoise."""
    return steps + 1 - int(final_zero and steps == 1)


def _pndm_nfe(steps: int, final_zero: bool) -> int:
    """F-PNDM: 4 NFE for each of the first 3 (Runge-Kutta) steps, then 1; a warm-up step to 0 is one denoise."""
    return 4 * min(steps, 3) + max(steps - 3, 0) - 3 * int(final_zero and steps <= 3)


@register("ipndm_afs", order=1, nfe=afs_nfe, min_steps=2, afs=True)
@register("ipndm", order=2, nfe=afs_nfe)
def ipndm(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
          max_order: int = 4, afs: bool = False) -> Tensor:
    """iPNDM (Zhang & Chen 2023, the DEIS paper's improved PNDM): Adams-Bashforth on eps in sigma, order <= 4.

    The order rises with the history (Euler first), so no extra evaluation is needed for the start.
    afs=True (`ipndm_afs`) replaces the first evaluation by AMED's analytic estimate; that step's
    O(h) error makes the global order 1 on an exact model.
    """
    check(max_order in AB_COEFFS, f"solver.max_order must be 1, 2, 3 or 4 (got {max_order})")
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Noise estimate: analytic at the first step with AFS, else one model call.
        eps = analytic_eps(x, sigma) if afs and i == 0 else to_d(x, sigma, denoiser(x, sigma))
        history = (history + [eps])[-max_order:]
        # Adams-Bashforth step with every stored eps.
        x = x + (sigma_next - sigma) * adams_bashforth(history)
    return x


@register("s_pndm", order=2, nfe=_plms_nfe, max_order=2)
@register("plms", order=2, nfe=_plms_nfe)
def plms(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
         max_order: int = 4) -> Tensor:
    """PLMS (Liu et al. 2022, eq. 12; as LDM's PLMSSampler and diffusers' PNDMScheduler(skip_prk_steps=True)).

    A pseudo improved-Euler first step (2 NFE), then pseudo linear multistep steps whose order rises
    with the history, 2, 3, then 4 (max_order). `s_pndm` (max_order=2) is the paper's S-PNDM, the
    2-step method of the PNDM authors' code: it keeps the O(h^3) term the 4-step formula cancels only
    on equal steps, so on the smoothly varying grids used here the two have the same order (2) and
    S-PNDM can be steadier at very few steps; PLMS is what "PLMS" results in the literature ran.
    """
    check(max_order in AB_COEFFS, f"solver.max_order must be 1, 2, 3 or 4 (got {max_order})")
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        eps = to_d(x, sigma, denoiser(x, sigma))
        history = (history + [eps])[-max_order:]
        if i == 0 and sigma_next > 0:
            # Pseudo improved Euler: average eps at both ends of a DDIM transfer (not kept as history).
            x_end = x + (sigma_next - sigma) * eps
            eps = (eps + to_d(x_end, sigma_next, denoiser(x_end, sigma_next))) / 2
        else:
            # Pseudo linear multistep (the DDIM limit on a first step to sigma = 0).
            eps = adams_bashforth(history)
        # DDIM transfer with the combined noise estimate.
        x = x + (sigma_next - sigma) * eps
    return x


@register("pndm", order=2, nfe=_pndm_nfe)
def pndm(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None) -> Tensor:
    """F-PNDM (Liu et al. 2022): 3 pseudo Runge-Kutta steps, then the 4-step pseudo linear multistep.

    The Runge-Kutta stages sit at the midpoint of the model's own time t, as in the reference code.
    """
    t_of, sigma_of = denoiser.schedule.sigma_to_t, denoiser.schedule.t_to_sigma
    history: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        eps = to_d(x, sigma, denoiser(x, sigma))
        history = (history + [eps])[-4:]
        if i < 3 and sigma_next > 0:
            # Pseudo Runge-Kutta: classic RK4 weights on DDIM transfers from x.
            sigma_mid = float(sigma_of((t_of(sigma) + t_of(sigma_next)) / 2))
            x_2 = x + (sigma_mid - sigma) * eps
            eps_2 = to_d(x_2, sigma_mid, denoiser(x_2, sigma_mid))
            x_3 = x + (sigma_mid - sigma) * eps_2
            eps_3 = to_d(x_3, sigma_mid, denoiser(x_3, sigma_mid))
            x_4 = x + (sigma_next - sigma) * eps_3
            eps_4 = to_d(x_4, sigma_next, denoiser(x_4, sigma_next))
            eps = (eps + 2 * eps_2 + 2 * eps_3 + eps_4) / 6
        elif i >= 3:
            # Pseudo linear multistep on the last 4 noise estimates.
            eps = adams_bashforth(history)
        # DDIM transfer with the combined noise estimate (a warm-up step to sigma = 0 is plain DDIM).
        x = x + (sigma_next - sigma) * eps
    return x
