"""Text-conditional models: prompts are the classes, bound once per prompt set.

A `TextConditional` model is a ConditionalDenoiser whose classes are the prompts it was given:
`with_prompts(texts)` returns the model over those prompts (label i = texts[i], NO_LABEL = the empty
prompt), its text embeddings computed once per set and cached on disk by the adapter. Without
prompts it has no classes and runs on the empty prompt alone (its unconditional model).
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from diffbench.errors import check
from diffbench.models.base import ConditionalDenoiser, Denoiser
from diffbench.models.conditions import ConditionSet


class TextConditional(ConditionalDenoiser):
    """A text-to-image denoiser; `text_seconds`: how long its text encoder(s) took on its prompt set (when encoded)."""

    classes = 0
    text_seconds: float | None = None

    @abstractmethod
    def with_prompts(self, texts: Sequence[str]) -> TextConditional:
        """The model whose label i is prompt texts[i] (encoded once per prompt set)."""


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
