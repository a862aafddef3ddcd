"""Stack: several defenses in one cell, each wrapping the next (input filter → prompt → model → guard)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.components import SubDefense
from mmsafe.config import ComponentField
from mmsafe.defenses.base import DefendedModel, Defense
from mmsafe.errors import ConfigError
from mmsafe.models.base import ModelBackend
from mmsafe.types import DefenseAccount, DefenseAction, Generation, Prompt

if TYPE_CHECKING:
    from mmsafe.registry import Registry

__all__ = ["PRECEDENCE", "StackDefense", "StackParams"]

#: which layer's action names the stacked item (the first of these any layer took)
PRECEDENCE: tuple[DefenseAction, ...] = (
    "blocked",
    "rewritten",
    "steered",
    "modified-input",
    "flagged",
    "passed",
)

#: capabilities a defense can only use on the model itself, not through another defense's wrapper
_WHITE_BOX = frozenset({"hidden_states", "gradients"})


class StackParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defenses: tuple[ComponentField, ...] = Field(
        min_length=2, max_length=8, description="defenses, outermost first: {name, params} or a registry name"
    )


class _Layer(DefendedModel):
    """One layer of the stack: its account moves from ``metadata["defense"]`` into the list
    ``metadata["defense_layers"]``, so the next layer out starts from a clean account. ``calls``
    adds up the model calls of everything this layer answered (for the innermost layer, every
    call the stack made to the model, including those for variants an outer layer discarded)."""

    def __init__(self, defense: Defense, inner: ModelBackend) -> None:
        super().__init__(defense, inner)
        self.calls = 0.0

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        out: list[Generation | Exception] = []
        for r in super().generate(prompts, seeds=seeds):
            if isinstance(r, Exception):
                out.append(r)
                continue
            meta = dict(r.metadata)
            account = DefenseAccount.of(meta)  # checked by DefendedModel.generate above
            info = meta.pop("defense", None) or {}
            self.calls += float(account.calls if account is not None else 1)
            meta["defense_layers"] = [info, *(meta.get("defense_layers") or [])]
            out.append(r.model_copy(update={"metadata": meta}))
        return out


class StackDefense(Defense):
    """Stack several defenses in one cell: the first listed sees the input first and the answer last.

    Not a method from a paper: the layered deployment the survey's defenses are meant for (Liu et
    al., "Safety of Multimodal Large Language Models on Images and Texts", IJCAI 2024, discuss input
    filters, defense prompts and output guards as complementary), and what moderation pipelines do
    in practice — e.g. ``[ocr-filter, system-prompt, output-guard]``: Tesseract screens the image
    text, the system prompt asks for safety, a judge checks the answer. Each defense wraps the
    next one, so an outer layer that blocks an item never reaches the inner ones, and an outer
    layer that queries several variants (JailGuard) runs every inner layer on each.

    What it needs: the union of its layers' needs. A layer that reads the model's internals
    (``hidden_states`` or ``gradients``: InferAligner) must be last (innermost), directly on the
    model; a :class:`~mmsafe.errors.ConfigError` says so otherwise.

    What it records: ``action`` = the first of :data:`PRECEDENCE` that any layer took for the item
    (blocked beats rewritten beats steered …); ``calls`` = model calls per item: the innermost
    layer's calls for everything it answered in the batch (variants an outer layer discarded
    included), shared equally by the batch's items — exact in total, averaged per item, because
    an outer layer's variants cannot be told apart downstream; ``layers`` = each layer's own
    account (name, action, calls, seconds, details), outermost first.

    Params: ``defenses`` (2–8 component specs, outermost first).
    """

    name: ClassVar[str] = "stack"
    example_params: ClassVar[dict[str, Any]] = {
        "defenses": [
            "ocr-filter",
            "system-prompt",
            {
                "name": "output-guard",
                "params": {"judge": {"name": "target-string", "params": {"preset": "instructions"}}},
            },
        ]
    }
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = StackParams
    params: StackParams
    #: the layers, outermost first: created through the stack's registry, bound and closed with it
    layers: list[Defense] = SubDefense("defenses", where="stack.params.defenses.{i}")  # type: ignore[assignment]

    def __init__(self, params: Any = None, /, *, registry: Registry | None = None, **kwargs: Any) -> None:
        super().__init__(params, registry=registry, **kwargs)
        for i, layer in enumerate(self.layers[:-1]):
            if set(layer.requires) & _WHITE_BOX:
                raise ConfigError(
                    f"stack.params.defenses.{i}: '{layer.name}' reads the model's internals "
                    f"({', '.join(sorted(set(layer.requires) & _WHITE_BOX))}): put it last (innermost)"
                )
        self.requires = frozenset().union(*(layer.requires for layer in self.layers))  # type: ignore[misc]

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        chain: ModelBackend = model  # the innermost layer talks to the model itself (white-box access)
        innermost: _Layer | None = None
        for layer in reversed(self.layers):
            chain = _Layer(layer, chain)
            innermost = innermost or chain
        results = chain.generate(prompts, seeds=seeds)
        assert innermost is not None
        calls = round(innermost.calls / max(1, len(prompts)), 3)
        out: list[Generation | Exception] = []
        for r in results:
            if isinstance(r, Exception):
                out.append(r)
                continue
            meta = dict(r.metadata)
            layers = meta.pop("defense_layers", [])
            taken = {DefenseAccount.model_validate(info).action for info in layers}
            action: DefenseAction = next((a for a in PRECEDENCE if a in taken), "passed")
            meta["defense"] = DefenseAccount(action=action, calls=calls, layers=layers).to_metadata()
            out.append(r.model_copy(update={"metadata": meta}))
        return out
