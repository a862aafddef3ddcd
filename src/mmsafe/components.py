"""Sub-components a plugin declares, and the base class runs: created, loaded, cached, bound, closed.

A plugin that needs another model, judge, defense or attack names the param that configures it and
declares a field of the matching kind as a class attribute::

    class GuardInput(Defense):
        guard = SubModel("guard", greedy=True)        # params.guard: {name, params} of any backend

        def defend(self, prompts, seeds, model):
            verdicts = self.guard.generate(...)       # created, checked, loaded, cache-wrapped

Reading ``self.guard`` gives the ready instance: a :class:`SubModel` is created through the registry
the plugin was created with (:meth:`Registry.create` passes itself; constructed directly, a default
:class:`~mmsafe.registry.Registry`), checked (``greedy``, ``needs_images``, ``check``) and loaded on
first use, once, under a lock; after :meth:`Component.bind <mmsafe.registry.Component.bind>` it
answers through the run store's response cache (:class:`~mmsafe.models.cached.CachedModel`, keyed
by the sub-model's own spec), so a rerun asks it nothing it was asked before. :class:`SubJudge`,
:class:`SubDefense` and :class:`SubAttack` are created when the plugin is constructed (a bad config
fails before any compute), from a single ``{name, params}`` or a list of them (a stack, an ensemble);
``bind`` and ``close`` reach them recursively. A param that is None (or not a component, e.g. a
``"keywords"`` choice) gives None.

Assigning the attribute (``pair.attacker = my_model``) puts a ready instance in place (tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mmsafe.errors import ConfigError

if TYPE_CHECKING:
    from mmsafe.types import Generation, Prompt

__all__ = ["Sub", "SubAttack", "SubDefense", "SubJudge", "SubModel", "ask", "declared"]

_SLOTS = "_mmsafe_sub_slots"


def reject_sampling(params: Any, *, field: str = "judge_model") -> None:
    """Raise ``ValueError`` when a backend's params set temperature > 0 (for a pydantic validator)."""
    gen: Any = params.get("generation") if hasattr(params, "get") else None
    t = gen.get("temperature") if hasattr(gen, "get") and "temperature" in gen else params.get("temperature")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0:
        raise ValueError(
            f"{field} sets temperature={t:g}; a judge must decode greedily (temperature 0) so "
            "its verdicts are reproducible and can be cached. Remove the setting or set it to 0"
        )


class _Slot:
    """One declared field's state on one instance."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.ready = False
        self.value: Any = None  # the sub-component(s), or the loaded model
        self.wrapped: Any = None  # a sub-model behind the store's cache
        self.store: Any = None
        self.made: Any = None  # a sub-model created early, not yet loaded


def _slot(obj: Any, attr: str) -> _Slot:
    slots = obj.__dict__.get(_SLOTS)
    if slots is None:
        slots = obj.__dict__.setdefault(_SLOTS, {})
    slot = slots.get(attr)
    if slot is None:
        slot = slots.setdefault(attr, _Slot())
    return slot


def _registry(obj: Any) -> Any:
    reg = getattr(obj, "registry", None)
    if reg is None:
        from mmsafe.registry import Registry

        reg = obj.__dict__.setdefault("_mmsafe_default_registry", Registry())
    return reg


def _configs(value: Any) -> list[Any] | Any:
    """The ComponentConfig(s) in a param value: one, a list, or None (not a component)."""
    from mmsafe.config import ComponentConfig

    if isinstance(value, ComponentConfig):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, ComponentConfig) for v in value):
        return list(value)
    return None


class Sub:
    """A declared sub-component: the ``field`` of the plugin's params that configures it.

    ``where`` names it in errors (default ``<plugin>.params.<field>``, ``…[i]`` for a list; it may
    hold ``{name}`` and ``{i}``).
    """

    kind: ClassVar[str] = ""
    base: ClassVar[str] = ""  # "module:Class" every created instance must be

    def __init__(self, field: str, *, where: str | None = None) -> None:
        self.field = field
        self.where = where
        self.attr = field

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def _where(self, obj: Any, i: int | None) -> str:
        name = getattr(obj, "name", "") or type(obj).__name__
        if self.where is not None:
            return self.where.format(name=name, i=i)
        base = f"{name}.params.{self.field}"
        return base if i is None else f"{base}[{i}]"

    def config(self, obj: Any) -> Any:
        return _configs(getattr(obj.params, self.field, None))

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        slot = _slot(obj, self.attr)
        if not slot.ready:
            with slot.lock:
                if not slot.ready:
                    slot.value = self._create(obj)
                    slot.ready = True
                    if slot.store is not None:
                        self._bind_value(slot, slot.store)
        return slot.wrapped if slot.wrapped is not None else slot.value

    def __set__(self, obj: Any, value: Any) -> None:
        slot = _slot(obj, self.attr)
        with slot.lock:
            slot.value, slot.wrapped, slot.ready = value, None, True
            if slot.store is not None:
                self._bind_value(slot, slot.store)

    # -- lifecycle (called by Component) ---------------------------------------------------------
    def eager(self) -> bool:
        return True

    def prepare(self, obj: Any) -> None:
        """At construction: create the sub-component(s) now (a bad config fails before any compute)."""
        if self.eager():
            self.__get__(obj)

    def bind(self, obj: Any, store: Any) -> None:
        slot = _slot(obj, self.attr)
        with slot.lock:
            slot.store = store
            if slot.ready:
                self._bind_value(slot, store)

    def close(self, obj: Any) -> None:
        slot = _slot(obj, self.attr)
        with slot.lock:
            if slot.ready:
                for item in _as_list(slot.value):
                    item.close()

    def _bind_value(self, slot: _Slot, store: Any) -> None:
        for item in _as_list(slot.value):
            bind = getattr(item, "bind", None)
            if bind is not None:
                bind(store)

    def _create(self, obj: Any) -> Any:
        cfg = self.config(obj)
        if cfg is None:
            return None
        if isinstance(cfg, list):
            return [self._one(obj, c, self._where(obj, i)) for i, c in enumerate(cfg)]
        return self._one(obj, cfg, self._where(obj, None))

    def _one(self, obj: Any, cfg: Any, where: str) -> Any:
        import importlib

        made = _registry(obj).create(self.kind, cfg.name, cfg.params, where=where)
        mod, _, cls = self.base.partition(":")
        if not isinstance(made, getattr(importlib.import_module(mod), cls)):
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise ConfigError(f"{where}: '{cfg.name}' is not {article} {self.kind}")
        return made


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class SubJudge(Sub):
    """A judge (or a list of judges) configured by ``params.<field>``."""

    kind = "judge"
    base = "mmsafe.judges.base:Judge"


class SubDefense(Sub):
    """A defense (or a list of defenses) configured by ``params.<field>``."""

    kind = "defense"
    base = "mmsafe.defenses.base:Defense"


class SubAttack(Sub):
    """An attack (or a list of attacks) configured by ``params.<field>``."""

    kind = "attack"
    base = "mmsafe.attacks.base:Attack"


class SubModel(Sub):
    """A model backend configured by ``params.<field>``: created, checked and loaded on first use.

    ``greedy`` refuses a backend that samples (a judge's verdicts must be reproducible);
    ``needs_images`` (a bool, or a function of the plugin's params) refuses one without the
    ``images`` capability; ``check(model, config, where)`` may raise for anything else (before loading).
    ``cache=False`` keeps the model out of the response cache (a model read for its internals —
    hidden states, gradients — rather than its answers). ``early=True`` creates and checks it when
    the plugin is constructed (a bad config fails before any compute); it is still loaded on first use.
    """

    kind = "model"

    def __init__(
        self,
        field: str,
        *,
        where: str | None = None,
        greedy: bool = False,
        needs_images: bool | Callable[[Any], bool] = False,
        check: Callable[[Any, Any, str], None] | None = None,
        cache: bool = True,
        early: bool = False,
    ) -> None:
        super().__init__(field, where=where)
        self.greedy = greedy
        self.needs_images = needs_images
        self.check = check
        self.cache = cache
        self.early = early

    def eager(self) -> bool:
        return False

    def prepare(self, obj: Any) -> None:
        if not self.early:
            return
        slot = _slot(obj, self.attr)
        with slot.lock:
            cfg = self.config(obj)
            if not slot.ready and slot.made is None and cfg is not None and not isinstance(cfg, list):
                slot.made = self._make(obj, cfg, self._where(obj, None))

    def _one(self, obj: Any, cfg: Any, where: str) -> Any:
        slot = _slot(obj, self.attr)
        model, slot.made = slot.made or self._make(obj, cfg, where), None
        model.load()
        return model

    def _make(self, obj: Any, cfg: Any, where: str) -> Any:
        model = _registry(obj).create("model", cfg.name, cfg.params, where=where)
        gen = model.generation
        if self.greedy and not gen.greedy:
            raise ConfigError(
                f"{where}: backend '{cfg.name}' decodes with temperature "
                f"{gen.temperature:g}; a judge must decode greedily (temperature 0)"
            )
        images = self.needs_images(obj.params) if callable(self.needs_images) else self.needs_images
        if images and "images" not in model.capabilities:
            raise ConfigError(f"{where}: judge model '{cfg.name}' does not accept images")
        if self.check is not None:
            self.check(model, cfg, where)
        return model

    def _create(self, obj: Any) -> Any:
        cfg = self.config(obj)
        if isinstance(cfg, list):
            raise ConfigError(f"{self._where(obj, None)}: one model expected, not a list")
        return None if cfg is None else self._one(obj, cfg, self._where(obj, None))

    def _bind_value(self, slot: _Slot, store: Any) -> None:
        if not self.cache or slot.value is None:
            return
        from mmsafe.models.cached import CachedModel

        slot.wrapped = CachedModel(slot.value, store)

    def close(self, obj: Any) -> None:
        """Close the model (if it was loaded); the next use creates and loads it again."""
        slot = _slot(obj, self.attr)
        with slot.lock:
            if slot.ready and slot.value is not None:
                slot.value.close()
            slot.value = slot.wrapped = None
            slot.ready = False


def declared(cls: type) -> dict[str, Sub]:
    """The sub-components ``cls`` declares (its own and inherited), by attribute name."""
    out: dict[str, Sub] = {}
    for klass in reversed(cls.__mro__):
        for k, v in vars(klass).items():
            if isinstance(v, Sub):
                out[k] = v
    return out


def ask(component: Any, attr: str, prompts: Sequence[Prompt]) -> list[Generation | Exception]:
    """One answer (or the exception) per prompt from ``component``'s sub-model ``attr``, greedy
    (every seed 0), batched (:func:`mmsafe.aio.generate_all`); a model that cannot be created or
    loaded fails them all."""
    from mmsafe import aio

    try:
        model = getattr(component, attr)
    except Exception as exc:
        return [exc for _ in prompts]
    return aio.generate_all(model, list(prompts), [0] * len(prompts))
