"""Small pieces shared by attacks that drive a helper LLM (attacker, captioner, scorer): one call, a JSON
reply, the stand-in label and the cost tally. Not a plugin."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmsafe.aio import generate_all
from mmsafe.types import Message, Prompt, stable_hash

if TYPE_CHECKING:
    from mmsafe.config import ComponentConfig
    from mmsafe.models.base import ModelBackend
    from mmsafe.types import Image

__all__ = ["CallLog", "json_object", "stand_in_label", "sub_seed"]

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


def sub_seed(seed: int, *parts: Any) -> int:
    """A seed for one helper call, derived from the item seed and the call's role / round."""
    return int(stable_hash([seed, *parts])[:8], 16)


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

    def query(self, target: ModelBackend, prompt: Prompt, *, seed: int) -> Any:
        """One call to the model under test: its :class:`~mmsafe.types.Generation` or the exception."""
        self.queries += 1
        (out,) = generate_all(target, [prompt], [seed])
        return out

    def cost(self) -> dict[str, Any]:
        """The standard cost keys for ``attack_metadata``."""
        return {"queries": self.queries, "aux_calls": sum(self.aux.values()), "aux_calls_by": dict(self.aux)}
