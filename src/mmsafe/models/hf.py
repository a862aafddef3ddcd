"""Local Hugging Face vision-language models: batched generation with left padding.

torch and transformers are imported inside the methods that need them, so importing this module
(and listing it with ``mmsafe list``) stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmsafe.errors import ConfigError, require
from mmsafe.models._hf_util import (
    AdapterFields,
    BatchedHFGeneration,
    answer_continuation,
    checkpoint_errors,
    choose_model_class,
    has_random_weights_marker,
    layer_outputs,
    read_architecture,
    read_model_note,
    to_conversation,
)
from mmsafe.models.base import GenerationParams, WhiteBoxModel
from mmsafe.models.families import family_for, pil_from_pixels
from mmsafe.models.prefill import render_prefilled
from mmsafe.types import Image, Prompt

if TYPE_CHECKING:
    from mmsafe.models._whitebox import WhiteBoxView

__all__ = ["HFModel", "HFParams"]

log = logging.getLogger(__name__)

ModelClass = Literal["auto", "llava", "image-text-to-text"]
DType = Literal["auto", "float32", "bfloat16", "float16"]


class HFParams(AdapterFields):
    """Where the checkpoint is and how to run it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="local folder (save_pretrained layout) or hub id")
    revision: str | None = Field(None, description="hub branch, tag or commit (ignored for local folders)")
    model_class: ModelClass = Field(
        "auto", description="auto: LLaVA if config.json says so, else AutoModelForImageTextToText"
    )
    dtype: DType = Field("auto", description="auto: the checkpoint's dtype on GPU, float32 on CPU")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto: cuda if available"
    )
    device_map: str | dict[str, str | int] | None = Field(
        None,
        description="accelerate device map: 'auto', 'cpu', … or {module: device} (e.g. {'': 'cpu'}); overrides device",
    )
    max_memory: dict[str, str | int] | None = Field(
        None,
        description="with device_map: per-device memory limits for accelerate, e.g. {'0': '20GiB', 'cpu': '60GiB'}",
    )
    batch_size: int = Field(8, ge=1, le=4096)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    system_prompt: str | None = Field(None, description="system turn added to prompts that have none")
    stop_strings: tuple[str, ...] = Field(
        (), description="the answer ends before the first of these strings (generation stops there too)"
    )
    trust_remote_code: bool = False
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads when running on CPU (process-wide); None: torch's default",
    )

    @model_validator(mode="after")
    def _max_memory_needs_device_map(self) -> HFParams:
        if self.max_memory is not None and self.device_map is None:
            raise ValueError("max_memory only applies with device_map (e.g. device_map='auto')")
        return self


class HFModel(BatchedHFGeneration, WhiteBoxModel):
    """Local Hugging Face vision-language model: LLaVA-1.5/NeXT, Qwen2-VL/2.5-VL, Idefics3/SmolVLM,
    PaliGemma, BLIP-2/InstructBLIP, or any other AutoModelForImageTextToText with a chat template.

    Families: the checkpoint's ``config.json`` (``architectures``, ``model_type``) picks an adapter
    from :mod:`mmsafe.models.families` — how prompts are formatted (chat template, or PaliGemma's
    ``<image>…<bos>prefix\\n`` and BLIP-2's ``Question: … Answer:`` for families without one),
    which prompts may share a batch, and how pixels map to ``pixel_values``. Anything unknown goes
    through the generic adapter and ``AutoModelForImageTextToText``.

    Threat model: the weights run in this process, so this backend is the white-box target for
    attacks that need gradients (:meth:`to_pixels`, :meth:`target_loss`) or activations
    (:meth:`hidden_states`, :meth:`decoder_layers`), as well as the grey/black-box target for
    prompt-level attacks. ``capabilities`` come from the family (``system_prompt`` only where the
    prompt format has a real system turn); they are known before :meth:`load` for a local folder.

    Generation: prompts are rendered by the family adapter, tokenised together with LEFT padding and
    generated as one batch of up to ``batch_size``. Prompts a family cannot mix (PaliGemma with and
    without images) are grouped first, in order. Greedy decoding (``temperature=0``) is batched. With
    sampling, each prompt is generated on its own under ``torch.manual_seed(seed)`` (inside
    ``torch.random.fork_rng``), so a sampled answer depends only on its prompt and seed, never on its
    batch neighbours. A prompt whose image cannot be decoded, or whose inputs the processor rejects,
    fails alone: its slot holds the exception and the rest of the batch still runs. ``latency_s`` is
    the wall time of the batch the item ran in (``metadata["batch_size"]`` says how many shared it).
    ``stop_strings`` end the answer (and stop decoding) at the first match; ``finish_reason`` is then
    ``stop``. The loop is shared with ``hf-text`` (:class:`~mmsafe.models._hf_util.BatchedHFGeneration`).

    Decoding starts from the checkpoint's ``generation_config`` and overrides ``max_new_tokens``,
    ``do_sample``, ``temperature`` and ``top_p``; ``top_k`` is switched off because
    :class:`GenerationParams` has none.

    Params: ``path``, ``revision``, ``model_class`` (auto | llava | image-text-to-text), ``dtype``
    (auto | float32 | bfloat16 | float16; auto is float32 on a CPU, also under a ``device_map`` on a
    machine without GPU), ``device`` (auto | cpu | cuda | cuda:N), ``device_map`` (accelerate: ``"auto"``,
    ``"cpu"``, or ``{module: device}`` such as ``{"": "cpu"}``),
    ``max_memory`` (per-device limits, with ``device_map``), ``batch_size`` (8), ``generation``
    (max_new_tokens, temperature, top_p), ``system_prompt``, ``stop_strings``, ``trust_remote_code`` (False),
    ``cpu_threads`` (torch's intra-op threads on CPU), ``adapter`` (an adapter directory written by
    ``mmsafe train``, e.g. ``sft-vision``: LoRA on the language model plus the projector's full
    weights; its sha256 is pinned into ``adapter_sha256`` when the spec is made, and checked with
    the base model's fingerprint on load). A folder holding ``mmsafe_random_weights.json``
    is flagged as random weights.
    """

    name: ClassVar[str] = "hf"
    example_params: ClassVar[dict[str, Any]] = {"path": "org/some-vlm"}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = HFParams
    _log: ClassVar[logging.Logger] = log
    #: memory limits change where weights sit, not what is computed: kept out of the spec key
    runtime_params: ClassVar[frozenset[str]] = WhiteBoxModel.runtime_params | {"max_memory"}
    #: before the family is known (a hub id not yet loaded): what most families offer
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"images", "system_prompt", "batched", "gradients", "hidden_states", "prefill"}
    )

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._model: Any = None
        self._processor: Any = None
        self._family: Any = None
        self._device: Any = None
        self._eos_ids: frozenset[int] = frozenset()
        self._settings: HFParams | None = None
        self._stop_criteria: Any = None  # built once per loaded model (see _stopping_criteria)
        #: the card of the adapter merged on load (``adapter`` param), else None
        self.adapter_card: dict[str, Any] | None = None
        if isinstance(self.params, HFParams):  # a stat, no I/O beyond it: reports know before load()
            self.random_weights = has_random_weights_marker(self.params.path)
            arch = read_architecture(self.params.path)
            if arch is not None:  # a local folder: the family (hence the capabilities) is known now
                self.capabilities = family_for(*arch).capabilities()  # type: ignore[misc]

    # ------------------------------------------------------------------ loading

    def _hf_params(self) -> HFParams:
        """The checkpoint settings to load; subclasses that make their own checkpoint override this."""
        assert isinstance(self.params, HFParams)
        return self.params

    @property
    def family(self) -> str | None:
        """The family adapter's name once loaded (``llava``, ``qwen2_vl``, …, ``generic``)."""
        return None if self._family is None else self._family.name

    def load(self) -> None:
        if self._model is not None:
            return
        torch = require("torch", extra="hf", purpose="the Hugging Face backend")
        transformers = require("transformers", extra="hf", purpose="the Hugging Face backend")
        s = self._hf_params()
        self._settings = s
        t0 = time.perf_counter()

        arch = read_architecture(s.path)
        if arch is None:  # a hub id (or a cached one): ask transformers for the config
            with checkpoint_errors(self.name, s.path):
                cfg = transformers.AutoConfig.from_pretrained(
                    s.path, revision=s.revision, trust_remote_code=s.trust_remote_code
                )
            arch = (list(getattr(cfg, "architectures", None) or []), getattr(cfg, "model_type", None))
        family_cls = family_for(*arch)
        model_class = s.model_class if s.model_class != "auto" else choose_model_class(*arch)
        cls = (
            transformers.LlavaForConditionalGeneration
            if model_class == "llava"
            else transformers.AutoModelForImageTextToText
        )

        if s.device_map is None:
            device = s.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = torch.device(device)
        if s.cpu_threads is not None and (self._device is None or self._device.type == "cpu"):
            torch.set_num_threads(s.cpu_threads)
        if s.dtype == "auto":
            if s.device_map is None:
                on_cpu = self._device.type == "cpu"
            else:  # a device map can only place weights on the CPU when there is no accelerator
                on_cpu = not torch.cuda.is_available() and not _mps_available(torch)
            dtype: Any = torch.float32 if on_cpu else "auto"
        else:
            dtype = getattr(torch, s.dtype)

        common = {"revision": s.revision, "trust_remote_code": s.trust_remote_code}
        with checkpoint_errors(self.name, s.path):
            processor = family_cls.load_processor(s.path, model_type=arch[1], **common)
        if family_cls.needs_chat_template and getattr(processor, "chat_template", None) is None:
            raise ConfigError(
                f"model.params.path: the processor of {s.path} has no chat template; "
                "save one with the checkpoint (chat_template.jinja)"
            )
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

        kwargs: dict[str, Any] = {**common, "dtype": dtype}
        if s.device_map is not None:
            kwargs["device_map"] = s.device_map
            if s.max_memory is not None:
                kwargs["max_memory"] = {_device_key(k): v for k, v in s.max_memory.items()}
        with checkpoint_errors(self.name, s.path):
            model = cls.from_pretrained(s.path, **kwargs)
        if s.device_map is None:
            model.to(self._device)
        else:
            self._device = model.device
        model.eval()
        model.requires_grad_(False)  # attacks need input gradients only, never weight gradients
        if s.adapter is not None:
            from mmsafe.lora import apply_adapter

            self.adapter_card = apply_adapter(model, s.adapter, expected_sha256=s.adapter_sha256)

        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        self._processor, self._model = processor, model
        self._family = family_cls(processor, model)
        self.capabilities = self._family.instance_capabilities()  # type: ignore[misc]
        self.random_weights = has_random_weights_marker(s.path)
        self._note = read_model_note(s.path)
        log.info(
            "loaded %s (%s, family %s, %s) on %s in %.1fs%s",
            s.path,
            type(model).__name__,
            self._family.name,
            model.dtype,
            self._device,
            time.perf_counter() - t0,
            " [random weights]" if self.random_weights else "",
        )

    def disclaimer(self) -> str | None:
        """The folder's own note (``mmsafe_model_note.json``, e.g. a random vision tower), else the base rule."""
        return getattr(self, "_note", None) or super().disclaimer()

    def close(self) -> None:
        on_cuda = self._device is not None and getattr(self._device, "type", "") == "cuda"
        self._model = self._processor = self._family = self._stop_criteria = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    @property
    def module(self) -> Any:
        """The loaded torch model (for training: :mod:`mmsafe.training`)."""
        self._ensure_loaded()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer (loaded)."""
        self._ensure_loaded()
        return self._processor.tokenizer

    def _render(self, conversation: list[dict[str, Any]], images: Sequence[Any]) -> str:
        """The family's prompt text for ``conversation``, continuing a final assistant turn
        (:mod:`mmsafe.models.prefill`)."""
        from transformers.processing_utils import ProcessorMixin

        def render(turns: list[dict[str, Any]], generation_prompt: bool) -> str:
            if generation_prompt:
                return self._family.render(turns, images)
            # ProcessorMixin's own method: some processors' overrides insist on a video processor
            return str(
                ProcessorMixin.apply_chat_template(
                    self._processor, turns, add_generation_prompt=False, tokenize=False
                )
            )

        if conversation and conversation[-1].get("role") == "assistant" and "prefill" not in self.capabilities:
            raise ValueError(f"{self._family.name} models cannot continue an assistant turn (no prefill)")
        return render_prefilled(conversation, render, chat_template=self._family.needs_chat_template)

    def render_answer(self, prompt: Prompt, answer: str) -> tuple[str, str]:
        """(prompt text, the text the model should write after it) for training on ``answer``.

        The prompt is rendered as :meth:`generate` renders it; the continuation is what the chat
        template writes after the generation prompt for an assistant turn holding ``answer`` (the
        answer and its end-of-turn marker; nothing after the end-of-sequence token), or, when the
        backend cuts answers at ``stop_strings``, the answer and the first stop string (the model
        learns to end where inference cuts). Families without a chat template (PaliGemma, BLIP-2)
        get the answer and the end-of-sequence token."""
        self._ensure_loaded()
        assert self._settings is not None
        conversation, images = to_conversation(prompt, system_prompt=self._settings.system_prompt)
        text = self._render(conversation, images)
        eos = self._processor.tokenizer.eos_token or ""
        if not self._family.needs_chat_template:
            sep = "" if not text or text[-1].isspace() else " "
            return text, sep + answer + eos
        from transformers.processing_utils import ProcessorMixin

        turn = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        # ProcessorMixin's own method: some processors' overrides insist on a video processor
        full = ProcessorMixin.apply_chat_template(
            self._processor, [*conversation, turn], add_generation_prompt=False, tokenize=False
        )
        return text, answer_continuation(text, full, stop_strings=self._settings.stop_strings, eos=eos)

    # --------------------------------------------------------------- generation

    # hooks of the shared loop (BatchedHFGeneration): an item is (rendered text, its PIL images)

    def _prepare(self, prompt: Prompt) -> tuple[str, list[Any]]:
        assert self._settings is not None
        conversation, images = to_conversation(prompt, system_prompt=self._settings.system_prompt)
        return self._render(conversation, images), images

    def _to_device(self, enc: Any) -> Any:
        import torch

        enc = enc.to(self._device)
        for key, value in enc.items():
            if torch.is_tensor(value) and torch.is_floating_point(value):
                enc[key] = value.to(self._model.dtype)
        return enc

    def _encode_batch(self, items: list[tuple[str, list[Any]]]) -> Any:
        return self._to_device(self._family.encode([t for t, _ in items], [imgs for _, imgs in items]))

    def _batch_key(self, item: tuple[str, list[Any]]) -> Hashable:
        return self._family.batch_key(item[1])  # prompts the family cannot mix go to separate groups

    def _text_tokenizer(self) -> Any:
        return self._processor.tokenizer

    def _answer_tokens(self, out: Any, enc: Any) -> Any:
        # decoder-only models return prompt + answer; encoder-decoder ones (T5-based BLIP-2) the
        # decoder's start token + answer
        return out[:, 1:] if self._family.encoder_decoder else super()._answer_tokens(out, enc)

    def _context_limit(self) -> int | None:
        # an encoder-decoder LM (T5-based BLIP-2) writes its answer in the decoder: prompt and answer do
        # not share positions, and T5's are relative, so there is nothing to check
        return None if self._family.encoder_decoder else super()._context_limit()

    # ---------------------------------------------------------------- white box

    def to_pixels(self, image: Image) -> Any:
        """The model's view of ``image``: ``[3, H, W]`` float32 in [0, 1] on the model's device,
        resized/cropped as the processor does, before normalisation (see the family adapter)."""
        self._ensure_loaded()
        return self._family.to_pixels(image.to_pil("RGB")).to(self._device)

    def _whitebox_encoding(self, prompt: Prompt, pixels: Sequence[Any] | None) -> Any:
        """The processor's encoding of one prompt (no padding) with ``pixels`` swapped in differentiably."""
        self._ensure_loaded()
        assert self._settings is not None
        conversation, images = to_conversation(prompt, system_prompt=self._settings.system_prompt)
        if pixels is not None:
            if len(pixels) != len(images):
                raise ValueError(f"the prompt has {len(images)} image(s) but {len(pixels)} pixel tensor(s)")
            # Same size as the tensors, so the processor lays out the same number of image tokens.
            images = [pil_from_pixels(p) for p in pixels]
        text = self._render(conversation, images)
        enc = self._to_device(self._family.encode_whitebox([text], [images]))
        if pixels is not None:
            dtype = self._model.dtype
            swapped = self._family.pixel_inputs([p.to(self._device) for p in pixels], enc)
            for key, value in swapped.items():
                enc[key] = value.to(dtype) if value.is_floating_point() else value
        return enc

    def whitebox_view(self) -> WhiteBoxView:
        """The loaded model's parts that white-box objectives use, as a
        :class:`~mmsafe.models._whitebox.WhiteBoxView` (loads the model first)."""
        from mmsafe.models._whitebox import WhiteBoxView

        self._ensure_loaded()
        return WhiteBoxView(
            module=self._model,
            family=self._family,
            tokenizer=self._processor.tokenizer,
            device=self._device,
            encode=self._encode_prompt,
        )

    def _encode_prompt(self, prompt: Prompt) -> tuple[Any, int]:
        """One prompt rendered as :meth:`generate` renders it and processed alone (no padding), on
        the device; and how many images it holds."""
        assert self._settings is not None
        conversation, images = to_conversation(prompt, system_prompt=self._settings.system_prompt)
        text = self._render(conversation, images)
        return self._to_device(self._family.encode_whitebox([text], [images])), len(images)

    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[Any]) -> Any:
        """A :class:`~mmsafe.models._whitebox.TeacherForced` objective over ``prompts`` × ``targets``:
        encoded once, then ``obj(pixels)`` → per-example losses ``[B]`` (see that class)."""
        from mmsafe.models._whitebox import TeacherForced

        return TeacherForced(self.whitebox_view(), prompts, targets)

    def target_loss(self, prompt: Prompt, target: str, *, pixels: Sequence[Any] | None = None) -> Any:
        """Teacher-forced mean cross-entropy of ``target``'s tokens as the assistant's answer.

        The prompt is rendered exactly as :meth:`generate` renders it (generation prompt included);
        the target's tokens (no special tokens added, no end-of-turn) follow it. Token-aligned inputs
        are extended over the target as the family requires (PaliGemma: ``token_type_ids`` = 1, so
        the target is causal suffix, not bidirectional prefix). Gradients flow to ``pixels``.
        """
        objective = self.teacher_forced([prompt], [target])
        return objective([list(pixels) if pixels is not None else None])[0]

    def image_features(self, pixels: Sequence[Any], *, space: str = "encoder") -> Any:
        """Vision-side features of each ``[3, H, W]`` pixel tensor, differentiably, without running
        the language model: ``space="encoder"`` is the vision encoder's last hidden state (what
        Shayegani et al. attack), ``"projected"`` the features after the multimodal projector (the
        embeddings the language model receives). Returns ``[N, tokens, dim]`` (one row per image;
        images must share a size). InstructBLIP's projected features are conditioned on the
        instruction (its Q-Former reads the prompt): here they are those of an empty instruction."""
        import inspect

        import torch

        self._ensure_loaded()
        fam = self._family
        wants_instruction = (
            "qformer_input_ids" in inspect.signature(self._model.get_image_features).parameters
        )
        rows = []
        for px in pixels:
            enc = self._to_device(
                fam.image_processor(
                    images=[pil_from_pixels(px)], return_tensors="pt", **fam.processor_kwargs()
                )
            )
            inputs = fam.pixel_inputs([px.to(self._device)], enc)
            for key, value in enc.items():
                if key not in inputs and key != "pixel_values" and hasattr(value, "dim"):
                    inputs[key] = value
            if wants_instruction and "qformer_input_ids" not in inputs:
                # InstructBLIP: the Q-Former needs an instruction; the image processor gives none
                q = self._processor.qformer_tokenizer([""], return_tensors="pt")
                inputs["qformer_input_ids"] = q["input_ids"].to(self._device)
                inputs["qformer_attention_mask"] = q["attention_mask"].to(self._device)
            inputs = {k: (v.to(self._model.dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
            out = self._model.get_image_features(**inputs)
            feats = None
            if space == "encoder":
                feats = getattr(out, "last_hidden_state", None)
            elif space != "projected":
                raise ValueError(f"space must be 'encoder' or 'projected', got {space!r}")
            if feats is None:
                feats = getattr(out, "pooler_output", out)
            if isinstance(feats, (list, tuple)):
                feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
            rows.append(feats.reshape(-1, feats.shape[-1]).float())
        return torch.stack(rows)

    @contextlib.contextmanager
    def gradient_checkpointing(self, enabled: bool = True) -> Iterator[None]:
        """Recompute activations in the backward pass (less memory, ~30% more time) while inside.

        Transformers only checkpoints in training mode, so the model is put in ``train()`` for the
        duration (dropout is zero in the supported families' configs) and restored after."""
        self._ensure_loaded()
        if not enabled:
            yield
            return
        model = self._model
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x spelling
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        try:
            yield
        finally:
            if hasattr(model, "activation_checkpointing_disable"):
                model.activation_checkpointing_disable()
            else:
                model.gradient_checkpointing_disable()
            model.eval()

    def hidden_states(
        self, prompt: Prompt, *, layers: Sequence[int], pixels: Sequence[Any] | None = None
    ) -> dict[int, Any]:
        """Outputs ``[seq, hidden]`` of the decoder layers in ``layers`` (0-based, negative from the
        end) for the rendered prompt, read with forward hooks on :meth:`decoder_layers`. Image
        positions are included (the sequence is the processor's, image tokens expanded)."""
        import torch

        def forward() -> None:
            enc = self._whitebox_encoding(prompt, pixels)
            grad = pixels is not None and any(getattr(p, "requires_grad", False) for p in pixels)
            with torch.set_grad_enabled(grad):
                self._model(**enc, use_cache=False)

        return layer_outputs(self.decoder_layers(), layers, forward)

    def decoder_layers(self) -> Sequence[Any]:
        self._ensure_loaded()
        return self._family.decoder_layers()

    def logit_lens(self, hidden: Any) -> Any:
        from mmsafe.models._hf_util import logit_lens

        return logit_lens(self._model, self.decoder_layers(), hidden)


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _device_key(key: str | int) -> str | int:
    """accelerate wants GPU indices as ints ('0' → 0) and 'cpu'/'disk'/'mps' as strings."""
    return int(key) if isinstance(key, str) and key.isdigit() else key
