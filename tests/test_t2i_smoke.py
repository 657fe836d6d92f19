"""End-to-end text-to-image smoke test on the CPU, offline: a tiny Stable Diffusion pipeline on the shipped prompt
list with CFG, decoded by its VAE and scored by CLIP score and FD-DINOv2 (tiny random CLIP / DINOv2) in one sweep."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.tiny_sd import save_tiny_pipeline
from tests.helpers.tiny_t2i import tiny_clip_folder, tiny_dinov2_folder

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.mark.slow  # ~45 s on the shared CPU: two points, each sampled, decoded, and scored by two networks
def test_text_to_image_sweep_with_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from diffbench import columns as col

    pipeline = save_tiny_pipeline(tmp_path / "sd")
    clip, dinov2 = tiny_clip_folder(tmp_path), tiny_dinov2_folder(tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)  # the reference "dataset"
    np.savez(tmp_path / "ref.npz", images=images)
    code, _, err = run_cli(capsys, "sweep", "debug=default", "model=stable-diffusion-v1-5", f"model.path={pipeline}",
                           "model.dtype=float32", "conditions=prompts", "guidance=cfg", "guidance.scale=7.5",
                           "metrics=text_to_image", "metrics.names=[clip_score,fd_dinov2]",
                           f"metrics.clip_score.model={clip}", f"metrics.fd_dinov2.model={dinov2}",
                           "dataset=npz", f"dataset.path={tmp_path / 'ref.npz'}", "metrics.ref_n=8", "n_samples=6",
                           "batch_size=3",
                           "sweep.params.solver=dpmpp_2m,euler", "sweep.params.nfe=3", "sweep.params.steps=uniform_t",
                           f"out={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}")
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert list(df[col.STATUS]) == [col.OK, col.OK], df[col.REASON].tolist()
    for _, row in df.iterrows():
        assert row["condition_set"] == "prompts:prompts_smoke.txt" and len(row["condition_hash"]) == 16
        assert row[col.TIME_DECODE] > 0 and row[col.TIME_TEXT_ENCODER] >= 0
        assert 0 <= row[col.CLIP_SCORE] <= 100 and math.isfinite(row[col.FD_DINOV2]) and row[col.FD_DINOV2] > 0
        assert str(clip) in row["clip_model"] and row["fd_dinov2_ref_id"]
    assert df["condition_hash"].nunique() == 1  # both solvers on the same prompts
    assert df[col.CLIP_SCORE].nunique() == 2  # and their samples differ
