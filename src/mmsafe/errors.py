"""Exceptions with messages a user can act on."""

from __future__ import annotations

import re


class MmsafeError(Exception):
    """Base class for mmsafe's own errors."""


class ConfigError(MmsafeError):
    """A config or component spec is invalid; the message names the field and the allowed values."""


class GridError(ConfigError):
    """Some cells of the grid cannot run (e.g. a gradient attack against an API model)."""


class StoreError(MmsafeError):
    """The run store cannot be opened, read or written; the message says what to do about it."""


class RunLocked(MmsafeError):
    """Another process is writing the same run folder; the message names it (pid, host, since when)."""


class MissingDependency(MmsafeError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, *, extra: str, purpose: str = ""):
    """Import ``module`` or raise :class:`MissingDependency` naming ``pip install 'mmsafe[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f" for {purpose}" if purpose else ""
        raise MissingDependency(
            f"{module} is needed{why} but is not installed: pip install 'mmsafe[{extra}]'"
        ) from exc


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def without_addresses(text: str) -> str:
    """``text`` without object addresses (``<Foo object at 0x7f…>`` → ``<Foo object>``)."""
    return _ADDRESS.sub("", text)


def describe(exc: BaseException, *, limit: int | None = None) -> str:
    """``Type: message`` on one line, without object addresses (`` at 0x7f…``), so the same failure reads
    the same in every run and in every record; the message is cut to ``limit`` characters."""
    msg = without_addresses(str(exc)).strip().replace("\n", " ")[:limit]
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
