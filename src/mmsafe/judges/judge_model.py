"""The one way a judge runs another model: created from the registry, greedy, cached, batched, closed.

Every judge that asks a model (``llm``, ``reference``, ``guard``) holds a :class:`JudgeModel`: it
creates the backend named by a ``{name, params}`` component through the registry on first use,
refuses one that does not decode greedily (a judge's verdicts must be reproducible and cacheable)
or cannot take the images it will be sent, routes requests through the run store's response cache
after :meth:`JudgeModel.bind`, and :meth:`JudgeModel.generate` sends a whole batch in one call
(async backends: with their own ``concurrency`` in flight), also from inside a running event loop.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from mmsafe import aio
from mmsafe.aio import run_sync
from mmsafe.errors import ConfigError
from mmsafe.types import Generation, Prompt

if TYPE_CHECKING:
    from mmsafe.config import ComponentConfig
    from mmsafe.models.base import ModelBackend
    from mmsafe.registry import Registry
    from mmsafe.store.sqlite import Store

__all__ = ["JudgeModel", "generate_all", "reject_sampling", "run_sync"]


def reject_sampling(params: Any, *, field: str = "judge_model") -> None:
    """Raise ``ValueError`` when a backend's params set temperature > 0 (for a pydantic validator)."""
    gen = params.get("generation") if hasattr(params, "get") else None
    t = gen.get("temperature") if hasattr(gen, "get") and "temperature" in gen else params.get("temperature")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0:
        raise ValueError(
            f"{field} sets temperature={t:g}; a judge must decode greedily (temperature 0) so "
            "its verdicts are reproducible and can be cached. Remove the setting or set it to 0"
        )


class JudgeModel:
    """A judge's model: lazily created, checked, cached through the run store, closed with the judge.

    ``component`` is the ``{name, params}`` of any model backend; ``where`` names the param in
    error messages; ``needs_images`` refuses a backend without the ``images`` capability.
    """

    def __init__(
        self,
        component: ComponentConfig,
        *,
        registry: Registry | None,
        where: str,
        needs_images: bool = False,
    ) -> None:
        self.component = component
        self.registry = registry
        self.where = where
        self.needs_images = needs_images
        self._lock = threading.Lock()
        self._inner: ModelBackend | None = None
        self._model: ModelBackend | None = None
        self._store: Store | None = None

    def bind(self, store: Store) -> None:
        """Route requests through ``store``'s response cache."""
        with self._lock:
            self._store = store
            if self._inner is not None:
                self._model = self._wrap(self._inner)

    def close(self) -> None:
        """Close the backend (if it was loaded)."""
        with self._lock:
            if self._inner is not None:
                self._inner.close()
            self._inner = self._model = None

    def _wrap(self, inner: ModelBackend) -> ModelBackend:
        if self._store is None:
            return inner
        from mmsafe.runner.cache import CachedModel

        return CachedModel(inner, self._store)

    def backend(self) -> ModelBackend:
        """The loaded (and cache-wrapped) backend; created on first call."""
        with self._lock:
            if self._model is None:
                from mmsafe.registry import registry_or_default

                name, params = self.component.name, self.component.params
                model = registry_or_default(self.registry).create("model", name, params, where=self.where)
                gen = model.generation  # type: ignore[attr-defined]
                if not gen.greedy:
                    raise ConfigError(
                        f"{self.where}: backend '{name}' decodes with temperature "
                        f"{gen.temperature:g}; a judge must decode greedily (temperature 0)"
                    )
                if self.needs_images and "images" not in model.capabilities:  # type: ignore[attr-defined]
                    raise ConfigError(f"{self.where}: judge model '{name}' does not accept images")
                model.load()  # type: ignore[attr-defined]
                self._inner = model  # type: ignore[assignment]
                self._model = self._wrap(model)  # type: ignore[arg-type]
            return self._model

    def generate(self, prompts: list[Prompt]) -> list[Generation | Exception]:
        """One answer (or the exception) per prompt; a backend that cannot be created fails them all."""
        try:
            model = self.backend()
        except Exception as exc:
            return [exc for _ in prompts]
        return generate_all(model, prompts)


def generate_all(model: ModelBackend, prompts: list[Prompt]) -> list[Generation | Exception]:
    """One answer (or exception) per prompt (:func:`mmsafe.aio.generate_all`); greedy decoding, so
    every seed is 0 (the seed changes nothing and is not in the cache key)."""
    return aio.generate_all(model, prompts, [0] * len(prompts))
