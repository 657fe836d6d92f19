"""The one denoiser form every solver sees, D(x, sigma) -> x0_hat, and conversions into it.

x lives in EDM coordinates (x = x_t / alpha(t), so x = x0 + sigma * eps) and sigma is the EDM noise
level exp(-lambda). Adapters convert their network's native output (eps, x0, v, flow velocity,
score) once, here; solvers never see a parameterisation.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor

from diffbench.errors import check
from diffbench.schedules import NoiseSchedule

Prediction = Literal["eps", "x0", "v", "flow", "score"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "flow", "score")
SIGMA_ABOVE_ZERO = "the denoiser was called at sigma <= 0; solvers must stop at sigma_min"
NO_LABEL = -1  # the class label of an unconditional evaluation (classifier-free guidance's null condition)


class Denoiser(ABC):
    """D(x, sigma) -> x0_hat, batch-first, bound to the NoiseSchedule its model was trained on."""

    schedule: NoiseSchedule
    dtype: torch.dtype = torch.float32

    @abstractmethod
    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x: [B, ...] in EDM coordinates, sigma: [B] noise levels > 0 -> x0_hat shaped like x."""

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return self.denoise(x, per_sample(sigma, x))

    def describe(self) -> dict[str, object]:
        """Fields that identify the model in a results row."""
        return {"model_dtype": str(self.dtype).removeprefix("torch.")}

    def decode(self, x: Tensor) -> Tensor:
        """Samples as the images the metrics see: latent models decode with their VAE; pixel models are images."""
        return x

    def bind(self, indices: Sequence[int]) -> Denoiser:
        """The two-argument denoiser a solver runs for samples `indices`; conditional wrappers bind their conditions."""
        return self

    def network_rows(self, x: Tensor, sigma: Tensor) -> int:
        """Network forward passes, summed over x's rows, of one call at sigma (guidance evaluates some rows twice)."""
        return x.shape[0]

    @contextmanager
    def on_rows(self, rows: Tensor) -> Iterator[None]:
        """Calls inside evaluate only `rows` of the current batch (a solver stepping a sub-batch wraps its calls in this
        so per-sample conditions follow the rows); nests."""
        yield


class ConditionalDenoiser(Denoiser):
    """D(x, sigma, labels) for class labels 0 .. classes-1 ([B] int64; NO_LABEL: unconditional).

    Called with two arguments it is the unconditional model, so conditions=none samples its marginal.
    """

    classes: int

    @abstractmethod
    def denoise_cond(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """x: [B, ...], sigma: [B], labels: [B] -> x0_hat given each row's label."""

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.denoise_cond(x, sigma, torch.full((x.shape[0],), NO_LABEL, dtype=torch.long, device=x.device))


def per_sample(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Broadcast a scalar or [B] noise level to a [B] tensor on x's device and dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


def expand_as(v: Tensor, x: Tensor) -> Tensor:
    """View a [B] tensor as [B, 1, 1, ...] so it broadcasts against x."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class CountingDenoiser(Denoiser):
    """Wraps a denoiser, counts its calls (one call = one NFE) and moves x to the model's precision.

    Solvers may keep their state in float64; the wrapped model runs in its own dtype and the
    result comes back in the caller's dtype. Every call must be at sigma > 0: checked per call, or with
    `deferred` once by `check_sigmas()` after the solver, since reading a GPU tensor per call stalls the host
    until the device catches up (the next network call could not be queued while this one runs).
    """

    def __init__(self, inner: Denoiser, budget: int | None = None, deferred: bool = False):
        self.inner, self.budget, self.calls = inner, budget, 0
        self.sample_evals = 0  # rows evaluated over all calls: adaptive solvers call on sub-batches
        self.network_evals = 0  # network forward passes over all calls and rows (guided calls make two)
        self.schedule, self.dtype = inner.schedule, inner.dtype
        self.deferred = deferred
        self._lowest: Tensor | None = None  # with deferred: the lowest sigma called so far, on its device

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        self.sample_evals += x.shape[0]
        self.network_evals += self.inner.network_rows(x, sigma)
        if self.budget is not None and self.calls > self.budget:
            raise RuntimeError(f"solver exceeded its NFE budget of {self.budget}")
        if self.deferred:
            low = sigma.min()
            self._lowest = low if self._lowest is None else torch.minimum(self._lowest, low)
        else:
            check(bool((sigma > 0).all()), SIGMA_ABOVE_ZERO)
        out = self.inner.denoise(x.to(self.inner.dtype), sigma.to(self.inner.dtype))
        return out.to(x.dtype)

    def check_sigmas(self) -> None:
        """The deferred sigma > 0 check of every call so far (UsageError; one host sync)."""
        if self._lowest is not None:
            check(bool(self._lowest > 0), SIGMA_ABOVE_ZERO)

    def describe(self) -> dict[str, object]:
        return self.inner.describe()

    @contextmanager
    def on_rows(self, rows: Tensor) -> Iterator[None]:
        with self.inner.on_rows(rows):
            yield


class PredictionDenoiser(Denoiser):
    """Adapts a network f(x_t, t) predicting eps / x0 / v / flow velocity / score to D(x, sigma).

    The network is called in its native coordinates x_t = alpha(t) x at its own time t(sigma).
    """

    def __init__(self, net: Callable[..., Tensor], schedule: NoiseSchedule,
                 prediction: Prediction, dtype: torch.dtype = torch.float32):
        check(prediction in PREDICTIONS, f"model.prediction '{prediction}' is unknown; use one of {PREDICTIONS}")
        self.net, self.schedule, self.prediction, self.dtype = net, schedule, prediction, dtype

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.predict(x, sigma)

    def predict(self, x: Tensor, sigma: Tensor, *cond: object) -> Tensor:
        """D(x, sigma) with extra network inputs `cond` (class labels, text embeddings) passed after (x_t, t)."""
        t = self.schedule.sigma_to_t(sigma.double().cpu())
        alpha = expand_as(self.schedule.alpha(t).to(x), x)
        std = expand_as(self.schedule.sigma(t).to(x), x)
        x_t = alpha * x
        out = self.net(x_t, t.to(device=x.device, dtype=x.dtype), *cond)
        return to_x0(out, self.prediction, x_t, alpha, std, self._derivatives(t, x))

    def _derivatives(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.prediction != "flow":
            return None
        return tuple(expand_as(d.to(x), x) for d in schedule_derivatives(self.schedule, t))  # type: ignore[return-value]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "prediction": self.prediction}


def schedule_derivatives(schedule: NoiseSchedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """d alpha / dt and d sigma / dt at t (autograd through the closed forms)."""
    t = t.detach().double().clone().requires_grad_(True)
    with torch.enable_grad():
        d_alpha = torch.autograd.grad(schedule.alpha(t).sum(), t)[0]
        d_sigma = torch.autograd.grad(schedule.sigma(t).sum(), t)[0]
    return d_alpha, d_sigma


def to_x0(out: Tensor, prediction: str, x_t: Tensor, alpha: Tensor, std: Tensor,
          derivatives: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Convert a native prediction at x_t = alpha x0 + std eps into x0_hat."""
    if prediction == "x0":
        return out
    if prediction == "eps":
        return (x_t - std * out) / alpha
    if prediction == "score":
        return (x_t + std**2 * out) / alpha
    if prediction == "v":
        # v = alpha eps - std x0  =>  x0 = (alpha x_t - std v) / (alpha^2 + std^2).
        return (alpha * x_t - std * out) / (alpha**2 + std**2)
    # Flow velocity u = alpha' x0 + std' eps; eliminate eps with x_t.
    d_alpha, d_std = derivatives  # type: ignore[misc]
    return (d_std * x_t - std * out) / (alpha * d_std - std * d_alpha)


def from_x0(x0: Tensor, prediction: str, x_t: Tensor, alpha: Tensor, std: Tensor,
            derivatives: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """The native prediction a perfect model would output given x0 (inverse of to_x0; for tests)."""
    eps = (x_t - alpha * x0) / std
    if prediction == "x0":
        return x0
    if prediction == "eps":
        return eps
    if prediction == "score":
        return -eps / std
    if prediction == "v":
        return alpha * eps - std * x0
    d_alpha, d_std = derivatives  # type: ignore[misc]
    return d_alpha * x0 + d_std * eps
