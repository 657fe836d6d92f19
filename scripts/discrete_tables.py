"""Discrete samplers on the exact Markov-chain model: convergence in steps, and float32 vs float64 sampling.

convergence: every sampler x steps on an enumerable chain (e.g. V=3, L=4: 81 sequences): exact TV /
KL(empirical || true), per-position marginal TV, |NLL - H|, chi-square p-values
against the true distribution and against first-hitting samples (disjoint sample indices), and the
passes per sample (the cached ancestral sampler gives the ancestral sampler's very samples).
precision: the cached ancestral and first-hitting samplers with float32 vs float64 Gumbel-max
categorical sampling on the same noise (V=32 chain with a flat tail of rare tokens, model=markov_tail): the
paired entropy drop per token as steps grow, the share of rare tokens, how many samples float32 changes
(same noise, so only the truncation changes one) and the log p they gained.
Writes results/discrete/<table>.{md,json} with the command.

    python scripts/discrete_tables.py convergence --vocab 3 --length 4 --n 20000 --steps 2 4 8 16 32 64 128 256
    python scripts/discrete_tables.py precision --vocab 32 --length 8 --n 512 --steps 100 1000 3000 10000
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffbench.discrete import SAMPLERS, make_model
from diffbench.discrete.markov import MarkovChain
from diffbench.discrete.metrics import METRICS, TokenQuality, chi_square_fit, chi_square_two_sample
from diffbench.discrete.sampling import make_plan, sample_tokens

# A token of probability p at the ancestral step of move 1/j is drawn at r / (e^r - 1) of its rate in float32,
# r = 2^-24 j / p (24-bit uniforms): at p = 1e-3, 0.7 at j = 10^4 and 0.2 at j = 5 * 10^4.
RARE = 2e-3
CONVERGENCE = ("mdlm_ancestral_cache", "tau_leaping", "remdm", "llada_confidence", "entropy_unmask", "first_hitting")


def point(model: MarkovChain, name: str, steps: int, n: int, offset: int, options: dict[str, Any]) -> dict[str, Any]:
    """Sample n sequences (indices offset..offset+n-1) and measure them; None fields where not applicable."""
    plan = make_plan(SAMPLERS[name], steps, model.length, options)
    start = time.perf_counter()
    batch = sample_tokens(model, plan, range(offset, offset + n), seed=0)
    seconds = time.perf_counter() - start
    quality = TokenQuality(model, batch.tokens)
    names = METRICS if model.enumerable else [m for m in METRICS if m not in ("tv", "kl")]
    row = {"sampler": name, **options, "steps": steps, "nfe_per_sample": float(batch.passes.double().mean()),
           "seconds": round(seconds, 2), **{k: v.value for k, v in quality.values(names, 0, 0.95).items()},
           **quality.extra()}
    return row | {"_tokens": batch.tokens}


def convergence(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = make_model("markov_chain", {"vocab": args.vocab, "length": args.length}).to(args.device)
    p = model.probabilities()
    reference = model.sequence_index(point(model, "first_hitting", model.length, args.n, args.n, {})["_tokens"])
    rows = []
    for name in CONVERGENCE:
        for steps in sorted({*args.steps, model.length}):
            spec = SAMPLERS[name]
            if (spec.one_pass_per_token and steps != model.length) or (spec.at_most_length and steps > model.length):
                continue
            row = point(model, name, steps, args.n, 0, {})
            seq = model.sequence_index(row.pop("_tokens"))
            rows.append(row | {"p_fit": chi_square_fit(seq.cpu(), p.cpu()),
                               "p_vs_first_hitting": chi_square_two_sample(seq.cpu(), reference.cpu(), len(p))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def precision(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per sampler and steps: float64 and float32 runs on the same noise, and their paired differences."""
    options = {"vocab": args.vocab, "length": args.length, "concentration": args.concentration, "tail": args.tail}
    model = make_model("markov_chain", options).to(args.device)
    rows = []
    for name, steps_list in (("first_hitting", (model.length,)), ("mdlm_ancestral_cache", args.steps)):
        for steps in steps_list:
            runs = {p: point(model, name, steps, args.n, 0, {"precision": p}) for p in ("float64", "float32")}
            rows.append(paired_row(model, runs["float64"], runs["float32"]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def paired_row(model: MarkovChain, exact: dict[str, Any], truncated: dict[str, Any]) -> dict[str, Any]:
    """float32 against float64 on the same noise: only the truncation changes a sample, so differences are paired.

    entropy_drop_per_token is the mean of log p(float32 sample) - log p(float64 sample) per token: how much
    float32 lowers the samples' cross-entropy under the exact model (their entropy, for an exact sampler).
    """
    a, b = exact["_tokens"], truncated["_tokens"]
    changed = (a != b).any(1)
    drop = (model.log_prob(b) - model.log_prob(a)) / model.length
    per_token = {p: run["nll"] / model.length for p, run in (("float64", exact), ("float32", truncated))}
    return {"sampler": exact["sampler"], "steps": exact["steps"], "nfe_per_sample": exact["nfe_per_sample"],
            "seconds_float64": exact["seconds"], "seconds_float32": truncated["seconds"],
            "nll_per_token_float64": per_token["float64"], "nll_per_token_float32": per_token["float32"],
            "entropy_drop_per_token": float(drop.mean()), "drop_se": float(drop.std() / len(drop) ** 0.5),
            "changed_samples": int(changed.sum()),
            "logp_gain_of_changed": float(drop[changed].mean() * model.length) if changed.any() else 0.0,
            "rare_share_float64": float(rare(model, a).double().mean()),
            "rare_share_float32": float(rare(model, b).double().mean()), "rare_share_true": rare_share_true(model),
            "unigram_entropy_float64": exact["unigram_entropy"],
            "unigram_entropy_float32": truncated["unigram_entropy"],
            "entropy_true": exact["entropy_true"], "unigram_entropy_true": exact["unigram_entropy_true"]}


def rare(model: MarkovChain, tokens: torch.Tensor) -> torch.Tensor:
    """[N, L]: whether each token had probability < RARE given the previous one (the initial row at position 0)."""
    step = torch.cat([model.initial[tokens[:, :1]], model.transition[tokens[:, :-1], tokens[:, 1:]]], 1)
    return step < RARE


def rare_share_true(model: MarkovChain) -> float:
    """The exact share of positions holding a rare token (probability < RARE given the previous one)."""
    first = rare_mass(model.initial)
    rest = model.marginals()[:-1] @ rare_mass(model.transition)
    return float((first + rest.sum()) / model.length)


def rare_mass(p: torch.Tensor) -> torch.Tensor:
    """Probability mass of the rare entries (< RARE) of each row of p."""
    return (p * (p < RARE)).sum(-1)


def markdown(rows: list[dict[str, Any]], command: str, device: str) -> str:
    """The rows as a markdown table, with the command that made them."""
    keys = [k for k in rows[0] if k not in ("entropy_true", "unigram_entropy_true")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"Command: `{command}` (device: {device}); true sequence entropy {rows[0]['entropy_true']:.4f} nats, "
             f"true unigram entropy {rows[0]['unigram_entropy_true']:.4f} nats.", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=("convergence", "precision"))
    parser.add_argument("--n", type=int, default=20_000, help="samples per point")
    parser.add_argument("--vocab", type=int, default=3)
    parser.add_argument("--length", type=int, default=4)
    parser.add_argument("--concentration", type=float, default=0.02, help="precision: Dirichlet concentration of rows")
    parser.add_argument("--tail", type=float, default=0.03, help="precision: row share spread uniformly (rare tokens)")
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("results/discrete"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (small tensors: 1 avoids contention)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {"convergence": convergence, "precision": precision}[args.table](args)
    command = "python " + shlex.join(sys.argv)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "device": device, "rows": rows}
    (args.out / f"{args.table}.json").write_text(json.dumps(record, indent=1))
    (args.out / f"{args.table}.md").write_text(markdown(rows, command, device))


if __name__ == "__main__":
    main()
