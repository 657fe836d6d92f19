"""diffusers UNet2DModel checkpoints (DDPM / DDIM pipelines) as denoisers on their discrete VP schedule.

model.path is a local folder or a Hugging Face hub id (owner/name):

- a pipeline folder (``DDPMPipeline``/``DDIMPipeline.save_pretrained``): ``unet/`` with the
  UNet2DModel and ``scheduler/scheduler_config.json``;
- a UNet2DModel folder (``config.json`` + weights), with ``scheduler_config.json`` beside it or
  without one (diffusers' DDPM defaults: 1000 linear betas from 1e-4 to 0.02, epsilon prediction);
- a hub id, taken from the local Hugging Face cache; downloaded only with DIFFBENCH_ALLOW_DOWNLOAD=1.

The scheduler config's betas (``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2, or
``trained_betas``) become ``VPDiscrete`` with t = the timestep index, so the UNet is called at the
timesteps it was trained on; ``prediction_type`` epsilon / sample / v_prediction selects the
conversion to D(x, sigma). Sampler settings in the config (timestep spacing, clipping) are not the
model's and are ignored: diffbench's solvers and step schedules replace them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbench.errors import AssetMissing, UsageError, check
from diffbench.models._network import TorchNet, first_line, parse_dtype
from diffbench.models.base import PredictionDenoiser
from diffbench.models.registry import register_model
from diffbench.schedules import VPDiscrete, make_betas

PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
DDPM_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                 "prediction_type": "epsilon"}
HUB_FILES = ("*.json", "*.safetensors", "*.bin")
EXPECTED = "a UNet2DModel folder or a DDPM/DDIM pipeline folder (save_pretrained), or a hub id owner/name"


class DiffusersDenoiser(PredictionDenoiser):
    """A diffusers UNet2DModel as D(x, sigma), with its sample shape."""

    def __init__(self, net: TorchNet, schedule: VPDiscrete, prediction: str, shape: tuple[int, ...], source: str):
        super().__init__(net, schedule, prediction)  # type: ignore[arg-type]
        self.shape, self.source, self.net_dtype = shape, source, net.dtype

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model_kind": "diffusers", "model_path": self.source,
                "net_dtype": str(self.net_dtype).removeprefix("torch.")}


class UNetPrediction(nn.Module):
    """UNet2DModel(x_t, t) -> its prediction tensor (dropping the variance channels of learned-variance models)."""

    def __init__(self, unet: nn.Module, channels: int):
        super().__init__()
        self.unet, self.channels = unet, channels

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.unet(x_t, t, return_dict=False)[0][:, :self.channels]


def local_folder(path: str, revision: str | None = None, patterns: Sequence[str] = HUB_FILES,
                 expected: str = EXPECTED) -> Path:
    """The folder model.path names: a local directory, else the hub id's snapshot (cache, then opt-in download)."""
    check(bool(path), f"model.path is empty; set it to {expected}")
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or path.count("/") != 1 or path.startswith((".", "/", "~")):
        raise AssetMissing(f"model.path={path} is not a directory; expected {expected}")
    from huggingface_hub import snapshot_download

    from diffbench.assetstore import ALLOW_DOWNLOAD_ENV, download_allowed

    try:
        return Path(snapshot_download(path, revision=revision, allow_patterns=list(patterns), local_files_only=True))
    except FileNotFoundError:  # LocalEntryNotFoundError: not in the Hugging Face cache
        pass
    if not download_allowed():
        raise AssetMissing(f"model.path={path}: no such folder and not in the Hugging Face cache; set "
                           f"{ALLOW_DOWNLOAD_ENV}=1 to download it from the hub, or set model.path to a local "
                           "save_pretrained folder")
    try:
        return Path(snapshot_download(path, revision=revision, allow_patterns=list(patterns)))
    except Exception as e:  # network, auth and not-found errors of huggingface_hub share no base class
        raise AssetMissing(f"model.path={path}: download from the Hugging Face hub failed ({first_line(e)})") from None


def layout(root: Path) -> tuple[Path, Path | None]:
    """(UNet folder, scheduler config file or None) of a pipeline folder or a bare UNet folder."""
    if (root / "unet" / "config.json").is_file():
        unet = root / "unet"
    elif (root / "config.json").is_file():
        unet = root
    else:
        raise AssetMissing(f"model.path={root} has neither unet/config.json nor config.json; expected {EXPECTED}")
    for config in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if config.is_file():
            return unet, config
    return unet, None


def read_json(file: Path) -> dict[str, Any]:
    """A JSON config file as a dict; UsageError naming the file if it is malformed."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{file}: malformed JSON config ({first_line(e)})") from None
    check(isinstance(data, dict), f"{file}: expected a JSON object")
    return data


def scheduler_betas(config: Mapping[str, Any], where: str) -> Tensor:
    """The float64 betas a diffusers scheduler config describes (trained_betas or a named schedule)."""
    check(not config.get("rescale_betas_zero_snr", False),
          f"{where}: rescale_betas_zero_snr gives infinite noise at the last timestep; not supported")
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float64)
    kind = config["beta_schedule"]
    check(kind in BETA_SCHEDULES, f"{where}: beta_schedule '{kind}' is not supported; use one of: "
          f"{', '.join(BETA_SCHEDULES)} or trained_betas")
    return make_betas(BETA_SCHEDULES[kind], int(config["num_train_timesteps"]), float(config["beta_start"]),
                      float(config["beta_end"]))


def load_unet(folder: Path) -> nn.Module:
    """UNet2DModel.from_pretrained on a folder; UsageError for other classes or unreadable weights."""
    from diffusers import UNet2DModel

    config = read_json(folder / "config.json")
    name = config.get("_class_name", "UNet2DModel")
    check(name == "UNet2DModel", f"{folder}: holds a {name}; only unconditional UNet2DModel checkpoints are supported")
    check(config.get("time_embedding_type", "positional") != "fourier",
          f"{folder}: a Fourier-embedding (score-SDE VE) UNet2DModel; only DDPM-family (VP) checkpoints are supported")
    check(config.get("num_class_embeds") is None and config.get("class_embed_type") is None,
          f"{folder}: a class-conditional UNet2DModel; only unconditional checkpoints are supported")
    try:
        return UNet2DModel.from_pretrained(folder).eval().requires_grad_(False)
    except (OSError, ValueError, RuntimeError) as e:
        raise UsageError(f"{folder}: cannot load UNet2DModel weights ({first_line(e)}); expected {EXPECTED}") from None


@register_model("diffusers")
def diffusers_unet(path: str = "", scheduler: Mapping[str, Any] | None = None, dtype: str = "float32",
                   revision: str | None = None, channels_last: bool = False,
                   compile: bool | str = False) -> DiffusersDenoiser:
    """A diffusers UNet2DModel (pipeline folder, UNet folder or hub id) on its discrete VP schedule.

    Args:
        path: a local pipeline or UNet2DModel folder, or a hub id (owner/name).
        scheduler: scheduler-config keys overriding the folder's (e.g. {prediction_type: v_prediction}).
        dtype: the precision the UNet runs in (float32, float16, bfloat16).
        revision: the hub revision (branch, tag or commit) for hub ids.
        channels_last: run the network in channels-last memory format (often faster on GPUs).
        compile: torch.compile the network: false, true or a mode (reduce-overhead uses CUDA graphs).
    """
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise UsageError("model kind 'diffusers' needs the diffusers package: pip install 'diffbench[hub]'") from None
    unet_dir, scheduler_file = layout(local_folder(path, revision))
    config = {**DDPM_DEFAULTS, **(read_json(scheduler_file) if scheduler_file else {}), **dict(scheduler or {})}
    where = str(scheduler_file or unet_dir)
    prediction = config["prediction_type"]
    check(prediction in PREDICTIONS, f"{where}: prediction_type '{prediction}' is not supported; use one of: "
          f"{', '.join(PREDICTIONS)}")
    unet: Any = load_unet(unet_dir)  # a diffusers UNet2DModel: its .config is untyped
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    channels = int(unet.config.in_channels)
    net = TorchNet(UNetPrediction(unet, channels), parse_dtype(dtype), channels_last, compile)
    return DiffusersDenoiser(net, VPDiscrete(scheduler_betas(config, where)), PREDICTIONS[prediction],
                             (channels, int(height), int(width)), path)
