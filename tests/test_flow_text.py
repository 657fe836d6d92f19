"""SD3 / Flux transformers on prompt sets: their pipelines' text encoders, run once per set and cached on disk.

A tiny random-weight StableDiffusion3Pipeline (two CLIPs + T5, tests/helpers/tiny_sd.py) in float64: diffbench's
euler on the scheduler's shifted grid with CFG, prompts encoded by diffbench from conditions=prompts, equals the
pipeline's own output from the same initial latents; a sweep runs end to end on it. The same for a tiny FluxPipeline
(CLIP pooled + T5) with true CFG.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffbench.assetstore import cache_root
from diffbench.errors import UsageError
from diffbench.models import make_model
from diffbench.models.conditions import ConditionSet
from diffbench.models.flow_transformer import TextFlowTransformer
from diffbench.models.guidance import GuidedModel, cfg
from diffbench.models.text import text_seconds, with_conditions
from diffbench.noise import NoiseSource
from diffbench.sampling import make_plan, sample_batch
from tests.helpers.parity import relative_difference
from tests.helpers.tiny_sd import PROMPTS, save_tiny_flux, save_tiny_sd3

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SEED, STEPS, SCALE, SHIFT = 3, 3, 7.0, 3.0
LATENT = (4, 8, 8)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))


def _prompts(texts: tuple[str, ...] = PROMPTS) -> ConditionSet:
    return ConditionSet("tiny", torch.arange(len(texts)), texts)


def pipeline_latents(folder: Path) -> torch.Tensor:
    """StableDiffusion3Pipeline's final latents in float64 (its scheduler: FlowMatchEuler, shift 3.0)."""
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    z = NoiseSource(SEED, range(len(PROMPTS))).randn(LATENT, torch.float64)  # diffbench's draw per sample
    return pipe(list(PROMPTS), num_inference_steps=STEPS, guidance_scale=SCALE, latents=z,
                output_type="latent").images


def diffbench_latents(model, conditions: ConditionSet) -> torch.Tensor:
    guided = GuidedModel(with_conditions(model, conditions), conditions, cfg(SCALE))
    plan = make_plan("euler", STEPS, model.schedule, step_grid="flow_shift", step_options={"shift": SHIFT})
    return sample_batch(guided, plan, range(len(conditions.labels)), SEED, model.shape).x


@pytest.mark.slow  # ~25 s on the shared CPU (float64, 272 text tokens); the fast tests below cover the encoding path
def test_sd3_on_prompts_matches_the_pipeline(sd3_dir: Path, tmp_path: Path) -> None:
    with cache_root(tmp_path):
        model = make_model("sd3", {"path": str(sd3_dir), "dtype": "float64"})
        assert isinstance(model, TextFlowTransformer) and model.classes == 0
        ours = diffbench_latents(model, _prompts())
    theirs = pipeline_latents(sd3_dir)
    assert theirs.abs().max() > 0.1
    assert relative_difference(ours, theirs) <= 1e-4
    with cache_root(tmp_path):  # other prompts give other samples: the parity is not vacuous
        other = diffbench_latents(model, _prompts(tuple(reversed(PROMPTS))))
    assert relative_difference(other, theirs) > 1e-2


def test_prompt_embeddings_are_encoded_once_and_cached(sd3_dir: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with cache_root(tmp_path):
        model = make_model("sd3", {"path": str(sd3_dir)})
        first = model.with_prompts(PROMPTS)
        assert first.classes == 3 and first.embeddings.embeds.shape == (3, 16 + 256, 32)
        assert first.embeddings.pooled.shape == (3, 32) and text_seconds(first) is not None
        assert model.with_prompts(PROMPTS) is first
        files = list((tmp_path / "text").glob("*.pt"))
        assert len(files) == 2  # the empty prompt alone, and the prompt set with it
        monkeypatch.setattr(type(model.encoders), "_load", lambda *a: pytest.fail("encoders loaded again"))
        again = make_model("sd3", {"path": str(sd3_dir)}).with_prompts(PROMPTS)
    assert torch.equal(again.embeddings.embeds, first.embeddings.embeds)
    assert again.text_seconds == first.text_seconds  # the encoding's time, kept with the cached embeddings


@pytest.mark.slow  # ~20 s on the shared CPU
def test_flux_on_prompts_matches_the_pipeline_with_true_cfg(tmp_path: Path) -> None:
    """FluxPipeline with true_cfg_scale against the empty negative prompt, distilled guidance 3.5, static shift."""
    folder = save_tiny_flux(tmp_path / "flux")
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    n, (c, h, w) = len(PROMPTS), LATENT
    z = NoiseSource(SEED, range(n)).randn(LATENT, torch.float64)
    packed = pipe._pack_latents(z, n, c, h, w)
    theirs = pipe(list(PROMPTS), negative_prompt="", true_cfg_scale=SCALE, guidance_scale=3.5, height=2 * h,
                  width=2 * w, num_inference_steps=STEPS, latents=packed, output_type="latent").images
    theirs = pipe._unpack_latents(theirs, 2 * h, 2 * w, 2)
    with cache_root(tmp_path):
        model = make_model("flux", {"path": str(folder), "dtype": "float64", "shape": list(LATENT)})
        guided = GuidedModel(with_conditions(model, _prompts()), _prompts(), cfg(SCALE))
        plan = make_plan("euler", STEPS, model.schedule, step_grid="flow_shift_flux")
        ours = sample_batch(guided, plan, range(n), SEED, model.shape).x
    assert theirs.abs().max() > 0.1
    assert relative_difference(ours, theirs) <= 1e-4


@pytest.mark.slow  # ~11 s: encodes the set twice
def test_half_precision_models_keep_half_precision_tables(sd3_dir: Path, tmp_path: Path) -> None:
    """A float16 transformer casts its inputs to float16 anyway: the prompt table is stored so (half the memory)."""
    with cache_root(tmp_path):
        full = make_model("sd3", {"path": str(sd3_dir)}).with_prompts(PROMPTS)
        half = make_model("sd3", {"path": str(sd3_dir), "dtype": "float16"}).with_prompts(PROMPTS)
    assert full.embeddings.embeds.dtype == torch.float32 and half.embeddings.embeds.dtype == torch.float16
    assert torch.equal(half.embeddings.embeds, full.embeddings.embeds.half())
    assert half.encoders.identity != full.encoders.identity  # separate cache files


def test_pipeline_without_t5_is_a_usage_error(sd3_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    folder = Path(shutil.copytree(sd3_dir, tmp_path / "no_t5"))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": [None, None]}))
    with cache_root(tmp_path), pytest.raises(UsageError, match="model_index.json names no text_encoder_3"):
        make_model("sd3", {"path": str(folder)})


@pytest.mark.slow  # ~15 s on the shared CPU
def test_sd3_sweep_on_prompts_end_to_end(sd3_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffbench import columns as col
    from tests.helpers.cli import prompt_sweep_row

    row = prompt_sweep_row(capsys, tmp_path, "model=sd3-medium", f"model.path={sd3_dir}", "model.shape=[4,8,8]",
                           "guidance.scale=7", "sweep.params.solver=euler", "sweep.params.nfe=2",
                           "sweep.params.steps=flow_shift")
    assert row[col.NFE_NETWORK] == 4
