"""Run configuration: a YAML file, overridden by CLI options, validated before any compute.

A run is a grid: models × benchmarks × attacks × defenses × judges. Each component is written either
as its registry name (``figstep``) or as ``{name: ..., params: {...}}``; params are validated by the
plugin's own ``Params`` model, so a typo fails at once with the field and the allowed values::

    name: figstep-vs-text
    models:
      - name: hf
        params: {path: llava-hf/llava-1.5-7b-hf, dtype: bfloat16, batch_size: 16}
    benchmarks:
      - {name: figstep, params: {path: data/figstep, split: tiny}}
    attacks: [text-only, figstep]
    defenses: [none]
    judges: [refusal]
    limit: null
    seed: 0
    limits: {image_pixels: 25000000, prompt_chars: 200000}   # optional; see docs/running.md
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from mmsafe.errors import ConfigError
from mmsafe.limits import Limits

AXES: tuple[tuple[str, str], ...] = (
    ("models", "model"),
    ("benchmarks", "benchmark"),
    ("attacks", "attack"),
    ("defenses", "defense"),
    ("judges", "judge"),
)


class ComponentConfig(BaseModel):
    """One component of the grid as the user wrote it: a registry name and its params."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


def as_component(value: Any) -> Any:
    """Config shorthand: a bare name stands for ``{name: <name>}``."""
    return {"name": value} if isinstance(value, str) else value


#: A component field inside another component's params (PAIR's attacker, compose's sub-attacks).
ComponentField = Annotated[ComponentConfig, BeforeValidator(as_component)]


class RunConfig(BaseModel):
    """A whole run. Unknown keys are errors (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("mmsafe-run", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    models: list[ComponentConfig] = Field(min_length=1)
    benchmarks: list[ComponentConfig] = Field(min_length=1)
    attacks: list[ComponentConfig] = Field(
        default_factory=lambda: [ComponentConfig(name="none")], min_length=1
    )
    defenses: list[ComponentConfig] = Field(
        default_factory=lambda: [ComponentConfig(name="none")], min_length=1
    )
    judges: list[ComponentConfig] = Field(
        default_factory=lambda: [ComponentConfig(name="refusal")], min_length=1
    )
    limit: int | None = Field(None, ge=1, description="at most this many samples per benchmark")
    seed: int = 0
    #: what the run accepts from its inputs (image size, prompt length, answer size, request time): part
    #: of no record or cache key (see mmsafe.limits and docs/running.md, "Limits")
    limits: Limits = Field(default_factory=Limits)
    window: int | None = Field(
        None,
        ge=1,
        description="requests in flight per I/O model (sent, not yet answered; as many answered items "
        "again may wait for the judges); default 2 × its concurrency. "
        "How the run goes, not what it computes: changing it re-runs nothing",
    )

    @field_validator("models", "benchmarks", "attacks", "defenses", "judges", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, (str, Mapping)):
            v = [v]
        return [as_component(x) for x in v] if isinstance(v, Sequence) else v


#: ``mmsafe run`` with no config: the FigStep typographic attack vs its plain-text baseline on the starter
#: suite, against the embedded default model (Gemma-3-270M base with mmsafe's shipped safety adapter,
#: read through Tesseract OCR; see models/gemma_ocr_safe.py), judged twice: the refusal rules (non-refusal
#: rate) and the shipped harm classifier (harmful rate = ASR).
QUICKSTART: dict[str, Any] = {
    "name": "quickstart",
    "models": ["gemma-ocr-safe"],
    "benchmarks": ["starter"],
    "attacks": ["text-only", "figstep"],
    "defenses": ["none"],
    "judges": ["refusal", "harm"],
}


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            fields = Limits.model_fields if err["loc"][:1] == ("limits",) else RunConfig.model_fields
            allowed = ", ".join(fields)
            lines.append(f"{loc}: unknown field; allowed: {allowed}")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


#: YAML read from a config file or the command line: at most this many bytes, this many aliases, and
#: this many nodes once aliases are expanded (an "alias bomb" of a few hundred bytes can stand for
#: billions). Constants, not settings: a config cannot set the limits of its own parsing.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_ALIASES = 100
MAX_YAML_NODES = 100_000


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting aliases as it composes."""

    def __init__(self, stream: str, where: str) -> None:
        super().__init__(stream)
        self.where = where
        self.aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise ConfigError(f"{self.where} has more than {MAX_YAML_ALIASES} YAML aliases (the limit)")
        return super().compose_node(parent, index)


def _expanded_size(node: yaml.Node, where: str, memo: dict[int, int], active: set[int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded (each shared node counted once per use)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in active:
        raise ConfigError(f"{where} has a YAML alias that refers to itself")
    active.add(id(node))
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_size(c, where, memo, active) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(
            _expanded_size(k, where, memo, active) + _expanded_size(v, where, memo, active)
            for k, v in node.value
        )
    active.discard(id(node))
    if n > MAX_YAML_NODES:
        raise ConfigError(
            f"{where} expands to more than {MAX_YAML_NODES:,} YAML nodes through its aliases (the limit)"
        )
    memo[id(node)] = n
    return n


def load_yaml(text: str, *, where: str) -> Any:
    """``yaml.safe_load(text)`` within :data:`MAX_YAML_BYTES`, :data:`MAX_YAML_ALIASES` and
    :data:`MAX_YAML_NODES`; any failure is a :class:`ConfigError` that starts with ``where``."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{where} is {size:,} bytes; the limit is {MAX_YAML_BYTES:,}")
    loader = _LimitedLoader(text, where)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply") from None
    finally:
        loader.dispose()


def parse_component(text: str) -> dict[str, Any]:
    """Parse a CLI component: ``figstep`` or a YAML/JSON mapping ``{name: hf, params: {path: x}}``."""
    value = load_yaml(text, where=f"component {text[:200]!r}")
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigError(f"component {text!r} must be a name or a mapping with name and params")


def load_config(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read ``path`` (YAML) or the built-in quickstart, apply ``overrides`` (CLI), validate."""
    if path is None:
        data: dict[str, Any] = dict(QUICKSTART)
    else:
        p = Path(path)
        where = f"config file {p}"
        try:
            if p.stat().st_size > MAX_YAML_BYTES:  # before reading it
                raise ConfigError(f"{where} is {p.stat().st_size:,} bytes; the limit is {MAX_YAML_BYTES:,}")
            raw = p.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{where} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"{where} is a folder; give the YAML file") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ConfigError(
                f"{where} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}, line {line}); "
                "save it as UTF-8"
            ) from None
        data = load_yaml(text, where=where) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must be a mapping at the top level")
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return run_config(data)


def run_config(data: Mapping[str, Any]) -> RunConfig:
    """``data`` (the fields of a run config) validated; an error is a :class:`ConfigError` naming each
    bad field (and, for an unknown one, the allowed fields)."""
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
