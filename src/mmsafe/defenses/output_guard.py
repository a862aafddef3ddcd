"""Output guard: a judge reads every answer, and an answer it calls unsafe is replaced by a refusal.

No single paper: this is the generic post-hoc moderation filter that deployed chat systems put
behind a model (a moderation classifier or a guard model on the output), and the baseline that
response-side defenses such as MLLM-Protector (Pi et al., EMNLP 2024) improve on by rewriting
instead of blocking. Here the checker is any mmsafe judge, so the same guard runs with a keyword
rule set, a classifier or an LLM judge (Llama Guard style).

What it needs: nothing from the model beyond an answer. Model calls: 1 per item (the answer); the
judge's own cost (an LLM judge asks its model once) is not counted in ``calls``.

Per item, the question sent to the judge is the prompt's last user turn (with its images), built
into a :class:`~mmsafe.types.Sample` that expects a refusal, so a judge's ``success`` means "the
model complied with a harmful request". Outcomes:

- ``passed`` — the judge found the answer safe; the answer is kept.
- ``blocked`` — the judge found it unsafe; the answer is replaced by ``refusal_text``
  (details: ``blocked_text``, the first ``max_logged_chars`` of what was withheld).
- ``flagged`` — the judge could not decide (it returned an error, raised, or gave no verdict):
  the answer is kept, as it would be by a guard that fails open, and the item carries the error,
  so a report never counts it as checked-and-safe.

Parameters: ``judge`` (required; {name, params} or a registry name of any judge), ``unsafe_when``
(``success``: the judge's ``success`` is True — default; ``not-refused``: its ``refused`` is False,
for judges that only detect refusals), ``refusal_text`` (our default wording below),
``max_logged_chars`` (200).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.components import SubJudge
from mmsafe.config import ComponentField
from mmsafe.defenses.base import Defense, mark
from mmsafe.judges.base import Judge
from mmsafe.types import Expected, Generation, Judgement, Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend
    from mmsafe.registry import Registry

__all__ = [
    "DEFAULT_REFUSAL",
    "OutputGuard",
    "OutputGuardParams",
    "create_judge",
    "defense_sample",
    "judge_answers",
    "query_text",
    "unsafe_verdict",
]

#: Our wording.
DEFAULT_REFUSAL = "I'm sorry, but I can't help with that request."


def query_text(prompt: Prompt) -> str:
    """The text of the prompt's last user turn (the request being answered)."""
    for m in reversed(prompt.messages):
        if m.role == "user":
            return m.text
    return ""


def defense_sample(prompt: Prompt, index: int) -> Sample:
    """A :class:`Sample` standing for ``prompt`` when a defense asks a judge about an answer: the
    request text and images, expecting a refusal (so ``success`` means harmful compliance)."""
    return Sample(
        id=f"defense-{index}",
        benchmark="defense",
        text=query_text(prompt),
        images=prompt.images,
        expected=Expected.refuse,
    )


def create_judge(cfg: Any, *, registry: Registry | None, where: str) -> Judge:
    """Build the judge ``cfg`` ({name, params}) through ``registry`` (default: a fresh one); a judge
    that builds sub-components of its own (an LLM judge's model) gets ``registry`` from it too."""
    from mmsafe.registry import registry_or_default

    judge = registry_or_default(registry).create("judge", cfg.name, cfg.params, where=where)
    if not isinstance(judge, Judge):
        raise TypeError(f"{where}: '{cfg.name}' is not a judge")
    return judge


def judge_answers(judge: Judge, items: Sequence[tuple[Prompt, Generation]]) -> list[Judgement]:
    """One judgement per (prompt, answer); a judge that raises or miscounts gives errors, never verdicts."""
    if not items:
        return []
    batch = [(defense_sample(p, i), p, g) for i, (p, g) in enumerate(items)]
    try:
        out = list(judge.judge_batch(batch))
    except Exception as exc:
        return [Judgement(error=f"{type(exc).__name__}: {exc}")] * len(items)
    if len(out) != len(items):
        return [Judgement(error=f"judge returned {len(out)} verdicts for {len(items)} answers")] * len(items)
    return out


def unsafe_verdict(j: Judgement, *, unsafe_when: str = "success") -> tuple[bool | None, str | None]:
    """``(unsafe, error)``: ``unsafe`` is None when the judge did not decide (``error`` says why)."""
    if j.error:
        return None, j.error
    value = j.success if unsafe_when == "success" else (None if j.refused is None else not j.refused)
    if value is None:
        field = "success" if unsafe_when == "success" else "refused"
        return None, f"judge gave no verdict ({field} is None; label {j.label!r})"
    return bool(value), None


class OutputGuardParams(BaseModel):
    """Parameters of :class:`OutputGuard`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    judge: ComponentField = Field(description="checker: {name, params} or a registry name of any judge")
    unsafe_when: Literal["success", "not-refused"] = Field(
        "success", description="unsafe if the judge's success is True, or if its refused is False"
    )
    refusal_text: str = Field(DEFAULT_REFUSAL, min_length=1, max_length=5000)
    max_logged_chars: int = Field(200, ge=0, le=10_000, description="withheld text kept in the metadata")


class OutputGuard(Defense):
    """Output guard: any judge checks each answer; unsafe answers become a fixed refusal."""

    name: ClassVar[str] = "output-guard"
    example_params: ClassVar[dict[str, Any]] = {
        "judge": {"name": "target-string", "params": {"preset": "instructions"}}
    }
    Params: ClassVar[type[BaseModel]] = OutputGuardParams
    params: OutputGuardParams
    #: the checker, created through the defense's registry; bound and closed with it
    judge: Judge = SubJudge("judge")  # type: ignore[assignment]

    def __init__(self, params: Any = None, /, *, registry: Registry | None = None, **kwargs: Any) -> None:
        super().__init__(params, registry=registry, **kwargs)
        self._lock = threading.Lock()

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        answers = model.generate(prompts, seeds=seeds)
        todo = [i for i, a in enumerate(answers) if not isinstance(a, Exception)]
        with self._lock:  # judges need not be thread-safe
            verdicts = judge_answers(self.judge, [(prompts[i], answers[i]) for i in todo])  # type: ignore[misc]
        out: list[Generation | Exception] = list(answers)
        for i, j in zip(todo, verdicts, strict=True):
            gen = answers[i]
            assert isinstance(gen, Generation)
            unsafe, error = unsafe_verdict(j, unsafe_when=p.unsafe_when)
            if error is not None:
                out[i] = mark(gen, "flagged", calls=1, judge=p.judge.name, error=error)
            elif unsafe:
                withheld = gen.text[: p.max_logged_chars]
                blocked = gen.model_copy(update={"text": p.refusal_text})
                out[i] = mark(blocked, "blocked", calls=1, judge=p.judge.name, blocked_text=withheld)
            else:
                out[i] = mark(gen, "passed", calls=1, judge=p.judge.name)
        return out
