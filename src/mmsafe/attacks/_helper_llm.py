"""Small pieces shared by attacks that drive a helper LLM (attacker, captioner, scorer): one call, a JSON
reply, the stand-in label and the cost tally. Not a plugin; target queries go through the query
attacks' :func:`~mmsafe.attacks.query._search.query_and_judge`."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmsafe.aio import generate_all
from mmsafe.attacks.query._search import Outcome, query_and_judge, sub_seed
from mmsafe.types import Message, Prompt

if TYPE_CHECKING:
    from mmsafe.config import ComponentConfig
    from mmsafe.judges.base import Judge
    from mmsafe.models.base import ModelBackend
    from mmsafe.types import Image, Sample

__all__ = ["CallLog", "Outcome", "json_object", "stand_in_label", "sub_seed"]

_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def json_object(reply: str) -> dict[str, Any] | None:
    """The JSON object in ``reply`` (whole, in a code fence, or the outermost ``{…}`` span), else None."""
    text = _FENCE.sub("", reply.strip()).strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def stand_in_label(cfg: ComponentConfig | None) -> str | None:
    """``"scripted"`` when a helper model is the scripted backend (fixed rules, not a model), else None."""
    return "scripted" if cfg is not None and cfg.name == "scripted" else None


class CallLog:
    """Counts helper-model calls by role (``aux_calls``) and target-model calls (``queries``)."""

    def __init__(self) -> None:
        self.aux: Counter[str] = Counter()
        self.queries = 0

    def ask(
        self, role: str, model: ModelBackend, text: str, *, seed: int, images: Sequence[Image] = ()
    ) -> str:
        """One user turn to a helper ``model`` (counted under ``role``); its text, or raise what it raised."""
        self.aux[role] += 1
        (out,) = generate_all(model, [Prompt(messages=(Message.user(text, tuple(images)),))], [seed])
        if isinstance(out, Exception):
            raise out
        return out.text

    def query(
        self, target: ModelBackend, judge: Judge, sample: Sample, prompt: Prompt, *, seed: int
    ) -> Outcome:
        """One call to the model under test and the judge's verdict on it (counted as a query and, when the
        judge was asked, one auxiliary call); never raises for the item."""
        self.queries += 1
        (outcome,) = query_and_judge(target, judge, sample, [prompt], [prompt], [seed])
        self.aux["judge"] += int(outcome.judged)
        return outcome

    def cost(self) -> dict[str, Any]:
        """The standard cost keys for ``attack_metadata``."""
        return {"queries": self.queries, "aux_calls": sum(self.aux.values()), "aux_calls_by": dict(self.aux)}
