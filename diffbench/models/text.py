"""Text-conditional models: prompts are the classes, bound once per prompt set.

A `TextConditional` model is a ConditionalDenoiser whose classes are the prompts it was given:
`with_prompts(texts)` returns the model over those prompts (label i = texts[i], NO_LABEL = the empty
prompt), its text embeddings computed once per set by its pipeline's encoders and cached on disk
(models/_text_encoders.py). Without prompts it has no classes and runs on the empty prompt alone
(its unconditional model).
"""
from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence

from torch import Tensor

from diffbench.errors import check
from diffbench.models._text_encoders import SECONDS, TextEncoders
from diffbench.models.base import ConditionalDenoiser, Denoiser
from diffbench.models.conditions import ConditionSet, texts_digest


class TextConditional(ConditionalDenoiser):
    """A text-to-image denoiser; `text_seconds`: how long its text encoder(s) took on its prompt set (when encoded)."""

    classes = 0
    text_seconds: float | None = None
    encoders: TextEncoders

    def with_prompts(self, texts: Sequence[str]) -> TextConditional:
        """The model whose label i is prompt texts[i] (encoded once per prompt set, kept per set)."""
        prompted: dict[str, TextConditional] = self.__dict__.setdefault("_prompted", {})  # shared with its copies
        key = texts_digest(texts)
        if key not in prompted:
            tables = self.encoders.table(texts)
            model = copy.copy(self)
            model.classes, model.text_seconds = len(texts), float(tables[SECONDS])
            model.use_tables(tables)
            prompted[key] = model
        return prompted[key]

    @abstractmethod
    def use_tables(self, tables: dict[str, Tensor]) -> None:
        """Take TextEncoders.table's tensors (rows 0 .. P-1 the prompts, row P the empty prompt) as the conditions."""


def with_conditions(model: Denoiser, conditions: ConditionSet) -> Denoiser:
    """The model a condition set's labels index: a text model given its prompts, any other model as it is.

    Prompts need a text model and a text model needs prompts (UsageError otherwise).
    """
    text_model = isinstance(model, TextConditional)
    check(not conditions.texts or text_model,
          f"conditions={conditions.name} holds text prompts; this model takes class labels (use conditions=balanced)")
    check(bool(conditions.texts) or not text_model,
          f"this text-to-image model takes prompts, not conditions={conditions.name}; use conditions=prompts")
    return model.with_prompts(conditions.texts) if isinstance(model, TextConditional) else model


def text_seconds(model: Denoiser) -> float | None:
    """Seconds the text encoder(s) of the model (or a guided model's inner model) took on its prompts; None without."""
    inner = getattr(model, "model", model)
    return inner.text_seconds if isinstance(inner, TextConditional) else None
