"""Condition sets: each sample's class label (or prompt) as a pure function of its index, like its noise.

Sample i gets the same label in every point, batch size and rank: a set is built once for the
point's samples 0 .. n-1 and sliced by index. Its name and content hash (of those n labels, and the
prompts they index) go in the row. `none` is the default: the model runs unconditionally and nothing
is recorded. `prompts` reads text prompts (a .txt file, one a line, or a CSV/Parquet column).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffbench.assetstore import PACKAGE_ASSETS
from diffbench.errors import UsageError, check
from diffbench.registries import registrar

NONE = "none"
ORDERS = ("cyclic", "shuffled")
SMOKE_PROMPTS = "prompts_smoke.txt"  # shipped in diffbench/assets/
PROMPT_SUFFIXES = (".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class ConditionSet:
    """The labels of samples 0 .. n-1 (int64), by index."""

    name: str
    labels: Tensor
    texts: tuple[str, ...] = ()  # prompts: labels index into them (text conditions); empty for class labels

    def take(self, indices: Sequence[int]) -> Tensor:
        """The labels of samples `indices`."""
        return self.labels[torch.as_tensor(list(indices), dtype=torch.long)]

    @property
    def content_hash(self) -> str:
        """SHA-256 (16 hex digits) of the labels and texts: two sets with one hash condition every sample alike."""
        h = hashlib.sha256(self.labels.numpy().astype("<i8").tobytes())
        if self.texts:
            h.update(texts_digest(self.texts).encode())
        return h.hexdigest()[:16]

    def check_classes(self, classes: int) -> None:
        """Every label names one of the model's classes, or of the set's texts (UsageError otherwise)."""
        classes = len(self.texts) if self.texts else classes
        low, high = int(self.labels.min()), int(self.labels.max())
        check(low >= 0 and high < classes,
              f"conditions={self.name}: labels span {low}..{high} but the model has classes 0..{classes - 1}")


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of a prompt list (order and content): the key of its cached text embeddings."""
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


ConditionFactory = Callable[..., Callable[[int, int], ConditionSet]]
CONDITIONS: dict[str, ConditionFactory] = {}


# @register_conditions(name): a condition-set kind; its keyword defaults are its config node (conditions=<name>).
register_conditions = registrar(CONDITIONS, "condition set")


def make_conditions(options: dict[str, object], n: int, classes: int) -> ConditionSet:
    """The condition set of a `conditions` config node for samples 0 .. n-1 of a model with `classes` classes."""
    options = dict(options)
    name = str(options.pop("name"))
    check(name in CONDITIONS, f"conditions={name} is unknown; choose one of: {', '.join(sorted(CONDITIONS))}")
    conditions = CONDITIONS[name](**options)(n, classes)
    conditions.check_classes(classes)
    return conditions


@register_conditions(NONE)
def none() -> Callable[[int, int], ConditionSet]:
    """No conditions: the model runs unconditionally (the default; leaves existing points unchanged)."""
    raise UsageError("conditions=none has no labels; guidance needs conditions=balanced or conditions=file")


@register_conditions("balanced")
def balanced(order: str = "cyclic", seed: int = 0) -> Callable[[int, int], ConditionSet]:
    """Every class equally often: each block of `classes` consecutive samples holds each label once.

    cyclic: label_i = i mod classes; shuffled: block b is a permutation drawn from the seeded stream's
    b-th row, so label_i depends on (seed, i) only, never on n.
    """
    check(order in ORDERS, f"conditions.order={order} is unknown; use one of: {', '.join(ORDERS)}")

    def build(n: int, classes: int) -> ConditionSet:
        check(classes >= 1, "conditions=balanced needs a class-conditional model; text-to-image models take "
                            "conditions=prompts")
        blocks = -(-n // classes)
        if order == "cyclic":
            labels = torch.arange(n) % classes
        else:
            g = torch.Generator().manual_seed(seed)
            keys = torch.stack([torch.rand(classes, generator=g, dtype=torch.float64) for _ in range(blocks)])
            labels = keys.argsort(dim=1).reshape(-1)[:n]
        return ConditionSet(f"balanced-{order}" + (f"-{seed}" if order == "shuffled" else ""), labels.long())

    return build


@register_conditions("file")
def file(path: str = "") -> Callable[[int, int], ConditionSet]:
    """Labels from a file, sample i the i-th: a 1-D integer .npy array, or .txt with one integer per line."""
    source = Path(path).expanduser()
    check(bool(path) and source.is_file(), f"conditions.path={path!r}: no such file; give a .npy or .txt label file")
    check(source.suffix in (".npy", ".txt"), f"conditions.path={path}: use a .npy or .txt file")
    try:
        data = np.load(source) if source.suffix == ".npy" else np.loadtxt(source, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as e:
        raise UsageError(f"conditions.path={path}: unreadable label file ({str(e).splitlines()[0]})") from None
    check(data.ndim == 1 and np.issubdtype(data.dtype, np.integer),
          f"conditions.path={path}: need a 1-D array of integer labels (got {data.dtype} of shape {data.shape})")

    def build(n: int, classes: int) -> ConditionSet:
        check(len(data) >= n, f"conditions.path={path} holds {len(data)} labels; n_samples={n} needs as many")
        return ConditionSet(f"file:{source.name}", torch.from_numpy(data[:n].astype(np.int64)))

    return build



@register_conditions("prompts")
def prompts(path: str = SMOKE_PROMPTS, column: str = "caption") -> Callable[[int, int], ConditionSet]:
    """Text prompts, sample i the (i mod P)-th of P: a .txt file (one a line) or a CSV/Parquet file's `column`.

    A bare name that is not a file is looked up in diffbench/assets/ (default: the shipped 16-prompt smoke list).
    """
    texts = read_prompts(prompt_file(path), column)

    def build(n: int, classes: int) -> ConditionSet:
        return ConditionSet(f"prompts:{Path(path).name}", torch.arange(n) % len(texts), texts)

    return build


def prompt_file(path: str) -> Path:
    """conditions.path as given, else the shipped asset of that name; UsageError when neither exists."""
    given = Path(path).expanduser()
    for candidate in (given, PACKAGE_ASSETS / path):
        if path and candidate.is_file():
            return candidate
    raise UsageError(f"conditions.path={path!r}: no such file; give a .txt (one prompt a line), .csv or .parquet file")


def read_prompts(file: Path, column: str) -> tuple[str, ...]:
    """The non-empty prompts of a .txt file's lines or of a CSV/Parquet column (UsageError if none or unreadable)."""
    check(file.suffix in PROMPT_SUFFIXES, f"conditions.path={file}: use a {', '.join(PROMPT_SUFFIXES)} file")
    if file.suffix == ".txt":
        lines = file.read_text(encoding="utf-8").splitlines()
    else:
        import pandas as pd

        try:
            frame = pd.read_csv(file) if file.suffix == ".csv" else pd.read_parquet(file)
        except (ValueError, OSError, ImportError) as e:
            raise UsageError(f"conditions.path={file}: unreadable ({str(e).splitlines()[0]})") from None
        check(column in frame.columns, f"conditions.column={column} is not a column of {file}; it has: "
              f"{', '.join(map(str, frame.columns))}")
        lines = [str(v) for v in frame[column].dropna()]
    texts = tuple(line.strip() for line in lines if line.strip())
    check(bool(texts), f"conditions.path={file} holds no prompts")
    return texts
