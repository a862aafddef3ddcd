"""Control condition for image attacks: the same text with no image at all (its twin is ``blank-image``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mmsafe.attacks.base import Attack
from mmsafe.types import Message, Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend

__all__ = ["NoImage"]


class NoImage(Attack):
    """No-image control: the sample's own text with every image dropped.

    Not a paper's attack: the text-only arm of an image-vs-no-image comparison (see
    :class:`BlankImage`). Unlike ``text-only`` it never rewrites the text; it only removes images,
    so it runs on any model. Threat model: black-box, text channel only. No params.
    """

    name: ClassVar[str] = "no-image"
    version: ClassVar[str] = "1"

    def apply(self, sample: Sample, *, seed: int, target: ModelBackend | None = None) -> Prompt:
        meta = {"attack": self.name, "dropped_images": len(sample.images)}
        return Prompt(messages=(Message.user(sample.text, ()),), attack_metadata=meta)
