"""Fitted step-grid artefacts: keyed by what the fit depends on, stored as JSON under `<cache_dir>/fitted/`.

The key hashes the model identity, solver and its options, NFE, method, calibration set (seed and
count), noise span and dtype, the conditions and guidance (left out of the hash while off, as in a
point's key), with the artefact FORMAT, so a changed fitting procedure never reuses an old grid.
Sweeps with `steps=fitted` fill the grid and the artefact key from it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from diffbench.atomicio import atomic_write
from diffbench.config import config_hash, inputs_of, to_dict
from diffbench.errors import check
from diffbench.schedules import NoiseSchedule
from diffbench.steps import resolve_span

FORMAT = 1  # bump when a method's fitting procedure changes: old artefacts are then never matched
FIT_SECONDS = "fit_seconds"  # row columns of points that run a fitted grid
FIT_NFE = "fit_nfe"


def fit_request(cfg: DictConfig, model_key: str, nfe: int, schedule: NoiseSchedule) -> dict[str, Any]:
    """Everything a fitted grid depends on, from a composed config with steps=fitted."""
    span = resolve_span(schedule, cfg.steps.sigma_min, cfg.steps.sigma_max, bool(cfg.steps.final_zero))
    return {"format": FORMAT, "model": model_key, "solver": to_dict(cfg.solver), "nfe": int(nfe),
            "method": str(cfg.steps.method), "calibration": calibration(cfg), "dtype": str(cfg.dtype),
            "span": {"sigma_min": span.sigma_min, "sigma_max": span.sigma_max, "final_zero": span.final_zero},
            **dict(zip(("conditions", "guidance"), inputs_of(cfg)))}  # a guided field has its own grid


def calibration(cfg: DictConfig) -> dict[str, int]:
    """The calibration set: sample indices 0..n-1 of noise seed `seed` (disjoint from the evaluation's seed)."""
    seed, n = cfg.steps.calibration_seed, cfg.steps.calibration_n
    check(isinstance(n, int) and n >= 1, f"steps.calibration_n must be a positive integer (got {n!r})")
    check(isinstance(seed, int) and seed >= 0,
          f"steps.calibration_seed must be a non-negative integer (got {seed!r})")
    return {"seed": seed, "n": n}


def artefact_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "fitted" / f"{key}.json"


def save(cache_dir: str | Path, key: str, artefact: dict[str, Any]) -> Path:
    """Write an artefact atomically; returns its path."""
    path = artefact_path(cache_dir, key)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(artefact, indent=1, sort_keys=True)))
    return path


def load(cache_dir: str | Path, key: str) -> dict[str, Any] | None:
    """The stored artefact of a key, or None when there is none (or it is unreadable)."""
    path = artefact_path(cache_dir, key)
    try:
        artefact = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return artefact if artefact.get("key") == key else None


def fill_fitted(cfg: DictConfig, model_key: str, nfe: int,
                schedule: NoiseSchedule) -> tuple[DictConfig, dict[str, Any]]:
    """A steps=fitted config with its artefact's key and grid filled in, and the row columns of the fit.

    The evaluation must not see calibration noise: its seed must differ from the calibration seed.
    """
    request = fit_request(cfg, model_key, nfe, schedule)
    check(request["calibration"]["seed"] != cfg.seed,
          f"steps.calibration_seed equals seed ({cfg.seed}): the evaluation would reuse the calibration samples; "
          "pick another calibration seed")
    key = config_hash(request)
    artefact = load(cfg.cache_dir, key)
    check(artefact is not None, f"no fitted grid for {cfg.solver.name} at nfe {nfe} (method {request['method']}, "
                                f"artefact {key}); run `diffbench fit` with the same overrides first")
    assert artefact is not None
    filled = cast(DictConfig, OmegaConf.merge(cfg, {"steps": {"artefact": key, "sigmas": artefact["sigmas"]}}))
    return filled, {FIT_SECONDS: artefact[FIT_SECONDS], FIT_NFE: artefact[FIT_NFE]}
