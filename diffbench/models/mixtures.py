"""Gaussian mixtures in d dimensions (toy data with exact denoisers), unconditional and class-conditional."""
from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.analytic import MixtureDenoiser, _schedule
from diffbench.models.base import NO_LABEL, ConditionalDenoiser
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


class ClassMixtureDenoiser(ConditionalDenoiser):
    """A class-conditional Gaussian mixture: class c is the mixture of its own components (exact denoisers).

    Given label c, D is the mixture's denoiser with the other classes' components dropped (prior -inf);
    unconditional (NO_LABEL) it is the whole mixture's, so CFG's conditional and unconditional fields
    are both exact.
    """

    dtype = torch.float64

    def __init__(self, mixture: MixtureDenoiser, component_class: Tensor):
        self.mixture, self.component_class = mixture, component_class.long()
        self.classes = int(component_class.max()) + 1
        check(set(component_class.tolist()) == set(range(self.classes)), "every class needs a component")
        self.schedule, self.shape = mixture.schedule, mixture.shape

    def denoise_cond(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        log_w = self.mixture.log_w.to(x)[None].expand(x.shape[0], -1)
        labels = labels.to(x.device)[:, None]
        other = (labels != NO_LABEL) & (self.component_class.to(x.device)[None] != labels)
        return self.mixture.denoise_prior(x, sigma, log_w.masked_fill(other, -math.inf))

    def describe(self) -> dict[str, object]:
        return {**self.mixture.describe(), "model_kind": "class_mixture", "classes": self.classes}


@register_model("class_gmm")
def class_gmm(dim: int = 2, classes: int = 4, per_class: int = 2, radius: float = 2.0, std: float = 0.2,
              schedule: NoiseSchedule | dict | str | None = None) -> ClassMixtureDenoiser:
    """`classes` x `per_class` equal-weight Gaussians on a ring, component k of class k mod classes (exact)."""
    check(classes >= 1 and per_class >= 1, f"model: need classes >= 1 and per_class >= 1 (got {classes}, {per_class})")
    mixture = cast(MixtureDenoiser, gmm(dim=dim, components=classes * per_class, ring=True, radius=radius, std=std,
                                        schedule=schedule))
    return ClassMixtureDenoiser(mixture, torch.arange(classes * per_class) % classes)
