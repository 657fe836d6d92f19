"""Empirical model statistics (EMS) of DPM-Solver-v3 (Zheng et al. 2023, Sec. 3.2, App. C.1.1).

The paper rewrites the PF-ODE with a per-dimension linear coefficient l_lambda and a nonlinear part
f, then makes f's remainder g nearly constant in lambda with per-dimension s_lambda, b_lambda:

    N = sigma_t eps - l x_t,   f = N / alpha_t,   g' = e^{-int s} (f' - s f - b)  (f' along the ODE)
    l = E[diag(sigma_t d eps / d x_t)],   (s, b) = least squares of f' on f, per dimension.

In this project's EDM coordinates y = x_t / alpha_t with sigma = exp(-lambda) every alpha cancels:
sigma_t d eps/d x_t = I - J_y D, so ``l = 1 - E[diag(J_y D)]`` and ``f = (1 - l) y - D(y, sigma)``
(the VP quantity f = N / alpha_t is the same number); the ODE is dy/dlambda = D - y, so the total
derivative is ``f' = -l' y + (1 - l)(D - y) - [J_y D (D - y) - sigma dD/dsigma]``. None of this
depends on the schedule: EMS are a property of D alone; the schedule only sets the lambda range.

Estimators, as in the authors' script: samples y = x0 + sigma z are forward-noised data (from the
model's ``sample_data`` when it has one; otherwise x0 are samples of a 64-step Heun reference
solve, which is the model's own distribution rather than the training data), diag(J) comes from
Rademacher probes v (E[v * Jv] = diag J, exact for a diagonal J), and (x0, z, v) are the same at
every lambda (common random numbers), so l is smooth in lambda and l' is a central finite
difference on the grid (the authors smooth a noisy difference instead). Jacobian-vector products
use forward-mode autodiff (``torch.func.jvp``) or, for models it cannot trace, central finite
differences with a step of eps^(1/3) relative. Where f has no variance (a linear D makes f
deterministic) the regression is ridged to s = 0.

Results are cached on disk under ``ems/`` of the cache root (diffbench.assetstore: a sweep's ``cache_dir``),
keyed by a content hash of the model (its description plus a fingerprint of its outputs on fixed
probes), schedule, sample shape, lambda grid, N, seed, sample source and JVP method; files are
written atomically and carry their provenance and the SHA-256 of their tensors: a cached file that
does not load or match it is recomputed (with a warning), a user's file is a UsageError.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from diffbench import assetstore
from diffbench.atomicio import atomic_write
from diffbench.errors import UsageError, check, warn
from diffbench.models.base import CountingDenoiser, Denoiser
from diffbench.models.guidance import GuidedDenoiser, GuidedModel
from diffbench.noise import NoiseSource
from diffbench.solvers.euler import heun
from diffbench.steps import make_sigmas
from diffbench.tensorcache import digest

FORMAT = 1
JVP_METHODS = ("autodiff", "fd")
REFERENCE_STEPS = 64  # Heun steps (127 NFE) for EMS samples of models without data
BATCH = 256  # samples per network call while estimating EMS (solvers pass their batch when it is larger)
_RIDGE = 1e-10  # relative ridge on Var(f) in the (s, b) regression


@dataclass(frozen=True)
class EMS:
    """l, s, b on an increasing lambda grid; each [K, *shape] (or [K] when shared by all dims)."""

    lambdas: Tensor
    l: Tensor  # noqa: E741 (the paper's name)
    s: Tensor
    b: Tensor
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def degenerate(cls, lam_lo: float, lam_hi: float) -> EMS:
        """l = 1, s = b = 0: v3 reduces to a data-prediction multistep solver (the paper's 'degenerated')."""
        lambdas = torch.tensor([lam_lo, max(lam_hi, lam_lo + 1.0)], dtype=torch.float64)
        return cls(lambdas, torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                   torch.zeros(2, dtype=torch.float64), {"kind": "degenerate"})

    def covers(self, lam_lo: float, lam_hi: float, tol: float = 1e-6) -> bool:
        return float(self.lambdas[0]) <= lam_lo + tol and lam_hi - tol <= float(self.lambdas[-1])

    def at(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """l, s, b linearly interpolated at lambdas `lam` [Q] -> three [Q, *shape] tensors."""
        grid = self.lambdas.to(lam)
        lam = lam.clamp(grid[0], grid[-1])
        hi = torch.searchsorted(grid, lam.contiguous()).clamp(1, len(grid) - 1)
        w = (lam - grid[hi - 1]) / (grid[hi] - grid[hi - 1])
        w = w.reshape(-1, *([1] * (self.l.ndim - 1)))

        def lerp(v: Tensor) -> Tensor:
            v = v.to(lam.device)
            return v[hi - 1] + w * (v[hi] - v[hi - 1])

        return lerp(self.l), lerp(self.s), lerp(self.b)

    def tensors(self) -> dict[str, Tensor]:
        return {"lambdas": self.lambdas.cpu(), "l": self.l.cpu(), "s": self.s.cpu(), "b": self.b.cpu()}

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename), with the SHA-256 of the tensors."""
        tensors = self.tensors()
        payload = {"format": FORMAT, **tensors, "sha256": digest(tensors),
                   "provenance": json.dumps(self.provenance, sort_keys=True, default=str)}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | Path) -> EMS:
        """Read an EMS file; a damaged one (unreadable, or not matching its SHA-256) is a UsageError."""
        path = Path(path).expanduser()
        check(path.is_file(), f"solver.ems: no EMS file at '{path}'; give a file saved by diffbench.solvers.ems, "
                              "'auto' to compute and cache them for this model, or 'none'")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- truncated or overwritten files fail in zip, pickle or EOF code alike
            raise UsageError(f"solver.ems: '{path}' cannot be read ({type(e).__name__}); "
                             f"recompute it with ems=auto") from None
        check(isinstance(data, dict) and data.get("format") == FORMAT,
              f"solver.ems: '{path}' is not an EMS file of format {FORMAT}; recompute it with ems=auto")
        check(data.get("sha256") in (None, digest({k: data[k] for k in ("lambdas", "l", "s", "b")})),
              f"solver.ems: '{path}' does not match its recorded SHA-256 (corrupt); recompute it with ems=auto")
        check(len(data["lambdas"]) >= 2 and bool((data["lambdas"].diff() > 0).all()),
              f"solver.ems: '{path}' needs an increasing lambda grid of at least 2 points")
        return cls(data["lambdas"], data["l"], data["s"], data["b"], json.loads(data["provenance"]))


def cache_dir() -> Path:
    """Where EMS live: ems/ under the cache root (a sweep's cache_dir; diffbench.assetstore)."""
    return assetstore.cache_dir() / "ems"


def lambda_grid(lam_lo: float, lam_hi: float, points: int) -> Tensor:
    """A uniform lambda grid (the paper's uniform-logSNR grid), ends rounded outward to 1e-6."""
    check(points >= 2, f"solver.ems_points must be >= 2 (got {points})")
    lo, hi = math.floor(lam_lo * 1e6) / 1e6, math.ceil(lam_hi * 1e6) / 1e6
    return torch.linspace(lo, hi, points, dtype=torch.float64)


def unwrap(denoiser: Denoiser) -> Denoiser:
    """The model under NFE counters: EMS are a one-off precomputation, not sampling evaluations.

    A guided model bound to one batch's labels is unbound: EMS sample i is evaluated with the conditions of sample
    i (cyclically over the condition set), whatever the chunking, so the statistics are those of the guided
    field the sweep samples.
    """
    while isinstance(denoiser, CountingDenoiser):
        denoiser = denoiser.inner
    if isinstance(denoiser, GuidedDenoiser):
        return RowLabels(denoiser.parent)
    return denoiser


class RowLabels(Denoiser):
    """A guided model whose samples i take the conditions of samples i mod n of its n-sample condition set."""

    def __init__(self, parent: GuidedModel):
        self.parent, self.schedule, self.dtype = parent, parent.schedule, parent.dtype

    def _rows(self, indices: Sequence[int]) -> list[int]:
        """The condition-set rows of samples `indices` (cyclically)."""
        n = len(self.parent.conditions.labels)
        return [i % n for i in indices]

    def bind(self, indices: Sequence[int]) -> Denoiser:
        return self.parent.bind(self._rows(indices))

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.bind(range(x.shape[0])).denoise(x, sigma)

    def conditions_hash(self, samples: int) -> str:
        """The content hash of the conditions EMS samples 0 .. samples-1 are evaluated with (part of the cache key)."""
        conditions = self.parent.conditions
        return replace(conditions, labels=conditions.take(self._rows(range(samples)))).content_hash

    def describe(self) -> dict[str, object]:
        return {**self.parent.describe(), "guidance": repr(self.parent.guidance)}


# ---- estimation -------------------------------------------------------------------------------

Fn = Callable[[Tensor, Tensor], Tensor]


def _jvp(fn: Fn, y: Tensor, sigma: Tensor, ty: Tensor, tsigma: Tensor, method: str,
         fd_step: float) -> tuple[Tensor, Tensor]:
    """fn(y, sigma) and its directional derivative along (ty, tsigma)."""
    if method == "autodiff":
        return cast(tuple[Tensor, Tensor], torch.func.jvp(fn, (y, sigma), (ty, tsigma)))
    # Central difference; the step changes y and sigma by at most fd_step relative.
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    h = fd_step / max(rms(ty) / (1.0 + rms(y)), float((tsigma / sigma).abs().max()), 1e-30)
    up, down = fn(y + h * ty, sigma + h * tsigma), fn(y - h * ty, sigma - h * tsigma)
    return fn(y, sigma), (up - down) / (2 * h)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def compute_ems(denoiser: Denoiser, x0: Tensor, lambdas: Tensor, *, seed: int = 0, batch_size: int = BATCH,
                jvp: str = "autodiff") -> EMS:
    """Estimate l, s, b on `lambdas` from the data samples x0 [N, *shape] (no caching; see module doc).

    Costs 2 JVPs per sample and grid point; provenance records the model evaluations and time.
    """
    check(jvp in JVP_METHODS, f"ems jvp method '{jvp}' is unknown; use one of {JVP_METHODS}")
    check(x0.shape[0] >= 2, "EMS need at least 2 samples")
    start = time.perf_counter()
    base = unwrap(denoiser)
    fd_step = torch.finfo(base.dtype).eps ** (1 / 3)
    x0 = x0.double()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(x0.device)
    v = (torch.randint(0, 2, x0.shape, generator=gen) * 2 - 1).to(x0)
    parts, n = _chunks(len(x0), batch_size), len(x0)
    models = [CountingDenoiser(base.bind(range(n)[r])) for r in parts]  # chunk r: samples r's conditions
    lambdas = lambdas.double().cpu()
    sigmas = torch.exp(-lambdas).tolist()

    def noised(sigma: float, r: slice) -> tuple[Tensor, Tensor]:
        y = x0[r] + sigma * z[r]
        return y, torch.full((len(y),), sigma, dtype=torch.float64, device=y.device)

    # One plain call first: a network's first call (placing it on the device; TorchScript's first-run optimisation)
    # inside torch.func.jvp leaked transform-level tensors or crashed.
    models[0].denoise(*noised(sigmas[0], parts[0]))

    # l = 1 - E[v * J_y D v]: Rademacher estimate of the Jacobian diagonal.
    l_rows = []
    for sigma in sigmas:
        total = torch.zeros(x0.shape[1:], dtype=torch.float64, device=x0.device)
        for r, model in zip(parts, models):
            y, s_r = noised(sigma, r)
            _, jv = _jvp(model.denoise, y, s_r, v[r], torch.zeros_like(s_r), jvp, fd_step)
            total += (v[r] * jv).sum(0)
        l_rows.append(1.0 - total / n)
    l = torch.stack(l_rows)  # noqa: E741
    dl = torch.gradient(l, spacing=(lambdas.to(l.device),), dim=0, edge_order=2)[0]

    # s, b: per-dimension least squares of f' (total derivative along the ODE) on f.
    var_x0 = x0.var(0, unbiased=False)
    s_rows, b_rows = [], []
    for k, sigma in enumerate(sigmas):
        moments = _Moments()
        for r, model in zip(parts, models):
            y, s_r = noised(sigma, r)
            d = model.denoise(y, s_r)
            _, dd = _jvp(model.denoise, y, s_r, d - y, -s_r, jvp, fd_step)
            f = (1 - l[k]) * y - d
            df = -dl[k] * y + (1 - l[k]) * (d - y) - dd
            moments.add(f, df)
        s_k = moments.cov / (moments.var + _RIDGE * (var_x0 + sigma**2))
        s_rows.append(s_k)
        b_rows.append(moments.mean_df - s_k * moments.mean_f)
    provenance = {"model_evaluations": sum(m.calls for m in models), "seconds": round(time.perf_counter() - start, 3),
                  "samples": n, "seed": seed, "jvp": jvp, "points": len(lambdas)}
    return EMS(lambdas, l.cpu(), torch.stack(s_rows).cpu(), torch.stack(b_rows).cpu(), provenance)


class _Moments:
    """Per-dimension means, variance of f and covariance of (f, f'), merged chunk by chunk (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean_f = self.mean_df = self.var = self.cov = torch.zeros(())

    def add(self, f: Tensor, df: Tensor) -> None:
        m = len(f)
        mf, mdf = f.mean(0), df.mean(0)
        m2, c = (f - mf).pow(2).sum(0), ((f - mf) * (df - mdf)).sum(0)
        n = self.n + m
        delta_f, delta_df = mf - self.mean_f, mdf - self.mean_df
        sum_var = self.var * self.n + m2 + delta_f**2 * self.n * m / n
        sum_cov = self.cov * self.n + c + delta_f * delta_df * self.n * m / n
        self.mean_f, self.mean_df = self.mean_f + delta_f * m / n, self.mean_df + delta_df * m / n
        self.var, self.cov, self.n = sum_var / n, sum_cov / n, n


# ---- samples, cache keys, cache ----------------------------------------------------------------

def _reference_samples(model: Denoiser, shape: Sequence[int], n: int, seed: int, batch_size: int,
                       device: torch.device) -> Tensor:
    """x0 for models without data: a 64-step Heun solve (karras grid) from common noise."""
    sigmas = make_sigmas("karras", REFERENCE_STEPS, model.schedule)
    scale = model.schedule.prior_std(float(sigmas[0]))
    out = []
    for r in _chunks(n, batch_size):
        x = NoiseSource(seed, range(n)[r], device).randn(shape, torch.float64) * scale
        out.append(heun(CountingDenoiser(model.bind(range(n)[r])), x, sigmas))
    return torch.cat(out)


def sample_source(denoiser: Denoiser) -> str:
    """How EMS samples x0 are obtained for this model (part of the cache key)."""
    return "data" if hasattr(unwrap(denoiser), "sample_data") else f"heun{REFERENCE_STEPS}-karras"


def samples_for_ems(denoiser: Denoiser, shape: Sequence[int], n: int, seed: int, *, batch_size: int = BATCH,
                    device: torch.device | str = "cpu") -> Tensor:
    """x0 [n, *shape]: the model's data when it has them, else reference-solver samples."""
    model = unwrap(denoiser)
    if hasattr(model, "sample_data"):
        data = model.sample_data(n, generator=torch.Generator().manual_seed(seed))
        return data.to(device)
    return _reference_samples(model, shape, n, seed, batch_size, torch.device(device))


_FINGERPRINTS: weakref.WeakKeyDictionary[Denoiser, str] = weakref.WeakKeyDictionary()


def fingerprint(denoiser: Denoiser, shape: Sequence[int], device: torch.device | str = "cpu") -> str:
    """A hash of the model's outputs on two fixed probes (1 evaluation, once per model object).

    Descriptions alone do not identify a model (two Gaussians of one dimension describe alike);
    outputs are rounded to 4 decimals so run-to-run float noise rarely changes the key.
    """
    model = unwrap(denoiser)
    if model not in _FINGERPRINTS:
        sigma = torch.tensor([0.5, 5.0], dtype=torch.float64, device=device)
        x = NoiseSource(0x5EED, range(2), device).randn(shape, torch.float64) * sigma.reshape(2, *[1] * len(shape))
        out = CountingDenoiser(model).denoise(x, sigma)
        rounded = np.round(out.double().cpu().numpy(), 4) + 0.0
        _FINGERPRINTS[model] = hashlib.sha256(rounded.tobytes()).hexdigest()[:16]
    return _FINGERPRINTS[model]


def cache_key(denoiser: Denoiser, shape: Sequence[int], lambdas: Tensor, samples: int, seed: int,
              source: str, jvp: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every field that changes the statistics; its hash names the cache file."""
    model = unwrap(denoiser)
    key = {"format": FORMAT, "model": model.describe(), "fingerprint": fingerprint(model, shape, device),
           "schedule": model.schedule.describe(), "shape": list(shape),
           "grid": [round(float(lambdas[0]), 9), round(float(lambdas[-1]), 9), len(lambdas)],
           "samples": samples, "seed": seed, "source": source, "jvp": jvp}
    if isinstance(model, RowLabels):  # the guided field depends on each sample's conditions
        key["conditions"] = model.conditions_hash(samples)
    return key


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


_LOADED: dict[tuple[Path, int], EMS] = {}


def _load(path: Path) -> EMS:
    """EMS.load, once per file version in this process."""
    key = (path, path.stat().st_mtime_ns if path.is_file() else 0)
    if key not in _LOADED:
        _LOADED[key] = EMS.load(path)
    return _LOADED[key]


def cached_ems(denoiser: Denoiser, shape: Sequence[int], lambdas: Tensor, *, samples: int = 1024, seed: int = 0,
               jvp: str = "autodiff", batch_size: int = BATCH, device: torch.device | str = "cpu",
               directory: Path | None = None) -> EMS:
    """EMS for this model and grid: from this process, else from the disk cache, else computed and saved."""
    check(samples >= 2, f"solver.ems_samples must be >= 2 (got {samples})")
    source = sample_source(denoiser)
    key = cache_key(denoiser, shape, lambdas, samples, seed, source, jvp, device)
    path = (directory or cache_dir()) / f"ems-{_key_hash(key)}.pt"
    if path.is_file():
        try:
            return _load(path)
        except UsageError as e:
            warn(f"EMS cache {path} is unusable ({e}); recomputing it")
    x0 = samples_for_ems(denoiser, shape, samples, seed, batch_size=batch_size, device=device)
    ems = compute_ems(denoiser, x0, lambdas, seed=seed, batch_size=batch_size, jvp=jvp)
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    replace(ems, provenance={**key, **ems.provenance, "created": created, "torch": torch.__version__}).save(path)
    return _load(path)


def resolve(denoiser: Denoiser, spec: str, shape: Sequence[int], lam_lo: float, lam_hi: float, *,
            points: int = 250, samples: int = 1024, seed: int = 0, device: torch.device | str = "cpu",
            batch_size: int = BATCH) -> EMS:
    """The EMS a solver option names: 'none' (degenerate), 'auto' (cached for this model), or a file.

    'auto' spans the model schedule's range, widened to [lam_lo, lam_hi] when sampling goes beyond it; it is
    estimated in batches of batch_size samples (the statistics do not depend on it, only the time does).
    """
    if spec == "none":
        return EMS.degenerate(lam_lo, lam_hi)
    if spec == "auto":
        schedule = unwrap(denoiser).schedule
        lo = min(-math.log(schedule.sigma_max), lam_lo)
        hi = max(-math.log(schedule.sigma_min), lam_hi)
        return cached_ems(denoiser, shape, lambda_grid(lo, hi, points), samples=samples, seed=seed, device=device,
                          batch_size=batch_size)
    path = Path(spec).expanduser().resolve()
    ems = _load(path)
    if not ems.covers(lam_lo, lam_hi):
        raise UsageError(f"solver.ems: '{path}' covers sigma in [{math.exp(-float(ems.lambdas[-1])):.4g}, "
                         f"{math.exp(-float(ems.lambdas[0])):.4g}] but the grid needs "
                         f"[{math.exp(-lam_hi):.4g}, {math.exp(-lam_lo):.4g}]; recompute it or narrow the schedule")
    return ems
