"""Train the tiny masked transformer (diffbench.discrete.network) on sequences drawn from the exact Markov chain.

The training set is a fixed sample of the chain (seeded); the loss is cross-entropy on masked
positions at a uniform mask ratio, whose minimiser is the chain's exact masked conditionals. Writes
the checkpoint `model=markov_transformer` loads (fp32 weights, the chain's options, how it was trained).

    nice -n 10 python scripts/train_discrete_transformer.py --minutes 4 --out diffbench/assets/markov-transformer.pt
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from diffbench.discrete.markov import MarkovChain
from diffbench.discrete.network import MaskedTransformer, masked_loss, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--concentration", type=float, default=0.5)
    parser.add_argument("--chain-seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=50_000, help="sequences drawn from the chain")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget")
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    chain_options = {"vocab": args.vocab, "length": args.length, "concentration": args.concentration,
                     "seed": args.chain_seed}
    chain = MarkovChain(**chain_options)
    generator = torch.Generator().manual_seed(1)
    data, held_out = chain.sample(args.train_size, generator), chain.sample(4096, generator)
    arch = {"width": args.width, "depth": args.depth}
    net = MaskedTransformer(args.vocab, args.length, **arch)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    start, step = time.perf_counter(), 0
    while step < args.max_steps and time.perf_counter() - start < 60 * args.minutes:
        batch = data[torch.randint(len(data), (args.batch,), generator=generator)]
        loss = masked_loss(net, batch, args.vocab, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        if step % 500 == 0:
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    with torch.no_grad():
        held = float(masked_loss(net, held_out, args.vocab, torch.Generator().manual_seed(2)))
    meta = {"command": "python " + shlex.join(sys.argv), "steps": step, "batch": args.batch, "lr": args.lr,
            "train_size": args.train_size, "seconds": round(time.perf_counter() - start), "held_out_loss": held}
    print(meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, net, chain_options, arch, meta)


if __name__ == "__main__":
    main()
