"""Gemma-3-270M base + mmsafe's safety adapter, behind OCR: the quickstart's demo model (see :class:`GemmaOCRSafe`)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from mmsafe.models.gemma_ocr import GemmaOCR, GemmaOCRParams

__all__ = ["NOTE_SAFE", "SAFE_ADAPTER", "GemmaOCRSafe", "GemmaOCRSafeParams"]

SAFE_ADAPTER = "builtin:gemma-safety-v3"

NOTE_SAFE = (
    "Gemma-3-270M base safety-tuned by mmsafe (LoRA safety SFT on mmsafe's own written examples, "
    f"{SAFE_ADAPTER}), read through OCR: a small demo model that can refuse; its numbers show what mmsafe "
    "measures, not how safe a production model is"
)


class GemmaOCRSafeParams(GemmaOCRParams):
    """Settings of :class:`GemmaOCRSafe`: those of gemma-ocr, with the shipped safety adapter by default."""

    adapter: str | None = Field(SAFE_ADAPTER, description="the safety adapter (default: the shipped one)")

    @model_validator(mode="before")
    @classmethod
    def _pin_adapter(cls, values: Any) -> Any:
        from mmsafe.lora import pin_adapter

        if isinstance(values, dict) and "adapter" not in values:
            values = {**values, "adapter": SAFE_ADAPTER}
        return pin_adapter(values)


class GemmaOCRSafe(GemmaOCR):
    """Gemma-3-270M base + mmsafe's safety adapter, behind OCR: the quickstart's demo model that can refuse.

    The same pipeline as :class:`GemmaOCR` (Tesseract reads each image into the user turn; the base
    model answers a ``User:``/``Assistant:`` dialogue) with a LoRA adapter merged on load:
    ``mmsafe/data/adapters/gemma-safety-v3`` (safetensors + card), trained by ``mmsafe train sft`` on
    560 of mmsafe's own written examples — 190 harmful requests → refusals, 370 benign requests
    (look-alikes with trigger words, and fiction, history, prevention and opinion requests on the harm
    categories' topics) → answers, a fifth of both kinds shown as FigStep-style renders read by OCR —
    disjoint from every evaluation set (``scripts/check_training_overlap.py``).
    Only each answer's first 8 tokens are trained (whether and how it refuses); what follows is the base
    model's own continuation. Its card records the recipe, data sha256, seed, losses, time and
    held-out losses; ``benchmarks/safety_heldout.py`` measures it on the written held-out split (where
    the recipe was chosen) and ``benchmarks/training.py`` retrains it and measures refusal and
    over-refusal on held-out public sets.

    It is a small demo model, not a production model: reports say so. Params: those of ``gemma-ocr``
    (``adapter`` defaults to the shipped one).
    """

    name: ClassVar[str] = "gemma-ocr-safe"
    Params: ClassVar[type[BaseModel]] = GemmaOCRSafeParams

    def disclaimer(self) -> str | None:
        return NOTE_SAFE
