"""The base of every training method (``mmsafe train``): a registered component that writes an adapter.

A trainer declares its base model as a component (``model``: ``{name, params}`` of a local backend);
:meth:`Trainer.run` creates and loads it through the registry, calls :meth:`Trainer.fit`, writes the
LoRA adapter and its card (:func:`mmsafe.lora.save_adapter`) and closes the model. The card
records the method and its params, the base model's spec and fingerprint, the sha256 of the training
data, the seed, the steps, the losses, time and peak memory, and the method's own held-out metrics. The
adapter then loads as ``adapter:`` of the same model spec in any run grid, so a report can put the base
and the trained model side by side.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mmsafe.errors import ConfigError
from mmsafe.registry import Component, registry_or_default

if TYPE_CHECKING:
    from mmsafe.registry import Registry

__all__ = ["Trainer"]

log = logging.getLogger(__name__)


class Trainer(Component):
    """Base of training methods. Subclasses set ``Params`` (with a ``model`` component) and :meth:`fit`."""

    kind: ClassVar[str] = "trainer"
    uses_registry: ClassVar[bool] = True
    #: backends whose weights this method can train
    trains: ClassVar[frozenset[str]] = frozenset({"hf-text", "gemma-ocr"})

    def __init__(self, params: Any = None, /, *, registry: Registry | None = None, **kwargs: Any) -> None:
        super().__init__(params, registry=registry, **kwargs)  # declared sub-components come from it

    def fit(self, backend: Any, *, log_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
        """Train ``backend`` (loaded); return (the LoRA settings used, card fields: data, metrics, …)."""
        raise NotImplementedError

    def run(self, out_dir: str | Path, *, log_fn: Callable[[str], None] = log.info) -> dict[str, Any]:
        """Load the base model, train it, write ``out_dir/adapter.safetensors`` + ``card.json``; return the card."""
        from mmsafe import __version__
        from mmsafe.lora import read_card, save_adapter

        spec = self.params.model  # type: ignore[attr-defined]
        if spec.name not in self.trains:
            raise ConfigError(
                f"{self.name}.params.model: '{spec.name}' cannot be trained by {self.name}; "
                f"trainable backends: {', '.join(sorted(self.trains))}"
            )
        if spec.params.get("adapter"):
            raise ConfigError(f"{self.name}.params.model: train from a base model without an adapter")
        backend = registry_or_default(self.registry).create("model", spec.name, spec.params, where=f"{self.name}.params.model")
        backend.load()  # type: ignore[attr-defined]
        try:
            settings, fields = self.fit(backend, log_fn=log_fn)
            card = {
                "method": self.name,
                "method_version": self.version,
                "params": self.spec.params,
                "base": {"name": spec.name, "params": dict(spec.params)},
                "mmsafe_version": __version__,
                "platform": f"{platform.system()} {platform.machine()}, python {platform.python_version()}",
                **fields,
            }
            path = save_adapter(out_dir, backend.module, settings=settings, card=card)  # type: ignore[attr-defined]
        finally:
            backend.close()
        log_fn(f"adapter written to {path}")
        return read_card(path)
