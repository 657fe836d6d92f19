"""One feature pass serves every distribution metric (torch-fidelity's idea): FD, KID, IS, PR/DC.

``evaluate`` streams uint8 batches through the extractor once, then ``compute_metrics`` derives
every requested metric from the kept FeatureStats against the reference. A metric that cannot be
computed (IS without logits) yields None plus one line in ``notes``; the others go on.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffbench.errors import UsageError
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.inception_score import inception_score
from diffbench.metrics.kid import kid
from diffbench.metrics.prdc import prdc
from diffbench.metrics.refs import RefStats
from diffbench.metrics.stats import FeatureStats, Progress, extract
from diffbench.metrics.uncertainty import fd_interval, kid_interval

FEATURE_METRICS = ("fd", "kid", "is", "prdc")
PAIRED_METRICS = ("solver_error", "lpips")
ALIASES = {"fid": "fd", "inception_score": "is", "pr": "prdc", "precision_recall": "prdc"}


def parse_metrics(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split metric names into (feature metrics, paired metrics), resolving aliases; UsageError if unknown."""
    feature, paired = [], []
    for raw in names:
        name = ALIASES.get(raw, raw)
        if name in FEATURE_METRICS:
            feature.append(name)
        elif name in PAIRED_METRICS:
            paired.append(name)
        else:
            valid = ", ".join([*FEATURE_METRICS, *PAIRED_METRICS, *ALIASES])
            raise UsageError(f"metrics.names: '{raw}' is unknown; choose from: {valid}")
    return list(dict.fromkeys(feature)), list(dict.fromkeys(paired))


@dataclass
class MetricOptions:
    """Knobs of the feature metrics (the metrics config group's fields).

    Attributes:
        kid_subsets, kid_subset_size: KID subset count and size (clean-fid: 100, 1000).
        is_splits: Inception Score splits (10, as the original).
        prdc_k: k of the k-NN balls (5, Naeem et al.'s recommendation); prdc_max: rows per set used.
        n_boot: bootstrap replicates for the FD interval (0: none; see uncertainty.py for the cost).
        kid_n_boot: bootstrap replicates for the KID interval (0: none; each costs a full KID).
        ci_level: interval level; seed: seeds KID subsets and the bootstrap; device: where the maths runs.
    """

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    prdc_k: int = 5
    prdc_max: int = 10_000
    n_boot: int = 0
    kid_n_boot: int = 0
    ci_level: float = 0.95
    seed: int = 0
    device: str = "cpu"


def _ref_stats(ref: RefStats | FeatureStats) -> FeatureStats:
    return ref.stats if isinstance(ref, RefStats) else ref


def compute_metrics(gen: FeatureStats, ref: RefStats | FeatureStats, metrics: Sequence[str] = ("fd",),
                    options: MetricOptions | None = None,
                    logits_unavailable: str = "the extractor gives no class logits") -> dict[str, Any]:
    """Feature metrics of generated stats against the reference -> a flat dict for a results row."""
    opts = options or MetricOptions()
    names, _ = parse_metrics(metrics)
    rstats = _ref_stats(ref)
    if gen.identity != rstats.identity:
        raise UsageError(f"reference statistics were computed with {rstats.identity}, the samples with "
                         f"{gen.identity}; use the same metrics.extractor / resize_mode or rebuild the reference")
    out: dict[str, Any] = {"feature_extractor": gen.identity.get("extractor"),
                           "resize_mode": gen.identity.get("resize_mode"),
                           "ref_id": ref.id if isinstance(ref, RefStats) else None,
                           "n_gen": gen.n, "n_ref": rstats.n, "notes": []}
    needs_rows = {"kid", "prdc"} & set(names) or ("fd" in names and opts.n_boot)
    if needs_rows and (gen.features is None or rstats.features is None):
        raise UsageError("kid / prdc / bootstrap need feature rows; extract with keep_features=True")
    if "fd" in names:
        target = FrechetTarget.of(rstats, opts.device)
        out["fd"] = target.distance_to(gen)
        if opts.n_boot:
            out.update(fd_interval(gen.features, target, opts.n_boot, opts.ci_level, opts.seed).fields("fd"))
    if "kid" in names:
        out["kid"], out["kid_std"] = kid(rstats.features, gen.features, opts.kid_subsets, opts.kid_subset_size,
                                         opts.seed, opts.device)
        if opts.kid_n_boot:
            iv = kid_interval(rstats.features, gen.features, opts.kid_n_boot, opts.ci_level, opts.seed,
                              opts.kid_subsets, opts.kid_subset_size, opts.device)
            out.update(kid_low=iv.low, kid_high=iv.high)
    if "is" in names:
        if gen.logits is None:
            out["is"], out["is_std"] = None, None
            out["notes"].append(f"inception_score: unavailable: {logits_unavailable}")
        else:
            out["is"], out["is_std"] = inception_score(gen.logits, opts.is_splits)
    if "prdc" in names:
        out.update(prdc(rstats.features[:opts.prdc_max], gen.features[:opts.prdc_max], opts.prdc_k,
                        device=opts.device))
    return out


def evaluate(images: Iterable[Tensor], ref: RefStats | FeatureStats, extractor: Any,
             metrics: Sequence[str] = ("fd",), options: MetricOptions | None = None, *,
             total: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Stream uint8 sample batches [B, 3, H, W] through `extractor` and compute the feature metrics.

    Returns compute_metrics' dict; ``notes`` also carries the extractor's fallback line, if any.
    """
    gen = extract(images, extractor, keep_features=True, total=total, progress=progress)
    out = compute_metrics(gen, ref, metrics, options, extractor.logits_unavailable)
    if extractor.fallback:
        out["notes"].insert(0, extractor.fallback)
    return out
