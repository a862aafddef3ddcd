"""Guard filter: any judge screens the request before the model, the answer after it, or both.

No single paper: this is the deployed pattern that guard models are released for — Llama Guard (Inan et al.,
arXiv:2312.06674) classifies "the user's prompt" or "the agent's response"; Llama Guard 3 Vision (Chi et al.,
arXiv:2411.10414) and Llama Guard 4 do the same with images; LlavaGuard (Helff et al., ICML 2025) and ShieldGemma 2
(Zeng et al., arXiv:2504.01081) rate images against a policy. Peers run it as a baseline defense (OmniSafeBench-MM
registers guard-model filters; MMJ-Bench compares against them). Here the checker on each side is any mmsafe judge, so
the same filter runs with a guard checkpoint on a GPU or an endpoint, with mmsafe's shipped harm classifier, or with a
keyword rule set — :class:`~mmsafe.defenses.guard_input.GuardInput` and
:class:`~mmsafe.defenses.output_guard.OutputGuard` are its two halves for one fixed checker each.

Threat model: the attacker writes the request (text and images) and sees only the final answer; the judges and their
verdicts are hidden. A judge is a model: a request or an answer can still try to talk it round, and a text-only judge
cannot see a request hidden in an image.

Per item:

1. ``input_judge`` (optional) rates the request — the last user turn as the model would receive it, after the attack,
   with its images. It must be a judge that rates requests (``classifies_requests()``: ``guard`` with
   ``classify: request``, ``llavaguard``, ``shieldgemma2``); a judge of answers is refused when the defense is built,
   naming it. ``success`` (or, with ``unsafe_when: not-refused``, ``refused`` False) means unsafe: the item is
   ``blocked`` with ``refusal_text`` and the model is never called (0 calls).
2. The model answers (1 call).
3. ``output_judge`` (optional) rates the answer, as the output guard does: unsafe → ``blocked``, the answer replaced by
   ``refusal_text`` (its first ``max_logged_chars`` kept in the details).

A judge that gives no verdict (an error, a raise, an undecided verdict), by ``no_verdict``: ``pass`` (default) — the
item goes on, action ``flagged`` with the error, so a report never counts it as checked-and-safe (fail open, as a
deployed filter that times out does); ``block`` — blocked (fail closed); ``fail`` — the item fails with the reason and
is not counted. Details name the ``stage`` that decided (``input`` / ``output``), the judge, and its label, score and
categories when it gave them. The judges' own model calls (an LLM guard asks its model once per item) are not counted
in ``calls``; their wall time is in the defense's seconds.

Adaptive attack (issue 21): with an input judge that runs its guard model in this process (``shieldgemma2`` with
``path``; ``llavaguard``, ``shieldgemma2`` with ``judge_model``, or ``guard`` with ``classify: request`` and images shown,
on an ``hf``/``tiny`` backend), the filter is ``evadable``: :meth:`GuardFilter.detection_margin` gives, differentiably in
the attacker's image, the input judge's verdict as a margin in log-odds (> 0: the request would be blocked; the judge's
own threshold), which a white-box attack adds to its objective — the adaptive attack of Athalye et al. (ICML 2018,
arXiv:1802.00420) and Tramèr et al. ("On Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020,
arXiv:2002.08347), as Mangaokar et al. (PRP, ACL 2024, arXiv:2402.15911) did against LLM guard-rails. Only the input side
can be evaded so: the output judge rates the answer's text, which the attacker's image does not write (an attack on it
works through the model, not through a gradient of the guard). A judge served over HTTP gives no gradients
(``TypeError``): against it an attacker needs queries.

Params: ``input_judge`` and ``output_judge`` ({name, params} of any judge; at least one), ``unsafe_when`` ("success"),
``no_verdict`` ("pass"), ``refusal_text`` (our wording), ``max_logged_chars`` (200).

Example — Llama Guard 3 Vision on both sides, served by vLLM::

    defenses:
      - name: guard-filter
        params:
          input_judge: {name: guard, params: {classify: request, family: llama-guard-3-vision,
                        judge_model: {name: openai, params: {model: meta-llama/Llama-Guard-3-11B-Vision}}}}
          output_judge: {name: guard, params: {family: llama-guard-3-vision,
                         judge_model: {name: openai, params: {model: meta-llama/Llama-Guard-3-11B-Vision}}}}
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmsafe.components import SubJudge
from mmsafe.config import ComponentField
from mmsafe.defenses.base import Defense, mark
from mmsafe.defenses.output_guard import DEFAULT_REFUSAL, judge_answers, unsafe_verdict
from mmsafe.errors import ConfigError
from mmsafe.judges.base import Judge
from mmsafe.plugin_meta import Paper
from mmsafe.types import Generation, Judgement, Prompt

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend
    from mmsafe.registry import Registry

__all__ = ["GuardFilter", "GuardFilterParams"]


class GuardFilterParams(BaseModel):
    """Parameters of :class:`GuardFilter`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_judge: ComponentField | None = Field(
        None,
        description="screens each request before the model: {name, params} of a judge that rates requests",
    )
    output_judge: ComponentField | None = Field(
        None, description="screens each answer after the model: {name, params} of any judge"
    )
    unsafe_when: Literal["success", "not-refused"] = Field(
        "success", description="unsafe if the judge's success is True, or if its refused is False"
    )
    no_verdict: Literal["pass", "block", "fail"] = Field(
        "pass",
        description="when a judge gives no verdict: go on flagged (fail open), block, or fail the item",
    )
    refusal_text: str = Field(DEFAULT_REFUSAL, min_length=1, max_length=5000)
    max_logged_chars: int = Field(
        200, ge=0, le=10_000, description="withheld answer text kept in the details"
    )

    @model_validator(mode="after")
    def _one_side(self) -> GuardFilterParams:
        if self.input_judge is None and self.output_judge is None:
            raise ValueError(
                "give input_judge, output_judge or both: a guard filter with no judge checks nothing"
            )
        return self


def _verdict_details(j: Judgement) -> dict[str, Any]:
    """What the details keep of a judge's verdict: its label, score and categories when it gave them."""
    out: dict[str, Any] = {}
    if j.label is not None:
        out["label"] = j.label
    if j.score is not None:
        out["score"] = j.score
    cats = (j.details or {}).get("categories")
    if isinstance(cats, list) and cats:
        out["categories"] = [str(c) for c in cats]
    return out


class GuardFilter(Defense):
    """Guard filter: any judge screens requests before the model and/or answers after it; unsafe ones are refused."""

    name: ClassVar[str] = "guard-filter"
    version: ClassVar[str] = "1"
    paper: ClassVar[Paper | None] = Paper(
        title="Llama Guard: LLM-based Input-Output Safeguard for Human-AI Conversations",
        authors="Inan et al.",
        year=2023,
        url="https://arxiv.org/abs/2312.06674",
        threat_model=(
            "the attacker controls the request (text and images) and sees only the final answer; "
            "judges screen the request before the model and the answer after it"
        ),
    )
    #: a scripted Llama Guard on the request (bombs are unsafe) and the instructions preset on the answer
    example_params: ClassVar[dict[str, Any]] = {
        "input_judge": {
            "name": "guard",
            "params": {
                "classify": "request",
                "judge_model": {
                    "name": "scripted",
                    "params": {"rules": {"bomb": "unsafe\nS9"}, "default": "safe"},
                },
            },
        },
        "output_judge": {"name": "target-string", "params": {"preset": "instructions"}},
    }
    Params: ClassVar[type[BaseModel]] = GuardFilterParams
    params: GuardFilterParams
    #: an image attack can descend ``detection_margin`` when the input judge runs a white-box guard
    evadable: ClassVar[bool] = True
    input_judge: Judge | None = SubJudge("input_judge")  # type: ignore[assignment]
    output_judge: Judge | None = SubJudge("output_judge")  # type: ignore[assignment]

    def __init__(self, params: Any = None, /, *, registry: Registry | None = None, **kwargs: Any) -> None:
        super().__init__(params, registry=registry, **kwargs)
        self._lock = threading.Lock()  # judges need not be thread-safe
        judge = self.input_judge
        if judge is not None and not judge.classifies_requests():
            raise ConfigError(
                f"guard-filter: input_judge '{judge.name}' rates answers, not requests; use a judge that rates "
                "requests (guard with classify: request, llavaguard, shieldgemma2) or put it in output_judge"
            )

    def detection_margin(self, model: Any, x: Any, prompts: Sequence[Prompt]) -> Any:
        """``[B]``, differentiable in ``x`` (``[B, 3, H, W]`` in [0, 1], image ``i`` in place of the first image of
        ``prompts[i]``): > 0 means the input judge would block the request, ≤ 0 that it passes, in log-odds of the
        guard's unsafe score minus its threshold (:meth:`Judge.request_unsafe_margin
        <mmsafe.judges.base.Judge.request_unsafe_margin>`). ``model`` (the attacker's crafting model) is not used:
        the guard is a model of its own. ``TypeError`` when there is nothing an image can evade by gradient: no
        input judge (the output judge rates the answer's text), ``unsafe_when: not-refused`` (the margin is the
        judge's unsafe label), or an input judge whose model gives no gradients."""
        if self.input_judge is None:
            raise TypeError(
                "guard-filter: no input_judge; its output_judge rates the answer's text, which an image attack "
                "does not write, so there is no margin to descend"
            )
        if self.params.unsafe_when != "success":
            raise TypeError(
                "guard-filter: unsafe_when 'not-refused' reads the judge's refused field, not the unsafe rating "
                "the margin measures"
            )
        with self._lock:
            return self.input_judge.request_unsafe_margin(x, prompts)

    def _decide(self, j: Judgement) -> tuple[bool | None, str | None]:
        return unsafe_verdict(j, unsafe_when=self.params.unsafe_when)

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        results: list[Generation | Exception | None] = [None] * len(prompts)
        notes: dict[
            int, dict[str, Any]
        ] = {}  # index → what the input stage found, for the items the model answers
        if self.input_judge is not None:
            with self._lock:
                verdicts = judge_answers(self.input_judge, [(q, Generation(text="")) for q in prompts])
            for i, j in enumerate(verdicts):
                unsafe, error = self._decide(j)
                where = {"stage": "input", "judge": self.input_judge.name, **_verdict_details(j)}
                if error is not None and p.no_verdict == "fail":
                    results[i] = RuntimeError(f"guard-filter: input judge gave no verdict: {error}")
                elif error is not None and p.no_verdict == "pass":
                    notes[i] = {"flagged": True, "input_error": error}
                elif error is not None or unsafe:
                    blocked = Generation(text=p.refusal_text, finish_reason="blocked")
                    results[i] = mark(
                        blocked, "blocked", calls=0, **where, **({"error": error} if error else {})
                    )
                else:
                    notes[i] = {}
        else:
            notes = {i: {} for i in range(len(prompts))}
        todo = sorted(notes)
        if not todo:
            return [r if r is not None else RuntimeError("guard-filter: no result") for r in results]
        answers = model.generate([prompts[i] for i in todo], seeds=[seeds[i] for i in todo])
        judged: dict[int, Judgement] = {}
        if self.output_judge is not None:
            ok = [(i, a) for i, a in zip(todo, answers, strict=True) if isinstance(a, Generation)]
            with self._lock:
                out = judge_answers(self.output_judge, [(prompts[i], a) for i, a in ok])
            judged = {i: j for (i, _), j in zip(ok, out, strict=True)}
        for i, ans in zip(todo, answers, strict=True):
            if isinstance(ans, Exception):
                results[i] = ans
                continue
            note = notes[i]
            flags = {k: v for k, v in note.items() if k == "input_error"}
            flagged = bool(note.get("flagged"))
            verdict = judged.get(i)
            if verdict is None:
                results[i] = mark(ans, "flagged" if flagged else "passed", calls=1, **flags)
                continue
            j = verdict
            unsafe, error = self._decide(j)
            where = {"stage": "output", "judge": self.output_judge.name if self.output_judge else "", **flags}
            if error is not None and p.no_verdict == "fail":
                results[i] = RuntimeError(f"guard-filter: output judge gave no verdict: {error}")
            elif error is not None and p.no_verdict == "pass":
                results[i] = mark(ans, "flagged", calls=1, **where, output_error=error)
            elif error is not None or unsafe:
                blocked = ans.model_copy(update={"text": p.refusal_text})
                results[i] = mark(
                    blocked,
                    "blocked",
                    calls=1,
                    **where,
                    **_verdict_details(j),
                    blocked_text=ans.text[: p.max_logged_chars],
                    **({"error": error} if error else {}),
                )
            else:
                results[i] = mark(
                    ans, "flagged" if flagged else "passed", calls=1, **where, **_verdict_details(j)
                )
        return [r if r is not None else RuntimeError("guard-filter: no result") for r in results]
