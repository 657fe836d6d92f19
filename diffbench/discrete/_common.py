"""Maths the discrete samplers share: the masked-position update and the pass over all rows."""
from __future__ import annotations

import torch
from torch import Tensor

from diffbench.discrete.contract import CountingDiscreteDenoiser, sample_categorical
from diffbench.noise import NoiseSource


def unmask_step(x: Tensor, p_x0: Tensor, move: Tensor | float, noise: NoiseSource, precision: str) -> Tensor:
    """Each masked position becomes token v with probability move * p_x0(v), else stays masked.

    Unmasked positions carry over. `move` is a scalar or [B]; one uniform draw [L, V + 1] per sample.
    """
    batch, length, vocab = p_x0.shape
    move = torch.as_tensor(move, dtype=torch.float64, device=p_x0.device).expand(batch)[:, None, None]
    probs = torch.cat([p_x0 * move, (1 - move).expand(batch, length, 1)], -1)
    draw = sample_categorical(probs, noise.rand((length, vocab + 1)), precision)
    return torch.where(x == vocab, draw, x)


def denoise_all(denoiser: CountingDiscreteDenoiser, x: Tensor, t: Tensor) -> Tensor:
    """One pass over every row at the common time t (a 0-d tensor)."""
    return denoiser(x, t.expand(len(x)))


def steps_of(times: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(t, s) pairs of consecutive grid times, t > s."""
    return list(zip(times[:-1], times[1:]))
