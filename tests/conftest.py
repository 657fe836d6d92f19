"""Shared fixtures: tiny analytic models with exact answers."""
from __future__ import annotations

import pytest
import torch

from diffbench.models.analytic import gaussian, image_mixture


@pytest.fixture
def gauss():
    """Diagonal Gaussian data in 4-D (EDM schedule): the PF-ODE has a closed-form solution."""
    return gaussian(shape=(4,), mean=[0.5, -1.0, 0.0, 2.0], std=[0.5, 1.0, 2.0, 0.1])


@pytest.fixture
def mixture():
    """A small image-shaped Gaussian mixture."""
    return image_mixture(shape=(1, 4, 4), components=3, std=0.2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
