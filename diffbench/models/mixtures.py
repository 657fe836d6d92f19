"""A Gaussian mixture in d dimensions (toy data with an exact denoiser), for sweeps beyond images."""
from __future__ import annotations

import math

import torch

from diffbench.errors import check
from diffbench.models.analytic import MixtureDenoiser, _schedule
from diffbench.models.registry import register_model
from diffbench.schedules import NoiseSchedule


@register_model("gmm")
def gmm(dim: int = 2, components: int = 8, ring: bool = True, radius: float = 2.0, std: float = 0.2, seed: int = 0,
        schedule: NoiseSchedule | dict | str | None = None) -> MixtureDenoiser:
    """An equal-weight mixture of isotropic Gaussians in `dim` dimensions (exact denoiser).

    ring=True puts the means evenly on a circle of `radius` in the first two coordinates (the
    classic 2-D toy); ring=False draws them from N(0, radius^2 / dim) per coordinate, seeded.
    """
    check(dim >= 1 and components >= 1, f"model: need dim >= 1 and components >= 1 (got {dim}, {components})")
    check(std > 0, f"model.std must be > 0 (got {std})")
    if ring:
        check(dim >= 2, "model.ring needs dim >= 2")
        angle = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
        means = torch.zeros(components, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * angle.cos(), radius * angle.sin()
    else:
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64) * (radius / math.sqrt(dim))
    return MixtureDenoiser(means, stds=std, schedule=_schedule(schedule))
