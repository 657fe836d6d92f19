"""The results table's columns: one `ResultRow` schema and the column names everything else imports.

A row holds the fixed columns of `ResultRow`, then the point's flattened config (`solver.name`,
`seed`, ...), the package versions (`version.<package>`) and its metric columns (`<metric>`,
`<metric>_lo`, `<metric>_hi`, listed in `metric_names`). Plots, reports, checks and the CLI name
columns through the constants below, never through string literals.

NFE vocabulary: `nfe_budget` is what the config asked for, `nfe_declared` what the solver's NFE
rule gives for the step grid it runs (the budget, or the largest valid NFE below it under
`sweep.nfe_policy=nearest_below`; none for adaptive solvers), `nfe_measured` the denoiser calls
counted while sampling, per sample (a mean over the samples for adaptive solvers, whose samples
each take their own steps), and `nfe_network` the network forward passes per sample (guidance
evaluates a guided call twice; `nfe_counts` says which of the two the budget bounds). \
The config field `nfe` is recorded as run: the declared NFE (the budget for
adaptive solvers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Config fields read by name (flattened config columns).
MODEL_KIND = "model.kind"
MODEL_CHOICE = "choices.model"
SOLVER = "solver.name"
STEPS = "steps.name"
GUIDANCE = "guidance.name"
GUIDANCE_SCALE = "guidance.scale"
RENAMED_GROUP = "schedule"  # the step-grid group's old name: old overrides get a one-line error, old tables are read
NFE = "nfe"
SEED = "seed"
N_SAMPLES = "n_samples"

# Fixed columns (fields of ResultRow).
CONFIG_HASH = "config_hash"
POINT_HASH = "point_hash"
STATUS = "status"
REASON = "reason"
NFE_BUDGET = "nfe_budget"
NFE_DECLARED = "nfe_declared"
NFE_MEASURED = "nfe_measured"
NFE_NETWORK = "nfe_network"
N_STEPS = "n_steps"
TIME_SAMPLING = "time_sampling_s"
TIME_METRICS = "time_metrics_s"
TIME_DECODE = "time_decode_s"
TIME_TEXT_ENCODER = "time_text_encoder_s"
TIME_TOTAL = "time_total_s"
SAMPLES_PATH = "samples_path"
METRIC_NAMES = "metric_names"
COMMAND = "command"
GIT_SHA = "git_sha"
DEVICE_NAME = "device_name"
VERSION_PREFIX = "version."

# Text-to-image metric columns (diffbench.metrics.suite).
CLIP_SCORE = "clip_score"  # mean over samples of 100 * max(cos(CLIP image, CLIP prompt), 0)
FD_DINOV2 = "fd_dinov2"  # Frechet distance on DINOv2 ViT-L/14 features at 224 px
CMMD = "cmmd"  # MMD of CLIP image embeddings (RBF, sigma 10) x 1000

OK = "ok"  # the STATUS of a point that ran; "failed" otherwise, with its REASON
FAILED = "failed"


@dataclass(frozen=True)
class MetricValue:
    """A metric with its confidence interval (lo = hi = None when none was computed)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    def columns(self, name: str) -> dict[str, float | None]:
        """The metric's columns: its value, `<name>_lo` and `<name>_hi`."""
        return {name: self.value, f"{name}_lo": self.lo, f"{name}_hi": self.hi}


def _col(meaning: str) -> Any:
    """A ResultRow column: None until the point sets it; `meaning` is its one-line documentation."""
    return field(default=None, metadata={"meaning": meaning})


@dataclass
class ResultRow:
    """Every fixed column of a results row, with its type and meaning (config and metric columns follow)."""

    config_hash: str = _col("hash of the point's config as run: the resume key, stored once")
    point_hash: str = _col("hash of the config without the seed: matches a point across seed ranges (check)")
    status: str = _col("'ok', or 'failed' with a reason")
    reason: str | None = _col("why the point failed (one line); None when ok")
    nfe_policy: str = _col("sweep.nfe_policy: exact, or nearest_below (the largest valid NFE under the budget)")
    nfe_budget: int = _col("NFE the config asked for")
    nfe_declared: int | None = _col("NFE the solver's rule gives for the step grid it runs; None when adaptive")
    nfe_measured: int | None = _col("denoiser calls counted per sample while sampling")
    nfe_network: float | None = _col("network forward passes per sample: 2 per guided call, 1 unguided (autoguidance: "
                                     "the guide's pass counts)")
    nfe_counts: str = _col("what nfe_budget bounds: calls (denoiser calls) or network (forward passes per sample)")
    condition_set: str | None = _col("the per-sample labels' set (conditions group), None when unconditional")
    condition_hash: str | None = _col("SHA-256 (16 hex) of the labels of samples 0 .. n_samples-1")
    n_steps: int | None = _col("steps of the grid the solver ran")
    sigma_max_used: float | None = _col("highest noise level of the grid")
    sigma_min_used: float | None = _col("lowest nonzero noise level of the grid")
    solver_order: int = _col("the solver's registered convergence order")
    solver_stochastic: bool = _col("whether the solver draws noise with these options")
    timestamp: str = _col("UTC time the row was assembled")
    device_name: str = _col("the device that ran the point (GPU name, or CPU model and threads)")
    git_sha: str = _col("diffbench's commit, '+dirty' with uncommitted changes")
    command: str = _col("the command line that ran the point")
    world_size: int = _col("processes that sampled the point (torchrun)")
    time_sampling_s: float | None = _col("seconds spent sampling (the slowest rank's)")
    time_metrics_s: float | None = _col("seconds spent computing metrics")
    time_decode_s: float | None = _col("seconds spent decoding samples to images (latent models' VAE; ~0 for pixel "
                                       "models), the slowest rank's")
    time_resize_s: float | None = _col("seconds converting samples to uint8 and resizing them to the feature "
                                       "extractor's input (CUDA: GPU time of those kernels on the metric stream, "
                                       "overlapping the sampling); inside time_metrics_s")
    time_features_s: float | None = _col("seconds of the feature extractor's forward passes (as time_resize_s)")
    time_statistics_s: float | None = _col("seconds accumulating feature statistics and computing the metric values "
                                           "with their intervals (bootstrap, KID subsets)")
    time_writing_s: float | None = _col("seconds writing the point's sample grid (its row's own append to the table "
                                        "follows the row)")
    time_text_encoder_s: float | None = _col("seconds the text encoder(s) took on the prompt set when it was encoded "
                                             "(kept with the cached embeddings); None without prompts")
    time_per_nfe_s: float | None = _col("time_sampling_s / nfe_measured")
    time_warmup_s: float | None = _col("seconds of this point's first calls of compiled graphs at new shapes (model "
                                       "and extractor under torch.compile; inside the sampling/metrics times; 0 "
                                       "when earlier points of the sweep compiled them)")
    time_total_s: float | None = _col("seconds for the whole point, reference solutions and metrics included")
    samples_path: str | None = _col("the first samples (.npz, relative to the table) for the sample grid")
    batch_size_used: int | None = _col("batch size the point ended with (after out-of-memory halvings)")
    oom_halvings: int | None = _col("how often a batch ran out of memory and was halved")
    peak_memory_mb: float | None = _col("peak memory in MiB, of the kind in peak_memory_kind")
    peak_memory_kind: str | None = _col("cuda_allocated (this point) or process_rss_peak (process lifetime)")
    n_error_samples: int | None = _col("samples compared with their reference solution (rmse_ref)")
    feature_extractor: str | None = _col("identity of the feature extractor of the feature metrics")
    resize_mode: str | None = _col("how images are resized for the extractor")
    ref_id: str | None = _col("id of the dataset statistics the feature metrics compare against")
    n_ref: int | None = _col("images in those dataset statistics")
    notes: str | None = _col("caveats of the feature metrics (fallbacks, missing logits)")
    clip_model: str | None = _col("JSON identity of clip_score's CLIP model (hub id or folder, weights SHA-1)")
    fd_dinov2_ref_id: str | None = _col("id of the dataset's DINOv2 statistics that fd_dinov2 compares against")
    cmmd_ref_id: str | None = _col("id of the dataset's CLIP embeddings that cmmd compares against")
    metric_names: str | None = _col("JSON list of the row's metric columns")

    def update(self, **columns: Any) -> ResultRow:
        """Set fixed columns by name (an unknown name is a TypeError: columns live in this schema)."""
        unknown = set(columns) - FIXED
        if unknown:
            raise TypeError(f"not ResultRow columns: {', '.join(sorted(unknown))}")
        for name, value in columns.items():
            setattr(self, name, value)
        return self

    def columns(self) -> dict[str, Any]:
        """The fixed columns as a dict, in schema order."""
        return asdict(self)


FIXED = frozenset(f.name for f in fields(ResultRow))


def meanings() -> dict[str, str]:
    """Column name -> one-line meaning, for every fixed column."""
    return {f.name: f.metadata["meaning"] for f in fields(ResultRow)}
