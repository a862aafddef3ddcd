"""Control condition for image attacks: the same text with a blank image (its twin is ``no-image``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.attacks.base import Attack
from mmsafe.types import Image, Message, Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend

__all__ = ["BlankImage"]


class BlankImageParams(BaseModel):
    """Parameters of :class:`BlankImage`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[int, int] = Field(
        default=(760, 760), description="(width, height) px; default FigStep's canvas"
    )
    colour: tuple[int, int, int] = Field(default=(255, 255, 255), description="RGB fill, 0–255 each")
    mode: Literal["replace", "add"] = Field(
        default="replace", description="replace the sample's images, or add the blank one before them"
    )


class BlankImage(Attack):
    """Blank-image control: the sample's own text with a plain (white) image instead of / beside its images.

    Not a paper's attack: a control for typographic attacks (FigStep, Gong et al., AAAI 2025;
    MM-SafetyBench, Liu et al., ECCV 2024), which report that *adding an image at all* shifts
    refusal rates. Comparing ``none`` / ``no-image`` / ``blank-image`` / ``figstep`` on one model
    separates "an image is present" from "the image carries the request".

    Threat model: black-box, image channel; no harmful content in the image.

    Params: ``size`` ((760, 760)), ``colour`` ((255, 255, 255)), ``mode`` (``"replace"`` the sample's
    images, or ``"add"`` the blank image before them).
    """

    name: ClassVar[str] = "blank-image"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = BlankImageParams
    requires: ClassVar[frozenset[str]] = frozenset({"images"})
    params: BlankImageParams

    def blank(self) -> Image:
        from PIL import Image as PILImageModule

        p = self.params
        # a grey colour (R = G = B, the default white) is drawn as a grey image: stored as a grey PNG,
        # it decodes to the same RGB pixels (see Image.from_pil)
        grey = len(set(p.colour)) == 1
        img = (
            PILImageModule.new("L", p.size, p.colour[0])
            if grey
            else PILImageModule.new("RGB", p.size, p.colour)
        )
        return Image.from_pil(img, source="blank-image")

    def apply(self, sample: Sample, *, seed: int, target: ModelBackend | None = None) -> Prompt:
        p = self.params
        blank = self.blank()
        images = (blank,) if p.mode == "replace" else (blank, *sample.images)
        meta = {
            "attack": self.name,
            "size": list(p.size),
            "colour": list(p.colour),
            "mode": p.mode,
            "dropped_images": len(sample.images) if p.mode == "replace" else 0,
        }
        return Prompt(messages=(Message.user(sample.text, images),), attack_metadata=meta)
