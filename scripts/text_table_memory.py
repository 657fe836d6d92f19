"""Process memory of a cached prompt-embedding table (SDXL's shapes), loaded whole vs memory-mapped, float32 vs float16.

    python scripts/text_table_memory.py --prompts 2000    # then scale the table bytes to COCO-30k's 30 000 prompts

Each variant runs in a fresh process: load the cache file as TextEncoders.table does, gather one batch of rows, and
report the resident memory added (RssAnon: the process's own heap; RssFile: the file's pages, which the kernel may
evict) and the table's size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from diffbench import tensorcache

SDXL = dict(tokens=77, width=2048, pooled=1280)  # CLIP-L (768) + OpenCLIP-G (1280) penultimate states, G's pooled


def rss_mb(kind: str) -> float:
    """This process's resident memory of a kind (RssAnon: its own heap; RssFile: file pages, evictable) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {kind} in /proc/self/status")


def measure(file: Path, mmap: bool, batch: int) -> dict[str, float]:
    """Resident MB (heap, file pages) added by loading the table and gathering `batch` rows; the table's MB."""
    before = {kind: rss_mb(kind) for kind in ("RssAnon", "RssFile")}
    tables = tensorcache.load(file, mmap=mmap)
    rows = tables["hidden"][torch.arange(batch)]
    hidden, pooled = tables["hidden"], tables["pooled"]
    size = (hidden.numel() * hidden.element_size() + pooled.numel() * pooled.element_size()) / 2**20
    return {**{kind: rss_mb(kind) - mb for kind, mb in before.items()}, "table_mb": size, "rows": float(len(rows))}


def build(folder: Path, prompts: int, dtype: torch.dtype) -> Path:
    """A cache file of random SDXL-shaped tables for `prompts` prompts (and the empty one) in `dtype`."""
    file = folder / f"table-{str(dtype).removeprefix('torch.')}.pt"
    g = torch.Generator().manual_seed(0)
    tensorcache.save(file, {"hidden": torch.randn(prompts + 1, SDXL["tokens"], SDXL["width"], generator=g).to(dtype),
                            "pooled": torch.randn(prompts + 1, SDXL["pooled"], generator=g).to(dtype),
                            "seconds": torch.tensor(0.0, dtype=torch.float64)})
    return file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--child", nargs=2, metavar=("FILE", "MMAP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1] == "1", args.batch)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.float32, torch.float16):
            file = build(Path(tmp), args.prompts, dtype)
            for mmap in (False, True):
                out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--child", str(file),
                                      str(int(mmap))], check=True, capture_output=True, text=True).stdout
                result = json.loads(out)
                coco = result["table_mb"] * 30001 / (args.prompts + 1) / 1024
                print(f"{str(dtype):14s} mmap={mmap!s:5s} table {result['table_mb']:8.1f} MB "
                      f"(COCO-30k: {coco:5.1f} GB)  after load + one batch: heap {result['RssAnon']:7.1f} MB, "
                      f"file pages {result['RssFile']:7.1f} MB")


if __name__ == "__main__":
    main()
