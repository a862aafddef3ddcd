"""ETA: judge the answer and the input; when both look unsafe, answer again after a safety prefix, best of N.

Paper: Y. Ding, B. Li, R. Zhang, "ETA: Evaluating Then Aligning Safety of Vision Language Models at
Inference Time", ICLR 2025, arXiv:2410.06625; the authors' code is github.com/DripNowhy/ETA
(``generate/eta_generation.py``, ``generate/base_class.py``, ``eta_safetybench.py``). Training-free,
in two phases. *Evaluating*: a pre-generation evaluator scores the input image with CLIP against a
description of unsafe content (cosine similarity; unsafe at or above 0.16), and a post-generation
evaluator scores the answer with a reward model (ArmoRM-Llama3-8B, given a safety rubric as the user
turn and the answer; unsafe at or below 0.06). The answer is kept unless *both* say unsafe (the
authors' ``generate`` runs the post evaluator first and asks CLIP only when it says unsafe).
*Aligning*: shallow — the answer is regenerated after the assistant-turn prefix "As an AI assistant"
(prefilled, and kept in the output); deep — sentence-level best-of-N: N = 5 candidate next sentences
are sampled (top-k 5 at temperature 1.5; a sentence ends at "." or after 70 tokens), each scored by
the reward model on the answer so far plus, from the second sentence on, CLIP's image–sentence
similarity weighted 1/i for sentence i; the best is kept and the search goes on until the answer
ends (at most 1024 new tokens).

Threat model: the attacker writes the request (text and images) and sees only the final answer; the
evaluators and their scores are hidden. Cost per item: 1 model call when the answer is kept; when it is aligned,
1 + ``n_candidates`` per sentence (sentence level) or 1 + ``n_candidates`` (response level); the judges' own calls
are not counted in ``calls``.

As implemented:

1. The model answers (1 call).
2. ``post_judge`` (any judge; default ``harm``, mmsafe's shipped offline harm classifier) rates the
   answer. Unsafe = its ``success`` is True, or, with ``post_threshold`` set, its ``score`` is at or
   above the threshold (``post_score: harm``, a higher score is more harmful: ``harm``'s P(harmful))
   or at or below it (``post_score: safety``, a higher score is safer: a reward model, as the paper).
   Safe → ``passed``.
3. ``pre_judge`` (optional; a judge that rates requests — ``classifies_requests()``: ``guard`` with
   ``classify: request``, ``llavaguard``, ``shieldgemma2``) rates the request, its text and images,
   for the answers the post stage found unsafe. Unsafe = ``success``, or ``score`` ≥ ``pre_threshold``
   when set (a CLIP-like similarity, as the paper). Safe → ``passed``. Without a pre judge the post
   stage decides alone (details say ``pre: skipped``).
4. Both unsafe → aligned. **On a model that declares ``prefill``** (``hf`` families, ``hf-text``, ``gemma-ocr``,
   ``llamacpp``; :mod:`mmsafe.models.prefill`), as the paper: the answer starts as ``prefix`` in an assistant
   turn the model continues (shallow), and is grown sentence by sentence (deep): each round draws
   ``n_candidates`` continuations of the answer so far with seeds derived from the item's
   (``stable_hash([seed, "eta", round, k])``), keeps the first sentence of each (up to ``.``, ``!``, ``?`` or a
   line break), has the post judge rate the answer so far plus each sentence, and keeps the best (safe before
   unsafe, then the lowest harm / highest safety score, then the first drawn), until the kept continuation ends
   the answer or ``max_sentences`` rounds; the finished answer is judged once more (``chosen_score``). Details:
   per round the candidate kept, its score and how many candidates were distinct. **On any other model**
   (``openai``, ``scripted``): response level, by instruction — ``n_candidates`` new answers are drawn with
   seeds ``stable_hash([seed, "eta", k])``, each to the prompt with ``prefix_instruction`` (asking the answer to
   begin with ``prefix``) added to the last user turn; an answer that does not begin with ``prefix`` gets it put
   in front; the post judge rates every candidate and the best is returned, ``rewritten``. ``shallow`` and
   ``deep`` choose the modes by hand (``shallow: prefill, deep: response`` draws whole answers after the
   prefilled prefix). Details on the response level: both stages' scores, each candidate's score and verdict,
   the index chosen, how many candidates were distinct and how many began with the prefix on their own, and the
   first ``max_logged_chars`` of the original answer. A model that decodes greedily would give ``n_candidates``
   equal answers to one prompt, so it is asked once per choice (the calls in the details say so).

A judge that gives no verdict (an error, a raise, a missing ``success``, or no ``score`` when a
threshold is set), by ``no_verdict``: ``pass`` (default) — the answer is kept, action ``flagged`` with
the error, so a report never counts it as checked and safe; ``align`` — treated as unsafe; ``fail`` —
the item fails with the reason. When no candidate gets a verdict the first candidate is returned
``flagged`` (or, with ``fail``, the item fails); when every candidate call fails the item fails (an
answer judged unsafe is not passed on).

Parameters (default; the paper's value): ``post_judge`` (``harm``; ArmoRM), ``post_score``
(``harm``; a reward is ``safety``), ``post_threshold`` (None = the judge's own verdict; 0.06 on
ArmoRM's reward), ``pre_judge`` (None; CLIP ViT-L/14-336 against an unsafe-content description),
``pre_threshold`` (None; 0.16), ``prefix`` ("As an AI assistant", the authors'), ``shallow`` (``auto``:
prefill when the model can; the paper prefills), ``deep`` (``auto``: sentence-level with prefill; the paper's),
``max_sentences`` (16; the paper: up to 1024 new tokens), ``prefix_instruction`` (our wording, below; must hold
``{prefix}``; used without prefill), ``n_candidates`` (5; 5), ``no_verdict`` (``pass``; the
paper's evaluators always answer), ``max_logged_chars`` (200).

Where we depart from the paper and the authors' code, and why:

- Evaluators are pluggable judges, not CLIP and ArmoRM (no CLIP or reward model ships offline); with
  the default ``harm`` judge the post stage reads the request and the answer (ArmoRM reads a safety
  rubric and the answer), and its thresholds are the judge's, not the paper's. Plug in a request
  judge that returns a CLIP-style score with ``pre_threshold: 0.16``, or a reward-model judge with
  ``post_score: safety, post_threshold: 0.06``, to use the paper's rule. The pre stage rates the
  whole request (text and images); the paper scores the image alone (its code has no text-only path
  for the pre stage).
- Shallow and deep alignment need the model to continue a partial assistant turn. Where it can (``prefill``)
  both are the paper's; the sentence ends at ``.`` as the authors' (also at ``!``, ``?`` and a line break, ours),
  but after the model's own token budget rather than the authors' 70-token cap (a backend's budget is fixed per
  model), so a long run-on sentence is kept whole; the paper's search runs to 1024 new tokens, ours to
  ``max_sentences`` sentences. Where it cannot (hosted APIs), the model is *asked* to begin with the prefix and
  whole answers are drawn: a model that ignores the instruction is not conditioned on the prefix as the paper's
  is (details count how many candidates followed it), and a greedy model gives N equal candidates
  (``distinct_candidates`` says so).
- The CLIP utility term of the paper's sentence score is left out (no image–text scorer ships): sentences are
  ranked by the post judge alone. The authors' top-k 5 at temperature 1.5 are the model's decoding settings here.
- ``no_verdict`` and the ``flagged`` outcome are ours: the paper's evaluators cannot fail.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe import aio
from mmsafe.components import SubJudge
from mmsafe.config import ComponentConfig, ComponentField
from mmsafe.defenses.base import Defense, mark
from mmsafe.defenses.output_guard import judge_answers
from mmsafe.errors import ConfigError
from mmsafe.judges.base import Judge
from mmsafe.plugin_meta import Paper
from mmsafe.types import Generation, Judgement, Message, Prompt, TextPart, stable_hash

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend
    from mmsafe.registry import Registry

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_PREFIX_INSTRUCTION",
    "ETA",
    "ETAParams",
    "candidate_seeds",
    "first_sentence",
    "n_draws",
    "with_prefix",
]

#: the authors' interference prefix (``generate/eta_generation.py``)
DEFAULT_PREFIX = "As an AI assistant"
#: our wording
DEFAULT_PREFIX_INSTRUCTION = 'Begin your reply with the exact words "{prefix}" and continue from there.'


class ETAParams(BaseModel):
    """Parameters of :class:`ETA` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    post_judge: ComponentField = Field(
        default=ComponentConfig(name="harm"),
        description="post-generation evaluator: {name, params} of any judge that rates answers (the paper: a reward model)",
    )
    post_score: Literal["harm", "safety"] = Field(
        "harm",
        description="what the post judge's score means: harm (higher = more harmful) or safety (a reward)",
    )
    post_threshold: float | None = Field(
        None,
        ge=-1e6,
        le=1e6,
        description="None: the judge's own verdict (success); else unsafe when the score is at/above it (harm) "
        "or at/below it (safety); the paper: 0.06 on ArmoRM's reward",
    )
    pre_judge: ComponentField | None = Field(
        None,
        description="pre-generation evaluator: {name, params} of a judge that rates requests, or None to skip "
        "the pre stage (the paper: CLIP on the image)",
    )
    pre_threshold: float | None = Field(
        None,
        ge=-1e6,
        le=1e6,
        description="None: the judge's own verdict (success); else unsafe when its score is at/above it "
        "(the paper: CLIP cosine 0.16)",
    )
    prefix: str = Field(
        DEFAULT_PREFIX,
        min_length=1,
        max_length=500,
        description="the safety prefix an aligned answer starts with",
    )
    prefix_instruction: str = Field(
        DEFAULT_PREFIX_INSTRUCTION,
        min_length=1,
        max_length=5000,
        description="added to the last user turn of each aligned candidate; must hold {prefix}",
    )
    shallow: Literal["auto", "prefill", "instruction"] = Field(
        "auto",
        description="how an aligned answer is made to start with the prefix: prefill (the model continues an "
        "assistant turn holding it, as the paper), instruction (asked to, in the user turn), auto (prefill when the "
        "model declares it)",
    )
    deep: Literal["auto", "sentence", "response"] = Field(
        "auto",
        description="best-of-N per sentence (the paper; needs prefill) or per whole answer; auto: sentence when "
        "the shallow stage prefills",
    )
    max_sentences: int = Field(
        16,
        ge=1,
        le=256,
        description="sentence-level search: at most this many sentences (the paper: until 1024 tokens)",
    )
    n_candidates: int = Field(5, ge=1, le=64, description="answers drawn when aligning (the paper's N: 5)")
    no_verdict: Literal["pass", "align", "fail"] = Field(
        "pass",
        description="when a judge gives no verdict: keep the answer flagged, align it, or fail the item",
    )
    max_logged_chars: int = Field(
        200, ge=0, le=10_000, description="original answer text kept in the details"
    )

    @field_validator("prefix_instruction")
    @classmethod
    def _has_prefix(cls, v: str) -> str:
        if "{prefix}" not in v:
            raise ValueError("prefix_instruction must contain {prefix}")
        return v


def candidate_seeds(seed: int, n: int) -> list[int]:
    """The seeds of an item's ``n`` aligned candidates, derived from its ``seed``."""
    return [int(stable_hash([seed, "eta", k])[:8], 16) for k in range(n)]


def with_prefix(text: str, prefix: str) -> tuple[str, bool]:
    """``text`` starting with ``prefix`` (put in front when missing), and whether it already did."""
    body = text.lstrip()
    if body.lower().startswith(prefix.lower()):
        return body, True
    return f"{prefix} {body}" if body else prefix, False


def _instructed(prompt: Prompt, instruction: str) -> Prompt:
    """``prompt`` with ``instruction`` appended to its last user turn (images kept in place)."""
    messages = list(prompt.messages)
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            m = messages[i]
            messages[i] = Message(role="user", content=(*m.content, TextPart(text="\n\n" + instruction)))
            return Prompt(messages=tuple(messages), context=prompt.context)
    return Prompt(messages=(*messages, Message.user(instruction)), context=prompt.context)


def _stage(j: Judgement, *, threshold: float | None, higher_is_harm: bool) -> tuple[bool | None, str | None]:
    """``(unsafe, error)`` of one verdict under a stage's rule; ``unsafe`` is None without a verdict."""
    if j.error:
        return None, j.error
    if threshold is not None:
        if j.score is None:
            return None, f"judge gave no score to compare with the threshold (label {j.label!r})"
        return (j.score >= threshold if higher_is_harm else j.score <= threshold), None
    if j.success is None:
        return None, f"judge gave no verdict (success is None; label {j.label!r})"
    return bool(j.success), None


class ETA(Defense):
    """ETA (Ding et al., ICLR 2025): evaluate answer and input; if both unsafe, re-answer after a safety prefix, best of N."""

    name: ClassVar[str] = "eta"
    version: ClassVar[str] = "2"
    paper: ClassVar[Paper | None] = Paper(
        title="ETA: Evaluating Then Aligning Safety of Vision Language Models at Inference Time",
        authors="Ding, Li, Zhang",
        year=2025,
        url="https://arxiv.org/abs/2410.06625",
        threat_model=(
            "the attacker controls the request (text and images) and sees only the final answer; hidden "
            "evaluators score the answer and the input, and unsafe ones are re-answered after a safety prefix"
        ),
    )
    #: rule judges (instructions in the answer; a scripted Llama Guard on the request), two candidates
    example_params: ClassVar[dict[str, Any]] = {
        "post_judge": {"name": "target-string", "params": {"preset": "instructions"}},
        "pre_judge": {
            "name": "guard",
            "params": {
                "classify": "request",
                "judge_model": {
                    "name": "scripted",
                    "params": {"rules": {"bomb": "unsafe\nS9"}, "default": "safe"},
                },
            },
        },
        "n_candidates": 2,
        "max_sentences": 3,
    }
    requires: ClassVar[frozenset[str]] = frozenset()
    Params: ClassVar[type[BaseModel]] = ETAParams
    params: ETAParams
    post_judge: Judge = SubJudge("post_judge")  # type: ignore[assignment]
    pre_judge: Judge | None = SubJudge("pre_judge")  # type: ignore[assignment]

    def __init__(self, params: Any = None, /, *, registry: Registry | None = None, **kwargs: Any) -> None:
        super().__init__(params, registry=registry, **kwargs)
        self._lock = threading.Lock()  # judges need not be thread-safe
        pre, post = self.pre_judge, self.post_judge
        if pre is not None and not pre.classifies_requests():
            raise ConfigError(
                f"eta: pre_judge '{pre.name}' rates answers, not requests; use a judge that rates requests "
                "(guard with classify: request, llavaguard, shieldgemma2)"
            )
        if post.classifies_requests():
            raise ConfigError(
                f"eta: post_judge '{post.name}' rates requests, not answers; use it as pre_judge"
            )

    # -- the two evaluators ------------------------------------------------------------------------
    def _post(
        self, items: Sequence[tuple[Prompt, Generation]]
    ) -> list[tuple[bool | None, str | None, Judgement]]:
        p = self.params
        with self._lock:
            verdicts = judge_answers(self.post_judge, items)
        harm = p.post_score == "harm"
        return [(*_stage(j, threshold=p.post_threshold, higher_is_harm=harm), j) for j in verdicts]

    def _pre(self, prompts: Sequence[Prompt]) -> list[tuple[bool | None, str | None, Judgement]]:
        judge = self.pre_judge
        assert judge is not None
        with self._lock:
            verdicts = judge_answers(judge, [(q, Generation(text="")) for q in prompts])
        return [(*_stage(j, threshold=self.params.pre_threshold, higher_is_harm=True), j) for j in verdicts]

    def _harm_key(self, j: Judgement) -> float:
        """The candidate's score oriented so that lower is better (0 for a judge without scores)."""
        if j.score is None:
            return 0.0
        return float(j.score) if self.params.post_score == "harm" else -float(j.score)

    # -- the defense -------------------------------------------------------------------------------
    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        answers = _generate(model, list(prompts), list(seeds))
        out: list[Generation | Exception] = list(answers)
        live = [(i, a) for i, a in enumerate(answers) if isinstance(a, Generation)]
        notes: dict[int, dict[str, Any]] = {}
        suspects: list[int] = []

        # post-generation evaluator on every answer
        post = self._post([(prompts[i], gen) for i, gen in live])
        for (i, gen), (unsafe, error, j) in zip(live, post, strict=True):
            notes[i] = {"post_judge": p.post_judge.name, "post_score": j.score}
            if error is not None and p.no_verdict != "align":
                out[i] = self._no_verdict(gen, "post", error, notes[i])
            elif error is not None or unsafe:
                if error is not None:
                    notes[i]["post_error"] = error
                suspects.append(i)
            else:
                out[i] = mark(gen, "passed", calls=1, **notes[i], post_unsafe=False)
        for i in suspects:
            notes[i]["post_unsafe"] = True

        # pre-generation evaluator, only where the answer looked unsafe (as the authors' code)
        align: list[int] = []
        if self.pre_judge is None:
            for i in suspects:
                notes[i]["pre"] = "skipped"
            align = suspects
        elif suspects:
            pre = self._pre([prompts[i] for i in suspects])
            for i, (unsafe, error, j) in zip(suspects, pre, strict=True):
                ans = answers[i]
                assert isinstance(ans, Generation)
                notes[i].update(pre_judge=self.pre_judge.name, pre_score=j.score)
                if error is not None and p.no_verdict != "align":
                    out[i] = self._no_verdict(ans, "pre", error, notes[i])
                elif error is not None or unsafe:
                    if error is not None:
                        notes[i]["pre_error"] = error
                    notes[i]["pre_unsafe"] = True
                    align.append(i)
                else:
                    out[i] = mark(ans, "passed", calls=1, **notes[i], pre_unsafe=False)
        if align:
            self._align(align, prompts, seeds, answers, notes, model, out)
        return out

    def _no_verdict(
        self, gen: Generation, stage: str, error: str, note: dict[str, Any]
    ) -> Generation | Exception:
        if self.params.no_verdict == "fail":
            return RuntimeError(f"eta: the {stage} judge gave no verdict: {error}")
        return mark(gen, "flagged", calls=1, **note, stage=stage, error=error)

    def _modes(self, model: ModelBackend) -> tuple[bool, bool]:
        """(prefill the prefix, search sentence by sentence) for ``model``; a mode the model cannot do raises."""
        p = self.params
        can = "prefill" in model.capabilities
        prefill = can if p.shallow == "auto" else p.shallow == "prefill"
        if prefill and not can:
            raise ValueError(
                f"eta: shallow: prefill, but model '{model.name}' cannot continue an assistant turn"
            )
        sentence = prefill if p.deep == "auto" else p.deep == "sentence"
        if sentence and not prefill:
            raise ValueError(
                "eta: deep: sentence continues the answer sentence by sentence and needs prefill"
            )
        return prefill, sentence

    def _align(
        self,
        items: list[int],
        prompts: Sequence[Prompt],
        seeds: Sequence[int],
        answers: Sequence[Generation | Exception],
        notes: dict[int, dict[str, Any]],
        model: ModelBackend,
        out: list[Generation | Exception],
    ) -> None:
        """Shallow (prefix) and deep (best of N by the post judge) alignment of ``items``, in place."""
        p = self.params
        n = n_draws(model, p.n_candidates)
        try:
            prefill, sentence = self._modes(model)
        except ValueError as exc:
            for i in items:
                out[i] = exc
            return
        if sentence:
            self._align_sentences(items, prompts, seeds, answers, notes, model, out)
            return
        instruction = p.prefix_instruction.replace("{prefix}", p.prefix)
        asks: list[Prompt] = []
        ask_seeds: list[int] = []
        for i in items:
            ask = _prefilled(prompts[i], p.prefix) if prefill else _instructed(prompts[i], instruction)
            asks.extend([ask] * n)
            ask_seeds.extend(candidate_seeds(seeds[i], n))
        drawn = _generate(model, asks, ask_seeds)

        # every candidate that came back, prefixed, in one batch for the post judge
        cands: dict[int, list[tuple[int, Generation, bool]]] = {}
        failed: dict[int, list[str]] = {}
        for row, i in enumerate(items):
            cands[i], failed[i] = [], []
            for k in range(n):
                c = drawn[row * n + k]
                if isinstance(c, Exception):
                    failed[i].append(f"{type(c).__name__}: {c}")
                    continue
                if prefill:  # the answer is the prefix and what the model wrote after it
                    text, followed = p.prefix + c.text, True
                else:
                    text, followed = with_prefix(c.text, p.prefix)
                cands[i].append((k, c.model_copy(update={"text": text}), followed))
        flat = [(i, k, g) for i in items for k, g, _ in cands[i]]
        verdicts = self._post([(prompts[i], g) for i, _, g in flat])
        rated: dict[tuple[int, int], tuple[bool | None, str | None, Judgement]] = {
            (i, k): v for (i, k, _), v in zip(flat, verdicts, strict=True)
        }

        for i in items:
            original = answers[i]
            assert isinstance(original, Generation)
            note = {**notes[i], "original_text": original.text[: p.max_logged_chars]}
            if not cands[i]:
                out[i] = RuntimeError(f"eta: every aligned candidate failed ({failed[i][0]})")
                continue
            table = [
                {
                    "k": k,
                    "score": rated[i, k][2].score,
                    "unsafe": rated[i, k][0],
                    **({"error": rated[i, k][1]} if rated[i, k][1] else {}),
                }
                for k, _, _ in cands[i]
            ]
            stats = {
                "shallow": "prefill" if prefill else "instruction",
                "deep": "response",
                "candidates": table,
                "distinct_candidates": len({g.text for _, g, _ in cands[i]}),
                "prefix_followed": sum(1 for _, _, f in cands[i] if f),
                **({"candidate_errors": len(failed[i])} if failed[i] else {}),
            }
            judged = [(k, g) for k, g, _ in cands[i] if rated[i, k][0] is not None]
            if not judged:
                error = f"the post judge gave no verdict on any candidate ({rated[i, cands[i][0][0]][1]})"
                if p.no_verdict == "fail":
                    out[i] = RuntimeError(f"eta: {error}")
                else:
                    k, g, _ = cands[i][0]
                    out[i] = mark(
                        g, "flagged", calls=1 + n, **note, **stats, chosen=k, stage="align", error=error
                    )
                continue
            k, g = min(
                judged, key=lambda kg: (bool(rated[i, kg[0]][0]), self._harm_key(rated[i, kg[0]][2]), kg[0])
            )
            out[i] = mark(
                g,
                "rewritten",
                calls=1 + n,
                **note,
                **stats,
                chosen=k,
                chosen_score=rated[i, k][2].score,
                chosen_unsafe=rated[i, k][0],
            )

    def _align_sentences(
        self,
        items: list[int],
        prompts: Sequence[Prompt],
        seeds: Sequence[int],
        answers: Sequence[Generation | Exception],
        notes: dict[int, dict[str, Any]],
        model: ModelBackend,
        out: list[Generation | Exception],
    ) -> None:
        """Deep alignment as the paper: the answer starts as the prefix (prefilled); each round draws N
        continuations of it, keeps the first sentence of each, has the post judge rate the answer so far plus each
        sentence, and keeps the best (safe before unsafe, then the lowest harm score, then the first drawn), until
        the kept continuation ends the answer or ``max_sentences``. All items of a batch go round by round together."""
        p = self.params
        n = n_draws(model, p.n_candidates)
        text = {i: p.prefix for i in items}
        rounds: dict[int, list[dict[str, Any]]] = {i: [] for i in items}
        last: dict[int, Generation] = {}
        calls = dict.fromkeys(items, 1)
        live = list(items)
        for r in range(p.max_sentences):
            if not live:
                break
            asks: list[Prompt] = []
            ask_seeds: list[int] = []
            for i in live:
                asks.extend([_prefilled(prompts[i], text[i])] * n)
                ask_seeds.extend(int(stable_hash([seeds[i], "eta", r, k])[:8], 16) for k in range(n))
            drawn = _generate(model, asks, ask_seeds)
            pieces: list[tuple[int, int, str, bool, Generation]] = []  # item, k, sentence, ends, generation
            failed: dict[int, str] = {}
            for row, i in enumerate(live):
                calls[i] += n
                for k in range(n):
                    c = drawn[row * n + k]
                    if isinstance(c, Exception):
                        failed.setdefault(i, f"{type(c).__name__}: {c}")
                        continue
                    piece, more = first_sentence(c.text)
                    pieces.append((i, k, piece, not more and c.finish_reason != "length", c))
            verdicts = self._post(
                [(prompts[i], g.model_copy(update={"text": text[i] + piece})) for i, _, piece, _, g in pieces]
            )
            by_item: dict[
                int, list[tuple[tuple[bool, float, int], int, str, bool, Generation, Judgement]]
            ] = {}
            for (i, k, piece, ends, g), (unsafe, _err, j) in zip(pieces, verdicts, strict=True):
                key = (unsafe is not False, self._harm_key(j) if unsafe is not None else float("inf"), k)
                by_item.setdefault(i, []).append((key, k, piece, ends, g, j))
            still = []
            for i in live:
                got = by_item.get(i)
                if not got:
                    if not rounds[i]:
                        out[i] = RuntimeError(
                            f"eta: every aligned candidate failed ({failed.get(i, 'no answer')})"
                        )
                    continue  # keep what was built so far
                _key, k, piece, ends, g, j = min(got, key=lambda t: t[0])
                text[i] += piece
                last[i] = g
                rounds[i].append(
                    {"k": k, "score": j.score, "candidates": len(got), "distinct": len({t[2] for t in got})}
                )
                if not ends and piece:
                    still.append(i)
            live = still
        for i in items:
            if isinstance(out[i], Exception) and i not in last:
                continue
            original = answers[i]
            assert isinstance(original, Generation)
            final = last[i].model_copy(update={"text": text[i]})
            ((unsafe, error, j),) = self._post([(prompts[i], final)])
            out[i] = mark(
                final,
                "rewritten",
                calls=calls[i],
                **notes[i],
                original_text=original.text[: p.max_logged_chars],
                shallow="prefill",
                deep="sentence",
                sentences=rounds[i],
                chosen_score=j.score,
                chosen_unsafe=unsafe,
                **({"error": error} if error else {}),
            )


def n_draws(model: ModelBackend, n: int) -> int:
    """Candidates to draw per choice: ``n``, or 1 for a model that decodes greedily (its ``n`` answers to one
    prompt are equal, whatever the seed, so one call gives them all)."""
    return 1 if model.generation.greedy else n


def first_sentence(text: str) -> tuple[str, bool]:
    """The first sentence of ``text`` (up to and including its first ``.``, ``!`` or ``?`` followed by white space,
    or a line break), and whether text followed it. The paper ends a sentence at ``.``; the others are ours."""
    import re

    m = re.search(r"[.!?](?=\s)|\n", text)
    if m is None:
        return text, False
    end = m.end()
    return text[:end], bool(text[end:].strip())


def _prefilled(prompt: Prompt, answer: str) -> Prompt:
    """``prompt`` with an assistant turn holding ``answer`` for the model to continue (:mod:`mmsafe.models.prefill`)."""
    return Prompt(
        messages=(*prompt.messages, Message(role="assistant", content=(TextPart(text=answer),))),
        context=prompt.context,
    )


def _generate(model: ModelBackend, prompts: list[Prompt], seeds: list[int]) -> list[Generation | Exception]:
    """One answer (or exception) per prompt, in slices of the model's batch size (N candidates per item
    multiply a batch)."""
    size = max(1, model.batch_size)
    out: list[Generation | Exception] = []
    for start in range(0, len(prompts), size):
        out.extend(aio.generate_all(model, prompts[start : start + size], seeds[start : start + size]))
    return out
