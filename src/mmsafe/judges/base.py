"""What every judge is: (sample, prompt, generation) → :class:`Judgement`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from mmsafe.errors import describe
from mmsafe.registry import Component
from mmsafe.types import Generation, Judgement, Prompt, Sample

#: What a judge's ``success`` rate is called in reports, by the construct the judge measures. "Did not
#: refuse" is not "harmful": only judges that read the content for harm report an ASR.
RATE_NAMES: dict[str, str] = {
    "harm": "harmful rate (ASR)",
    "refusal": "non-refusal rate",
    "target": "target-string rate",
    "toxicity": "toxic rate",
    "utility": "utility",
    "mixed": "success rate (members measure different things)",
    "other": "success rate",
}


def rate_name(construct: str) -> str:
    return RATE_NAMES.get(construct, RATE_NAMES["other"])


class Judge(Component):
    """Base of every judge. Override :meth:`judge`; batch judges may override :meth:`judge_batch`.

    The runner calls :meth:`bind` with the run's store before the first verdict (a judge's declared
    sub-models — :mod:`mmsafe.components` — then answer through the store's response cache, so a
    rerun never asks the judge model twice) and :meth:`close` at the end.
    """

    kind: ClassVar[str] = "judge"
    #: what ``success`` means: "harm" (the answer gives harmful help), "refusal" (the answer did not
    #: refuse), "target" (the attacker's string appears), "toxicity", "utility", or "other"
    construct: ClassVar[str] = "other"
    #: the judge rates the request alone (its text and images), not an answer: it can screen inputs (the
    #: ``guard-filter`` defense's ``input_judge``). Judges whose params decide it override :meth:`classifies_requests`.
    request_classifier: ClassVar[bool] = False

    def classifies_requests(self) -> bool:
        """Whether this judge, with its params, rates requests rather than answers (see ``request_classifier``)."""
        return type(self).request_classifier

    def request_unsafe_margin(self, x: Any, prompts: Sequence[Prompt]) -> Any:
        """The verdict on requests as a number an image attack can descend: ``[B]`` float32, differentiable in
        ``x`` (``[B, 3, H, W]`` in [0, 1]: image ``i`` in place of the first image of ``prompts[i]``). Greater than 0
        means this judge would rate the request unsafe, ≤ 0 safe, in log-odds: the guard's unsafe score minus its
        decision threshold (the ``guard-filter`` defense's ``detection_margin``).

        Only a judge whose guard model runs in this process and gives gradients can; the default raises
        ``TypeError``."""
        raise TypeError(
            f"judge '{self.name}' cannot give a differentiable verdict on the request's image (it is not a "
            "request guard running a white-box model in this process)"
        )

    @classmethod
    def construct_for(cls, params: Mapping[str, Any], *, registry: Any = None) -> str:
        """The construct of a judge with these params (a composite judge asks its members)."""
        return cls.construct

    def judge(self, sample: Sample, prompt: Prompt, generation: Generation) -> Judgement:
        raise NotImplementedError

    def judge_batch(self, items: Sequence[tuple[Sample, Prompt, Generation]]) -> list[Judgement]:
        out = []
        for sample, prompt, gen in items:
            try:
                out.append(self.judge(sample, prompt, gen))
            except Exception as exc:  # recorded on the item, never counted as a verdict
                out.append(Judgement(error=describe(exc, limit=500)))
        return out
