"""Guard-model input filter: a Llama Guard checkpoint reads each request; unsafe ones are refused unanswered.

Papers: H. Inan et al., "Llama Guard: LLM-based Input-Output Safeguard for Human-AI Conversations",
arXiv:2312.06674 (2023) — an LLM fine-tuned to classify the user's turn (prompt classification) or
the model's turn against a hazard taxonomy; J. Chi et al., "Llama Guard 3 Vision: Safeguarding
Human-AI Image Understanding Conversations", arXiv:2411.10414 (2024) — the same for a user turn with
an image. This defense is the prompt-classification use: the guard reads the request before the
defended model does.

Threat model: the attacker writes the request (text and images) and sees only the final answer;
the guard and its verdicts are hidden. The guard sees the last user turn as the defended model
would receive it (after the attack), and its images when it reads images — a text-only guard
cannot see a request hidden in an image (FigStep-style attacks pass it by design). The guard is an
LLM: a request can still try to talk it round.

What it sends: the conversation only (:func:`mmsafe.llama_guard.guard_conversation`, the user's turn
alone); the backend applies the checkpoint's own chat template, which writes the policy and
categories as Meta trained them (``hf`` / ``hf-text`` read it from the checkpoint; vLLM applies it;
llama.cpp needs ``--jinja``). How the answer is read: the model cards' format — ``safe``, or
``unsafe`` and the violated codes of ``family`` (:func:`mmsafe.llama_guard.parse_guard_answer`).

Outcomes per item:

- ``passed`` — the guard said ``safe``; the model answers (1 model call).
- ``blocked`` — ``unsafe``: ``refusal_text`` is returned without calling the model (0 calls);
  details ``categories`` (codes) and ``category_names``.
- no verdict (the guard's answer is not in the format, or the guard model failed), by ``no_verdict``:
  ``fail`` (default) — the item fails with an error naming the reason, never counted;
  ``block`` — blocked as unsafe (fail closed); ``pass`` — answered, action ``flagged`` (fail open),
  with the error in the details so a report never counts it as checked-and-safe.

The guard model is a declared sub-model (:mod:`mmsafe.components`): created through the run's
registry and loaded on first use, greedy, its answers cached in the run store (a rerun asks it
nothing twice), closed with the defense. Its cost is not counted in ``calls``.

Params: ``guard`` (required; {name, params} of the backend serving the checkpoint, greedy),
``family`` ("llama-guard-3"; which hazard codes it answers with), ``show_images`` (None: send the
images when ``family`` reads images — 3-vision, 4 — and the backend accepts them; True: always,
the backend must accept images; False: never), ``no_verdict`` ("fail"), ``refusal_text``.

Example::

    defenses:
      - name: guard-input
        params:
          guard: {name: hf-text, params: {model: meta-llama/Llama-Guard-3-1B, max_new_tokens: 20}}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe import papers
from mmsafe.components import SubModel, ask, reject_sampling
from mmsafe.config import ComponentField
from mmsafe.defenses.base import Defense, mark
from mmsafe.defenses.output_guard import DEFAULT_REFUSAL, query_text
from mmsafe.llama_guard import (
    GUARD_CATEGORIES,
    VISION_FAMILIES,
    Family,
    guard_conversation,
    parse_guard_answer,
)
from mmsafe.models.base import ModelBackend
from mmsafe.plugin_meta import Paper
from mmsafe.types import Generation, Prompt

__all__ = ["GuardInput", "GuardInputParams"]


class GuardInputParams(BaseModel):
    """Parameters of :class:`GuardInput`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    guard: ComponentField = Field(description="{name, params} of the backend serving the guard checkpoint")
    family: Family = Field("llama-guard-3", description="which Llama Guard: the hazard codes it answers with")
    show_images: bool | None = Field(
        None, description="send the request's images (None: for a vision family on a backend that takes them)"
    )
    no_verdict: Literal["fail", "block", "pass"] = Field(
        "fail", description="when the guard gives no verdict: fail the item, block it, or answer it (flagged)"
    )
    refusal_text: str = Field(DEFAULT_REFUSAL, min_length=1, max_length=5000)

    @field_validator("guard")
    @classmethod
    def _greedy(cls, v: Any) -> Any:
        reject_sampling(v.params, field="guard")
        return v


class GuardInput(Defense):
    """Guard-model input filter (Llama Guard, Inan et al. 2023): refuse requests the guard calls unsafe."""

    name: ClassVar[str] = "guard-input"
    version: ClassVar[str] = "1"
    paper: ClassVar[Paper | None] = papers.LLAMA_GUARD.threat(
        "the attacker controls the user's request (text and images); the guard sees it before the model"
    )
    #: a scripted guard that calls requests about bombs unsafe (S9), everything else safe
    example_params: ClassVar[dict[str, Any]] = {
        "guard": {"name": "scripted", "params": {"rules": {"bomb": "unsafe\nS9"}, "default": "safe"}}
    }
    Params: ClassVar[type[BaseModel]] = GuardInputParams
    params: GuardInputParams
    #: the guard checkpoint: created, checked (greedy; images when show_images is True), loaded, cached
    guard: ModelBackend = SubModel("guard", greedy=True, needs_images=lambda p: p.show_images is True)  # type: ignore[assignment]

    def sends_images(self) -> bool:
        p = self.params
        if p.show_images is not None:
            return p.show_images
        return p.family in VISION_FAMILIES and "images" in self.guard.capabilities

    def verdicts(self, prompts: Sequence[Prompt]) -> list[tuple[list[str] | None, str | None]]:
        """Per prompt ``(codes, error)``: the violated codes (empty = safe), or None and why not."""
        try:
            images = self.sends_images()
        except Exception as exc:  # the guard model could not be created or loaded
            return [(None, f"guard model failed: {type(exc).__name__}: {exc}")] * len(prompts)
        asks = [guard_conversation(p, query_text(p), "", classify="request", images=images) for p in prompts]
        codes = GUARD_CATEGORIES[self.params.family]
        out: list[tuple[list[str] | None, str | None]] = []
        for answer in ask(self, "guard", asks):
            if isinstance(answer, Exception):
                out.append((None, f"guard model failed: {type(answer).__name__}: {answer}"))
                continue
            verdict, found, err = parse_guard_answer(answer.text or "", codes)
            if err is not None:
                out.append((None, f"unparseable guard answer: {err}"))
            else:
                out.append((found if verdict == "unsafe" else [], None))
        return out

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        codes = GUARD_CATEGORIES[p.family]
        results: list[Generation | Exception | None] = [None] * len(prompts)
        answer: dict[int, dict[str, Any]] = {}  # index → details of the items the model answers
        for i, (found, error) in enumerate(self.verdicts(prompts)):
            if error is not None and p.no_verdict == "fail":
                results[i] = RuntimeError(f"guard-input: {error} (set no_verdict to block or pass to decide)")
            elif error is not None and p.no_verdict == "pass":
                answer[i] = {"action": "flagged", "error": error}
            elif error is not None or found:
                blocked = Generation(text=p.refusal_text, finish_reason="blocked")
                why: dict[str, Any] = (
                    {"error": error}
                    if error is not None
                    else {"categories": found, "category_names": [codes[c] for c in found or []]}
                )
                results[i] = mark(blocked, "blocked", calls=0, guard=p.guard.name, **why)
            else:
                answer[i] = {"action": "passed"}
        if answer:
            todo = sorted(answer)
            gens = model.generate([prompts[i] for i in todo], seeds=[seeds[i] for i in todo])
            for i, g in zip(todo, gens, strict=True):
                info = answer[i]
                results[i] = (
                    g
                    if isinstance(g, Exception)
                    else mark(g, info.pop("action"), calls=1, guard=p.guard.name, **info)
                )
        return [r if r is not None else RuntimeError("guard-input: no result") for r in results]
