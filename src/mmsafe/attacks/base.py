"""What every attack is: a transform from a benchmark :class:`Sample` to the :class:`Prompt` sent to a model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from mmsafe.registry import Component
from mmsafe.types import Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend


class Attack(Component):
    """Base of every attack.

    ``requires`` names the target-model capabilities the attack needs (``"images"`` for a visual
    attack, ``"gradients"`` for a white-box one); the runner refuses a grid cell that lacks them
    before any compute. ``apply`` must be deterministic given ``seed``. ``target`` is the model under
    test, undefended — or, for an attack whose ``adaptive`` param is set, the cell's defended model. The runner calls
    :meth:`bind` with the run's store before the first prompt (declared sub-models — an attacker
    model, :mod:`mmsafe.components` — then answer through its response cache) and :meth:`close`
    at the end.
    """

    kind: ClassVar[str] = "attack"

    @property
    def adaptive(self) -> bool:
        """Whether the attack searches against its grid cell's *defended* model (the defense in the loop) rather
        than the bare model: an attack that queries the target offers it as an ``adaptive`` param, and the
        runner then passes each cell's defended model as ``target``, so a defense is scored under an attack
        that saw its answers (Carlini & Wagner's adaptive-evaluation rule)."""
        return bool(getattr(self.params, "adaptive", False))

    def apply(self, sample: Sample, *, seed: int, target: ModelBackend | None = None) -> Prompt:
        raise NotImplementedError

    def apply_batch(
        self, samples: Sequence[Sample], *, seeds: Sequence[int], target: ModelBackend | None = None
    ) -> list[Prompt | Exception]:
        """Prompts for a chunk of samples, an ``Exception`` in place of each that failed. The runner
        calls this; the default applies one at a time, attacks that gain from batching (white-box
        optimisation) override it."""
        out: list[Prompt | Exception] = []
        for sample, seed in zip(samples, seeds, strict=True):
            try:
                out.append(self.apply(sample, seed=seed, target=target))
            except Exception as exc:
                out.append(exc)
        return out


class TextAttack(Attack):
    """Base of malicious-text attacks: a rewrite of the request's words (jailbreak templates, …).

    ``rewrite`` maps the request text to the attack text. ``apply`` sends the rewrite with the sample's
    own images; the ``compose`` attack instead applies an image attack first and then ``rewrite``s the
    text parts of the prompt it built, so any text attack combines with any image attack.
    """

    def rewrite(self, text: str, *, sample: Sample, seed: int) -> str:
        raise NotImplementedError

    def apply(self, sample: Sample, *, seed: int, target: ModelBackend | None = None) -> Prompt:
        from mmsafe.types import Message

        text = self.rewrite(sample.text, sample=sample, seed=seed)
        return Prompt(messages=(Message.user(text, sample.images),), attack_metadata={"rewritten": True})
