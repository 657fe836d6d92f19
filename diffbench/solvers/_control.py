"""Per-sample step-size control shared by the adaptive solvers (rk45, dpm_solver_adaptive).

Every sample carries its own lambda = -log sigma, step h and state. A trial step runs on the
sub-batch of samples still integrating and returns one error ratio per sample; each sample accepts
or rejects on its own ratio. A sample's steps, its result and its evaluation count therefore depend
only on its own trajectory, never on the batch it is in (up to float rounding: a sub-batch of another
size may reduce in another order), so batch size, sharding and resumed tables cannot change an
adaptive point. The reference codes (torchdiffeq, DPM-Solver) take one step size for the whole batch
from the batch's error norm instead, which made a point's NFE and error depend on its batch size.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffbench.errors import UsageError
from diffbench.models.base import Denoiser, expand_as

State = dict[str, Tensor]  # per-sample tensors, batch-first; "x" is the sample
# (rows' state, lambda, lambda_next) -> (state if accepted, state if rejected (caches filled), error ratio)
TrialFn = Callable[[State, Tensor, Tensor], tuple[State, State, Tensor]]
StepSizeFn = Callable[[Tensor, Tensor], Tensor]  # (h, error ratio) -> next h


def integrate(state: State, lam_start: float, lam_end: float, h: Tensor, trial: TrialFn,
              next_h: StepSizeFn, name: str, denoiser: Denoiser) -> State:
    """Advance every sample from lam_start to lam_end with its own accepted steps; returns the final state.

    A trial runs inside denoiser.on_rows(rows), so a conditional model sees the sub-batch's own labels.
    """
    state = {k: v.clone() for k, v in state.items()}  # updated in place below: never alias the caller's tensors
    lam, h = torch.full_like(h, lam_start), h.clone()
    while True:
        rows = (lam < lam_end).nonzero().squeeze(1)
        if rows.numel() == 0:
            return state
        sub = {k: v[rows] for k, v in state.items()}
        lam_r, h_r = lam[rows], h[rows]
        # The last step of each sample lands exactly on lam_end.
        lam_next = torch.where(h_r >= lam_end - lam_r, torch.full_like(lam_r, lam_end), lam_r + h_r)
        with denoiser.on_rows(rows):
            accepted, rejected, err = trial(sub, lam_r, lam_next)
        if not bool(torch.isfinite(err).all()):
            raise UsageError(f"{name}: the error estimate is not finite (the model returned NaN/inf)")
        ok = err <= 1
        for key, value in state.items():
            value[rows] = torch.where(expand_as(ok, value), accepted[key], rejected[key])
        lam[rows] = torch.where(ok, lam_next, lam_r)
        h[rows] = torch.minimum(next_h(lam_next - lam_r, err), lam_end - lam[rows]).clamp(min=0)


def rms(x: Tensor) -> Tensor:
    """Root mean square of each sample: [B, ...] -> [B]."""
    return x.flatten(1).pow(2).mean(1).sqrt()
