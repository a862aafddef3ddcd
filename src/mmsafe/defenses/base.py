"""What every defense is: a wrapper that takes a model and returns something that looks like a model.

A defense sits between the attack and the model: :meth:`Defense.wrap` returns a
:class:`DefendedModel`, which has the backend API (``generate`` / ``agenerate``, capabilities,
batch size) so the runner, caches and judges never know it is there, and any defense stacks with
any attack, model and judge in one grid.

Subclasses implement :meth:`Defense.defend`: given a batch of prompts and the (cached) model,
return one :class:`~mmsafe.types.Generation` (or an exception) per prompt — by editing the
prompts, calling the model more than once, checking and rewriting answers. They say what they did
with :func:`mark`: an ``action`` (``passed``, ``blocked``, ``rewritten``, ``modified-input``,
``steered``, ``flagged``), the number of model calls the item cost, and any details. The wrapper adds the
defense's name and its share of the batch's wall time, and the runner stores it all with the
record (``generation.metadata["defense"]``), so reports can show each defense's effect and price.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

from mmsafe.models.base import ModelBackend, WrappedModel
from mmsafe.registry import Component
from mmsafe.types import DEFENSE_ACTIONS, DefenseAccount, Generation, Image, Prompt

__all__ = ["DefendedModel", "Defense", "mark"]

ACTIONS = frozenset(DEFENSE_ACTIONS)


def mark(gen: Generation, action: str, *, calls: int = 1, **details: Any) -> Generation:
    """``gen`` with the defense's account of this item (a :class:`~mmsafe.types.DefenseAccount`):
    ``action`` (one of :data:`ACTIONS`), model ``calls`` spent on it (1 = just the answer), and
    JSON-able ``details``."""
    if action not in ACTIONS:
        raise ValueError(f"unknown defense action {action!r}; one of {sorted(ACTIONS)}")
    prior = dict(gen.metadata.get("defense") or {})
    info = DefenseAccount.model_validate({**prior, **details, "action": action, "calls": int(calls)})
    return gen.model_copy(update={"metadata": {**gen.metadata, "defense": info.to_metadata()}})


class Defense(Component):
    """Base of every defense. Override :meth:`defend` (or, for the identity, :meth:`wrap`).

    ``requires`` names the model capabilities the defense needs (``system_prompt`` for a system
    prompt, ``hidden_states`` for steering, ``images`` …); the runner refuses a grid cell whose
    model lacks them before any compute.
    """

    kind: ClassVar[str] = "defense"

    def wrap(self, model: ModelBackend) -> ModelBackend:
        return DefendedModel(self, model)

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        """Answer ``prompts`` through ``model`` under this defense (see the module docstring)."""
        raise NotImplementedError

    #: the defense gives ``detection_margin(model, x, prompts)`` → ``[B]``, differentiable in the image ``x``: > 0
    #: it would block the input, ≤ 0 it passes. Adaptive white-box attacks descend it (issue 21).
    evadable: ClassVar[bool] = False

    #: the defense transforms input images (:meth:`transform_image` is real): adaptive attacks may optimise through it
    transforms_images: ClassVar[bool] = False

    def transform_image(self, image: Image, *, seed: int) -> Image | None:
        """The image as this defense hands it to the model, for a defense that transforms input images
        (purification); None for one that does not. An adaptive white-box attack optimises through it
        (``through``: :mod:`mmsafe.attacks.adversarial.through`)."""
        return None

    def detection_margin(self, model: Any, x: Any, prompts: Sequence[Prompt]) -> Any:
        """For a detector (``evadable``): ``[B]`` margins, differentiable in ``x`` (``[B, 3, H, W]`` in [0, 1], the
        white-box ``model``'s pixel space; ``prompts[i]`` is the prompt image ``i`` is shown with, its image slot
        holding the clean image) — ``> 0`` this defense would flag or block the input, ``≤ 0`` it passes, in the
        defense's own units (its score minus its threshold). An adaptive white-box attack adds a hinge on it to its
        loss (``evade``: :mod:`mmsafe.attacks.adversarial.evade`)."""
        raise NotImplementedError(f"defense '{self.name}' has no differentiable detection margin")

    def bind(self, store: Any) -> None:
        """Receive the run's store: declared sub-components are bound (:meth:`Component.bind
        <mmsafe.registry.Component.bind>`), and so is any judge the defense holds in an attribute of
        its own (alone or in a list), so a model-backed judge caches its answers like any generation.
        Any component will do (a plugin written before declarations existed holds a judge by hand):
        the check is by the shared :class:`~mmsafe.registry.Component` base, not by stage."""
        super().bind(store)
        for key, value in vars(self).items():
            if key in self._declared or key.startswith("_mmsafe_"):
                continue
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, Component) and not isinstance(item, ModelBackend):
                    item.bind(store)


class DefendedModel(WrappedModel):
    """``model`` behind ``defense``: the same backend API, answers produced by :meth:`Defense.defend`."""

    def __init__(self, defense: Defense, inner: ModelBackend) -> None:
        super().__init__(inner)
        self.defense = defense

    @property
    def spec(self) -> Any:
        return self.inner.spec

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        t0 = time.perf_counter()
        results = self.defense.defend(prompts, seeds, self.inner)
        if len(results) != len(prompts):
            raise RuntimeError(
                f"defense '{self.defense.name}' returned {len(results)} results for {len(prompts)} prompts"
            )
        share = (time.perf_counter() - t0) / max(1, len(prompts))
        out: list[Generation | Exception] = []
        for r in results:
            if isinstance(r, Exception):
                out.append(r)
                continue
            try:  # the account's schema is checked here, once per item, so the report can trust it
                account = DefenseAccount.of(r.metadata) or DefenseAccount(action="passed", calls=1)
                info = DefenseAccount.model_validate(
                    {**account.to_metadata(), "name": self.defense.name, "seconds": round(share, 6)}
                )
            except ValueError as exc:
                out.append(ValueError(f"defense '{self.defense.name}' wrote an unreadable account: {exc}"))
                continue
            out.append(r.model_copy(update={"metadata": {**r.metadata, "defense": info.to_metadata()}}))
        return out

    async def agenerate(self, prompt: Prompt, *, seed: int) -> Generation:
        """The defense runs in a worker thread (``defend`` is synchronous and may block); an async
        model it calls from there answers on this loop (:func:`mmsafe.aio.in_thread`), so the session's
        one HTTP client serves defended and undefended requests alike."""
        from mmsafe.aio import in_thread

        (result,) = await in_thread(self.generate, [prompt], seeds=[seed])
        if isinstance(result, Exception):
            raise result
        return result
