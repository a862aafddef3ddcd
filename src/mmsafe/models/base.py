"""What every model backend is: batched ``generate`` (local) or async ``agenerate`` (I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.plugin_meta import CAPABILITIES, Capability
from mmsafe.registry import Component
from mmsafe.types import Generation, Image, Prompt

__all__ = ["CAPABILITIES", "Capability", "GenerationParams", "ModelBackend", "WhiteBoxModel", "WrappedModel"]


class GenerationParams(BaseModel):
    """Decoding settings shared by all backends (part of the model spec, so part of the cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.0, ge=0.0, le=5.0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class ModelBackend(Component):
    """Base of every model backend.

    Subclasses implement :meth:`generate` (a batch of prompts → one :class:`Generation` each, or an
    exception per failed item) and declare ``capabilities``. I/O backends set ``is_async`` and
    implement :meth:`agenerate`; the runner then drives them with bounded concurrency. Heavy work
    (loading weights, opening sessions) happens in :meth:`load`, never in ``__init__``.
    """

    kind: ClassVar[str] = "model"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    is_async: ClassVar[bool] = False
    runtime_params: ClassVar[frozenset[str]] = frozenset({"batch_size", "concurrency", "cpu_threads"})

    #: True when the weights are random (tiny test models): reports say so on every page.
    random_weights: bool = False

    @property
    def generation(self) -> GenerationParams:
        gen = getattr(self.params, "generation", None)
        return gen if isinstance(gen, GenerationParams) else GenerationParams()

    @property
    def batch_size(self) -> int:
        return int(getattr(self.params, "batch_size", 1) or 1)

    @property
    def concurrency(self) -> int:
        return int(getattr(self.params, "concurrency", 1) or 1)

    def disclaimer(self) -> str | None:
        """A plain warning that reports print next to this model's numbers, or None for a real model."""
        if self.random_weights:
            return "random weights: its numbers test the pipeline, not any model's safety"
        return None

    def load(self) -> None:
        """Load weights / open clients. Called once by the runner before the first request."""

    def close(self) -> None:
        """Release resources."""

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        """Answer each prompt. Return an ``Exception`` in place of a result for an item that failed."""
        raise NotImplementedError

    async def agenerate(self, prompt: Prompt, *, seed: int) -> Generation:
        """Answer one prompt asynchronously (default: :meth:`generate` in a worker thread)."""
        (result,) = await asyncio.to_thread(self.generate, [prompt], seeds=[seed])
        if isinstance(result, Exception):
            raise result
        return result


class WrappedModel(ModelBackend):
    """A backend in front of another one (response cache, defense): it reports the inner model's
    identity, capabilities, async-ness and disclaimer, so nothing downstream sees the wrapper."""

    def __init__(self, inner: ModelBackend) -> None:
        super().__init__(inner.params)
        self.inner = inner
        # the wrapper reports the inner model's identity: these instance values deliberately shadow the
        # class-level ones (ClassVar on Component), which mypy rejects on principle
        self.kind = inner.kind  # type: ignore[misc]
        self.name = inner.name  # type: ignore[misc]
        self.version = inner.version  # type: ignore[misc]
        self.capabilities = inner.capabilities  # type: ignore[misc]
        self.random_weights = inner.random_weights

    @property
    def is_async(self) -> bool:  # type: ignore[override]
        return bool(self.inner.is_async)

    def disclaimer(self) -> str | None:
        return self.inner.disclaimer()


class WhiteBoxModel(ModelBackend):
    """A local backend whose internals attacks and defenses may use (white-box threat model).

    Declares ``"gradients"`` when :meth:`to_pixels` and :meth:`target_loss` are real, and
    ``"hidden_states"`` when :meth:`hidden_states` and :meth:`decoder_layers` are. Pixel space is
    the image the model sees *after* resizing/cropping and *before* normalisation: float values in
    [0, 1], shape ``[3, H, W]``. Adversarial attacks optimise there, so an ε-ball in pixel space
    means what the papers mean by it; each family then normalises (and, for Qwen2-VL, patches)
    differentiably. All methods need :meth:`load` first and import torch lazily.
    """

    @property
    def tokenizer(self) -> Any:
        """The loaded model's text tokenizer (attacks size token budgets and targets with it)."""
        raise NotImplementedError

    def greedy_answers(self, prompts: Sequence[Prompt], *, max_new_tokens: int) -> list[str]:
        """Greedy answers to ``prompts`` (one string each, in order) with at most ``max_new_tokens``
        new tokens, batched, bypassing any cache: the success test that optimisation attacks run on
        their candidate images every few steps. Errors raise (nothing is isolated per prompt)."""
        raise NotImplementedError

    def to_pixels(self, image: Image) -> Any:
        """The model's view of ``image``: a ``[3, H, W]`` float tensor in [0, 1] on the model's device."""
        raise NotImplementedError

    def target_loss(self, prompt: Prompt, target: str, *, pixels: Sequence[Any] | None = None) -> Any:
        """Teacher-forced mean cross-entropy of ``target`` as the assistant's answer to ``prompt``.

        ``pixels`` (one ``[3, H, W]`` tensor per image in the prompt, in order) replace the prompt's
        images; gradients flow back to them. Returns a scalar tensor.
        """
        raise NotImplementedError

    def teacher_forced(self, prompts: Sequence[Prompt], targets: Sequence[Any]) -> Any:
        """A batched objective, encoded once: ``obj(pixels)`` → per-example target losses ``[B]``.

        ``targets`` are strings or ``(text, weight)`` segment lists; ``pixels`` is one list of
        ``[3, H, W]`` tensors per prompt (or ``None`` to keep its images); ``obj(...,
        embed_delta=)`` adds a perturbation to the prompt's text embeddings. Optimisation attacks use
        this rather than :meth:`target_loss` so nothing is re-encoded per step.
        """
        raise NotImplementedError

    def image_features(self, pixels: Sequence[Any], *, space: str = "encoder") -> Any:
        """Vision-side features ``[N, tokens, dim]`` of pixel tensors, without the language model."""
        raise NotImplementedError

    def gradient_checkpointing(self, enabled: bool = True) -> Any:
        """Context manager: recompute activations during backward while inside (saves memory)."""
        raise NotImplementedError

    def hidden_states(
        self, prompt: Prompt, *, layers: Sequence[int], pixels: Sequence[Any] | None = None
    ) -> dict[int, Any]:
        """Residual-stream activations ``[seq, hidden]`` after each decoder layer in ``layers``
        (0-based; negative counts from the end) for the templated prompt (generation prompt included)."""
        raise NotImplementedError

    def decoder_layers(self) -> Sequence[Any]:
        """The language model's decoder layers (``torch.nn.Module``), for forward hooks (steering)."""
        raise NotImplementedError

    def logit_lens(self, hidden: Any) -> Any:
        """Vocabulary logits ``[..., vocab]`` of residual-stream states ``[..., hidden]`` (from
        :meth:`hidden_states`): the language model's final norm and output head applied to them, as
        the last layer's are (the "logit lens"). HiddenDetect reads refusal this way at every layer.
        Differentiable when ``hidden`` carries a gradient (states from :meth:`hidden_states` with ``pixels`` that
        require grad), so an adaptive attack can push a hidden-state detector's score down."""
        raise NotImplementedError
