"""A point's metric time split into resize, features, statistics and writing (rows and StageClock)."""
from __future__ import annotations

import time

import pytest
import torch

from diffbench.engine.sweep import run_sweep
from diffbench.stageclock import STAGES, StageClock


def test_cpu_stages_add_up_their_blocks():
    clock = StageClock(torch.device("cpu"))
    for _ in range(2):
        with clock.stage("resize"):
            time.sleep(0.02)
    with clock.stage("features"):
        pass
    columns = clock.columns()
    assert set(columns) == {f"time_{name}_s" for name in STAGES}
    assert 0.04 <= columns["time_resize_s"] < 0.5
    assert columns["time_features_s"] < columns["time_resize_s"] and columns["time_statistics_s"] == 0.0


@pytest.mark.gpu
def test_cuda_stages_time_the_stream_work_without_a_device_sync():
    clock = StageClock(torch.device("cuda"))
    a = torch.randn(2048, 2048, device="cuda")
    with clock.stage("features"):
        for _ in range(20):
            a = a @ a / 2048
    assert clock.columns()["time_features_s"] > 0


def test_rows_split_metric_time_into_stages(tmp_path, one_thread):
    common = ["debug=default", "solver=euler", "nfe=3", "n_samples=24", "batch_size=8", f"out={tmp_path / 'out'}",
              f"cache_dir={tmp_path / 'cache'}"]
    summary = run_sweep([*common, "metrics.names=[fd,solver_error]"], progress=False)
    row = summary.frame().iloc[0]
    stages = [row[f"time_{name}_s"] for name in STAGES]
    assert row["status"] == "ok" and min(stages) > 0 and row["time_writing_s"] > 0
    assert sum(stages) <= row["time_metrics_s"]  # the stages are parts of the metric work, timed inside it
    assert summary.time_append_s > 0
    plain = run_sweep([*common, "nfe=4", "metrics.names=[solver_error]"], progress=False).frame()
    plain = plain[plain["nfe"] == 4].iloc[0]
    assert plain["time_resize_s"] == plain["time_features_s"] == 0.0  # no extractor ran
    assert plain["time_statistics_s"] > 0  # the error's interval
