"""Helpers shared by the benchmark loaders: reading CSV/JSON files and images without leaving the root."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmsafe.errors import ConfigError
from mmsafe.types import Image

__all__ = [
    "ImageLoadError",
    "check_choices",
    "load_image",
    "read_csv",
    "read_json",
    "read_packaged_items",
    "require_file",
    "resolve_inside",
]


def read_packaged_items(filename: str, file_model: Any) -> tuple[Any, ...]:
    """The validated ``items`` of a YAML file shipped in ``mmsafe/data/`` (a built-in suite).

    ``file_model`` is the pydantic model of the whole file (with an ``items`` tuple of objects that
    have an ``id``); a typo in the file fails loudly, and so does a repeated id.
    """
    from importlib import resources

    import yaml

    text = resources.files("mmsafe").joinpath(f"data/{filename}").read_text(encoding="utf-8")
    items = file_model.model_validate(yaml.safe_load(text)).items
    ids = [i.id for i in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{filename} has duplicate ids: {', '.join(dupes)}")
    return tuple(items)


class ImageLoadError(Exception):
    """An image a row names cannot be used; the message is the reason recorded on the Sample."""


def require_file(root: Path, rel: str, *, benchmark: str) -> Path:
    """``root / rel``, or a :class:`ConfigError` saying which expected file is missing."""
    path = root / rel
    if not path.is_file():
        raise ConfigError(
            f"benchmark '{benchmark}': expected file {path} is missing (is {root} the right folder?)"
        )
    return path


def read_csv(path: Path, *, encoding: str = "utf-8") -> list[dict[str, str]]:
    """All rows of a CSV file with a header line, as dicts (a UTF-8 byte-order mark is ignored)."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        with path.open(encoding=enc, newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot decode {path} as {encoding}: {exc}") from None


def read_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file, raising :class:`ConfigError` naming the file when it is malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot parse {path} as JSON: {exc}") from None


def resolve_inside(root: Path, rel: str | Path) -> Path:
    """``rel`` resolved against ``root`` (symlinks followed); raises :class:`ImageLoadError` if outside it.

    Absolute paths are allowed only when they land inside ``root``.
    """
    base = root.resolve()
    target = (base / Path(rel)).resolve()
    if not target.is_relative_to(base):
        raise ImageLoadError("image path escapes dataset root")
    return target


def load_image(root: Path, rel: str | Path, *, source: str | None = None) -> Image:
    """Read the image at ``root / rel`` (which must stay inside ``root``) as an :class:`Image`.

    Raises :class:`ImageLoadError` with a short reason (escape, missing, unreadable); the bytes are
    not decoded here, so a corrupt file fails later, only for the item that uses it.
    """
    path = resolve_inside(root, rel)
    name = source if source is not None else str(rel)
    if not path.is_file():
        raise ImageLoadError(f"image not found: {name}")
    try:
        return Image.from_path(path, source=name)
    except OSError as exc:
        raise ImageLoadError(f"cannot read image {name}: {exc.strerror or exc}") from None


def check_choices(field: str, values: Iterable[str] | None, allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` (turned into a ConfigError by the registry) for values not in ``allowed``."""
    allowed = list(allowed)
    bad = [v for v in values or () if v not in allowed]
    if bad:
        raise ValueError(f"unknown {field} {', '.join(map(repr, bad))}; allowed: {', '.join(allowed)}")
