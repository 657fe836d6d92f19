"""Pipeline text encoders run once per prompt set, their embeddings cached on disk by (encoder identity, prompts hash).

Shared by the Stable Diffusion UNets (text_unet.py) and the SD3 / Flux transformers (flow_transformer.py): each
adapter names its pipeline's (encoder, tokenizer) folders and how a batch of prompts becomes its condition tensors
(`EncodeBatch`); this module loads the encoders only when a prompt set is not in the cache's ``text/`` folder, encodes
the prompts and then the empty prompt (the last row: CFG's null condition) in batches, times it, and stores the
tables in `store_dtype` (the network's precision when it runs in half precision: half the memory, the same inputs).
Tables are memory-mapped from their cache file, so a batch reads only its own prompts' rows.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffbench import tensorcache
from diffbench.assetstore import cache_dir, file_digest
from diffbench.errors import UsageError, check
from diffbench.models._network import first_line
from diffbench.models.conditions import texts_digest
from diffbench.models.diffusers import read_json

ENCODE_BATCH = 64
SECONDS = "seconds"  # the table entry holding the encoding's seconds (float64 scalar)
# (loaded (encoder, tokenizer) pairs in `parts` order, prompts) -> {name: [len(prompts), ...] tensors on the CPU}
EncodeBatch = Callable[[list[tuple[Any, Any]], list[str]], dict[str, Tensor]]


HALF = (torch.float16, torch.bfloat16)


def half_store(net_dtype: torch.dtype) -> torch.dtype | None:
    """The precision prompt tables are kept in: the network's when it runs in half precision (the network casts its
    inputs to it anyway), else None: the encoders' own."""
    return net_dtype if net_dtype in HALF else None


class TextEncoders:
    """A pipeline's tokenizer(s) and text encoder(s), loaded only when a prompt set is not in the cache."""

    def __init__(self, root: Path, parts: Sequence[tuple[str, str]], encode: EncodeBatch, settings: Sequence[object],
                 dtype: torch.dtype, expected: str, store_dtype: torch.dtype | None = None):
        self.root, self.encode, self.dtype, self.expected, self.store_dtype = root, encode, dtype, expected, store_dtype
        index = read_json(root / "model_index.json")
        missing = [name for pair in parts for name in pair if not (index.get(name) or [None, None])[1]]
        check(not missing, f"{root}/model_index.json names no {', '.join(missing)}; expected {expected}")
        # (encoder folder, tokenizer folder) -> their transformers class names
        self.parts = {(enc, tok): (index[enc][1], index[tok][1]) for enc, tok in parts}
        self.zeros_for_empty = bool(index.get("force_zeros_for_empty_prompt", False))  # SDXL: the empty prompt is zeros
        self.identity = self._identity(settings)

    def _identity(self, settings: Sequence[object]) -> str:
        """SHA-256 (16 hex) of the encoders' and tokenizers' files and the encoding settings."""
        stored = [] if self.store_dtype is None else [str(self.store_dtype)]
        h = hashlib.sha256(json.dumps([*settings, self.zeros_for_empty, str(self.dtype), *stored]).encode())
        for enc, tok in self.parts:
            for file in sorted((self.root / enc).glob("*")) + sorted((self.root / tok).glob("*")):
                if file.is_file():
                    h.update(f"{file.name}:{file_digest(file)};".encode())
        return h.hexdigest()[:16]

    def table(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """The prompts' tables (rows 0 .. P-1, the empty prompt's row P) and SECONDS, from the cache or encoded;
        memory-mapped from the cache file: each batch reads only its prompts' rows (SD3 / Flux on COCO-30k hold
        82 / 126 GB of embeddings even in float16)."""
        path = cache_dir() / "text" / f"{self.identity}-{texts_digest(texts)[:16]}.pt"
        return tensorcache.load_or_build(path, lambda: self._encode(texts), "text embeddings", mmap=True)

    def _encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Encode the prompts, then the empty prompt (the last row), in batches on a GPU when there is one; with the
        encoding's seconds (loading the encoders excluded), stored with the embeddings."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        pairs = [self._load(enc, tok, device) for enc, tok in self.parts]
        batches = [list(texts[i:i + ENCODE_BATCH]) for i in range(0, len(texts), ENCODE_BATCH)] + [[""]]
        start = time.perf_counter()
        with torch.inference_mode():
            parts = [self.encode(pairs, batch) for batch in batches]
        seconds = torch.tensor(time.perf_counter() - start, dtype=torch.float64)
        if self.zeros_for_empty:
            parts[-1] = {name: torch.zeros_like(t) for name, t in parts[-1].items()}
        dtype = self.store_dtype or self.dtype
        tables = {name: torch.cat([part[name] for part in parts]).to(dtype) for name in parts[-1]}
        return {SECONDS: seconds, **tables}

    def _load(self, encoder: str, tokenizer: str, device: torch.device) -> tuple[Any, Any]:
        """(text encoder on `device`, tokenizer) of the pipeline folder; UsageError when unloadable."""
        import transformers

        enc_class, tok_class = self.parts[(encoder, tokenizer)]
        try:
            model = getattr(transformers, enc_class).from_pretrained(self.root / encoder)
            tok = getattr(transformers, tok_class).from_pretrained(self.root / tokenizer)
        except (OSError, ValueError, RuntimeError, AttributeError) as e:
            raise UsageError(f"{self.root}: cannot load {encoder}/{tokenizer} ({first_line(e)}); "
                             f"expected {self.expected}") from None
        return model.to(device, self.dtype).eval().requires_grad_(False), tok


def token_ids(tokenizer: Any, texts: list[str], length: int, device: torch.device) -> Tensor:
    """The pipelines' tokenization: padded to `length`, truncated, on the encoder's device."""
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                     return_tensors="pt").input_ids.to(device)
