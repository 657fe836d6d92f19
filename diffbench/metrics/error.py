"""Solver error: each sample against the same-noise sample of a reference solver (paired by index).

With common random numbers (diffbench.noise) sample i of every solver starts from the same noise,
so the difference to a tight-tolerance reference solution (e.g. rk45) is the solver's own
discretisation error, free of sampling noise. Computed on float samples in data space, before
uint8 quantisation:
    mse_i = mean over elements of (x_i - ref_i)^2,   rmse = sqrt(mean_i mse_i),
    psnr  = 20 log10(data_range / rmse)   (data_range = 2 for data in [-1, 1]).
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from diffbench.errors import UsageError


class ErrorStats:
    """Accumulates per-sample squared errors batch by batch; ``result()`` gives rmse and psnr."""

    def __init__(self, data_range: float = 2.0):
        self.data_range = data_range
        self.mse: list[np.ndarray] = []

    def update(self, samples: Tensor, reference: Tensor) -> None:
        """samples, reference: [B, ...] float, the same indices in the same order."""
        if samples.shape != reference.shape:
            raise UsageError(f"solver_error: samples {tuple(samples.shape)} and reference samples "
                             f"{tuple(reference.shape)} differ in shape")
        diff = samples.detach().double() - reference.detach().to(samples.device).double()
        self.mse.append(diff.reshape(len(diff), -1).pow(2).mean(1).cpu().numpy())

    @property
    def per_sample_mse(self) -> np.ndarray:
        """float64 [n]: mse_i of every sample seen, in order (paired bootstrap input)."""
        return np.concatenate(self.mse) if self.mse else np.zeros(0)

    def result(self) -> dict[str, float]:
        """{"rmse", "psnr", "rmse_max"} over all samples seen."""
        mse = self.per_sample_mse
        if not len(mse):
            raise UsageError("solver_error: no samples were compared")
        rmse = math.sqrt(float(mse.mean()))
        psnr = math.inf if rmse == 0 else 20 * math.log10(self.data_range / rmse)
        return {"rmse": rmse, "psnr": psnr, "rmse_max": math.sqrt(float(mse.max()))}


def solver_error(samples: Tensor, reference_samples: Tensor, data_range: float = 2.0) -> dict[str, float]:
    """RMSE / PSNR of samples against same-noise reference samples, in one call."""
    acc = ErrorStats(data_range)
    acc.update(samples, reference_samples)
    return acc.result()
