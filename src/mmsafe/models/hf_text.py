"""Local Hugging Face text-only causal language models, optionally behind an OCR front end.

A text LM cannot see pixels. With ``image_input="ocr"`` every image in a prompt is read by Tesseract
and its text takes the image's place in the turn, which makes any causal LM an "OCR-pipeline MLLM":
typographic attacks (FigStep and kin) reach the model as text, as they would a real MLLM that reads
the image. With ``image_input="reject"`` (the default) the model declares no ``images``
capability, so the runner refuses image attacks before any compute, and an image that arrives
anyway fails its own item.

torch, transformers and pytesseract are imported inside the methods that need them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.errors import ConfigError, require
from mmsafe.models._hf_util import (
    AdapterFields,
    BatchedHFGeneration,
    answer_continuation,
    checkpoint_errors,
    cut_at_stop,
    layer_outputs,
)
from mmsafe.models.base import GenerationParams, WhiteBoxModel
from mmsafe.models.ocr_prompt import (
    IMAGE_TEXT_FORMAT,
    NO_TEXT,
    ImageInput,
    OCRFrontEnd,
    format_image_text,
    require_tesseract,
)
from mmsafe.models.prefill import prefill_of, render_prefilled
from mmsafe.types import Prompt

__all__ = ["IMAGE_TEXT_FORMAT", "NO_TEXT", "HFTextModel", "HFTextParams", "format_image_text"]

log = logging.getLogger(__name__)

DType = Literal["auto", "float32", "bfloat16", "float16"]


class HFTextParams(AdapterFields):
    """Where the checkpoint is, how to run it and what to do with images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="local folder (save_pretrained layout) or hub id of a causal LM")
    revision: str | None = Field(None, description="hub branch, tag or commit (ignored for local folders)")
    dtype: DType = Field("auto", description="auto: the checkpoint's dtype on GPU, float32 on CPU")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: cuda if available"
    )
    batch_size: int = Field(8, ge=1, le=4096)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    system_prompt: str | None = Field(None, description="system turn added to prompts that have none")
    chat_template: str | None = Field(
        None, description="Jinja chat template that replaces the tokenizer's own (None: the tokenizer's)"
    )
    stop_strings: tuple[str, ...] = Field(
        (), description="the answer ends before the first of these strings (generation stops there too)"
    )
    image_input: ImageInput = Field(
        "reject", description="ocr: Tesseract reads each image into the turn; reject: images are an error"
    )
    ocr_lang: str = Field("eng", description="Tesseract language(s), e.g. 'eng' or 'eng+deu'")
    ocr_timeout_s: float = Field(60.0, ge=0.0, description="per image; 0: no limit")
    trust_remote_code: bool = False
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads when running on CPU (process-wide); None: torch's default",
    )


class HFTextModel(BatchedHFGeneration, WhiteBoxModel):
    """Local Hugging Face causal LM (text only), with an optional OCR front end for images.

    Any ``AutoModelForCausalLM`` checkpoint with a chat template (or a ``chat_template`` param):
    Llama, Qwen, Gemma, Mistral, Phi, SmolLM, …

    Images: ``image_input="ocr"`` reads each image with Tesseract (``ocr_lang``) and puts the text
    where the image was, as a line ``[Text in image N]: <text>`` (N counts images from 1 over the
    whole prompt; an image without text gives ``(no text found)``); each turn's parts are then
    joined with newlines, so any chat template (even one that only accepts string content) can
    render it. OCR runs per item, inside that item's error handling: an image that cannot be decoded
    or read fails only its item. Each distinct image (by sha256) is read once per loaded model;
    ``Generation.metadata["image_text"]`` keeps what was read. ``image_input="reject"`` (the
    default) leaves ``images`` out of the capabilities, so image attacks are refused when the
    grid is checked, and an item with images fails with an error that says so.

    Threat model: the weights run in this process. :meth:`hidden_states` and
    :meth:`decoder_layers` are real (activation probes and steering); there are no pixel
    gradients — OCR is not differentiable — so ``gradients`` is not declared.

    Generation: prompts are rendered with the chat template (generation prompt added), tokenised
    one by one (special tokens added only when the rendered text does not already start with the
    BOS token) and LEFT-padded into batches of up to ``batch_size``. Greedy decoding is batched;
    with sampling each prompt runs alone under ``torch.manual_seed(seed)`` (inside
    ``torch.random.fork_rng``), so its answer depends only on its prompt and seed. A batch that fails
    is retried one item at a time. ``stop_strings`` end the answer (and stop decoding) at the first
    match; ``finish_reason`` is then ``stop``. Decoding starts from the checkpoint's
    ``generation_config`` and overrides ``max_new_tokens``, ``do_sample``, ``temperature`` and
    ``top_p``; ``top_k`` is switched off. The loop is shared with ``hf``
    (:class:`~mmsafe.models._hf_util.BatchedHFGeneration`).

    Params: ``path``, ``revision``, ``dtype``, ``device``, ``batch_size`` (8), ``generation``,
    ``system_prompt``, ``chat_template``, ``stop_strings``, ``image_input`` (reject | ocr),
    ``ocr_lang`` (eng), ``ocr_timeout_s`` (60), ``trust_remote_code``, ``cpu_threads``.
    """

    name: ClassVar[str] = "hf-text"
    example_params: ClassVar[dict[str, Any]] = {"path": "org/some-lm"}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = HFTextParams
    _log: ClassVar[logging.Logger] = log
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"system_prompt", "batched", "hidden_states", "prefill"}
    )

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._settings: HFTextParams | None = None
        self._ocr: OCRFrontEnd | None = None  # images → their OCR text (cached), for this loaded model only
        #: the card of the adapter merged on load (``adapter`` param), else None
        self.adapter_card: dict[str, Any] | None = None
        self._stop_criteria: Any = None  # built once per loaded model (see _stopping_criteria)
        if getattr(self.params, "image_input", "reject") == "ocr":
            self.capabilities = type(self).capabilities | {"images"}  # type: ignore[misc]

    # ------------------------------------------------------------------ loading

    def _text_params(self) -> HFTextParams:
        """The checkpoint settings to load; presets that make their own checkpoint override this."""
        assert isinstance(self.params, HFTextParams)
        return self.params

    def load(self) -> None:
        if self._model is not None:
            return
        torch = require("torch", extra="hf", purpose="the Hugging Face text backend")
        transformers = require("transformers", extra="hf", purpose="the Hugging Face text backend")
        s = self._text_params()
        if s.image_input == "ocr":
            require_tesseract()
        self._settings = s
        self._ocr = OCRFrontEnd(
            model=self.name,
            image_input=s.image_input,
            lang=s.ocr_lang,
            timeout_s=s.ocr_timeout_s,
            system_prompt=s.system_prompt,
        )
        t0 = time.perf_counter()
        device = s.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        if s.cpu_threads is not None and self._device.type == "cpu":
            torch.set_num_threads(s.cpu_threads)
        if s.dtype == "auto":
            dtype: Any = torch.float32 if self._device.type == "cpu" else "auto"
        else:
            dtype = getattr(torch, s.dtype)

        common = {"revision": s.revision, "trust_remote_code": s.trust_remote_code}
        with checkpoint_errors(self.name, s.path):
            tokenizer = transformers.AutoTokenizer.from_pretrained(s.path, **common)
        if s.chat_template is not None:
            tokenizer.chat_template = s.chat_template
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(
                f"model.params.path: the tokenizer of {s.path} has no chat template; "
                "save one with the checkpoint or set params.chat_template"
            )
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        with checkpoint_errors(self.name, s.path):
            model = transformers.AutoModelForCausalLM.from_pretrained(s.path, dtype=dtype, **common)
        model.to(self._device)
        model.eval()
        if s.adapter is not None:
            from mmsafe.lora import apply_adapter

            self.adapter_card = apply_adapter(model, s.adapter, expected_sha256=s.adapter_sha256)

        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self._tokenizer, self._model = tokenizer, model
        log.info(
            "loaded %s (%s, %s) on %s in %.1fs",
            s.path,
            type(model).__name__,
            model.dtype,
            self._device,
            time.perf_counter() - t0,
        )

    def close(self) -> None:
        on_cuda = self._device is not None and self._device.type == "cuda"
        self._model = self._tokenizer = self._stop_criteria = None
        if self._ocr is not None:
            self._ocr.clear()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    # --------------------------------------------------------------- rendering

    def render(self, prompt: Prompt) -> tuple[str, list[str]]:
        """The templated text of ``prompt`` (generation prompt included) and the OCR text of each image.

        Raises for this prompt only: an image that cannot be decoded, images with
        ``image_input="reject"``, a template that rejects the conversation.
        """
        messages, image_texts = self._messages(prompt)
        prefill_of(prompt)  # an assistant turn to continue holds text only
        text = render_prefilled(
            messages,
            lambda turns, gen: self._tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=gen
            ),
        )
        return text, image_texts

    def _messages(self, prompt: Prompt) -> tuple[list[dict[str, str]], list[str]]:
        """Chat messages with string contents (each image replaced by its OCR text) and the OCR texts
        (:class:`~mmsafe.models.ocr_prompt.OCRFrontEnd`, shared with ``llamacpp``)."""
        self._ensure_loaded()
        assert self._ocr is not None
        return self._ocr.messages(prompt)

    def render_answer(self, prompt: Prompt, answer: str) -> tuple[str, str]:
        """(prompt text, the text the model should write after it) for training on ``answer``.

        The prompt is rendered as :meth:`render` renders it; the continuation is what the chat
        template puts after the generation prompt for an assistant turn holding ``answer`` (e.g.
        ``" answer"`` plus the end-of-turn marker), and, when the backend cuts answers at
        ``stop_strings``, the first stop string (so the model learns to end where inference cuts).
        Images are read by OCR and placed exactly as at inference."""
        messages, _ = self._messages(prompt)
        assert self._settings is not None
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": answer})
        full = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return text, answer_continuation(text, full, stop_strings=self._settings.stop_strings)

    @property
    def module(self) -> Any:
        """The loaded torch model (for training: :mod:`mmsafe.training`)."""
        self._ensure_loaded()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self._ensure_loaded()
        return self._tokenizer

    def _token_ids(self, text: str) -> list[int]:
        bos = self._tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return list(self._tokenizer(text, add_special_tokens=add_special)["input_ids"])

    # --------------------------------------------------------------- generation
    # hooks of the shared loop (BatchedHFGeneration): an item is (prompt token ids, OCR text of each image)

    def _prepare(self, prompt: Prompt) -> tuple[list[int], list[str]]:
        text, image_texts = self.render(prompt)
        return self._token_ids(text), image_texts

    def _pad(self, rows: list[list[int]]) -> Any:
        enc = self._tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
        return enc.to(self._device)

    def _encode_batch(self, items: list[tuple[list[int], list[str]]]) -> Any:
        return self._pad([ids for ids, _ in items])

    def _text_tokenizer(self) -> Any:
        return self._tokenizer

    def _prompt_token_counts(self, enc: Any, items: list[tuple[list[int], list[str]]]) -> list[int]:
        return [len(ids) for ids, _ in items]

    def _item_metadata(self, item: tuple[list[int], list[str]]) -> dict[str, Any]:
        return {"image_text": item[1]} if item[1] else {}

    # ---------------------------------------------------------------- white box

    def hidden_states(
        self, prompt: Prompt, *, layers: Sequence[int], pixels: Sequence[Any] | None = None
    ) -> dict[int, Any]:
        """Outputs ``[seq, hidden]`` of the decoder layers in ``layers`` (0-based, negative from the
        end) for the rendered prompt (images as their OCR text), read with forward hooks.
        ``pixels`` cannot be used: OCR is not differentiable."""
        import torch

        if pixels is not None:
            raise ValueError(f"{self.name} reads images through OCR: pixels cannot be swapped in")

        def forward() -> None:
            text, _ = self.render(prompt)
            enc = self._pad([self._token_ids(text)])
            with torch.no_grad():
                self._model(**enc, use_cache=False)

        return layer_outputs(self.decoder_layers(), layers, forward)

    def decoder_layers(self) -> Sequence[Any]:
        """The transformer blocks of the language model (``model.model.layers`` for Llama-like LMs)."""
        self._ensure_loaded()
        decoder = self._model.get_decoder() if hasattr(self._model, "get_decoder") else self._model.model
        return decoder.layers

    def logit_lens(self, hidden: Any) -> Any:
        from mmsafe.models._hf_util import logit_lens

        return logit_lens(self._model, self.decoder_layers(), hidden)


#: the old home of :func:`~mmsafe.models._hf_util.cut_at_stop` (shared with ``hf`` now)
_cut_at_stop = cut_at_stop
