"""Where judge evaluations are kept: this machine's cache (``mmsafe judge-eval --record``) and the
run store, which the runner copies a run's judges' entries into and the report reads them from."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsafe.labelled.rows import LabelledData
from mmsafe.paths import default_cache_root
from mmsafe.types import ComponentSpec

if TYPE_CHECKING:
    from mmsafe.store.sqlite import Store

__all__ = [
    "copy_judge_evals",
    "judge_eval_entry",
    "judge_evals_dir",
    "load_judge_evals",
    "record_judge_eval",
    "save_judge_eval",
]

log = logging.getLogger("mmsafe.judge_eval")

#: at most this many disagreements are kept in the cached (report-facing) JSON
_MAX_ERRORS_KEPT = 50

_KEY_RE = re.compile(r"[0-9a-f]{16}")


def judge_evals_dir(cache_dir: str | Path | None = None) -> Path:
    """``<cache>/judge-evals`` (``cache_dir`` or :func:`mmsafe.paths.default_cache_root`)."""
    if cache_dir is None:
        cache_dir = default_cache_root()
    return Path(cache_dir) / "judge-evals"


def _eval_path(spec_key: str, cache_dir: str | Path | None) -> Path:
    if not _KEY_RE.fullmatch(spec_key):
        raise ValueError(f"not a component spec key (16 hex digits): {spec_key!r}")
    return judge_evals_dir(cache_dir) / f"{spec_key}.json"


def save_judge_eval(
    result: Mapping[str, Any],
    *,
    judge: ComponentSpec,
    data: LabelledData,
    cache_dir: str | Path | None = None,
) -> Path:
    """Record ``result`` (from :func:`evaluate_judge`) for ``judge`` in ``<cache>/judge-evals/<key>.json``.

    The file holds a list of entries, one per labelled data set and construct (the data's sha256,
    columns and construct): a new evaluation of the same judge on the same data replaces the old
    entry. An entry is the metrics of :func:`evaluate_judge` at the top level (``n``,
    ``accuracy``, ``kappa``, ``f1``, ``confusion``, ``construct``, ``class_names``…; the row lists
    are replaced by ``n_disagreements`` and the first ``disagreement_ids`` /
    ``disagreement_sources``) plus ``spec_key``, ``judge`` (the spec), ``data_name``,
    ``data_sha256``, ``data`` (:meth:`LabelledData.describe`), ``created`` and ``mmsafe_version``.
    Written atomically (a temporary file renamed over the old one). A result marked ``unusable``
    (its judge's answers mostly did not parse) is refused with ``ValueError``: it has no agreement
    to report.
    """
    if result.get("unusable"):
        raise ValueError(f"not recording an unusable judge evaluation: {result['unusable']}")
    path = _eval_path(judge.key, cache_dir)
    entry = judge_eval_entry(result, judge=judge, data=data)
    ident = _entry_ident(entry)
    entries = [e for e in load_judge_evals(judge.key, cache_dir=cache_dir) if _entry_ident(e) != ident]
    entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def judge_eval_entry(
    result: Mapping[str, Any], *, judge: ComponentSpec, data: LabelledData
) -> dict[str, Any]:
    """The recorded form of ``result`` (from :func:`evaluate_judge`) for ``judge`` on ``data``: see
    :func:`save_judge_eval`."""
    from mmsafe import __version__

    if result.get("unusable"):
        raise ValueError(f"not recording an unusable judge evaluation: {result['unusable']}")
    entry: dict[str, Any] = {k: v for k, v in result.items() if k not in ("disagreements", "errors")}
    dis = list(result.get("disagreements", ()))
    entry["n_disagreements"] = len(dis)
    entry["disagreement_ids"] = [d.get("id", d["source"]) for d in dis][:_MAX_ERRORS_KEPT]
    entry["disagreement_sources"] = [d["source"] for d in dis][:_MAX_ERRORS_KEPT]
    described = data.describe()
    entry.update(
        spec_key=judge.key,
        judge=judge.model_dump(mode="json"),
        data_name=described["name"],
        data_sha256=described["sha256"],
        data=described,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        mmsafe_version=__version__,
    )
    return entry


def _entry_ident(entry: Mapping[str, Any]) -> str:
    """What an entry measured (the data's sha256 and columns, and the construct): a newer entry with
    the same ident replaces the older one."""
    data = entry.get("data")
    data = data if isinstance(data, Mapping) else {}
    construct = entry.get("construct", data.get("construct", "harm"))
    return json.dumps([data.get("sha256"), data.get("columns"), construct], sort_keys=True)


def record_judge_eval(store: Store, entry: Mapping[str, Any]) -> None:
    """Record ``entry`` (from :func:`judge_eval_entry`) in the run store ``store``, where the run's
    report reads it (replacing an entry of the same judge on the same data and construct)."""
    store.put_judge_evals(str(entry["spec_key"]), [(_entry_ident(entry), dict(entry))])


def copy_judge_evals(
    store: Store, judges: Iterable[ComponentSpec], *, cache_dir: str | Path | None = None
) -> int:
    """Copy the cached evaluations of ``judges`` (``mmsafe judge-eval --record``) into the run store
    ``store``, so that the run's report shows them from the store alone, the same on every machine.
    Called by the runner for the judges of a run; returns the number of entries copied."""
    n = 0
    for spec in judges:
        entries = load_judge_evals(spec.key, cache_dir=cache_dir)
        have = store.judge_evals(spec.key)
        if any(e not in have for e in entries):  # a rerun copies nothing new: the store (and its stamp) stay
            store.put_judge_evals(spec.key, [(_entry_ident(e), e) for e in entries])
        n += len(entries)
    return n


def load_judge_evals(spec_key: str, *, cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every cached evaluation of the judge with spec key ``spec_key`` (``[]`` if none).

    A file that cannot be read as a list of entries is logged and treated as empty, so a damaged
    cache never stops a report.
    """
    path = _eval_path(spec_key, cache_dir)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable judge-eval cache %s: %s", path, exc)
        return []
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("data"), dict) and "accuracy" in e for e in entries
    ):
        log.warning("ignoring judge-eval cache %s: not a list of evaluations", path)
        return []
    return entries
