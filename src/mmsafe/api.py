"""mmsafe from Python: :func:`evaluate` runs a grid, :func:`create` builds one component.

Both are what ``mmsafe run`` and the registry do, with Python values in place of YAML; both work in
a notebook (inside its running event loop: every call to an async backend goes through
:func:`mmsafe.aio.run_sync`). Importing this module imports neither torch nor the runner: they load
when a function is called.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsafe.metrics.summary import SummaryRow
    from mmsafe.registry import Component, Registry
    from mmsafe.report import Summary

__all__ = ["EvalResult", "create", "evaluate"]

#: a component as :class:`~mmsafe.config.RunConfig` takes it: a name, ``{name, params}``, or a list of them
Components = str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]]


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` wrote, read back from the run folder's ``summary.json``.

    ``n_records`` / ``n_errors`` count every record in the folder's store (a resumed run included);
    ``written`` / ``skipped`` / ``errors`` count this call's items only. ``rows`` are the summary's
    rate rows (one per model × benchmark × attack × defense × judge × category, with ``"ALL"`` for the
    whole benchmark); ``summary`` is the whole ``summary.json``; ``files`` names the files written.
    """

    out_dir: Path
    n_records: int
    n_errors: int
    written: int
    skipped: int
    errors: int
    rows: list[SummaryRow] = field(repr=False)
    summary: Summary = field(repr=False)
    files: dict[str, Path] = field(repr=False)


def evaluate(
    *,
    models: Components,
    benchmarks: Components,
    attacks: Components | None = None,
    defenses: Components | None = None,
    judges: Components | None = None,
    out: str | Path | None = None,
    registry: Registry | None = None,
    progress: bool = True,
    **run_options: Any,
) -> EvalResult:
    """Run the grid ``models × benchmarks × attacks × defenses × judges`` into ``out`` and summarise it.

    Each component is a name (``"figstep"``), a ``{"name": …, "params": {…}}`` mapping, or a list of
    them; an omitted kind takes :class:`~mmsafe.config.RunConfig`'s default (no attack, no defense,
    the ``refusal`` judge). ``run_options`` are the other RunConfig fields (``name``, ``limit``,
    ``seed``, ``limits``, ``window``). ``out`` defaults to ``mmsafe-out/<name>``, as for ``mmsafe run``;
    an ``out`` that already holds a run resumes it. A config error raises
    :class:`~mmsafe.errors.ConfigError` before any compute; a failed item is recorded, not raised.
    """
    from mmsafe.config import run_config
    from mmsafe.runner import run

    data: dict[str, Any] = {"models": models, "benchmarks": benchmarks}
    for key, value in (("attacks", attacks), ("defenses", defenses), ("judges", judges)):
        if value is not None:
            data[key] = value
    data.update(run_options)
    config = run_config(data)
    out_dir = Path(out) if out is not None else Path("mmsafe-out") / config.name
    result = run(config, out_dir, registry=registry, progress=progress)
    summary: Summary = json.loads(result.files["summary"].read_text(encoding="utf-8"))
    return EvalResult(
        out_dir=out_dir,
        n_records=int(summary["n_records"]),
        n_errors=int(summary["n_errors"]),
        written=result.written,
        skipped=result.skipped,
        errors=result.errors,
        rows=list(summary["rows"]),
        summary=summary,
        files=dict(result.files),
    )


def create(
    kind: str, name: str, params: Mapping[str, Any] | None = None, *, registry: Registry | None = None
) -> Component:
    """The component ``name`` of ``kind`` (``"model"``, ``"benchmark"``, ``"attack"``, ``"defense"``,
    ``"judge"``, ``"trainer"``) with ``params`` validated by its own model, unloaded (a model answers
    after ``.load()``). An unknown kind, name or param raises :class:`~mmsafe.errors.ConfigError`
    naming the allowed values."""
    from mmsafe.registry import registry_or_default

    return registry_or_default(registry).create(kind, name, params)
