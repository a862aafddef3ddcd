"""Torch-free helpers of the Hugging Face backends: prompt → chat conversation, decoding settings,
and the batched generation loop that ``hf`` and ``hf-text`` share (:class:`BatchedHFGeneration`).

Nothing here imports torch or transformers at import time, so this module is cheap to import and to test.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from mmsafe.errors import ConfigError, describe
from mmsafe.limits import ContextTooLong
from mmsafe.types import Generation, ImagePart, Message, Prompt, TextPart, Usage

log = logging.getLogger(__name__)

#: File that :func:`mmsafe.models.tiny_llava.build_tiny_llava` writes next to the weights it invents.
RANDOM_WEIGHTS_MARKER = "mmsafe_random_weights.json"
#: A note next to weights that are partly random (e.g. a random vision tower on a real LM): reports print it.
MODEL_NOTE_FILE = "mmsafe_model_note.json"


def to_conversation(
    prompt: Prompt, *, system_prompt: str | None = None
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Turn a :class:`Prompt` into the processor chat format and the PIL images it refers to, in order.

    Each image part becomes a ``{"type": "image"}`` item (the chat template writes the image
    placeholder there) and its decoded pixels are appended to the returned image list; text parts
    become ``{"type": "text", "text": ...}``. ``system_prompt`` is put first as a system turn when the
    prompt has no system turn of its own. Raises ``ValueError`` for an image that cannot be decoded.
    """
    messages: Sequence[Message] = prompt.messages
    if system_prompt is not None and not any(m.role == "system" for m in messages):
        messages = (Message.system(system_prompt), *messages)
    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in messages:
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, ImagePart):
                images.append(part.image.to_pil("RGB"))
                content.append({"type": "image"})
            elif isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
        conversation.append({"role": message.role, "content": content})
    if not conversation:
        raise ValueError("the prompt has no messages")
    return conversation, images


def has_random_weights_marker(path: str | Path) -> bool:
    """True when ``path`` is a local model folder that a mmsafe builder filled with random weights."""
    p = Path(path)
    return p.is_dir() and (p / RANDOM_WEIGHTS_MARKER).is_file()


def read_model_note(path: str | Path) -> str | None:
    """The note a builder left beside weights that are partly random (``mmsafe_model_note.json``), if any."""
    f = Path(path) / MODEL_NOTE_FILE
    if not f.is_file():
        return None
    try:
        note = json.loads(f.read_text(encoding="utf-8")).get("note")
    except (ValueError, AttributeError):
        return "unreadable model note (mmsafe_model_note.json)"
    return str(note) if note else None


def read_architecture(path: str | Path) -> tuple[list[str], str | None] | None:
    """``(architectures, model_type)`` from a local folder's ``config.json``; ``None`` if there is none."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
        return list(data.get("architectures") or []), data.get("model_type")
    except (ValueError, AttributeError, TypeError) as exc:  # not JSON, not UTF-8, not a JSON object
        raise ConfigError(
            f"model params.path: {cfg} is not a readable config.json ({describe(exc, limit=200)})"
        ) from None


@contextmanager
def checkpoint_errors(model: str, path: str) -> Iterator[None]:
    """Turn what loading checkpoint ``path`` raises for a bad path or folder (transformers' ``OSError``s and
    ``ValueError``s: no such folder or hub id, missing files, an unknown model type) into one
    :class:`ConfigError` line naming the model and the path."""
    try:
        yield
    except (OSError, ValueError) as exc:
        local = Path(path).expanduser()
        if (local.is_absolute() or path.startswith((".", "~"))) and not local.exists():
            why = "no such folder"  # transformers would call it a malformed hub id
        else:
            why = describe(exc, limit=300).partition(": ")[2] or type(exc).__name__
        raise ConfigError(f"model '{model}': cannot load params.path {path!r}: {why}") from exc


def choose_model_class(architectures: Iterable[str], model_type: str | None) -> str:
    """Resolve ``model_class="auto"``: ``"llava"`` for LLaVA checkpoints, else ``"image-text-to-text"``."""
    if model_type == "llava" or "LlavaForConditionalGeneration" in set(architectures):
        return "llava"
    return "image-text-to-text"


def split_at_eos(tokens: Sequence[int], eos_ids: frozenset[int]) -> tuple[list[int], bool]:
    """The generated tokens before the first end-of-sequence token, and whether one was produced."""
    for i, tok in enumerate(tokens):
        if tok in eos_ids:
            return list(tokens[:i]), True
    return list(tokens), False


def generate_seeded(model: Any, enc: Any, *, greedy: bool, seed: int, device: Any, **kwargs: Any) -> Any:
    """``model.generate`` under inference mode; when sampling, seeded in a forked RNG so one item's answer
    depends only on its own prompt and seed (callers sample one item at a time)."""
    import torch

    with torch.inference_mode():
        if greedy:
            return model.generate(**enc, **kwargs)
        devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            return model.generate(**enc, **kwargs)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cuts = [pos for pos in (text.find(s) for s in stops if s) if pos >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def answer_continuation(
    prompt_text: str, full_text: str, *, stop_strings: Sequence[str] = (), eos: str = ""
) -> str:
    """What a model should write after ``prompt_text`` (the chat template's generation prompt) to
    produce ``full_text`` (the same conversation with the assistant's answer): the answer and its
    end-of-turn marker. With ``stop_strings`` (inference cuts answers there) the marker is replaced by
    the first stop string, so the model learns to end where inference cuts; otherwise nothing after
    ``eos`` is kept. For training on answers (``render_answer`` of the local backends)."""
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + answer")
    tail = full_text[len(prompt_text) :]
    if stop_strings:
        return tail.rstrip() + stop_strings[0]
    if eos and eos in tail:
        return tail[: tail.rindex(eos) + len(eos)]
    return tail


def layer_outputs(blocks: Sequence[Any], layers: Iterable[int], forward: Callable[[], Any]) -> dict[int, Any]:
    """The outputs ``[seq, hidden]`` (first batch row) of ``blocks[k]`` for each ``k`` in ``layers``
    (0-based, negative from the end) while ``forward()`` runs, read with forward hooks that are removed
    afterwards. ``IndexError`` for a layer that does not exist, before ``forward`` runs."""
    wanted = {int(k): blocks[int(k)] for k in layers}
    captured: dict[int, Any] = {}
    handles = []
    for k, block in wanted.items():

        def hook(_mod: Any, _inp: Any, output: Any, k: int = k) -> None:
            captured[k] = (output[0] if isinstance(output, tuple) else output)[0]

        handles.append(block.register_forward_hook(hook))
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return {k: captured[k] for k in wanted}


#: What a tokenizer's ``model_max_length`` says when it does not know its model's context (transformers
#: puts ``int(1e30)`` there): at or above this, it is not a context length.
_NO_LENGTH = 10**9


def context_limit(model: Any, tokenizer: Any) -> int | None:
    """How many positions (prompt and answer together) ``model`` can take: its text config's
    ``max_position_embeddings`` (or ``n_positions``, ``max_sequence_length``, ``seq_length``), else the
    tokenizer's ``model_max_length`` when it is a real length, else None (unknown: nothing is checked)."""
    config = getattr(model, "config", None)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(text, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < _NO_LENGTH:
        return length
    return None


class BatchedHFGeneration:
    """The generation loop of the local Hugging Face backends (``hf`` and ``hf-text``), as a mixin.

    :meth:`generate` prepares every prompt (an error fails only that item), groups the prepared items
    by :meth:`_batch_key` (in prompt order), and runs each group in chunks of ``batch_size`` (one item
    per chunk when sampling, seeded by :func:`generate_seeded`). A chunk that fails is retried one item
    at a time. New tokens end at the first EOS token; the decoded answer ends before the first
    ``stop_strings`` match (decoding stops there too, through one ``StopStringCriteria`` built per
    loaded model); ``finish_reason`` is ``stop`` for either.

    Before generating, each encoded item's prompt tokens plus ``max_new_tokens`` are checked against
    the model's context (:meth:`_context_limit`): an item that does not fit fails alone with
    :class:`~mmsafe.limits.ContextTooLong` (how many tokens, how many positions) and the rest of its
    batch runs without it. A model would otherwise take it silently (truncating, or attending past
    the positions it was trained on).

    The backend's :meth:`load` sets ``_model``, ``_device``, ``_eos_ids`` and ``_settings`` (with ``stop_strings``),
    has ``generation`` and ``batch_size``, and supplies the hooks: :meth:`_prepare` (prompt → item),
    :meth:`_encode_batch` (items → left-padded encoding on the device), :meth:`_text_tokenizer`, and
    where it differs, :meth:`_batch_key`, :meth:`_answer_tokens`, :meth:`_prompt_token_counts`,
    :meth:`_context_limit` and :meth:`_item_metadata`. The same hooks give :meth:`greedy_answers`
    (the :class:`~mmsafe.models.base.WhiteBoxModel` success test) to every backend built on it.
    """

    #: where batch retries are logged: the backend's own module logger
    _log: ClassVar[logging.Logger] = log
    _model: Any
    _device: Any
    _eos_ids: frozenset[int]
    _settings: Any
    _stop_criteria: Any = None  # built once per loaded model (see _stopping_criteria)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _ensure_loaded(self) -> None:
        if self._model is None:
            self.load()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ hooks

    def _prepare(self, prompt: Prompt) -> Any:
        """One prompt → the item :meth:`_encode_batch` takes; raises for this prompt only."""
        raise NotImplementedError

    def _batch_key(self, item: Any) -> Hashable:
        """Items with different keys never share a batch."""
        return None

    def _encode_batch(self, items: list[Any]) -> Any:
        """Items → one left-padded encoding (``input_ids``, ``attention_mask``, …) on the model's device."""
        raise NotImplementedError

    def _text_tokenizer(self) -> Any:
        """The tokenizer that pads, decodes answers and matches stop strings."""
        raise NotImplementedError

    def _answer_tokens(self, out: Any, enc: Any) -> Any:
        """The generated tokens of ``model.generate``'s output: decoder-only models return prompt + answer."""
        return out[:, enc["input_ids"].shape[1] :]

    def _prompt_token_counts(self, enc: Any, items: list[Any]) -> list[int]:
        return [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()]

    def _item_metadata(self, item: Any) -> dict[str, Any]:
        """Metadata of one item's :class:`Generation` besides ``batch_size``."""
        return {}

    def _context_limit(self) -> int | None:
        """Positions the loaded model takes, prompt and answer together (None: unknown, not checked)."""
        return context_limit(self._model, self._text_tokenizer())

    def _over_context(self, enc: Any, items: list[Any], group: list[int]) -> dict[int, ContextTooLong]:
        """The items of ``group`` whose prompt tokens plus ``max_new_tokens`` do not fit the context."""
        limit = self._context_limit()
        if limit is None:
            return {}
        new = self.generation.max_new_tokens  # type: ignore[attr-defined]
        counts = self._prompt_token_counts(enc, items)
        return {
            i: ContextTooLong(
                f"prompt is {n:,} tokens + {new:,} new (generation.max_new_tokens), more than the "
                f"model's {limit:,}-position context"
            )
            for i, n in zip(group, counts, strict=True)
            if n + new > limit
        }

    # ------------------------------------------------------------- generation

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        self._ensure_loaded()
        results: list[Generation | Exception | None] = [None] * len(prompts)
        prepared: dict[int, Any] = {}
        for i, prompt in enumerate(prompts):
            try:  # this item only: bad image bytes, OCR failure, a template that rejects a role…
                prepared[i] = self._prepare(prompt)
            except Exception as exc:
                results[i] = exc
        size = self.batch_size if self.generation.greedy else 1  # type: ignore[attr-defined]
        for members in self._groups(prepared).values():
            for start in range(0, len(members), size):
                self._run_group(members[start : start + size], prepared, seeds, results)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _groups(self, prepared: dict[int, Any]) -> dict[Hashable, list[int]]:
        """Item indices by batch key, each group and the groups themselves in prompt order."""
        groups: dict[Hashable, list[int]] = {}
        for i in sorted(prepared):
            groups.setdefault(self._batch_key(prepared[i]), []).append(i)
        return groups

    def greedy_answers(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[str]:
        """Greedy answers with a short token budget, batched, no cache: the success test that
        optimisation attacks run every few steps (errors raise; nothing is isolated). Stop strings
        are not applied: the answers end at EOS or after ``max_new_tokens``."""
        self._ensure_loaded()
        rendered = {i: self._prepare(p) for i, p in enumerate(prompts)}
        cfg = self._generation_config()
        cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k = (
            max_new_tokens,
            False,
            None,
            None,
            None,
        )
        answers: dict[int, str] = {}
        tokenizer = self._text_tokenizer()
        size = self.batch_size  # type: ignore[attr-defined]
        for members in self._groups(rendered).values():
            for start in range(0, len(members), size):
                group = members[start : start + size]
                enc = self._encode_batch([rendered[i] for i in group])
                out = generate_seeded(
                    self._model, enc, greedy=True, seed=0, device=self._device, generation_config=cfg
                )
                new = self._answer_tokens(out, enc).tolist()
                for row, i in enumerate(group):
                    tokens, _ = split_at_eos(new[row], self._eos_ids)
                    answers[i] = tokenizer.decode(tokens, skip_special_tokens=True)
        return [answers[i] for i in range(len(prompts))]

    def _generation_config(self) -> Any:
        gen = self.generation  # type: ignore[attr-defined]
        cfg = copy.deepcopy(self._model.generation_config)
        cfg.max_new_tokens = gen.max_new_tokens
        cfg.do_sample = not gen.greedy
        cfg.temperature = gen.temperature if not gen.greedy else None
        cfg.top_p = gen.top_p if not gen.greedy else None
        cfg.top_k = 0 if not gen.greedy else None
        cfg.pad_token_id = self._text_tokenizer().pad_token_id
        return cfg

    def _stop_strings(self) -> tuple[str, ...]:
        return tuple(self._settings.stop_strings) if self._settings is not None else ()

    def _stopping_criteria(self) -> Any:
        """One ``StopStringCriteria`` for this loaded model, reused by every ``generate`` call.

        Passing ``stop_strings`` to ``generate`` makes transformers rebuild the criterion — a scan
        of the whole vocabulary (262k tokens for Gemma 3) — on every call: 3.5 s per batch on 2 CPU
        cores, more than the generation itself for short answers. The criterion keeps no state
        between calls, so one instance serves them all.
        """
        if self._stop_criteria is None:
            import transformers

            self._stop_criteria = transformers.StoppingCriteriaList(
                [transformers.StopStringCriteria(self._text_tokenizer(), list(self._stop_strings()))]
            )
        return self._stop_criteria

    def _run_group(
        self,
        group: list[int],
        prepared: dict[int, Any],
        seeds: Sequence[int],
        results: list[Generation | Exception | None],
    ) -> None:
        t0 = time.perf_counter()
        items = [prepared[i] for i in group]
        too_long: dict[int, ContextTooLong] = {}
        try:
            enc = self._encode_batch(items)
            too_long = self._over_context(enc, items, group)
            if not too_long:
                kwargs: dict[str, Any] = {"generation_config": self._generation_config()}
                if self._stop_strings():
                    kwargs["stopping_criteria"] = self._stopping_criteria()
                out = generate_seeded(
                    self._model,
                    enc,
                    greedy=self.generation.greedy,  # type: ignore[attr-defined]
                    seed=seeds[group[0]],  # sampled items run one per group
                    device=self._device,
                    **kwargs,
                )
        except Exception as exc:
            if len(group) == 1:
                results[group[0]] = exc
                return
            # Something in the batch is bad (e.g. an image-token count mismatch): isolate it.
            self._log.warning(
                "batch of %d failed (%s: %s); retrying one by one", len(group), type(exc).__name__, exc
            )
            for i in group:
                self._run_group([i], prepared, seeds, results)
            return
        if too_long:  # those fail alone; the rest of the batch runs without them
            for i, error in too_long.items():
                results[i] = error
            rest = [i for i in group if i not in too_long]
            if rest:
                self._run_group(rest, prepared, seeds, results)
            return
        latency = time.perf_counter() - t0
        new_tokens = self._answer_tokens(out, enc).tolist()
        prompt_tokens = self._prompt_token_counts(enc, items)
        tokenizer = self._text_tokenizer()
        stops = self._stop_strings()
        for row, i in enumerate(group):
            tokens, stopped = split_at_eos(new_tokens[row], self._eos_ids)
            text, cut = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stops)
            results[i] = Generation(
                text=text,
                finish_reason="stop" if stopped or cut else "length",
                usage=Usage(prompt_tokens=prompt_tokens[row], completion_tokens=len(tokens) + int(stopped)),
                latency_s=latency,
                metadata={"batch_size": len(group), **self._item_metadata(prepared[i])},
            )


class AdapterFields(BaseModel):
    """The ``adapter`` / ``adapter_sha256`` params every local backend that can load an adapter shares.

    ``adapter``: a directory written by ``mmsafe train`` (or ``builtin:<name>``): LoRA weights, plus
    the full weights of any module it trained (a projector); checked against its card and the base
    model, merged on load. ``adapter_sha256`` is filled from the card when the spec is made, so a
    run's config pins the exact weights; a mismatch on load is an error."""

    adapter: str | None = Field(
        None,
        description="adapter made by `mmsafe train` (a directory, or builtin:<name>): LoRA, plus any "
        "full-weight modules it trained; checked against its card and this base model, merged on load",
    )
    adapter_sha256: str | None = Field(
        None,
        description="sha256 of the adapter's weights (filled from its card; a mismatch on load is an error)",
    )

    @model_validator(mode="before")
    @classmethod
    def _pin_adapter(cls, values: Any) -> Any:
        from mmsafe.lora import pin_adapter

        return pin_adapter(values)


def logit_lens(model: Any, layers: Sequence[Any], hidden: Any) -> Any:
    """``hidden`` (``[..., d]``) through ``model``'s final norm and output head: the norm is the one owned by the
    module that holds the decoder ``layers`` (``norm``, ``final_layer_norm`` or ``ln_f``), the head
    ``model.get_output_embeddings()``. Computed in the head's dtype, returned as float32; differentiable when
    ``hidden`` carries a gradient (an adaptive attack on a hidden-state detector), else without autograd."""
    import torch

    first = layers[0]
    owner = next(
        (
            m
            for m in model.modules()
            for child in m.children()
            if isinstance(child, torch.nn.ModuleList) and len(child) and child[0] is first
        ),
        None,
    )
    norm = next((getattr(owner, n) for n in ("norm", "final_layer_norm", "ln_f") if hasattr(owner, n)), None)
    head = model.get_output_embeddings()
    if owner is None or norm is None or head is None:
        raise NotImplementedError(f"cannot find the final norm and output head of {type(model).__name__}")
    with torch.set_grad_enabled(torch.is_grad_enabled() and bool(hidden.requires_grad)):
        x = hidden.to(device=head.weight.device, dtype=head.weight.dtype)
        return head(norm(x)).float()
