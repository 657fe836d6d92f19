"""Common noise: per-index reproducibility and standard-normal statistics."""
from __future__ import annotations

import torch
from scipy import stats

from diffbench.noise import NoiseSource


def test_rows_depend_only_on_seed_and_index():
    a = NoiseSource(7, [5, 6, 7]).randn((3, 8))
    b = NoiseSource(7, [7, 5]).randn((3, 8))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], NoiseSource(8, [5]).randn((3, 8))[0])


def test_successive_draws_differ_and_repeat():
    src = NoiseSource(0, [0, 1])
    first, second = src.randn((16,)), src.randn((16,))
    assert not torch.equal(first, second)
    again = NoiseSource(0, [0, 1])
    assert torch.equal(again.randn((16,)), first) and torch.equal(again.randn((16,)), second)


def test_standard_normal():
    z = NoiseSource(1, range(400)).randn((500,)).double().flatten()
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert stats.kstest(z[:20000].numpy(), "norm").pvalue > 1e-3
    corr = torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1]
    assert abs(float(corr)) < 0.01
