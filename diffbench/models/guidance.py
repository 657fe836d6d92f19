"""Guidance as a denoiser wrapper: a conditional model, its condition set and a guidance rule.

`GuidedModel.bind(indices)` gives the two-argument denoiser a solver runs for those samples, so every
solver is guided alike. Each rule mixes the conditional prediction D_c with another prediction D_o
(the unconditional model's, or a weaker guide model's for autoguidance) as D_c + (w - 1)(D_c - D_o);
network passes are counted per row (`network_rows`): two where guidance is on, one where it is off.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.models.base import NO_LABEL, ConditionalDenoiser, Denoiser
from diffbench.models.conditions import ConditionSet
from diffbench.registries import registrar

NONE = "none"


@dataclass(frozen=True)
class Guidance:
    """One guidance rule's parameters (scale w, interval (sigma_lo, sigma_hi], CFG rescale phi, APG terms)."""

    scale: float = 1.0
    sigma_lo: float = 0.0
    sigma_hi: float = math.inf
    rescale: float = 0.0
    apg_eta: float | None = None  # None: plain CFG difference; else APG's weight of the parallel part
    apg_threshold: float = 0.0  # APG's norm threshold r of the difference (0: none)
    autoguide: bool = False
    enabled: bool = True  # False: guidance=none, one pass per call on the labels alone

    def active(self, sigma: Tensor) -> Tensor | slice:
        """Rows guided at their noise level: sigma in (sigma_lo, sigma_hi] (Kynkäänniemi et al. 2024). Without an
        interval every row (sigma > 0) is: `slice(None)`, so callers index without a mask, whose size the host
        would have to read back from the device at every call."""
        if self.sigma_lo <= 0 and math.isinf(self.sigma_hi):
            return slice(None)
        return (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)

    def combine(self, cond: Tensor, other: Tensor) -> Tensor:
        """The guided prediction from D_c and D_o; lerp makes w = 0 give D_o and w = 1 give D_c bit for bit."""
        if self.apg_eta is not None:
            other = cond - apg_difference(cond - other, cond, self.apg_eta, self.apg_threshold)
        guided = torch.lerp(other, cond, self.scale)
        if self.rescale:
            dims = tuple(range(1, cond.ndim))
            ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
            guided = torch.lerp(guided, guided * ratio, self.rescale)
        return guided


def apg_difference(diff: Tensor, cond: Tensor, eta: float, threshold: float) -> Tensor:
    """APG's guidance difference (Sadat et al. 2024, Alg. 1, no momentum): clipped, parallel part times eta."""
    dims = tuple(range(1, diff.ndim))
    if threshold > 0:
        norm = diff.norm(dim=dims, keepdim=True)
        diff = diff * torch.clamp(threshold / norm, max=1.0)
    unit = cond / cond.norm(dim=dims, keepdim=True).clamp_min(1e-12)
    parallel = (diff * unit).sum(dim=dims, keepdim=True) * unit
    return (diff - parallel) + eta * parallel


GuidanceFactory = Callable[..., Guidance]
GUIDANCE: dict[str, GuidanceFactory] = {}


# @register_guidance(name): a guidance rule; its keyword defaults are its config node (guidance=<name>).
register_guidance = registrar(GUIDANCE, "guidance")


def make_guidance(options: dict[str, object]) -> Guidance:
    """The Guidance of a `guidance` config node (its `guide` model, for autoguidance, is built by the engine)."""
    options = dict(options)
    options.pop("guide_model", None)  # autoguidance's resolved guide config: the engine builds that model
    name = str(options.pop("name"))
    check(name in GUIDANCE, f"guidance={name} is unknown; choose one of: {', '.join(sorted(GUIDANCE))}")
    guidance = GUIDANCE[name](**options)
    check(math.isfinite(guidance.scale), f"guidance.scale must be a finite number (got {guidance.scale})")
    check(0 <= guidance.sigma_lo < guidance.sigma_hi,
          f"guidance: need 0 <= sigma_lo < sigma_hi (got {guidance.sigma_lo}, {guidance.sigma_hi})")
    check(0 <= guidance.rescale <= 1, f"guidance.phi must be in [0, 1] (got {guidance.rescale})")
    return guidance


@register_guidance(NONE)
def none() -> Guidance:
    """No guidance: conditional models run on their labels, one network pass per call (the default)."""
    return Guidance(enabled=False)


@register_guidance("cfg")
def cfg(scale: float = 2.0) -> Guidance:
    """Classifier-free guidance (Ho & Salimans 2022): D_u + w (D_c - D_u), both halves in one doubled batch."""
    return Guidance(scale=scale)


@register_guidance("interval")
def interval(scale: float = 2.0, sigma_lo: float = 0.28, sigma_hi: float = 2.90) -> Guidance:
    """CFG only for sigma in (sigma_lo, sigma_hi] (Kynkäänniemi et al. 2024, arXiv:2404.07724, Table 1).

    Defaults: their best-FID interval for EDM2-S on ImageNet-512 (there with w = 2.1). Per model, best
    FID / best FD_DINOv2: EDM2-S (0.28, 2.90] w 2.1 / (0.60, 5.00] w 3.2; EDM2-XXL (0.19, 1.61] w 2.0 /
    (0.60, 5.00] w 2.9; DiT-XL/2 (0.34, 1.02] w 2.5 / (0.45, 1.23] w 4.0. (0.28, 5.42] is their SD-XL
    interval (qualitative, Fig. 7). All in EDM sigma; they round both ends to step boundaries.
    """
    return Guidance(scale=scale, sigma_lo=sigma_lo, sigma_hi=sigma_hi)


@register_guidance("rescale")
def rescale(scale: float = 2.0, phi: float = 0.7) -> Guidance:
    """CFG rescale (Lin et al. 2024, "Common diffusion noise schedules"): on x0, match D_c's std, mix phi."""
    return Guidance(scale=scale, rescale=phi)


@register_guidance("apg")
def apg(scale: float = 2.0, eta: float = 0.0, threshold: float = 0.0) -> Guidance:
    """Adaptive projected guidance (Sadat et al. 2024): the difference's part parallel to D_c weighted by eta."""
    return Guidance(scale=scale, apg_eta=eta, apg_threshold=threshold)


@register_guidance("autoguidance")
def autoguidance(scale: float = 2.0, guide: str = "") -> Guidance:
    """Autoguidance (Karras et al. 2024): D_g + w (D_c - D_g), D_g a weaker model of the same family.

    `guide` names its model config (configs/model/<guide>.yaml); it is evaluated on the same labels.
    """
    check(bool(guide), "guidance.guide: name the guide model's config (e.g. guidance.guide=class_gmm_weak)")
    return Guidance(scale=scale, autoguide=True)


def conditional(model: Denoiser) -> ConditionalDenoiser:
    """The model as a conditional one (UsageError if it takes no labels)."""
    check(isinstance(model, ConditionalDenoiser),
          "conditions/guidance need a class-conditional model; this model takes no labels (use conditions=none)")
    return model  # type: ignore[return-value]


class GuidedModel(Denoiser):
    """A conditional model with its condition set, guidance rule and (autoguidance) guide model."""

    def __init__(self, model: Denoiser, conditions: ConditionSet, guidance: Guidance,
                 guide: Denoiser | None = None):
        conditions.check_classes(conditional(model).classes)
        check(guidance.autoguide == (guide is not None), "autoguidance needs its guide model, no other rule takes one")
        check(guide is None or (isinstance(guide, ConditionalDenoiser)
                                and guide.classes == cast(ConditionalDenoiser, model).classes),
              "guidance.guide must be a conditional model with the same classes as the model")
        self.model, self.conditions, self.guidance, self.guide = model, conditions, guidance, guide
        self.schedule, self.dtype, self.shape = model.schedule, model.dtype, getattr(model, "shape", None)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        raise RuntimeError("a conditional model samples through bind(indices), which binds each sample's label")

    def bind(self, indices: Sequence[int]) -> Denoiser:
        return GuidedDenoiser(self, self.conditions.take(indices))

    def describe(self) -> dict[str, object]:
        return self.model.describe()

    def decode(self, x: Tensor) -> Tensor:
        return self.model.decode(x)


class GuidedDenoiser(Denoiser):
    """A GuidedModel bound to one batch's labels: the two-argument denoiser a solver sees."""

    def __init__(self, parent: GuidedModel, labels: Tensor):
        self.parent, self.labels = parent, labels
        self.schedule, self.dtype = parent.schedule, parent.dtype

    @contextmanager
    def on_rows(self, rows: Tensor) -> Iterator[None]:
        """Restrict to `rows` of the current rows (nests: a sub-batch of a sub-batch)."""
        outer = self.labels
        self.labels = outer[rows.to(outer.device)]
        try:
            yield
        finally:
            self.labels = outer

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        model, guidance, guide = self.parent.model, self.parent.guidance, self.parent.guide
        if self.labels.device != x.device:  # moved once per batch, not copied from the host at every call
            self.labels = self.labels.to(x.device)
        labels = self.labels
        check(len(labels) == x.shape[0], f"bound to {len(labels)} labels, called on {x.shape[0]} rows")
        if not guidance.enabled:
            return model.denoise_cond(x, sigma, labels)  # type: ignore[attr-defined]
        on = guidance.active(sigma)
        if guide is None:  # one doubled batch: every row conditional, the guided rows again unconditional
            both = model.denoise_cond(torch.cat([x, x[on]]), torch.cat([sigma, sigma[on]]),  # type: ignore[attr-defined]
                                      torch.cat([labels, torch.full_like(labels[on], NO_LABEL)]))
            cond, other = both[:len(x)], both[len(x):]
        else:
            cond = model.denoise_cond(x, sigma, labels)  # type: ignore[attr-defined]
            other = guide.denoise_cond(x[on].to(guide.dtype), sigma[on].to(guide.dtype), labels[on]).to(x.dtype)  # type: ignore[attr-defined]
        out = cond.clone()
        out[on] = guidance.combine(cond[on], other)
        return out

    def network_rows(self, x: Tensor, sigma: Tensor) -> int:
        """One pass per row, plus one (unconditional or guide model) per row guided at its sigma."""
        if not self.parent.guidance.enabled:
            return x.shape[0]
        on = self.parent.guidance.active(sigma)
        return x.shape[0] * 2 if isinstance(on, slice) else x.shape[0] + int(on.sum())


def max_passes(guidance: Guidance) -> int:
    """Network passes per sample of one denoiser call at most (a network-evaluation budget divides by it)."""
    return 2 if guidance.enabled else 1
