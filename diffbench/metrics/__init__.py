"""Sample-quality metrics: FD/FID (clean-fid parity), KID, IS, precision/recall/density/coverage,
LPIPS and solver error, with bootstrap uncertainty; every weight file resolves offline first.

Public API (the CLI and sweeps use only these)::

    from diffbench.data import make_dataset, to_uint8
    from diffbench.metrics import (make_extractor, load_or_build_reference, evaluate, MetricOptions,
                                   parse_metrics, ErrorStats, LPIPS, paired_fd_difference)

    extractor = make_extractor("auto", resize_mode="clean", device="cuda")  # or "inception_module", "random_conv", ...
    ref = load_or_build_reference(make_dataset(cfg.dataset, model=model, model_config=cfg.model),
                                  extractor, n=2048, cache_dir=cfg.cache_dir, progress=cb)
    # ref.built: computed now (False: cache hit); ref.id names the entry for the results row.
    feature_names, paired_names = parse_metrics(cfg.metrics.names)       # UsageError on unknown names
    row = evaluate((to_uint8(b.x) for b in batches), ref, extractor, feature_names,
                   MetricOptions(n_boot=0, device="cuda"), total=n, progress=cb)
    # row: {"fd", "kid", "kid_std", "is", "is_std", "precision", "recall", "density", "coverage",
    #       "feature_extractor", "resize_mode", "ref_id", "n_gen", "n_ref", "ci" (interval method),
    #       "weights_check" (verified | unverified: ...), "notes": [one-line str]}
    # A metric with too few samples for its options is left out, with a note saying why.
    err = ErrorStats(); err.update(x, x_reference); err.result()          # {"rmse", "psnr", "rmse_max"}
    lp = LPIPS("alex", device); lp.update(to_uint8(x), to_uint8(x_ref)); lp.result()   # {"lpips"}

Pieces, for finer control:

- ``features``: ``FeatureExtractor`` (uint8 [B, 3, H, W] -> ``Features(features, logits)``),
  registry ``register_extractor`` / ``make_extractor`` / ``EXTRACTORS``; extractors ``inception``
  (TF Inception 2015-12-05 TorchScript), ``random_conv`` (offline stand-in, labelled so in rows),
  ``auto``; resize modes ``clean`` and ``legacy_tensorflow`` (clean-fid's).
- ``stats``: ``StreamingStats`` (``update(features, logits)``, ``merge``, ``finalize``) -> ``FeatureStats``;
  ``extract(images, extractor, progress=...)``.
- ``fid``: ``frechet_distance(stats_a, stats_b)``, ``FrechetTarget`` (a reference with cached sqrt).
- ``kid.kid``, ``inception_score.inception_score``, ``prdc.prdc`` on feature / logit arrays.
- ``refs``: ``load_or_build_reference`` -> ``RefStats`` (cache + provenance JSON + corruption check).
- ``clip_score``: ``load_clip(hub id or folder)`` -> ``ClipModel`` (``scores(images, prompts)``: CLIP score per
  sample), extractor ``clip`` (image embeddings); ``dinov2``: extractor ``dinov2`` (FD-DINOv2's features);
  ``cmmd.cmmd(generated, reference)`` on CLIP embeddings.
- ``error``: ``solver_error(samples, reference_samples)`` / ``ErrorStats``; ``lpips``: ``LPIPS``.
- ``uncertainty``: ``bootstrap``, ``fd_interval``, ``kid_interval``, ``paired_fd_difference``,
  ``paired_mean_difference``
  -> ``Interval(estimate, low, high, std)``; method and cost in its docstring.
- ``assets``: ``resolve(asset, explicit_path)`` -> Path or ``AssetMissing`` (diffbench.errors).

Progress: every long call takes ``progress(done, total)``; nothing here prints or draws bars.
Missing weights raise ``AssetMissing`` (a UsageError: one line, exit code 2).

Config fields named in this package's messages (the ``metrics`` group should carry them):
``names``, ``extractor`` (auto | inception | random_conv), ``extractor_weights`` (explicit path),
``resize_mode`` (clean | legacy_tensorflow), ``ref_n``, ``kid_subsets``, ``kid_subset_size``,
``is_splits``, ``prdc_k``, ``prdc_max``, ``n_boot``, ``kid_n_boot``, ``ci_level``, ``ci_includes_reference``,
``lpips_net``, ``lpips_weights`` (all in diffbench/schema.py Metrics; MetricOptions mirrors them).
Environment: DIFFBENCH_CACHE (cache root), DIFFBENCH_ALLOW_DOWNLOAD=1 (opt-in downloads).
"""
from diffbench.metrics.clip_score import ClipModel, load_clip
from diffbench.metrics.cmmd import cmmd
from diffbench.metrics.dinov2 import Dinov2Extractor
from diffbench.metrics.error import ErrorStats, solver_error
from diffbench.metrics.evaluate import (
                                        FEATURE_METRICS,
                                        PAIRED_METRICS,
                                        MetricOptions,
                                        compute_metrics,
                                        evaluate,
                                        parse_metrics,
)
from diffbench.metrics.features import EXTRACTORS, FeatureExtractor, Features, make_extractor, register_extractor
from diffbench.metrics.fid import FrechetTarget, frechet_distance
from diffbench.metrics.inception_score import inception_score
from diffbench.metrics.kid import kid
from diffbench.metrics.lpips import LPIPS
from diffbench.metrics.prdc import prdc
from diffbench.metrics.refs import RefStats, load_or_build_reference
from diffbench.metrics.stats import FeatureStats, Progress, StreamingStats, extract
from diffbench.metrics.uncertainty import (
                                        Interval,
                                        bootstrap,
                                        fd_interval,
                                        kid_interval,
                                        paired_fd_difference,
                                        paired_mean_difference,
)

__all__ = [
    "ClipModel", "Dinov2Extractor", "cmmd", "load_clip",
    "EXTRACTORS", "FEATURE_METRICS", "PAIRED_METRICS", "LPIPS", "ErrorStats", "FeatureExtractor", "FeatureStats",
    "Features", "FrechetTarget", "Interval", "MetricOptions", "Progress", "RefStats", "StreamingStats",
    "bootstrap", "compute_metrics", "evaluate", "extract", "fd_interval", "frechet_distance", "inception_score",
    "kid", "kid_interval", "load_or_build_reference", "make_extractor", "paired_fd_difference",
    "paired_mean_difference", "parse_metrics", "prdc", "register_extractor", "solver_error",
]
