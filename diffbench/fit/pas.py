"""PAS (Wang et al. 2025, "Diffusion Sampling Correction via Approximately 10 Parameters", ICML; reference code
github.com/onefly123/PAS): a few coordinates per step that correct the sampling direction in a PCA basis of the
trajectory's own past directions, fitted step by step on calibration samples against a teacher trajectory.

Basis at step i, per sample (PAS's `PCA_process`): u_1 = d_i / |d_i|, then the top principal directions of the
centred buffer [x_T, d_0, ..., d_(i-1), d_i] (past directions as actually taken, the current one last),
Gram-Schmidt orthogonalised against the earlier u and each flipped to point along x_i - x_T; at most PCA_NUM
vectors, fewer while the buffer is short (PAS skips those steps instead). Corrected direction: d' = |d_i| sum_j
c_j u_j. Ours, where the reference differs: (1) the corrected direction is the model's, d_i = (x_i - D(x_i)) /
sigma_i, corrected by a wrapper around the denoiser, so one rule serves every solver that evaluates once per grid
level (for Euler/DDIM this is PAS exactly; multistep solvers then keep the corrected direction in their history,
where PAS's iPNDM corrects the combined step direction and keeps the raw one); (2) the coordinates are relative
to |d_i| (identity at c = e_1) where PAS's first coordinate starts at the calibration mean of |d_i|; (3) each
step's coordinates minimise the L2 distance to the teacher's state after the step exactly: that state is affine
in c (the solvers are linear in D), so a least-squares solve on size + 1 solver runs replaces Adam;
(4) the coordinates are fitted on the first half of the calibration samples and PAS's adaptive search decides on
the second half (exact least squares overfits where Adam's few small steps did not: on the fitting samples alone the
image mixture's DPM-Solver++(2M) at NFE 10 took a last-step coordinate of 73 and ended 9x worse on held-out noise);
its tolerances are relative: a step is corrected only when it lowers its loss there by TAU_FIRST (the first
corrected step) or TAU (later ones), and (5) only when the final state's loss there does not rise (a multistep
solver's later steps can undo a step's gain: without this guard iPNDM at NFE 6 on the image mixture ended 7x worse
than uncorrected on its own calibration samples). The teacher is RK45 (rtol = atol = 1e-5)
between the grid's levels, ending, like the evaluation's reference, in D(x, sigma_min) when the grid ends at 0.

Steps left uncorrected run the base solver untouched, so an artefact with no corrected step samples it bit for bit.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from diffbench.errors import check
from diffbench.fit import artefacts
from diffbench.models.base import Denoiser, expand_as
from diffbench.noise import NoiseSource
from diffbench.sampling import Plan
from diffbench.solvers import get_solver

PCA_NUM = 4
TAU_FIRST, TAU = 1e-2, 1e-3
LOST = 1e-9  # a principal direction whose residual after Gram-Schmidt is below this adds nothing (kept as 0)
OPTIONS = {"pca_num": PCA_NUM, "use_xT": True, "loss": "L2", "coordinates": "relative to |d|",
           "search": "least squares on the first half of the calibration samples", "tau_first": TAU_FIRST, "tau": TAU,
           "accept": "step and final loss on the second half", "teacher": "rk45 between grid levels"}
Coefficients = Mapping[int, list[float]]
Solve = Callable[[Denoiser, Tensor, Tensor], Tensor]


class Corrected(Denoiser):
    """One batch's denoiser with PAS's correction at the calls `coefficients` names (call i at grid level i)."""

    def __init__(self, inner: Denoiser, sigmas: Tensor, coefficients: Coefficients):
        self.inner, self.schedule, self.dtype = inner, inner.schedule, inner.dtype
        self.coefficients, self.sigmas = coefficients, sigmas.tolist()
        self.states: list[Tensor] = []  # x at every call so far: the trajectory the basis is built from

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        i = len(self.states)
        self.states.append(x)
        denoised = self.inner.denoise(x, sigma)
        if i not in self.coefficients:
            return denoised
        s = expand_as(sigma, x)
        d = (x - denoised) / s
        return x - s * corrected(d, self.buffer(d), x - self.states[0], self.coefficients[i])

    def buffer(self, d: Tensor) -> list[Tensor]:
        """[x_T, the directions taken so far, d]: what PAS's PCA runs on."""
        taken = [(b - a) / (s1 - s0) for a, b, s0, s1 in zip(self.states[:-1], self.states[1:], self.sigmas,
                                                                self.sigmas[1:])]
        return [self.states[0], *taken, d]


def basis(d: Tensor, buffer: list[Tensor], travelled: Tensor) -> Tensor:
    """[B, k, n]: u_1 = d/|d| and the buffer's principal directions, orthonormalised (0 where dependent), flipped along
    `travelled`."""
    flat = torch.stack([b.flatten(1) for b in buffer], dim=1)  # [B, m, n]
    centred = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    units = [d.flatten(1) / d.flatten(1).norm(dim=1, keepdim=True)]
    for j in range(min(PCA_NUM - 1, flat.shape[1] - 1, vh.shape[1])):  # rank <= m - 1 for m centred vectors, <= n
        v = vh[:, j]
        for u in units:
            v = v - (u * v).sum(dim=1, keepdim=True) * u
        norm = v.norm(dim=1, keepdim=True)  # of a unit vector's residual: 0 when it lies in the earlier span
        v = torch.where(norm > LOST, v / norm.clamp_min(LOST), 0.0)
        units.append(torch.where((v * travelled.flatten(1)).sum(dim=1, keepdim=True) >= 0, v, -v))
    return torch.stack(units, dim=1)


def corrected(d: Tensor, buffer: list[Tensor], travelled: Tensor, coefficients: list[float]) -> Tensor:
    """d' = |d| sum_j c_j u_j (coordinates beyond the basis' size are 0)."""
    u = basis(d, buffer, travelled)
    c = torch.tensor(coefficients, dtype=d.dtype, device=d.device)[:u.shape[1]]
    scale = d.flatten(1).norm(dim=1, keepdim=True)
    return (scale * torch.einsum("bkn,k->bn", u, c)).view_as(d)


def sizes(steps: int) -> list[int]:
    """Basis size at each step: 1 + the buffer's rank (x_T and i + 1 directions at step i), at most PCA_NUM."""
    return [min(PCA_NUM, i + 2) for i in range(steps)]


def fit(denoiser: Denoiser, x: Tensor, sigmas: Tensor, solve: Solve) -> dict[int, list[float]]:
    """PAS's adaptive search: coordinates for the steps where they lower the distance to the teacher."""
    steps = len(sigmas) - 1
    probe = Corrected(denoiser, sigmas, {})
    solve(probe, x, sigmas)
    calls = len(sigmas[sigmas > 0])
    check(len(probe.states) == calls, f"steps.method=pas corrects solvers that evaluate once per grid level "
                                      f"({calls} here); this one made {len(probe.states)} evaluations")
    targets = teacher(denoiser, x, sigmas)
    half = len(x) // 2  # the first half fits the coordinates, the second decides whether a step keeps them
    check(half >= 1, "steps.method=pas needs steps.calibration_n >= 2 (half fit, half validate)")
    fitting, held = slice(0, half), slice(half, None)
    found: dict[int, list[float]] = {}
    for i, size in enumerate(sizes(steps)):
        def after(c: list[float] | None, i: int = i) -> list[Tensor]:
            return after_steps(denoiser, x, sigmas, solve, found if c is None else {**found, i: c})

        start = [1.0] + [0.0] * (size - 1)
        base = after(None)
        responses = [after([v + (k == j) for k, v in enumerate(start)])[i] - base[i] for j in range(size)]
        jacobian = torch.stack([r[fitting].flatten() for r in responses], dim=1)
        residual = (targets[i] - base[i])[fitting].flatten().unsqueeze(1)
        candidate = [v + float(dv) for v, dv in zip(start, torch.linalg.lstsq(jacobian, residual).solution[:, 0])]
        trial = after(candidate)
        tau = TAU if found else TAU_FIRST
        better = mse(trial[i][held], targets[i][held]) < (1 - tau) * mse(base[i][held], targets[i][held])
        if better and mse(trial[-1][held], targets[-1][held]) <= mse(base[-1][held], targets[-1][held]):
            found[i] = candidate
    return found


def after_steps(denoiser: Denoiser, x: Tensor, sigmas: Tensor, solve: Solve,
                coefficients: Coefficients) -> list[Tensor]:
    """The solver's state after each step (the next call's input; the output after the last)."""
    wrapped = Corrected(denoiser, sigmas, coefficients)
    out = solve(wrapped, x, sigmas)
    return [*wrapped.states[1:], out][:len(sigmas) - 1]


def teacher(denoiser: Denoiser, x: Tensor, sigmas: Tensor) -> list[Tensor]:
    """The RK45 teacher's states at the grid's levels after the first (D(x, sigma_min) at a final 0)."""
    rk45 = get_solver("rk45").fn
    levels = sigmas[sigmas > 0].tolist()
    states = []
    for a, b in zip(levels[:-1], levels[1:]):
        x = rk45(denoiser, x, torch.tensor([a, b], dtype=torch.float64))
        states.append(x)
    if float(sigmas[-1]) == 0:
        states.append(denoiser(x, levels[-1]))
    return states


def mse(x: Tensor, target: Tensor) -> float:
    """Mean squared distance: PAS's L2 loss, the square of the rmse_ref the sweeps report."""
    return float((x - target).pow(2).mean())


def point_plan(plan: Plan, cfg: DictConfig) -> Plan:
    """A sweep point's plan: corrected when it runs a fitted artefact with PAS coefficients (see fill_fitted)."""
    if cfg.steps.name != "fitted":
        return plan
    return corrected_plan(plan, artefacts.load(cfg.cache_dir, str(cfg.steps.artefact)) or {})


def corrected_plan(plan: Plan, artefact: Mapping[str, Any]) -> Plan:
    """The plan whose solver runs with the artefact's PAS coefficients (the plan itself when it has none)."""
    if "pas" not in artefact:
        return plan
    calls = len(plan.sigmas[plan.sigmas > 0])
    check(plan.nfe_declared == calls, f"PAS coefficients need a solver that evaluates once per grid level; "
                                      f"{plan.solver.name} declares {plan.nfe_declared} for {calls} levels")
    coefficients = {int(i): list(c) for i, c in artefact["pas"].items()}
    base = plan.solver.fn

    @functools.wraps(base)
    def solver(denoiser: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSource | None = None,
               **options: Any) -> Tensor:
        return base(Corrected(denoiser, sigmas, coefficients), x, sigmas, noise=noise, **options)

    return dataclasses.replace(plan, solver=dataclasses.replace(plan.solver, fn=solver))
