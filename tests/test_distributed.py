"""Data-parallel sweeps: index sharding, share merging, and a 2-process torchrun sweep equal to a 1-process one."""
from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from diffbench import results
from diffbench.batching import AUTO_CPU, AUTO_CUDA_START, resolve_batch_size
from diffbench.distributed import backend, shard_indices
from diffbench.engine.references import REFERENCE_CHUNK
from diffbench.engine.shares import Share, merge_shares
from diffbench.engine.sweep import GRID_SAMPLES, run_sweep
from diffbench.errors import UsageError
from diffbench.metrics import ErrorStats, StreamingStats
from diffbench.metrics.classifier import ClassAccuracy
from diffbench.metrics.exact import ExactSamples
from diffbench.metrics.per_class import PerClassFD
from diffbench.solvers import SOLVERS

WORLD = 2
BATCH = 8
N_SAMPLES = 17 * BATCH + BATCH // 2  # 18 batches, the last one partial
# Both ranks get reference chunks and the sample grid takes batches of both ranks.
assert N_SAMPLES > REFERENCE_CHUNK and GRID_SAMPLES > BATCH
# Chan's merge of per-rank float64 moments differs from one process's batch-by-batch update only in
# summation order (~n * 2^-52 relative on the moments); FD's matrix square root amplifies that by the
# covariance's conditioning but stays far below 1e-9 here, while a single different sample moves the
# metrics by orders of magnitude more. Per-sample arrays (features, errors) are reordered exactly.
RTOL, ATOL = 1e-9, 1e-12
NAN_SOLVER = "nan_on_short_batches"
ENTRY = f'''"""torchrun entry: the diffbench CLI with a solver that fails on the last, partial batch only."""
import sys

from diffbench.cli import main
from diffbench.solvers import register


@register("{NAN_SOLVER}", order=1)
def nan_on_short_batches(denoiser, x, sigmas, *, noise=None):
    """Euler-like steps; NaN when the batch is shorter than {BATCH} (only the last batch is)."""
    for i in range(len(sigmas) - 1):
        x = denoiser(x, float(sigmas[i]))
    return x * float("nan") if len(x) < {BATCH} else x


if __name__ == "__main__":
    sys.exit(main())
'''
METRICS = "metrics.names=[fd,kid,prdc,solver_error]"


# Sharding ---------------------------------------------------------------------------------------

@given(n=st.integers(1, 200), batch=st.integers(1, 40), world=st.integers(1, 8))
def test_shards_are_disjoint_cover_all_and_are_whole_batches(n, batch, world):
    shards = [shard_indices(n, batch, r, world) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n)) and len(flat) == n
    one_process = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    for r, share in enumerate(shards):
        assert share == [i for b in one_process[r::world] for i in b]  # batch k goes to rank k mod world
    counts = [len(s) for s in shards]
    assert max(counts) - min(counts) <= batch
    assert shards == [shard_indices(n, batch, r, world) for r in range(world)]


@given(n=st.integers(1, 3 * AUTO_CUDA_START), world=st.integers(1, 8), cuda=st.booleans())
def test_auto_batch_size_gives_every_rank_work(n, world, cuda):
    device = torch.device("cuda" if cuda else "cpu")
    size = resolve_batch_size("auto", n, device, world)
    assert 1 <= size <= (AUTO_CUDA_START if cuda else AUTO_CPU)
    shards = [shard_indices(n, size, r, world) for r in range(world)]
    assert all(shards[: min(n, world)])  # every rank that can have a sample has some
    assert len(range(0, n, size)) >= min(n, world)  # at least world batches


AUTO_ENTRY = """import sys
import torch
import torch.distributed as dist
from diffbench.batching import resolve_batch_size
from diffbench.distributed import shard_indices

dist.init_process_group("gloo")
size = resolve_batch_size("auto", int(sys.argv[1]), torch.device("cpu"))
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.txt", "w") as out:  # one file per rank: stdout interleaves
    out.write(str(len(shard_indices(int(sys.argv[1]), size))))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_auto_batch_size_under_torchrun_splits_a_point_over_both_ranks(tmp_path):
    path = tmp_path / "auto.py"
    path.write_text(AUTO_ENTRY)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", f"--master_port={_free_port()}",
           str(path), str(AUTO_CPU - 2), str(tmp_path)]  # one auto batch on one process: rank 1 had nothing before
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = [int((tmp_path / f"rank{r}.txt").read_text()) for r in range(WORLD)]
    assert counts == [AUTO_CPU // 2 - 1] * WORLD


def test_cuda_points_must_not_pin_one_gpu_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(WORLD))
    assert backend({torch.device("cpu")}) == "gloo"
    with pytest.raises(UsageError, match="device=cuda"):
        backend({torch.device("cuda:1")})
    with pytest.raises(UsageError, match="one kind of device"):
        backend({torch.device("cpu"), torch.device("cuda")})


# Merging ----------------------------------------------------------------------------------------

def _suite(stats: StreamingStats, mse: np.ndarray, correct: np.ndarray | None = None,
           rows: np.ndarray | None = None) -> SimpleNamespace:
    """The parts of a MetricSuite that shares read and write (class_accuracy's hits: `correct`; the exact metrics'
    samples: `rows`)."""
    error = ErrorStats()
    error.mse = [mse]
    accuracy = ClassAccuracy(None, {}, torch.zeros(0, dtype=torch.long))
    accuracy.correct = [np.zeros(0, dtype=bool) if correct is None else correct]
    exact = ExactSamples(None, None, OmegaConf.create({}), enabled=True)
    exact.rows = [] if rows is None else [rows]
    return SimpleNamespace(stats=stats, error=error, lpips=None, accuracy=accuracy, exact=exact,
                           per_class=PerClassFD(torch.zeros(0, dtype=torch.long), {}, "fd"),
                           text_image=SimpleNamespace(own={}, clip_scores=[]))


def _share(indices: list[int], features: torch.Tensor, mse: np.ndarray, n_paired: int,
           correct: np.ndarray | None = None) -> Share:
    share = Share()
    stats = StreamingStats()
    for batch in range(0, len(indices), BATCH):
        idx = indices[batch:batch + BATCH]
        share.add(idx, torch.as_tensor(idx, dtype=torch.float64)[:, None], 0.0, 10, GRID_SAMPLES)
        stats.update(features[idx])
    suite = _suite(stats, mse[[i for i in indices if i < n_paired]], None if correct is None else correct[indices],
                   features[indices].double().numpy())
    suite.per_class.indices, suite.per_class.rows = [np.asarray(indices)], [features[indices].numpy()]  # fd_per_class
    return share.capture(suite)


def test_merged_shares_equal_one_process():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(N_SAMPLES, 5, generator=gen)
    n_paired = N_SAMPLES // 3
    mse = np.random.default_rng(0).random(n_paired)
    whole = _share(list(range(N_SAMPLES)), features, mse, n_paired)
    suite = _suite(StreamingStats(), np.zeros(0))
    correct = np.random.default_rng(1).random(N_SAMPLES) < 0.5
    ranks = [_share(shard_indices(N_SAMPLES, BATCH, r, WORLD), features, mse, n_paired, correct) for r in range(WORLD)]
    merged = merge_shares(ranks, suite, GRID_SAMPLES, BATCH)
    np.testing.assert_array_equal(suite.accuracy.per_sample, correct)  # class_accuracy's hits in index order
    np.testing.assert_array_equal(torch.cat(suite.stats.rows).numpy(), features.numpy())
    # Moments are replayed in one process's order and chunks: equal bit for bit.
    np.testing.assert_array_equal(suite.stats.mean.numpy(), whole.stats.mean.numpy())
    np.testing.assert_array_equal(suite.stats.scatter.numpy(), whole.stats.scatter.numpy())
    np.testing.assert_array_equal(suite.error.per_sample_mse, mse)
    np.testing.assert_array_equal(suite.exact.rows[0], features.double().numpy())  # exact metrics' samples
    per_class_indices, per_class_rows = suite.per_class.state()  # fd_per_class's rows, in index order
    np.testing.assert_array_equal(per_class_indices, np.arange(N_SAMPLES))
    np.testing.assert_array_equal(per_class_rows, features.numpy())
    assert merged.indices == list(range(N_SAMPLES)) and merged.nfe_measured == 10
    np.testing.assert_array_equal(merged.grid[:, 0].numpy(), np.arange(GRID_SAMPLES))


def test_a_failure_on_any_rank_is_the_first_failed_batch():
    shares = [Share(), Share(), Share()]
    for s, (start, nfe) in zip(shares, [(3 * BATCH, 7), (BATCH, 5)]):
        s.add(list(range(start, start + BATCH)), torch.zeros(BATCH, 1), 1.0, nfe, GRID_SAMPLES)
        s.fail(list(range(start, start + BATCH)), f"failed at {start}")
    merged = merge_shares(shares, _suite(None, np.zeros(0)), GRID_SAMPLES, BATCH)
    assert (merged.reason, merged.failed_at, merged.nfe_measured) == (f"failed at {BATCH}", BATCH, 5)


# A real 2-process sweep ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def entry(tmp_path):
    """The torchrun entry script; its solver is registered in this process too (for the 1-process run)."""
    path = tmp_path / "entry.py"
    path.write_text(ENTRY)
    runpy.run_path(str(path))
    yield path
    SOLVERS.pop(NAN_SOLVER)


def _grid(root, *extra: str) -> list[str]:
    return ["debug=default", f"solver=euler,heun,{NAN_SOLVER}", "nfe=3,5", f"n_samples={N_SAMPLES}",
            f"batch_size={BATCH}", METRICS, "metrics.kid_subsets=4", f"metrics.kid_subset_size={BATCH}",
            "metrics.n_boot=4", f"metrics.error_samples={N_SAMPLES}", f"out={root / 'out'}",
            f"cache_dir={root / 'cache'}", *extra]


@pytest.mark.slow
def test_torchrun_sweep_equals_one_process(tmp_path, entry, one_thread):
    single = run_sweep(_grid(tmp_path / "single"), progress=False).frame()
    multi = tmp_path / "multi"
    seeded = single[single["solver.name"] == "heun"].iloc[:1]
    results.append(multi / "out", seeded.to_dict("records"))  # a point already done: every rank must skip it
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", f"--master_port={_free_port()}",
           str(entry), "sweep", "--quiet", "--no-report", *_grid(multi)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120,
                          env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(single) - 1} points run, 1 already in the table, 2 failed" in proc.stdout  # printed once, by rank 0
    assert proc.stdout.count("points run") == 1

    a = single.sort_values(results.KEY).reset_index(drop=True)
    b = results.load(multi / "out").sort_values(results.KEY).reset_index(drop=True)
    assert list(a[results.KEY]) == list(b[results.KEY])
    ran = b[results.KEY] != seeded[results.KEY].iloc[0]
    assert set(b.loc[ran, "world_size"]) == {WORLD} and set(a["world_size"]) == {1}
    pd.testing.assert_frame_equal(a[["status", "reason", "nfe_measured", "n_error_samples"]],
                                  b[["status", "reason", "nfe_measured", "n_error_samples"]])
    assert (a["status"] == "failed").sum() == 2 and (a["status"] == "ok").sum() == 4
    metrics = [c + end for c in results.metric_columns(a) for end in ("", "_lo", "_hi")]
    assert {"fd_random_conv", "kid_random_conv", "precision_random_conv", "rmse_ref"} <= set(metrics)
    np.testing.assert_allclose(b[metrics].to_numpy(float), a[metrics].to_numpy(float), rtol=RTOL, atol=ATOL)
    compared = ran & (b["status"] == "ok")
    for (_, ra), (_, rb) in zip(a[compared].iterrows(), b[compared].iterrows()):
        with np.load(tmp_path / "single" / "out" / ra["samples_path"]) as fa, \
                np.load(multi / "out" / rb["samples_path"]) as fb:
            np.testing.assert_array_equal(fa["x"], fb["x"])
