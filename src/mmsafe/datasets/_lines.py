"""Reading a published JSON Lines file a row at a time, each row kept with its 0-based index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmsafe.errors import ConfigError

__all__ = ["json_object", "jsonl_rows"]


def jsonl_rows(path: Path) -> Iterator[tuple[int, str]]:
    """``(row, line)`` for each non-blank line of ``path``, ``row`` counted from 0 over the non-blank
    lines; the line is not parsed here, so a bad line fails only its own item (:func:`json_object`).
    A file that cannot be opened is a :class:`ConfigError` naming it."""
    try:
        fh = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        row = 0
        for line in fh:
            if line.strip():
                yield row, line
                row += 1


def json_object(line: str) -> dict[str, Any]:
    """The JSON object on one line; ``ValueError`` with a short reason otherwise."""
    try:
        value = json.loads(line)
    except RecursionError:
        raise ValueError("invalid JSON: nested deeper than Python can parse") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value
