"""FD bootstrap replicates through the reference's root factor equal the direct per-replicate FD."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffbench.metrics.fid import FrechetTarget
from diffbench.metrics.uncertainty import bootstrap, fd_interval, paired_fd_difference


def _sets(n: int, d: int = 24, seed: int = 0) -> tuple[np.ndarray, FrechetTarget]:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    ref = rng.standard_normal((4 * d, d)) @ mix
    gen = rng.standard_normal((n, d)) @ mix * 1.2 + 0.1
    return gen, FrechetTarget(ref.mean(0), np.cov(ref.T))


@pytest.mark.parametrize("n", [10, 30, 200])  # distinct rows below d (Gram path) and above it (d x d path)
def test_resampled_distances_equal_the_direct_distance(n):
    gen, target = _sets(n)
    draws = [np.random.default_rng(s).integers(0, n, n) for s in range(5)]
    direct = [target.distance_to_rows(torch.as_tensor(gen[idx])) for idx in draws]
    # rtol: sqrt of rounding-level eigenvalues differs by ~1e-8 between the two paths
    np.testing.assert_allclose(target.resampled_distances(gen, draws), direct, rtol=1e-7)


def test_fd_intervals_equal_the_per_replicate_bootstrap():
    gen, target = _sets(60)
    rows = torch.as_tensor(gen)
    slow = bootstrap(lambda idx: target.distance_to_rows(rows[idx]), len(gen), 20, nonnegative=True)
    fast = fd_interval(gen, target, 20)
    np.testing.assert_allclose([fast.estimate, fast.low, fast.high, fast.std],
                               [slow.estimate, slow.low, slow.high, slow.std], rtol=1e-7)
    other = gen[::-1].copy() * 0.9
    slow = bootstrap(lambda idx: target.distance_to_rows(rows[idx]) - target.distance_to_rows(other[idx]),
                     len(gen), 20)
    fast = paired_fd_difference(gen, other, target, 20)
    np.testing.assert_allclose([fast.estimate, fast.std], [slow.estimate, slow.std], rtol=1e-7)


def test_small_replicate_batches_run_on_one_thread_and_restore_the_count(monkeypatch):
    gen, target = _sets(30)
    seen: list[int] = []
    eigvalsh = torch.linalg.eigvalsh

    def spy(m: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return eigvalsh(m)

    threads = torch.get_num_threads()
    monkeypatch.setattr(torch.linalg, "eigvalsh", spy)
    torch.set_num_threads(2)
    try:
        target.resampled_distances(gen, [np.arange(30)] * 4)
        assert seen == [1] and torch.get_num_threads() == 2  # one batched eigvalsh, then the count is back
    finally:
        torch.set_num_threads(threads)
