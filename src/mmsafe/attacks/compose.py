"""Compose: one image attack builds the prompt, then text attacks rewrite its text, in order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.attacks.base import Attack, TextAttack
from mmsafe.components import SubAttack
from mmsafe.config import ComponentConfig, ComponentField
from mmsafe.errors import ConfigError
from mmsafe.types import Message, Prompt, Sample, TextPart, stable_hash

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend
    from mmsafe.registry import Registry


class ComposeParams(BaseModel):
    """Parameters of :class:`Compose`; after construction they hold every sub-attack's full params."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ComponentField = Field(
        default_factory=lambda: ComponentConfig(name="none"),
        description="the attack that builds the prompt (images and text): {name, params} or a name",
    )
    text: list[ComponentField] = Field(
        default_factory=list, description="text attacks applied in order to every user text part"
    )


class Compose(Attack):
    """Compose attacks: an image attack builds the prompt, then each text attack rewrites its user text.

    Any text jailbreak (a :class:`~mmsafe.attacks.base.TextAttack`: ``prefix-injection``,
    ``refusal-suppression``, …) combines with any attack that builds a prompt (``figstep``,
    ``none``, …): ``{image: figstep, text: [prefix-injection]}`` sends the FigStep image with its
    incitement text rewritten by the prefix-injection template. The survey X. Liu et al., "Safety of
    Multimodal Large Language Models on Images and Texts", IJCAI 2024 (arXiv:2402.00357), treats
    malicious-image and malicious-text attacks as separable channels; this makes their product
    a single grid entry.

    Threat model: the union of the parts' (``requires`` is the union of theirs). Each text
    attack's ``rewrite`` gets the original sample and a seed derived from the item seed and its
    position; every non-empty text part of every user message is rewritten (an image attack that
    yields no user text fails the item). Sub-attacks are created through the
    :class:`~mmsafe.registry.Registry` this attack was created by (constructed directly: a default
    one, with built-ins and entry points), so their params are validated
    by their own models; ``params`` then holds each one's full params, defaults filled, so a
    record's attack spec says exactly what produced it and round-trips.

    Params: ``image`` (``{name, params}`` or a name; default ``none``), ``text`` (a list of the
    same, each a text attack; default empty). ``attack_metadata`` holds ``image_attack``,
    ``text_attacks``, the image attack's metadata under ``image.<key>`` and, per text attack,
    ``text[i].<key>``.

    Example::

        Compose(image="figstep", text=["prefix-injection"]).apply(sample, seed=0)
    """

    name: ClassVar[str] = "compose"
    example_params: ClassVar[dict[str, Any]] = {"image": "figstep", "text": ["prefix-injection"]}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = ComposeParams
    params: ComposeParams
    #: the image attack and the text attacks, created through the attack's registry; closed with it
    image_attack: Attack = SubAttack("image", where="compose.image")  # type: ignore[assignment]
    text_attacks: list[TextAttack] = SubAttack("text", where="compose.text[{i}]")  # type: ignore[assignment]

    def __init__(
        self,
        params: BaseModel | Mapping[str, Any] | None = None,
        /,
        *,
        registry: Registry | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, registry=registry, **kwargs)
        image, texts = self.image_attack, self.text_attacks
        for i, (sub, attack) in enumerate(zip(self.params.text, texts, strict=True)):
            if not isinstance(attack, TextAttack):
                raise ConfigError(
                    f"compose.text[{i}]: attack '{sub.name}' is not a text attack (a TextAttack with "
                    "rewrite()); put attacks that build the prompt in compose.image"
                )
        # an instance attribute shadowing the ClassVar: the runner reads ``requires`` on instances
        self.requires = frozenset().union(image.requires, *(t.requires for t in texts))  # type: ignore[misc]
        self.params = ComposeParams(
            image=ComponentConfig(name=image.name, params=_full_params(image)),
            text=[ComponentConfig(name=t.name, params=_full_params(t)) for t in texts],
        )

    def apply(self, sample: Sample, *, seed: int, target: ModelBackend | None = None) -> Prompt:
        prompt = self.image_attack.apply(sample, seed=seed, target=target)
        meta: dict[str, Any] = {
            "attack": self.name,
            "image_attack": self.image_attack.name,
            "text_attacks": [t.name for t in self.text_attacks],
        }
        meta.update({f"image.{k}": v for k, v in prompt.attack_metadata.items()})
        messages = prompt.messages
        for i, attack in enumerate(self.text_attacks):
            sub_seed = int(stable_hash([seed, "compose-text", i])[:8], 16)
            messages, n = _rewrite_user_text(messages, attack, sample=sample, seed=sub_seed)
            if n == 0:
                raise ValueError(
                    f"compose: attack '{self.image_attack.name}' left no user text for '{attack.name}' to rewrite"
                )
            meta[f"text[{i}].attack"] = attack.name
            meta[f"text[{i}].rewritten_parts"] = n
        return Prompt(messages=messages, attack_metadata=meta)


def _full_params(attack: Attack) -> dict[str, Any]:
    spec = attack.spec
    return {**spec.params, **spec.runtime}


def _rewrite_user_text(
    messages: tuple[Message, ...], attack: TextAttack, *, sample: Sample, seed: int
) -> tuple[tuple[Message, ...], int]:
    """Rewrite every non-empty text part of the user messages; returns the messages and how many parts."""
    out, n = [], 0
    for m in messages:
        if m.role != "user":
            out.append(m)
            continue
        parts = []
        for part in m.content:
            if isinstance(part, TextPart) and part.text.strip():
                part = TextPart(text=attack.rewrite(part.text, sample=sample, seed=seed))
                n += 1
            parts.append(part)
        out.append(Message(role=m.role, content=tuple(parts)))
    return tuple(out), n
