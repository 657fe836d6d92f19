"""Model adapters: diffusers UNet2DModel (vs diffusers' own DDIM / DPM-Solver++ loops), EDM and flow networks.

diffusers models are tiny randomly initialised UNet2DModels saved by the tests themselves; EDM and flow
networks are TorchScript modules whose outputs make the denoiser exact for Gaussian data, so the
adapters' conversions are checked against the closed form.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from diffbench.errors import AssetMissing, UsageError
from diffbench.models import make_model
from diffbench.models.analytic import gaussian
from diffbench.models.unet import UNet, save_checkpoint
from diffbench.noise import NoiseSource
from diffbench.sampling import make_plan, sample_batch
from diffbench.solvers import SOLVERS

try:
    import diffusers
except ImportError:  # the adapter's optional dependency (diffbench[hub])
    diffusers = None
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="needs diffusers (pip install 'diffbench[hub]')")

CONFIGS = Path(__file__).resolve().parent.parent / "diffbench" / "configs" / "model"
SEED, N = 7, 3


# diffusers ---------------------------------------------------------------------------------------

def tiny_unet(out_channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 attention_head_dim=8)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    """DDPM pipeline folders (save_pretrained) of one tiny UNet, one per prediction type."""
    root, unet = tmp_path_factory.mktemp("pipelines"), tiny_unet()
    folders = {}
    for prediction in ("epsilon", "sample", "v_prediction"):
        scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / prediction)
        folders[prediction] = root / prediction
    return folders


def initial_noise(model, first_timestep: Tensor) -> Tensor:
    """diffbench's x_T for samples 0..N-1 moved to VP coordinates (x_vp = alpha x_edm): diffusers' latents."""
    sigma_max = float(model.schedule.t_to_sigma(first_timestep.double()))
    alpha = float(model.schedule.alpha_of_sigma(sigma_max))
    x_edm = NoiseSource(SEED, range(N)).randn(model.shape) * model.schedule.prior_std(sigma_max)
    return x_edm * alpha


def diffusers_loop(scheduler, folder: Path, latents: Tensor) -> Tensor:
    """diffusers' own sampling loop with its UNet, from the given latents."""
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    x = latents.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


def diffbench_run(model, solver: str, timesteps: Tensor) -> Tensor:
    """diffbench's solver on the explicit grid of the scheduler's timesteps, ending at sigma = 0."""
    sigmas = model.schedule.t_to_sigma(timesteps.double()).tolist() + [0.0]
    plan = make_plan(solver, len(timesteps), model.schedule, step_grid="explicit", step_options={"sigmas": sigmas})
    return sample_batch(model, plan, range(N), SEED, model.shape).x


def relative_error(ours: Tensor, theirs: Tensor) -> float:
    """Max abs difference, relative to the samples' scale when it exceeds 1 (a random UNet's eps-model samples
    reach ~100, where float32 rounding alone is ~1e-5 absolute)."""
    return float((ours.float() - theirs).abs().max() / theirs.abs().max().clamp(min=1.0))


@needs_diffusers
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_ddim_matches_diffusers(pipelines, prediction):
    folder = pipelines[prediction]
    model = make_model("diffusers", {"path": str(folder)})
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder / "scheduler", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(8)
    ours = diffbench_run(model, "ddim", scheduler.timesteps)
    theirs = diffusers_loop(scheduler, folder, initial_noise(model, scheduler.timesteps[0]))
    assert theirs.abs().max() > 0.1
    assert relative_error(ours, theirs) < 1e-4


@needs_diffusers
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dpmpp_2m_matches_diffusers(pipelines, prediction):
    if "dpmpp_2m" not in SOLVERS:
        pytest.skip("solver dpmpp_2m is not registered (diffbench/solvers/dpm_solver_pp.py)")
    folder = pipelines[prediction]
    model = make_model("diffusers", {"path": str(folder)})
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(
        folder / "scheduler", algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")
    scheduler.set_timesteps(10)
    ours = diffbench_run(model, "dpmpp_2m", scheduler.timesteps)
    theirs = diffusers_loop(scheduler, folder, initial_noise(model, scheduler.timesteps[0]))
    assert relative_error(ours, theirs) < 1e-4


@needs_diffusers
def test_dpmpp_3m_diffusers_matches_diffusers_third_order(pipelines):
    """dpmpp_3m_diffusers equals diffusers' solver_order=3 at both defaults (half D'' weight, lowering below 15)."""
    folder = pipelines["epsilon"]
    model = make_model("diffusers", {"path": str(folder)})
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(
        folder / "scheduler", algorithm_type="dpmsolver++", solver_order=3, final_sigmas_type="zero")
    scheduler.set_timesteps(10)
    theirs = diffusers_loop(scheduler, folder, initial_noise(model, scheduler.timesteps[0]))
    assert relative_error(diffbench_run(model, "dpmpp_3m_diffusers", scheduler.timesteps), theirs) < 1e-4
    assert relative_error(diffbench_run(model, "dpmpp_3m_taylor", scheduler.timesteps), theirs) > 1e-3  # exact weight


@needs_diffusers
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_schedule_matches_scheduler(tmp_path, beta_schedule):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                        beta_start=0.00085, beta_end=0.012)
    diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(tmp_path)
    model = make_model("diffusers", {"path": str(tmp_path)})
    t = torch.arange(1000, dtype=torch.float64)
    alphas_cumprod = model.schedule.alpha(t) ** 2
    assert torch.allclose(alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    # t = timestep index: the noise level of index k maps back to k.
    assert torch.allclose(model.schedule.sigma_to_t(model.schedule.t_to_sigma(t)), t, atol=1e-6)


@needs_diffusers
def test_bare_unet_folder_uses_ddpm_defaults_and_learned_variance(tmp_path):
    tiny_unet(out_channels=6).save_pretrained(tmp_path)  # eps + variance channels, no scheduler config
    model = make_model("diffusers", {"path": str(tmp_path), "scheduler": {"prediction_type": "epsilon"}})
    assert model.shape == (3, 8, 8) and model.prediction == "eps"
    betas = model.schedule.betas
    assert float(betas[0]) == pytest.approx(1e-4) and float(betas[-1]) == pytest.approx(0.02)
    assert model(torch.randn(2, 3, 8, 8), 1.0).shape == (2, 3, 8, 8)


@needs_diffusers
def test_hub_id_offline_is_one_line_asset_missing(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty Hugging Face cache
    monkeypatch.delenv("DIFFBENCH_ALLOW_DOWNLOAD", raising=False)
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "ddpm-cifar10-32.yaml"))
    with pytest.raises(AssetMissing) as err:
        make_model(config.pop("kind"), config)
    message = str(err.value)
    assert "\n" not in message and "google/ddpm-cifar10-32" in message and "DIFFBENCH_ALLOW_DOWNLOAD=1" in message


@needs_diffusers
def test_malformed_diffusers_folders(tmp_path):
    with pytest.raises(AssetMissing, match="neither unet/config.json nor config.json"):
        make_model("diffusers", {"path": str(tmp_path)})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="malformed JSON"):
        make_model("diffusers", {"path": str(tmp_path)})
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(UsageError, match="only unconditional UNet2DModel"):
        make_model("diffusers", {"path": str(tmp_path)})
    tiny_unet().save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UsageError, match="cannot load UNet2DModel weights") as err:
        make_model("diffusers", {"path": str(tmp_path)})
    assert "\n" not in str(err.value)
    tiny_unet().save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="prediction_type 'flow'"):
        make_model("diffusers", {"path": str(tmp_path), "scheduler": {"prediction_type": "flow"}})


# EDM and flow networks ---------------------------------------------------------------------------

STD = 0.7  # data ~ N(0, STD^2 I); D(x, sigma) = STD^2 / (STD^2 + sigma^2) x


class GaussianEDMNet(nn.Module):
    """The raw F that makes EDM's preconditioned D exact for N(0, STD^2) data (sigma_data = 0.5)."""

    def __init__(self):
        super().__init__()
        self.var = STD**2

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        sigma = torch.exp(4 * c_noise).reshape(-1, 1, 1, 1)
        total = sigma**2 + 0.25
        x = x_in * total.sqrt()
        exact = self.var / (self.var + sigma**2) * x
        return (exact - 0.25 / total * x) / (sigma * 0.5 / total.sqrt())


class GaussianVelocity(nn.Module):
    """E[eps - x0 | x_t] on x_t = (1 - t) x0 + t eps; with reverse, the noise-at-0 convention at time 1000 s."""

    def __init__(self, reverse: bool):
        super().__init__()
        self.reverse, self.var = reverse, STD**2

    def forward(self, x_t: Tensor, time: Tensor) -> Tensor:
        t = (1 - time / 1000 if self.reverse else time).reshape(-1, 1)
        v = (t - (1 - t) * self.var) / ((1 - t) ** 2 * self.var + t**2) * x_t
        return -v if self.reverse else v


def save_script(module: nn.Module, path: Path) -> str:
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def test_edm_torchscript_is_exact_on_gaussian(tmp_path):
    model = make_model("edm", {"path": save_script(GaussianEDMNet(), tmp_path / "f.pt"), "shape": [1, 4, 4]})
    exact = gaussian(shape=(1, 4, 4), std=STD)
    x = torch.randn(5, 1, 4, 4) * 3
    for sigma in (0.002, 0.3, 2.0, 80.0):
        assert torch.allclose(model(x, sigma), exact(x.double(), sigma).float(), rtol=1e-4, atol=1e-5)
    assert model.schedule.sigma_min == pytest.approx(0.002) and model.schedule.sigma_max == pytest.approx(80.0)


def test_torchscript_extra_file_supplies_shape_and_precond(tmp_path):
    fields = {"shape": [1, 4, 4], "precond": {"kind": "edm", "sigma_data": 0.5, "sigma_max": 40.0}}
    torch.jit.save(torch.jit.script(GaussianEDMNet()), str(tmp_path / "f.pt"),
                   _extra_files={"diffbench.json": json.dumps(fields)})  # what scripts/export_edm.py writes
    model = make_model("edm", {"path": str(tmp_path / "f.pt")})
    assert model.shape == (1, 4, 4) and model.schedule.sigma_max == pytest.approx(40.0)
    with pytest.raises(UsageError, match="not a flow model"):
        make_model("flow", {"path": str(tmp_path / "f.pt")})


@pytest.mark.parametrize("reverse", [False, True])
def test_flow_torchscript_is_exact_on_gaussian(tmp_path, reverse):
    path = save_script(GaussianVelocity(reverse), tmp_path / "v.pt")
    options = {"path": path, "shape": [4]} | ({"reverse_time": True, "time_scale": 1000.0} if reverse else {})
    model = make_model("flow", options)
    exact = gaussian(shape=(4,), std=STD)
    x = torch.randn(6, 4) * 2
    for sigma in (0.01, 0.5, 1.0, 20.0):
        assert torch.allclose(model(x, sigma), exact(x.double(), sigma).float(), rtol=1e-4, atol=1e-5)


def test_diffbench_unet_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    arch = {"in_channels": 1, "resolution": 8, "channels": 8, "channel_mult": [1, 2], "attn_resolutions": [4]}
    net = UNet(**arch)
    for p in net.parameters():  # leave the zero-initialised output layers non-trivial
        p.data.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "unet.pt"
    save_checkpoint(path, net, arch, {"kind": "edm", "sigma_data": 0.5, "sigma_min": 0.01, "sigma_max": 50.0},
                    (1, 8, 8), dtype=torch.float32)
    model = make_model("edm", {"path": str(path)})
    assert model.shape == (1, 8, 8) and model.schedule.sigma_max == pytest.approx(50.0)
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 1.0, 10.0])
    s = sigma.reshape(-1, 1, 1, 1)
    total = s**2 + 0.25  # EDM's preconditioning with sigma_data = 0.5
    with torch.no_grad():
        expected = 0.25 / total * x + s * 0.5 / total.sqrt() * net(x / total.sqrt(), sigma.log() / 4)
    assert torch.allclose(model(x, sigma), expected, atol=1e-5)
    with pytest.raises(UsageError, match="'edm' checkpoint, not a flow model"):
        make_model("flow", {"path": str(path)})


def test_missing_and_malformed_network_files(tmp_path):
    with pytest.raises(AssetMissing) as err:
        make_model("edm", {"path": str(tmp_path / "nope.pt")})
    assert "nope.pt" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="not a loadable checkpoint"):
        make_model("edm", {"path": str(tmp_path / "junk.pt")})
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UsageError, match="a torch file, but not"):
        make_model("edm", {"path": str(tmp_path / "other.pt")})
    (tmp_path / "edm.pkl").write_bytes(b"\x80")
    with pytest.raises(UsageError, match="scripts/export_edm.py"):
        make_model("edm", {"path": str(tmp_path / "edm.pkl")})
    with pytest.raises(UsageError, match="model.shape"):
        make_model("edm", {"path": save_script(GaussianEDMNet(), tmp_path / "f.pt")})
    with pytest.raises(UsageError, match="model.dtype"):
        make_model("edm", {"path": str(tmp_path / "f.pt"), "shape": [1, 4, 4], "dtype": "float8"})


def test_edm_cifar10_config_without_its_file_is_asset_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFBENCH_CACHE", str(tmp_path))
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "edm-cifar10-uncond-vp.yaml"))
    with pytest.raises(AssetMissing, match="edm-cifar10-32x32-uncond-vp.pt"):
        make_model(config.pop("kind"), config)


# The project's own checkpoint --------------------------------------------------------------------

def test_shipped_mnist_checkpoint_samples_digits_like_images():
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "diffbench-mnist.yaml"))
    model = make_model(config.pop("kind"), config)
    assert model.shape == (1, 28, 28)
    plan = make_plan("dpmpp_2m", 10, model.schedule, step_grid="karras")
    x = sample_batch(model, plan, range(2), seed=0, shape=model.shape).x
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) < 1.5
    # MNIST is mostly background (-1) with some strokes (+1).
    background = float((x < -0.5).double().mean())
    assert 0.6 < background < 0.97 and float((x > 0.5).double().mean()) > 0.02
