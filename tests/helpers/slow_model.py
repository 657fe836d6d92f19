"""A test model kind whose evaluations can be slowed down, and a `diffbench` entry point that knows it.

`slow_image_mixture` is the analytic image mixture, sleeping $DIFFBENCH_TEST_DELAY_S seconds per
evaluation (none when unset). A sweep subprocess started as `python tests/helpers/slow_model.py sweep ...`
with a delay lasts long enough to be interrupted mid-point or to overlap another sweep, while the
same points run at full speed in the test process: the delay is not part of the config, so both
share config hashes and cached reference solutions.
"""
from __future__ import annotations

import inspect
import os
import sys
import time
from typing import Any

from torch import Tensor

from diffbench.models import MODELS, Denoiser, register_model
from diffbench.models.analytic import image_mixture

KIND = "slow_image_mixture"
DELAY_ENV = "DIFFBENCH_TEST_DELAY_S"


class Slowed(Denoiser):
    """Another denoiser, sleeping before each evaluation."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.schedule, self.dtype, self.shape = inner.schedule, inner.dtype, inner.shape

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        time.sleep(float(os.environ.get(DELAY_ENV, "0")))
        return self.inner.denoise(x, sigma)

    def describe(self) -> dict[str, object]:
        return self.inner.describe()


def slow_image_mixture(**options: Any) -> Denoiser:
    return Slowed(image_mixture(**options))


slow_image_mixture.__signature__ = inspect.signature(image_mixture)  # make_model checks options against it


def register() -> None:
    """Register the kind (once per process)."""
    if KIND not in MODELS:
        register_model(KIND)(slow_image_mixture)


if __name__ == "__main__":
    from diffbench.cli import main

    register()
    sys.exit(main(sys.argv[1:]))
