"""ReMDM: masked diffusion sampling that may remask revealed tokens."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from diffbench.discrete._common import denoise_all, steps_of, unmask_step
from diffbench.discrete.contract import CountingDiscreteDenoiser, masked
from diffbench.discrete.registry import register
from diffbench.errors import check
from diffbench.noise import NoiseSource


def check_eta(options: Mapping[str, Any]) -> None:
    """eta scales the largest remasking probability: it must lie in [0, 1]."""
    check(0.0 <= options["eta"] <= 1.0, f"solver.eta must be in [0, 1] (got {options['eta']})")


@register("remdm", validate=check_eta)
def remdm(denoiser: CountingDiscreteDenoiser, x: Tensor, times: Tensor, *, noise: NoiseSource,
          precision: str = "float64", eta: float = 0.05) -> Tensor:
    """ReMDM remasking (Wang et al. 2025, "Remasking discrete diffusion models with inference-time scaling", rescale).

    sigma_t = eta * min(1, (1 - alpha_s) / alpha_t): a revealed token is remasked with probability sigma_t,
    a masked one revealed with (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t); eta = 0 is MDLM's ddpm.
    """
    length = x.shape[1]
    for t, s in steps_of(times):
        a_t, a_s = 1.0 - float(t), 1.0 - float(s)
        sigma = eta * min(1.0, (1.0 - a_s) / a_t) if a_t > 0 else 0.0
        p_x0 = denoise_all(denoiser, x, t)
        revealed = unmask_step(x, p_x0, (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t), noise, precision)
        remask = ~masked(x, denoiser.vocab) & (noise.rand((length,)) < sigma)  # Remask revealed tokens.
        x = torch.where(remask, torch.full_like(x, denoiser.vocab), revealed)
    return x
