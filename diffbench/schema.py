"""The typed schema of a run's config: top-level run fields, metrics, sweep and dataset kinds.

Each dataclass is the one source of its group's defaults (no YAML restates them): Hydra composes them
from the ConfigStore, and OmegaConf rejects a value of the wrong type or a field that does not exist.
Solvers, step grids, conditions and guidance get their typed nodes from their registered functions'
signatures (config.typed_nodes); YAML files remain for presets (e.g. `dataset=mnist`, a `npz` dataset)
and inherit from these nodes through their defaults lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

CACHE_DIR = "${oc.env:DIFFBENCH_CACHE,${oc.env:HOME,.}/.cache/diffbench}"


@dataclass
class Run:
    """Top-level fields of one run point; the groups' nodes come from their own schemas (config.yaml's defaults)."""

    model: Any = MISSING
    solver: Any = MISSING
    steps: Any = MISSING
    dataset: Any = MISSING
    metrics: Any = MISSING
    conditions: Any = MISSING
    guidance: Any = MISSING
    sweep: Any = MISSING
    nfe: int = 10  # NFE budget (network evaluations per sample); sweeps take it from sweep.params
    seed: int = 0  # noise stream: sample i's noise is a pure function of (seed, i)
    n_samples: int = 1024  # samples per point: indices 0 .. n_samples-1
    # Samples per batch (results do not depend on it); a batch that runs out of memory is retried at half the
    # size (row: batch_size_used, oom_halvings). auto: on CUDA start at min(n_samples, 4096) and halve as
    # needed; on a CPU 256.
    batch_size: Any = 256
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    dtype: str = "float64"  # precision of the solver state (the model runs in its own: model.dtype)
    tf32: bool = True  # TF32 tensor cores on GPUs for the network and float32 feature extractors (FID within its CI)
    out: str = "runs/default"  # results table, samples, plots and report go here
    cache_dir: str = CACHE_DIR  # reference solutions and statistics


@dataclass
class ReferenceSolution:
    """The same-noise reference solution the error metrics compare against, cached per model/seed/samples/span."""

    solver: str = "rk45"
    rtol: float = 1.0e-5
    atol: float = 1.0e-5


@dataclass
class ClipScore:
    """CLIP score (Hessel et al. 2021): 100 * max(cos(image, prompt), 0), the mean over samples."""

    model: str = "openai/clip-vit-large-patch14"  # hub id (Hugging Face cache; DIFFBENCH_ALLOW_DOWNLOAD=1) or folder


@dataclass
class FdDinov2:
    """Frechet distance on DINOv2 ViT-L/14 CLS features at 224 px (dgm-eval / EDM2)."""

    model: str = "facebook/dinov2-large"
    resize_mode: str = "torch_bicubic"  # torch_bicubic (EDM2's default, fast) | pil_uint8 (dgm-eval's exact path)


@dataclass
class Cmmd:
    """CMMD (Jayasumana et al. 2024): MMD of CLIP image embeddings, RBF sigma 10, x1000."""

    model: str = "openai/clip-vit-large-patch14-336"


@dataclass
class Metrics:
    """Metrics of every point (`metrics=default`; presets such as error_only inherit and change `names`)."""

    # fd (alias fid), kid, is, prdc (precision/recall/density/coverage), solver_error (RMSE vs the same-noise
    # reference solution), lpips (vs that reference), exact (analytic models' exact distribution metrics: w2_gauss,
    # w2_exact, mode_tv, hallucination, w2_ode; metrics/exact.py); for text-to-image also clip_score (needs a prompt
    # set), fd_dinov2 and cmmd, each with its options in the node of its name. Feature metrics are named after
    # their extractor unless it is Inception: `fid` is FID proper, `fd_random_conv` a Frechet distance on the
    # offline random-conv features.
    names: list[str] = field(default_factory=lambda: ["fd", "solver_error"])
    # inception | inception_module | inception_compiled | random_conv | auto (inception when its weights resolve);
    # inception_module: the same network as an nn.Module (fast float16 / channels-last), _compiled: torch.compile
    extractor: str = "auto"
    inception_on_cpu: bool = False  # auto on a CPU picks random_conv: Inception costs ~0.2 s per image there
    extractor_weights: str | None = None  # explicit path to the Inception TorchScript file
    extractor_dtype: str = "float32"  # float32 | float16 | bfloat16 (in rows and dataset-statistics keys)
    extractor_channels_last: bool = False  # Inception in NHWC layout (faster with float16 on tensor cores)
    resize_mode: str = "clean"  # clean | legacy_tensorflow (clean-fid's modes)
    ref_n: int | None = None  # dataset images for the statistics (null: the whole dataset)
    # Bootstrap replicates for the FD interval (0: none; ~0.1 s each on a CPU). The width varies run to run by
    # ~1/sqrt(2 n_boot): ~17% at 20, 5% at 200 (measured, metrics/uncertainty.py).
    n_boot: int = 20
    kid_n_boot: int = 0  # bootstrap replicates for the KID interval (0: none; each costs a full KID)
    error_n_boot: int = 200  # bootstrap replicates for the solver-error and exact-metric intervals (cheap)
    ci_level: float = 0.95
    ci_includes_reference: bool = False  # true: bootstraps resample the dataset side too (its noise in the interval)
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # KID is skipped with a note when this exceeds the generated or dataset count
    is_splits: int = 10  # Inception Score splits (skipped with a note when more than the samples)
    prdc_k: int = 5  # precision/recall/density/coverage k-NN; skipped with a note when >= rows
    prdc_max: int = 10000  # rows per set used by prdc (the first ones): its cost is O(n^2)
    lpips_net: str = "alex"  # alex | vgg | squeeze
    lpips_weights: str | None = None  # explicit path to the LPIPS backbone weights
    error_samples: int | None = 256  # samples compared with the reference solution (the first indices)
    reference: ReferenceSolution = field(default_factory=ReferenceSolution)
    classifier: str | None = None  # class_accuracy's classifier file (null: the shipped mnist-classifier.pt)
    class_labels: str = "labels"  # fd_per_class: the npz dataset's array of image labels (metrics/per_class.py)
    # Text-to-image metrics: their nodes count in the config hash only while the metric is in names.
    clip_score: ClipScore = field(default_factory=ClipScore)
    fd_dinov2: FdDinov2 = field(default_factory=FdDinov2)
    cmmd: Cmmd = field(default_factory=Cmmd)


def _default_axes() -> dict[str, Any]:
    return {"solver": "euler,heun,dpmpp_2m,unipc_bh2,ipndm", "nfe": "4,6,8,12,16", "steps": "karras", "seed": 0}


@dataclass
class Sweep:
    """The grid `diffbench sweep` runs: every combination of the axes in `params`.

    Values in Hydra override syntax, as hydra.sweeper.params: "a,b", "range(4,20,4)", "glob(dpm*)", or a list.
    A command-line override of the same key replaces its axis:  diffbench sweep nfe=5,10,20
    """

    params: dict[str, Any] = field(default_factory=_default_axes)
    # NFE budgets a solver cannot meet exactly (e.g. heun with final_zero needs odd NFE):
    # exact: fail before running; nearest_below: use the largest valid NFE <= the budget.
    nfe_policy: str = "nearest_below"
    max_local_jobs: int | None = None  # hydra/launcher=local: at most this many jobs at once (null: the cores)
    # What nfe budgets count: calls (denoiser calls a solver makes) or network (forward passes per sample: a
    # guided call costs two, so a network budget B gives a guided point B // 2 calls; rows record both).
    nfe_counts: str = "calls"


@dataclass
class ModelSamples:
    """Dataset drawn from the analytic model itself (no download): exact samples of the target."""

    kind: str = "model_samples"
    n: int = 4096
    seed: int = 12345


@dataclass
class Npz:
    """uint8 images [N, H, W, C] or [N, C, H, W] in a .npz (array `key`, default the first) or .npy file."""

    kind: str = "npz"
    path: str = MISSING  # a path, or a name under diffbench/assets/ (found from any working directory)
    key: str | None = None
    split: str = "train"


@dataclass
class Folder:
    """Every image under a folder (recursive, sorted, one size), e.g. an extracted CIFAR-10 train set."""

    kind: str = "folder"
    path: str = MISSING
    split: str = "train"


@dataclass
class Stats:
    """Published dataset statistics used as given: a .npz with `mu`/`sigma` (EDM, pytorch-fid) or rows (`pool_3`)."""

    kind: str = "stats"
    path: str = MISSING  # a path, or a file name under diffbench/assets/ or the cache's weights/
    extractor: str = "inception"  # the network the statistics were computed with (must be metrics.extractor)
    resize_mode: str = "legacy_tensorflow"  # its resize to the network input (must be metrics.resize_mode)
    n: int | None = None  # the number of dataset images, when the file does not say (recorded as n_ref)
    split: str = "train"


# (group, option) -> schema node; group None is the primary config's base (config.yaml lists it first).
NODES: dict[tuple[str | None, str], type] = {
    (None, "run"): Run, ("metrics", "default"): Metrics, ("sweep", "default"): Sweep,
    ("dataset", "model_samples"): ModelSamples, ("dataset", "npz"): Npz, ("dataset", "folder"): Folder,
    ("dataset", "stats"): Stats,
}
