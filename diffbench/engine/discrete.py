"""Running a masked-diffusion point: token samples in batches from per-index noise, exact quality metrics.

The point was resolved by diffbench.engine.points (sampler spec, plan on a grid in t); this stage
samples every index in batches (tokens do not depend on the batch size), checks the passes it
counted against the sampler's declared NFE, and measures the samples exactly against the model.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from diffbench import columns as col
from diffbench import results
from diffbench.columns import MetricValue, ResultRow
from diffbench.discrete import DiscreteSpec
from diffbench.discrete.metrics import token_quality
from diffbench.discrete.sampling import DiscretePlan, sample_tokens
from diffbench.engine.points import Point

GRID_SEQUENCES = 16  # sequences kept per point for the sample-grid figures


def is_discrete(point: Point) -> bool:
    """Whether a point runs a discrete sampler."""
    return isinstance(point.spec, DiscreteSpec)


def sample_discrete(point: Point, model: Any, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Tokens [N, L] of samples `indices` in batches, passes per sample [N] and seconds; passes checked vs declared."""
    run, plan = point.run, point.plan
    assert isinstance(plan, DiscretePlan)
    model.to(run.device)
    start = time.perf_counter()
    batches = [sample_tokens(model, plan, indices[i:i + run.batch_size], run.seed)
               for i in range(0, len(indices), run.batch_size)]
    seconds = time.perf_counter() - start
    passes = torch.cat([b.passes for b in batches])
    if plan.nfe_declared is not None and bool((passes != plan.nfe_declared).any()):
        raise RuntimeError(f"'{point.spec.name}' made {passes.unique().tolist()} passes per sample, "
                           f"declared {plan.nfe_declared}")
    return torch.cat([b.tokens for b in batches]), passes, seconds


def measure_discrete(point: Point, model: Any, row: ResultRow) -> tuple[dict[str, Any], Mapping[str, MetricValue]]:
    """Sample and measure one discrete point: sets the row's measured columns, returns (extra columns, metrics)."""
    run = point.run
    tokens, passes, seconds = sample_discrete(point, model, range(run.n_samples))
    start = time.perf_counter()
    quality = token_quality(model, tokens)
    m = point.cfg.metrics
    values = quality.values(list(m.names), int(m.n_boot), float(m.ci_level))
    nfe = float(passes.double().mean())
    row.update(status=col.OK, reason=None, nfe_measured=nfe, time_sampling_s=seconds, time_per_nfe_s=seconds / nfe,
               time_metrics_s=time.perf_counter() - start, batch_size_used=run.batch_size, oom_halvings=0,
               samples_path=save_sequences(point.cfg.out, point.key, tokens[:GRID_SEQUENCES], model.vocab))
    return quality.extra(), values


def save_sequences(out: str, key: str, tokens: torch.Tensor, vocab: int) -> str:
    """Keep the first sequences: `tokens`, and `x` as one grey image [1, 1, N, L] for the sample-grid figures."""
    rel = Path("samples") / f"{key}.npz"
    image = tokens.double().cpu() / (vocab - 1) * 2 - 1
    results.save_npz(Path(out) / rel, x=image[None, None].numpy(), tokens=tokens.cpu().numpy())
    return str(rel)
