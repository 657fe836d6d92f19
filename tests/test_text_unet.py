"""Stable Diffusion (UNet2DConditionModel) as a prompt-conditional latent model: parity with diffusers' pipeline.

A tiny random-weight pipeline (tests/helpers/tiny_sd.py) runs in float64 through StableDiffusionPipeline with
each scheduler and through diffbench's counterpart solver on the scheduler's own sigma grid, from the same
initial latents, with CFG 7.5: the final latents and their VAE decodes agree to 1e-4.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffbench.assetstore import cache_root
from diffbench.errors import AssetMissing, UsageError
from diffbench.models import make_model
from diffbench.models.conditions import ConditionSet
from diffbench.models.guidance import GuidedModel, cfg
from diffbench.models.text import with_conditions
from diffbench.noise import NoiseSource
from diffbench.sampling import make_plan, sample_batch
from tests.helpers.parity import relative_difference
from tests.helpers.tiny_sd import PROMPTS, save_tiny_pipeline

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SEED, STEPS, SCALE, TOLERANCE = 5, 4, 7.5, 1e-4
SCHEDULERS = {"euler": "EulerDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
              "unipc_bh2_o2": "UniPCMultistepScheduler"}


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module", params=["v_prediction", "sdxl"])
def variant_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD 2.x's v-prediction, and SDXL's two text encoders, pooled embedding, time ids and zero empty prompt."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "sdxl":
        return save_tiny_pipeline(folder, xl=True)
    return save_tiny_pipeline(folder, prediction=request.param)


def pipeline_run(folder: Path, scheduler: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final latents, their images, the sigma grid) of the folder's pipeline in float64 with `scheduler`."""
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder).to(torch.float64)  # the folder's pipeline class
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    z = NoiseSource(SEED, range(len(PROMPTS))).randn((4, 8, 8), torch.float64)  # diffbench's draw 0 per sample
    latents = pipe(list(PROMPTS), num_inference_steps=STEPS, guidance_scale=SCALE, latents=z,
                   output_type="latent").images
    with torch.no_grad():
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return latents, images, pipe.scheduler.sigmas.double()


def diffbench_run(folder: Path, cache: Path, solver: str, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(final latents, decoded images) of diffbench's solver on the grid, prompts bound by index, CFG in one batch."""
    with cache_root(cache):
        model = make_model("stable_diffusion", {"path": str(folder), "dtype": "float64"})
        labels = ConditionSet("tiny", torch.arange(len(PROMPTS)), PROMPTS)
        guided = GuidedModel(with_conditions(model, labels), labels, cfg(SCALE))
    plan = make_plan(solver, STEPS, model.schedule, step_grid="explicit", step_options={"sigmas": sigmas.tolist()})
    latents = sample_batch(guided, plan, range(len(PROMPTS)), SEED, model.shape).x
    return latents, guided.decode(latents)


def check_parity(folder: Path, cache: Path, solver: str) -> None:
    theirs, their_images, sigmas = pipeline_run(folder, SCHEDULERS[solver])
    ours, our_images = diffbench_run(folder, cache, solver, sigmas)
    assert relative_difference(ours, theirs) <= TOLERANCE
    assert relative_difference(our_images, their_images) <= TOLERANCE


def test_euler_matches_pipeline(pipeline_dir: Path, tmp_path: Path) -> None:
    check_parity(pipeline_dir, tmp_path, "euler")


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc_bh2_o2"])
def test_multistep_matches_pipeline(pipeline_dir: Path, tmp_path: Path, solver: str) -> None:
    check_parity(pipeline_dir, tmp_path, solver)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_variants_match_pipeline(variant_dir: Path, tmp_path: Path, solver: str) -> None:
    check_parity(variant_dir, tmp_path, solver)


def test_missing_weights_offline_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AssetMissing, match="DIFFBENCH_ALLOW_DOWNLOAD=1") as err:
        make_model("stable_diffusion", {"path": "nobody-here/no-such-sd-model"})
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="no model_index.json"):
        make_model("stable_diffusion", {"path": str(tmp_path)})


def test_pipeline_without_text_encoder_is_a_usage_error(pipeline_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    folder = Path(shutil.copytree(pipeline_dir, tmp_path / "no_text"))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder": [None, None]}))
    with pytest.raises(UsageError, match="model_index.json names no text_encoder"):
        make_model("stable_diffusion", {"path": str(folder)})


@pytest.mark.slow
def test_sweep_end_to_end(pipeline_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny text-to-image sweep: prompts, CFG, decoded 3x16x16 samples, the new timing and prompt columns."""
    from diffbench import columns as col
    from tests.helpers.cli import prompt_sweep_row

    row = prompt_sweep_row(capsys, tmp_path, "model=stable-diffusion-v1-5", f"model.path={pipeline_dir}",
                           "guidance.scale=7.5", "sweep.params.solver=dpmpp_2m", "sweep.params.nfe=3",
                           "sweep.params.steps=uniform_t")
    assert row[col.NFE_NETWORK] == 6
    assert any((tmp_path / "cache" / "text").glob("*.pt"))  # prompt embeddings cached on disk
