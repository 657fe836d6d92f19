"""One feature pass serves every distribution metric (torch-fidelity's idea): FD, KID, IS, PR/DC.

``evaluate`` streams uint8 batches through the extractor once, then ``compute_metrics`` derives
every requested metric from the kept FeatureStats against the reference. A metric that cannot be
computed (IS without logits, too few samples for its options) is left out with one line in
``notes`` saying why; the others go on.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffbench.columns import MetricValue
from diffbench.errors import UsageError
from diffbench.metrics.features import FeatureExtractor
from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.inception_score import inception_score
from diffbench.metrics.kid import kid
from diffbench.metrics.prdc import prdc
from diffbench.metrics.refs import RefStats
from diffbench.metrics.stats import FeatureStats, Progress, extract
from diffbench.metrics.uncertainty import Interval, fd_interval, kid_interval

FEATURE_METRICS = ("fd", "kid", "is", "prdc")
PAIRED_METRICS = ("solver_error", "lpips", "exact")  # on the samples themselves (exact: metrics/exact.py)
TEXT_IMAGE_METRICS = ("clip_score", "fd_dinov2", "cmmd")  # on their own networks (diffbench.metrics.suite)
# Samples vs their class labels (class_accuracy: metrics.classifier; fd_per_class: metrics/per_class.py): the suite
# reads these.
LABEL_METRICS = ("class_accuracy", "fd_per_class")
ALIASES = {"fid": "fd", "inception_score": "is", "pr": "prdc", "precision_recall": "prdc"}


def parse_metrics(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split metric names into (feature metrics, paired metrics), resolving aliases; UsageError if unknown.

    Text-to-image metrics (TEXT_IMAGE_METRICS, ``text_image_metrics``) and label metrics (LABEL_METRICS, read by
    MetricSuite from the names) are valid names in neither list."""
    feature, paired = [], []
    for raw in names:
        name = ALIASES.get(raw, raw)
        if name in FEATURE_METRICS:
            feature.append(name)
        elif name in PAIRED_METRICS:
            paired.append(name)
        elif name not in (*TEXT_IMAGE_METRICS, *LABEL_METRICS):
            valid = ", ".join([*FEATURE_METRICS, *PAIRED_METRICS, *TEXT_IMAGE_METRICS, *LABEL_METRICS, *ALIASES])
            raise UsageError(f"metrics.names: '{raw}' is unknown; choose from: {valid}")
    return list(dict.fromkeys(feature)), list(dict.fromkeys(paired))


def text_image_metrics(names: Sequence[str]) -> list[str]:
    """The text-to-image metrics among metric names (clip_score, fd_dinov2, cmmd), in TEXT_IMAGE_METRICS order."""
    return [name for name in TEXT_IMAGE_METRICS if name in names]


@dataclass
class MetricOptions:
    """Knobs of the feature metrics (the metrics config group's fields, diffbench/schema.py Metrics).

    Attributes:
        kid_subsets, kid_subset_size: KID subset count and size (clean-fid: 100, 1000).
        is_splits: Inception Score splits (10, as the original).
        prdc_k: k of the k-NN balls (``nearest_k``; 5, Naeem et al.'s recommendation); prdc_max: rows
            per set used (the first ones).
        n_boot: bootstrap replicates for the FD interval (0: none; see uncertainty.py for cost and stability).
        kid_n_boot: bootstrap replicates for the KID interval (0: none; each costs a full KID).
        ci_level: interval level; ci_includes_reference: resample the reference rows too in the
            bootstraps (its sampling noise in the interval); seed: seeds KID subsets and the
            bootstrap; device: where the maths runs.
    """

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    prdc_k: int = 5
    prdc_max: int = 10_000
    n_boot: int = 0
    kid_n_boot: int = 0
    ci_level: float = 0.95
    ci_includes_reference: bool = False
    seed: int = 0
    device: str = "cpu"

    def interval_method(self) -> str | None:
        """How the intervals were made, for rows and output (None: no intervals)."""
        if not (self.n_boot or self.kid_n_boot):
            return None
        side = ("generated and reference samples" if self.ci_includes_reference
                else "generated samples (reference fixed)")
        return f"normal bootstrap at {self.ci_level:g} over {side}"


def _ref_stats(ref: RefStats | FeatureStats) -> FeatureStats:
    return ref.stats if isinstance(ref, RefStats) else ref


def too_few(name: str, n_gen: int, n_ref: int, opts: MetricOptions) -> str | None:
    """Why metric `name` cannot be computed with these sample counts (None: it can), naming the fix."""
    if name == "fd" and n_gen < 2:
        return f"needs at least 2 samples (got {n_gen})"
    if name == "kid" and opts.kid_subset_size > min(n_gen, n_ref):
        return (f"metrics.kid_subset_size={opts.kid_subset_size} exceeds the samples ({n_gen} generated, "
                f"{n_ref} reference); lower it or give more samples")
    if name == "is" and opts.is_splits > n_gen:
        return f"metrics.is_splits={opts.is_splits} exceeds the {n_gen} samples; lower it"
    rows = min(n_gen, n_ref, opts.prdc_max)
    if name == "prdc" and opts.prdc_k >= rows:
        return (f"metrics.prdc_k={opts.prdc_k} needs more than k rows per set (using {rows}: "
                f"{n_gen} generated, {n_ref} reference, prdc_max {opts.prdc_max}); lower it")
    return None


def _clip_note(name: str, interval: Interval) -> list[str]:
    return [f"{name}: interval lower bound clipped at 0 (a distance is not negative)"] if interval.clipped else []


def compute_metrics(gen: FeatureStats, ref: RefStats | FeatureStats, metrics: Sequence[str] = ("fd",),
                    options: MetricOptions | None = None,
                    logits_unavailable: str = "the extractor gives no class logits",
                    target: FrechetTarget | None = None) -> dict[str, Any]:
    """Feature metrics of generated stats against the reference -> a flat dict for a results row.

    A metric with too few samples for its options (``too_few``) is None with a note; the others go
    on. ``target``: the reference's FrechetTarget when the caller caches it (one eigh per reference).
    """
    opts = options or MetricOptions()
    names, _ = parse_metrics(metrics)
    rstats = _ref_stats(ref)
    if gen.identity != rstats.identity:
        raise UsageError(f"reference statistics were computed with {rstats.identity}, the samples with "
                         f"{gen.identity}; use the same metrics.extractor / resize_mode or rebuild the reference")
    out: dict[str, Any] = {"feature_extractor": gen.identity.get("extractor"),
                           "resize_mode": gen.identity.get("resize_mode"),
                           "ref_id": ref.id if isinstance(ref, RefStats) else None,
                           "n_gen": gen.n, "n_ref": rstats.n, "ci": opts.interval_method(), "notes": []}
    rows_always = bool({"kid", "prdc"} & set(names))
    gen_rows = rows_always or ("fd" in names and bool(opts.n_boot))
    ref_rows = rows_always or ("fd" in names and bool(opts.n_boot) and opts.ci_includes_reference)
    if (gen_rows and gen.features is None) or (ref_rows and rstats.features is None):
        raise UsageError("kid / prdc / bootstraps over the reference need feature rows; extract with "
                         "keep_features=True (published statistics, dataset=stats, hold only a mean and covariance: "
                         "use metrics.names=[fd])")
    for name in names:
        reason = too_few(name, gen.n, rstats.n, opts)
        if reason:
            out["notes"].append(f"{name}: skipped: {reason}")
        elif name == "is" and gen.logits is None:
            out["notes"].append(f"inception_score: unavailable: {logits_unavailable}")
        else:
            out.update(_METRICS[name](gen, rstats, opts, target, out["notes"]))
    return out


def _fd(gen: FeatureStats, ref: FeatureStats, opts: MetricOptions, target: FrechetTarget | None,
        notes: list[str]) -> dict[str, Any]:
    """FD, and its interval with opts.n_boot."""
    target = target or FrechetTarget.of(ref, opts.device)
    if not opts.n_boot:
        return {"fd": target.distance_to(gen)}
    assert gen.features is not None  # compute_metrics checked needs_rows
    ref_rows = ref.features if opts.ci_includes_reference else None
    iv = fd_interval(gen.features, target, opts.n_boot, opts.ci_level, opts.seed, ref_rows)
    notes += _clip_note("fd", iv)
    return iv.fields("fd")


def _kid(gen: FeatureStats, ref: FeatureStats, opts: MetricOptions, target: FrechetTarget | None,
         notes: list[str]) -> dict[str, Any]:
    """KID with its spread over subsets, and its interval with opts.kid_n_boot."""
    assert ref.features is not None and gen.features is not None  # compute_metrics checked needs_rows
    value, std = kid(ref.features, gen.features, opts.kid_subsets, opts.kid_subset_size, opts.seed, opts.device)
    if not opts.kid_n_boot:
        return {"kid": value, "kid_std": std}
    iv = kid_interval(ref.features, gen.features, opts.kid_n_boot, opts.ci_level, opts.seed, opts.kid_subsets,
                      opts.kid_subset_size, opts.device, opts.ci_includes_reference)
    notes += _clip_note("kid", iv)
    return {"kid": value, "kid_std": std, "kid_low": iv.low, "kid_high": iv.high}


def _is(gen: FeatureStats, ref: FeatureStats, opts: MetricOptions, target: FrechetTarget | None,
        notes: list[str]) -> dict[str, Any]:
    """Inception Score from the generated logits (mean and std over opts.is_splits)."""
    assert gen.logits is not None  # compute_metrics skips is without logits
    value, std = inception_score(gen.logits, opts.is_splits)
    return {"is": value, "is_std": std}


def _prdc(gen: FeatureStats, ref: FeatureStats, opts: MetricOptions, target: FrechetTarget | None,
          notes: list[str]) -> dict[str, Any]:
    """Precision, recall, density, coverage on the first opts.prdc_max rows of each set."""
    assert ref.features is not None and gen.features is not None  # compute_metrics checked needs_rows
    return prdc(ref.features[:opts.prdc_max], gen.features[:opts.prdc_max], opts.prdc_k, device=opts.device)


_METRICS = {"fd": _fd, "kid": _kid, "is": _is, "prdc": _prdc}


def evaluate(images: Iterable[Tensor], ref: RefStats | FeatureStats, extractor: Any,
             metrics: Sequence[str] = ("fd",), options: MetricOptions | None = None, *,
             total: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Stream uint8 sample batches [B, 3, H, W] through `extractor` and compute the feature metrics.

    Returns compute_metrics' dict; ``notes`` starts with the extractor's notes (fallback, unverified
    weights) and ``weights_check`` says whether its weights are verified.
    """
    gen = extract(images, extractor, keep_features=True, total=total, progress=progress)
    out = compute_metrics(gen, ref, metrics, options, extractor.logits_unavailable)
    out["notes"][:0] = extractor.notes
    out["weights_check"] = extractor.weights_check
    return out


def feature_values(out: dict[str, Any], extractor: FeatureExtractor) -> tuple[dict[str, MetricValue], dict[str, Any]]:
    """compute_metrics' dict as labelled metric values plus row columns (extractor, reference id, notes).

    A metric keeps its own name only on Inception features (`fid`, `kid`, ...); on other features
    it carries the extractor's name (`fd_random_conv`), so it is never mistaken for FID.
    """
    suffix = "" if extractor.fid_network else f"_{extractor.name}"
    values: dict[str, MetricValue] = {}
    extra: dict[str, Any] = {}
    for name in ("fd", "kid", "is", "precision", "recall", "density", "coverage"):
        if out.get(name) is not None:
            label = ("fid" if name == "fd" and not suffix else name) + suffix
            values[label] = MetricValue(out[name], out.get(f"{name}_low"), out.get(f"{name}_high"))
            if out.get(f"{name}_std") is not None:
                extra[f"{label}_std"] = out[f"{name}_std"]
    notes = extractor.notes + list(out["notes"])
    extra.update(feature_extractor=out["feature_extractor"], resize_mode=out["resize_mode"], ref_id=out["ref_id"],
                 n_ref=out["n_ref"], weights_check=extractor.weights_check, ci=out["ci"],
                 notes="; ".join(notes) or None)
    return values, extra
