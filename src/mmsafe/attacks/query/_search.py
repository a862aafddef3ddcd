"""Pieces shared by the query-based attacks: query the target, judge each answer, rank the candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmsafe.aio import generate_all
from mmsafe.types import Judgement, Prompt, Sample, stable_hash

if TYPE_CHECKING:
    from mmsafe.judges.base import Judge
    from mmsafe.models.base import ModelBackend

__all__ = ["Outcome", "query_and_judge", "sub_seed", "truncate"]


def sub_seed(seed: int, *parts: Any) -> int:
    """A 32-bit seed derived from the attack's ``seed`` and a role/index (a run replays exactly)."""
    return int(stable_hash([seed, *parts])[:8], 16)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class Outcome:
    """One candidate's query: the target's answer (or the error) and the judge's verdict."""

    response: str
    verdict: Judgement
    judged: bool  # the judge was asked (one auxiliary call)

    @property
    def success(self) -> bool:
        return bool(self.verdict.success)

    @property
    def score(self) -> float | None:
        """The judge's score, else its success as 1/0; None for a failed query or judge."""
        if self.verdict.error is not None and self.verdict.success is None:
            return None
        if self.verdict.score is not None:
            return float(self.verdict.score)
        return 1.0 if self.verdict.success else 0.0

    @property
    def rank(self) -> tuple[bool, float]:
        """Sort key: a success beats any failure, then the higher score; failed queries rank last."""
        s = self.score
        return (self.success, float("-inf") if s is None else s)


def query_and_judge(
    target: ModelBackend,
    judge: Judge,
    sample: Sample,
    sent: Sequence[Prompt],
    judged: Sequence[Prompt],
    seeds: Sequence[int],
) -> list[Outcome]:
    """Ask ``target`` every prompt of ``sent`` (one batch), then judge each answer against the matching
    prompt of ``judged`` (what the judge is shown as the request). A failed query, or a judge that
    raises, gives an outcome with ``verdict.error`` set and no score; nothing here raises for an item."""
    answers = generate_all(target, list(sent), list(seeds))
    out: list[Outcome] = []
    for shown, ans in zip(judged, answers, strict=True):
        if isinstance(ans, Exception):
            out.append(Outcome("", Judgement(error=f"generate: {type(ans).__name__}: {ans}"), False))
            continue
        try:
            verdict = judge.judge(sample, shown, ans)
        except Exception as exc:  # a judge failure scores the candidate as unscored
            verdict = Judgement(error=f"judge: {type(exc).__name__}: {exc}")
        out.append(Outcome(ans.text, verdict, True))
    return out


def phrase_card(
    sample: Sample, *, font_path: str | None, size: int, source: str
) -> tuple[Any, dict[str, Any]]:
    """A plain card typesetting the sample's key phrase (``metadata["key_phrase"]``), else its request:
    the typographic image used when a sample brings none. Returns ``(image, notes)``."""
    from mmsafe.render.fonts import find_font
    from mmsafe.render.typeset import typeset_card
    from mmsafe.types import Image

    phrase = sample.metadata.get("key_phrase")
    use_phrase = isinstance(phrase, str) and bool(phrase.strip())
    which = "key_phrase" if use_phrase else "request"
    text = " ".join(str(phrase if use_phrase else sample.text).split())
    if not text:
        raise ValueError(f"sample {sample.id} has no image, no key phrase and no request text to typeset")
    font, _ = find_font(font_path)
    pil, layout = typeset_card(text, font_path=font, size=(size, size))
    notes = {"typeset_from": which, "typeset_text": text, "font": font, **layout}
    return Image.from_pil(pil.convert("L"), source=source), notes
