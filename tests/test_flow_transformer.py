"""Latent diffusers transformers: SD3-style flow matching and DiT against diffusers' own sampling loops.

Tiny random-weight networks (tests/helpers/latent_models.py); diffbench's euler on the matching grid, from the
same initial latents and with classifier-free guidance, equals the scheduler loop a diffusers pipeline runs.
"""
from __future__ import annotations

import pytest
import torch

from diffbench import columns as col
from diffbench.errors import AssetMissing, UsageError
from diffbench.models import make_model
from diffbench.models._latent import VaeDecoder
from diffbench.models._network import TorchNet
from diffbench.models.conditions import ConditionSet
from diffbench.models.dit import DiTDenoiser, DiTEps
from diffbench.models.flow_transformer import (
    EMBEDDING_KEYS,
    FlowTransformerDenoiser,
    FluxVelocity,
    PromptEmbeddings,
    SD3Velocity,
)
from diffbench.models.guidance import GuidedModel, cfg
from diffbench.schedules import RectifiedFlow, VPDiscrete, make_betas
from diffbench.solvers.euler import euler
from diffbench.steps import make_sigmas
from tests.helpers import latent_models as tiny

diffusers = pytest.importorskip("diffusers")

SCALE = 4.0  # CFG scale
LABELS = torch.tensor([0, 2, 1])


def _latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(LABELS), *tiny.LATENT, generator=torch.Generator().manual_seed(seed))


def _guided(model) -> GuidedModel:
    return GuidedModel(model, ConditionSet("test", LABELS), cfg(scale=SCALE))


def _flow_times(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.where(sigmas.isinf(), 1.0, sigmas / (1 + sigmas))


@pytest.mark.parametrize("steps", [1, 4, 28])
@pytest.mark.parametrize("options", [dict(shift=3.0), dict(shift=1.0), dict(mu=0.8), dict(seq_len=1024)])
def test_flow_shift_is_the_schedulers_grid(steps, options):
    """flow_shift's flow times are FlowMatchEulerDiscreteScheduler.set_timesteps' sigmas (first one capped at t_max)."""
    dynamic = "shift" not in options
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=options.get("shift", 1.0),
                                                          use_dynamic_shifting=dynamic)
    mu = options.get("mu", 0.5 + 0.65 * (options.get("seq_len", 0) - 256) / 3840)
    scheduler.set_timesteps(steps, mu=mu if dynamic else None)
    schedule = RectifiedFlow(t_max=1 - 1e-8)
    sigmas = make_sigmas("flow_shift", steps, schedule, **options)
    assert float(sigmas[0]) == pytest.approx(schedule.sigma_max)
    assert torch.allclose(_flow_times(sigmas)[1:], scheduler.sigmas[1:].double(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", [dict(), dict(seq_len=4096)])
def test_flow_shift_flux_is_the_flux_pipelines_grid(options):
    """Flux pipelines pass sigmas = linspace(1, 1/n, n) (then shifted) to the scheduler."""
    steps, dynamic = 4, "seq_len" in options
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=dynamic)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / steps, steps).tolist(), mu=1.15 if dynamic else None)
    sigmas = make_sigmas("flow_shift_flux", steps, RectifiedFlow(t_max=1 - 1e-8), **options)
    assert torch.allclose(_flow_times(sigmas)[1:], scheduler.sigmas[1:].double(), rtol=1e-6, atol=1e-7)


def test_degenerate_flow_grid_is_a_usage_error():
    """On a flow model stopping at t = 0.999 a strong shift puts several levels at the cap: one line, exit 2."""
    with pytest.raises(UsageError, match="degenerate"):
        make_sigmas("flow_shift", 50, RectifiedFlow(), shift=100.0)


def _sd3_reference(transformer, embeddings: PromptEmbeddings, z: torch.Tensor, steps: int) -> torch.Tensor:
    """StableDiffusion3Pipeline's denoising loop (negative = empty prompt first, then the prompts), CFG on velocity."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    embeds, pooled = embeddings.take(LABELS)
    null = torch.full_like(LABELS, -1)
    embeds, pooled = torch.cat([embeddings.take(null)[0], embeds]), torch.cat([embeddings.take(null)[1], pooled])
    latents = z
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = transformer(hidden_states=torch.cat([latents, latents]), encoder_hidden_states=embeds,
                            pooled_projections=pooled, timestep=t.expand(2 * len(z)), return_dict=False)[0]
            v_uncond, v_text = v.chunk(2)
            latents = scheduler.step(v_uncond + SCALE * (v_text - v_uncond), t, latents).prev_sample
    return latents


def _sd3_model(transformer, embeddings: PromptEmbeddings) -> FlowTransformerDenoiser:
    return FlowTransformerDenoiser(TorchNet(SD3Velocity(transformer), torch.float32), embeddings, tiny.LATENT)


@pytest.mark.parametrize("steps", [2, pytest.param(8, marks=pytest.mark.slow)])  # 8 steps: ~20 s on a busy CPU
def test_sd3_euler_with_cfg_matches_the_pipeline_loop(steps):
    transformer, embeddings, z = tiny.sd3_transformer(), tiny.prompt_embeddings(), _latents()
    model = _sd3_model(transformer, embeddings)
    sigmas = make_sigmas("flow_shift", steps, model.schedule, shift=3.0)
    x_T = z.double() * model.schedule.prior_std(float(sigmas[0]))  # = z at t_max: the pipeline's latents
    ours = euler(_guided(model).bind(range(len(z))), x_T, sigmas)
    reference = _sd3_reference(transformer, embeddings, z, steps)
    assert reference.abs().max() > 0.1
    assert (ours.float() - reference).abs().max() <= 1e-4


def test_sd3_guidance_and_prompts_change_the_samples():
    """The parity above is not vacuous: other prompts or no guidance give other samples."""
    transformer, embeddings, z = tiny.sd3_transformer(), tiny.prompt_embeddings(), _latents()
    model = _sd3_model(transformer, embeddings)
    sigmas = make_sigmas("flow_shift", 2, model.schedule)
    x_T = z.double() * model.schedule.prior_std(float(sigmas[0]))
    guided = euler(_guided(model).bind(range(3)), x_T, sigmas)
    other = euler(GuidedModel(model, ConditionSet("t", LABELS.flip(0)), cfg(scale=SCALE)).bind(range(3)), x_T, sigmas)
    plain = euler(model, x_T, sigmas)
    assert (guided - other).abs().max() > 1e-2 and (guided - plain).abs().max() > 1e-2


def _flux_reference(transformer, embeddings: PromptEmbeddings, z: torch.Tensor, steps: int) -> torch.Tensor:
    """FluxPipeline's loop on packed latents: true CFG (prompt rows, then the empty prompt's; one batch here),
    distilled guidance 3.5, dynamic shift for the tiny latent's 16 tokens."""
    pipe, (b, c, h, w) = diffusers.FluxPipeline, z.shape
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=torch.linspace(1, 1 / steps, steps).tolist(), mu=SHIFT_MU_16)
    img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
    embeds, pooled = embeddings.take(LABELS)
    null_embeds, null_pooled = embeddings.take(torch.full_like(LABELS, -1))
    latents, txt_ids = pipe._pack_latents(z, b, c, h, w), torch.zeros(embeds.shape[1], 3)
    embeds, pooled = torch.cat([embeds, null_embeds]), torch.cat([pooled, null_pooled])
    guidance = torch.full((2 * b,), 3.5)
    with torch.no_grad():
        for t in scheduler.timesteps:
            v = transformer(hidden_states=torch.cat([latents, latents]), timestep=t.expand(2 * b) / 1000,
                            guidance=guidance, pooled_projections=pooled, encoder_hidden_states=embeds,
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
            v_text, v_null = v.chunk(2)
            latents = scheduler.step(v_null + SCALE * (v_text - v_null), t, latents).prev_sample
    return pipe._unpack_latents(latents, h * 8, w * 8, 8)


SHIFT_MU_16 = 0.5 + 0.65 * (16 - 256) / 3840  # calculate_shift for the tiny latent's 16 tokens


def test_flux_euler_with_cfg_matches_the_pipeline_loop():
    transformer, embeddings, z = tiny.flux_transformer(), tiny.prompt_embeddings(), _latents(2)
    model = FlowTransformerDenoiser(TorchNet(FluxVelocity(transformer, 3.5), torch.float32), embeddings, tiny.LATENT)
    sigmas = make_sigmas("flow_shift_flux", 4, model.schedule, seq_len=16)
    ours = euler(_guided(model).bind(range(len(z))), z.double() * model.schedule.prior_std(float(sigmas[0])), sigmas)
    reference = _flux_reference(transformer, embeddings, z, 4)
    assert reference.abs().max() > 0.1
    assert (ours.float() - reference).abs().max() <= 1e-4


def _dit_reference(transformer, z: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DiTPipeline's loop (labels then the null class, CFG on eps, learned sigma dropped) with DDIM; its timesteps."""
    scheduler = diffusers.DDIMScheduler(**tiny.DIT_BETAS, clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(steps)
    labels = torch.cat([LABELS, torch.full_like(LABELS, tiny.DIT_CONFIG["num_embeds_ada_norm"])])
    latents = z
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = transformer(torch.cat([latents, latents]), timestep=t.expand(2 * len(z)), class_labels=labels,
                              return_dict=False)[0][:, :z.shape[1]]
            eps_cond, eps_uncond = out.chunk(2)
            latents = scheduler.step(eps_uncond + SCALE * (eps_cond - eps_uncond), t, latents).prev_sample
    return latents, scheduler.timesteps


def _dit_model(transformer) -> DiTDenoiser:
    schedule = VPDiscrete(make_betas("linear", 1000, 1e-4, 0.02))
    return DiTDenoiser(TorchNet(DiTEps(transformer, 4), torch.float32), schedule, 10, tiny.LATENT)


def test_dit_euler_with_cfg_matches_the_pipeline_loop_with_ddim():
    """Euler in EDM coordinates is DDIM (eta = 0); on DDIM's timesteps, ending at sigma = 0, they agree."""
    transformer, z = tiny.dit_transformer(), _latents(1)
    reference, timesteps = _dit_reference(transformer, z, 5)
    model = _dit_model(transformer)
    sigmas = torch.cat([model.schedule.t_to_sigma(timesteps.double()), torch.zeros(1, dtype=torch.float64)])
    x_T = z.double() * model.schedule.prior_std(float(sigmas[0]))
    ours = euler(_guided(model).bind(range(len(z))), x_T, sigmas)
    assert reference.abs().max() > 0.1
    assert (ours.float() - reference).abs().max() <= 1e-4


def test_vae_decoder_honours_scaling_and_shift():
    vae, latents = tiny.vae(), _latents()
    images = VaeDecoder(vae)(latents.double())
    with torch.no_grad():
        expected = vae.decode(latents / 1.5 + 0.06, return_dict=False)[0]
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float64
    assert torch.allclose(images.float(), expected, atol=1e-6)


def _embeddings_file(folder) -> str:
    """The tiny prompt embeddings saved as a model.embeddings file."""
    torch.save(dict(zip(EMBEDDING_KEYS, tiny.prompt_embeddings().tables)), folder / "embeds.pt")
    return str(folder / "embeds.pt")


def test_embeddings_round_trip_and_null_rows(tmp_path):
    embeddings = tiny.prompt_embeddings()
    loaded = PromptEmbeddings.load(_embeddings_file(tmp_path))
    embeds, pooled = loaded.take(torch.tensor([2, -1]))
    assert torch.equal(embeds[0], embeddings.embeds[2]) and torch.equal(pooled[1], embeddings.null_pooled)
    torch.save({"prompt_embeds": embeddings.embeds}, tmp_path / "bad.pt")
    with pytest.raises(UsageError, match="lacks pooled_prompt_embeds"):
        PromptEmbeddings.load(str(tmp_path / "bad.pt"))


def test_models_load_from_pipeline_folders_and_decode(tmp_path):
    sd3_root = tiny.save_pipeline(tmp_path / "sd3", tiny.sd3_transformer(),
                                  diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    sd3 = make_model("sd3", {"path": str(sd3_root), "embeddings": _embeddings_file(tmp_path)})
    dit_root = tiny.save_pipeline(tmp_path / "dit", tiny.dit_transformer(), diffusers.DDIMScheduler(**tiny.DIT_BETAS))
    dit = make_model("dit", {"path": str(dit_root)})
    assert (sd3.shape, sd3.classes, dit.shape, dit.classes) == (tiny.LATENT, 3, tiny.LATENT, 10)
    for model in (sd3, dit):
        x0 = model.denoise_cond(_latents().double(), torch.full((3,), 2.0, dtype=torch.float64), LABELS)
        assert x0.shape == (3, *tiny.LATENT)
        assert model.decode(x0).shape == (3, 3, 16, 16)
    assert sd3.describe()["model_kind"] == "sd3" and dit.describe()["model_kind"] == "dit"


def test_missing_pipeline_parts_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetMissing, match="not in the Hugging Face cache"):
        make_model("dit", {"path": "nobody/not-a-DiT"})
    (tmp_path / "empty" / "transformer").mkdir(parents=True)
    with pytest.raises(AssetMissing, match=r"lacks transformer/config.json, vae/config.json, scheduler/"):
        make_model("sd3", {"path": str(tmp_path / "empty"), "embeddings": _embeddings_file(tmp_path)})


@pytest.mark.slow  # ~40 s on the shared CPU: RK45 reference solutions through the tiny DiT
def test_tiny_dit_sweep_end_to_end(tmp_path, sweep_cache):
    from diffbench.engine.sweep import run_sweep
    from tests.helpers.sweeps import sweep_args

    root = tiny.save_pipeline(tmp_path / "dit", tiny.dit_transformer(), diffusers.DDIMScheduler(**tiny.DIT_BETAS))
    args = sweep_args(tmp_path, sweep_cache, "model=dit", f"model.path={root}", "conditions=balanced",
                      "guidance=cfg", "guidance.scale=2", "solver=euler,dpmpp_2m", "nfe=4", "n_samples=4",
                      "metrics=error_only", "metrics.error_samples=2", "metrics.reference.rtol=1e-2",
                      "metrics.reference.atol=1e-2")
    df = run_sweep(args, progress=False).frame()
    assert list(df[col.STATUS]) == ["ok", "ok"], df[col.REASON].tolist()
    assert set(df[col.NFE_NETWORK]) == {8}


@pytest.mark.parametrize("name", ["sd3-medium", "flux.1-schnell", "DiT-XL-2-256"])
def test_public_checkpoint_configs_fit_their_kinds_and_fail_offline_in_one_line(name, monkeypatch, tmp_path):
    """Every YAML key is an option of its kind; without the weights the error names the hub id and the fix."""
    from diffbench.config import group_config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    options = group_config("model", name)
    if "embeddings" in options:  # text models: a named embeddings file first, before any weights load
        with pytest.raises(UsageError, match="model.embeddings='nope.pt': no such file; give a torch or safetensors"):
            make_model(options["kind"], {**{k: v for k, v in options.items() if k != "kind"}, "embeddings": "nope.pt"})
    with pytest.raises(AssetMissing, match=f"model.path={options['path']}: no such folder and not in the Hugging"):
        make_model(options.pop("kind"), options)
