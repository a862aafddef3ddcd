"""The one way a judge runs another model: a declared, greedy sub-model (:mod:`mmsafe.components`).

Every judge that asks a model (``llm``, ``reference``, ``guard``) declares ``judge_model =
JudgeModel("judge_model", …)``: the base class creates the backend named by that ``{name, params}``
param through the registry on first use, refuses one that does not decode greedily (a judge's
verdicts must be reproducible and cacheable) or cannot take the images it will be sent, loads it
once, routes its requests through the run store's response cache after ``bind``, and closes it
with the judge. :func:`~mmsafe.components.ask` sends a whole batch in one call (async backends:
with their own ``concurrency`` in flight), also from inside a running event loop, and gives one
answer or exception per prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mmsafe import aio
from mmsafe.aio import run_sync
from mmsafe.components import SubModel, ask, reject_sampling

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend
    from mmsafe.types import Generation, Prompt

__all__ = ["JudgeModel", "ask", "generate_all", "reject_sampling", "run_sync"]


class JudgeModel(SubModel):
    """A judge's model: a :class:`~mmsafe.components.SubModel` that must decode greedily.

    ``needs_images`` (a bool, or a function of the judge's params) refuses a backend without the
    ``images`` capability.
    """

    def __init__(
        self, field: str = "judge_model", *, needs_images: bool | Callable[[Any], bool] = False
    ) -> None:
        super().__init__(field, greedy=True, needs_images=needs_images)


def generate_all(model: ModelBackend, prompts: list[Prompt]) -> list[Generation | Exception]:
    """One answer (or exception) per prompt (:func:`mmsafe.aio.generate_all`); greedy decoding, so
    every seed is 0 (the seed changes nothing and is not in the cache key)."""
    return aio.generate_all(model, prompts, [0] * len(prompts))
