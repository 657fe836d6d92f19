"""Shared fixtures: tiny analytic models with exact answers, a sweep cache; GPU tests skipped without CUDA.

Shared non-fixture helpers live in tests/helpers/.
"""
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


@pytest.fixture(scope="module")
def sweep_cache(tmp_path_factory):
    """One cache per test module: reference solutions are shared, as in real use."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread avoids OpenMP spin contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sqrtm_disp_shim(monkeypatch):
    """clean-fid 0.1.35 calls scipy.linalg.sqrtm(..., disp=False); SciPy 1.18 removed `disp`."""
    import inspect

    import scipy.linalg

    if "disp" not in inspect.signature(scipy.linalg.sqrtm).parameters:
        original = scipy.linalg.sqrtm
        monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a, disp=True: original(a) if disp else (original(a), None))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
