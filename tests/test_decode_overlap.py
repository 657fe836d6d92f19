"""The overlapped path (decode and metrics in a worker thread while the next batch samples, on CUDA) forced on
on the CPU gives the same rows as the plain path: samples, metrics and NFE identical, decode still timed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diffbench import columns as col
from diffbench.engine import sweep
from diffbench.engine.sweep import run_sweep
from tests.helpers.tiny_sd import save_tiny_pipeline

COMPARED = [col.NFE_MEASURED, col.NFE_NETWORK, col.STATUS]


def _sweep(tmp_path: Path, name: str, overlap: bool, monkeypatch: pytest.MonkeyPatch, *extra: str) -> pd.DataFrame:
    monkeypatch.setattr(sweep, "overlapped", lambda device: overlap)
    args = ["debug=default", "sweep.params.solver=euler,dpmpp_2m", "sweep.params.nfe=3", "n_samples=6",
            "metrics.names=[fd]",
            "batch_size=2", f"out={tmp_path / name}", f"cache_dir={tmp_path / 'cache'}", *extra]
    return run_sweep(args, progress=False).frame()


def _assert_same(plain: pd.DataFrame, overlapped: pd.DataFrame, root: Path, metrics: list[str]) -> None:
    assert list(plain[col.STATUS]) == [col.OK] * len(plain), plain[col.REASON].tolist()
    pd.testing.assert_frame_equal(plain[COMPARED + metrics], overlapped[COMPARED + metrics])
    for a, b in zip(plain[col.SAMPLES_PATH], overlapped[col.SAMPLES_PATH], strict=True):
        assert np.array_equal(np.load(root / "plain" / a)["x"], np.load(root / "overlap" / b)["x"])


@pytest.mark.slow  # moved out of the default selection (under 3 minutes); CI runs it with -m slow
def test_overlap_forced_on_cpu_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _sweep(tmp_path, "plain", False, monkeypatch)
    overlapped = _sweep(tmp_path, "overlap", True, monkeypatch)
    _assert_same(plain, overlapped, tmp_path, ["fd_random_conv"])


@pytest.mark.slow  # ~60 s on the shared CPU: two sweeps of the tiny Stable Diffusion pipeline
def test_latent_decode_overlap_forced_on_cpu_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("diffusers")
    pipeline = save_tiny_pipeline(tmp_path / "sd")
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images=images)
    extra = ("model=stable-diffusion-v1-5", f"model.path={pipeline}", "model.dtype=float32", "conditions=prompts",
             "guidance=cfg", "guidance.scale=7.5", "dataset=npz", "sweep.params.solver=dpmpp_2m",
             f"dataset.path={tmp_path / 'ref.npz'}", "metrics.ref_n=8", "sweep.params.steps=uniform_t")
    plain = _sweep(tmp_path, "plain", False, monkeypatch, *extra)
    overlapped = _sweep(tmp_path, "overlap", True, monkeypatch, *extra)
    _assert_same(plain, overlapped, tmp_path, ["fd_random_conv"])
    assert (overlapped[col.TIME_DECODE] > 0).all()
