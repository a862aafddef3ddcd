"""Typed metadata every plugin class carries: the capabilities it offers or needs, and its paper.

A model declares ``capabilities``; an attack or defense declares what it ``requires``. Both are sets of
:class:`Capability`, a ``StrEnum``: a member equals its string (``Capability.IMAGES == "images"``),
so string sets, comparisons and stored JSON keep working, while a name outside the enum fails when
the plugin class is defined (:func:`check_capabilities`, called from ``Component.__init_subclass__``),
not when a grid first resolves. This module imports nothing of mmsafe, so the registry can use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict

__all__ = ["CAPABILITIES", "Capability", "Paper", "check_capabilities", "describe_plugin"]


class Capability(StrEnum):
    """What a model backend can do, and so what an attack or defense can ask of it."""

    IMAGES = "images"  #: accepts image content
    SYSTEM_PROMPT = "system_prompt"  #: honours a system message
    GRADIENTS = "gradients"  #: white-box: pixel gradients of a target loss
    HIDDEN_STATES = "hidden_states"  #: white-box: residual-stream activations and decoder hooks
    ASYNC = "async"  #: answers through ``agenerate`` (I/O-bound backends)
    BATCHED = "batched"  #: ``generate`` gains from batches of prompts
    PREFILL = "prefill"  #: continues a prompt's final assistant turn (:mod:`mmsafe.models.prefill`)


#: every capability name, as plain strings
CAPABILITIES: frozenset[str] = frozenset(c.value for c in Capability)

#: the class attributes that hold capability sets
CAPABILITY_ATTRS: tuple[str, ...] = ("capabilities", "requires")


def check_capabilities(cls: type) -> None:
    """Turn the capability sets ``cls`` defines itself into :class:`Capability` members; raise
    ``TypeError`` naming the class, the attribute, the bad name and the allowed ones on a typo."""
    for attr in CAPABILITY_ATTRS:
        if attr not in vars(cls):
            continue
        value = vars(cls)[attr]
        if isinstance(value, property) or not isinstance(value, Iterable) or isinstance(value, str):
            if isinstance(value, str):
                raise TypeError(
                    f"{cls.__qualname__}.{attr} must be a set of capabilities, not the string {value!r}"
                )
            continue
        bad = sorted(str(v) for v in value if v not in CAPABILITIES)
        if bad:
            raise TypeError(
                f"{cls.__qualname__}.{attr}: unknown capability {', '.join(map(repr, bad))}; "
                f"allowed: {', '.join(sorted(CAPABILITIES))}"
            )
        setattr(cls, attr, frozenset(Capability(v) for v in value))


class Paper(BaseModel):
    """The paper a plugin implements, and the threat model it assumes, in one line each."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str
    authors: str  #: "First Author et al."
    year: int
    url: str
    #: who attacks (or defends) with what access, in one line
    threat_model: str

    def threat(self, threat_model: str) -> Paper:
        """This paper, as cited by a plugin with its own ``threat_model`` (see :mod:`mmsafe.papers`)."""
        return self.model_copy(update={"threat_model": threat_model})


def _type_name(annotation: Any) -> str:
    """``tuple[str, ...] | None`` for a field's annotation, without ``Annotated`` validators."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_plugin(kind: str, name: str, cls: Any) -> str:
    """What ``mmsafe describe`` prints about a plugin class: its kind and name, summary, paper and threat
    model, capabilities, params (type, default, description, from its pydantic ``Params``) and its
    ``example_params`` as YAML. Plain text; the caller escapes it for the terminal."""
    import yaml

    lines = [f"{kind} {name}: {cls.summary()}"]
    paper: Paper | None = getattr(cls, "paper", None)
    if paper is not None:
        lines.append(f"paper: {paper.title} ({paper.authors}, {paper.year}) {paper.url}")
        lines.append(f"threat model: {paper.threat_model}")
    else:
        lines.append("paper: (none)")
    for attr in CAPABILITY_ATTRS:
        caps = getattr(cls, attr, None)
        if caps is not None and (caps or (attr == "requires" and kind in ("attack", "defense"))):
            lines.append(f"{attr}: {', '.join(sorted(caps)) or '(nothing)'}")
    fields = cls.Params.model_fields
    lines.append("params:" if fields else "params: (none)")
    for field_name, field in fields.items():
        default = (
            "required" if field.is_required() else "= " + _short(field.get_default(call_default_factory=True))
        )
        lines.append(f"  {field_name}: {_type_name(field.annotation)} {default}")
        if field.description:
            lines.append(f"      {field.description}")
    example = dict(getattr(cls, "example_params", {}) or {})
    dumped = yaml.safe_dump(example, sort_keys=False, allow_unicode=True, width=100).rstrip()
    lines.append("example params:" + (" {}" if not example else ""))
    if example:
        lines.extend("  " + line for line in dumped.splitlines())
    return "\n".join(lines)
