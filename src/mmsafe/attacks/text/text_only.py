"""The text-only baseline: the request as plain text, with no image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.attacks.base import Attack
from mmsafe.types import Message, Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend


class TextOnlyParams(BaseModel):
    """Parameters of :class:`TextOnly`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: Literal["question", "instruction"] = Field(
        default="question",
        description="'question': sample.text (FigStep's vanilla-text baseline); "
        "'instruction': the declarative statement that FigStep would typeset",
    )


class TextOnly(Attack):
    """Text-only baseline: the original request as plain text, images removed (FigStep's 'vanilla text').

    Paper: the comparison column of Y. Gong et al., "FigStep: Jailbreaking Large Vision-Language Models
    via Typographic Visual Prompts", AAAI 2025 (arXiv:2311.05608), query type ``baseline`` in
    ThuCCSLab/FigStep: the harmful question sent as text, no image. FigStep's claim is measured
    against it (e.g. LLaVA-1.5-7B 57.4% → 84.0% ASR on SafeBench, six-model mean 44.8% → 82.5%).

    Threat model: none beyond a plain user; one black-box text query. It exists to show what the
    model does with the request when no visual channel is involved, so the images a sample may carry
    are dropped (``attack_metadata["dropped_images"]`` records how many); use the ``none`` attack to
    send a sample's text and images unchanged.

    Params: ``field`` — ``"question"`` (default; ``sample.text``, the paper's baseline) or
    ``"instruction"`` (``sample.metadata["instruction"]``, else the FigStep rule-based rephrasing of
    ``sample.text``; this isolates the typography from the rewording).
    """

    name: ClassVar[str] = "text-only"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = TextOnlyParams
    requires: ClassVar[frozenset[str]] = frozenset()
    params: TextOnlyParams

    def apply(self, sample: Sample, *, seed: int, target: ModelBackend | None = None) -> Prompt:
        meta: dict[str, Any] = {
            "attack": self.name,
            "field": self.params.field,
            "dropped_images": len(sample.images),
        }
        if self.params.field == "question":
            text = sample.text.strip()
            if not text:
                raise ValueError(f"sample {sample.id} has no text")
        else:
            # imported here so the text-only baseline does not load the typographic module unless asked to
            from mmsafe.render.rephrase import rephrase_as_statement

            given = sample.metadata.get("instruction")
            if isinstance(given, str) and given.strip():
                text, meta["rephrased"], meta["rephrase_rule"] = given.strip(), False, "metadata"
            elif sample.text.strip():
                text, rule = rephrase_as_statement(sample.text)
                meta["rephrased"], meta["rephrase_rule"] = True, rule
            else:
                raise ValueError(f"sample {sample.id} has neither metadata['instruction'] nor text")
        return Prompt(messages=(Message.user(text),), attack_metadata=meta)
