"""``mmsafe annotate RUN --import FILE…``: read annotators' labels back into the run store.

Two file kinds are read:

* the JSON the annotation form saves (``labels-<annotator>-<export>.json``, ``format: mmsafe-labels/1``): one
  annotator and scheme per file, labels as ``{item, values: {field: label}, note, time}``;
* ``items.csv`` filled in a spreadsheet: column ``id``, the scheme's label column(s) (``label``, or
  ``helpfulness`` and ``naturalness``), optional ``note``, ``scheme`` and ``annotator`` (else ``--scheme`` /
  ``--annotator``). A row whose label columns are all empty is not labelled yet and is skipped quietly.

Every bad row — an item id that is no generation of the run, a label the scheme does not have, no annotator, a
second label for the same (item, annotator, scheme) in one import, a file that is not JSON — is reported with its
file and line (CSV) or index (JSON) and skipped; the good ones are stored. Storing replaces a label for the same
(item, annotator, scheme), and a row's time comes from the file (the form's time, else the file's mtime), so
importing a file twice leaves the table as it was.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsafe.report.schemes import SCHEMES, Scheme
from mmsafe.store.sqlite import Store

__all__ = ["FORMAT", "ImportResult", "import_labels", "read_label_file"]

FORMAT = "mmsafe-labels/1"
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

#: (item, annotator, scheme, label, note, created): a row of the store's ``human_labels``
Row = tuple[str, str, str, str, str | None, float]


@dataclass
class ImportResult:
    """What an import stored and what it rejected (``errors``: one line per bad row or file)."""

    stored: int = 0
    unlabelled: int = 0
    errors: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    #: where each row came from ("file: line 3", "file: labels[0]"), parallel to ``rows``
    wheres: list[str] = field(default_factory=list)


def _annotator(value: Any) -> str | None:
    """A usable annotator name, or None (empty, too long, control characters)."""
    if not isinstance(value, str):
        return None
    name = value.strip()
    if not name or len(name) > 100 or _BAD_NAME.search(name):
        return None
    return name


def _scheme(name: Any, default: str | None) -> Scheme | None:
    return SCHEMES.get(str(name)) if name else (SCHEMES.get(default) if default else None)


def _note(value: Any) -> str | None:
    return value[:10000] if isinstance(value, str) and value.strip() else None


def read_label_file(
    path: Path, *, valid_ids: set[str], annotator: str | None = None, scheme: str | None = None
) -> ImportResult:
    """The good rows of one JSON or CSV label file and the reasons for the bad ones (nothing is stored)."""
    res = ImportResult()
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        res.errors.append(f"{path}: cannot read ({exc.strerror or exc})")
        return res
    except UnicodeDecodeError as exc:
        res.errors.append(f"{path}: not UTF-8 text (byte {exc.start})")
        return res
    mtime = path.stat().st_mtime
    if path.suffix.lower() == ".csv" or (
        not text.lstrip().startswith(("{", "[")) and path.suffix.lower() != ".json"
    ):
        _read_csv(path, text, res, valid_ids=valid_ids, annotator=annotator, scheme=scheme, mtime=mtime)
    else:
        _read_json(path, text, res, valid_ids=valid_ids, annotator=annotator, mtime=mtime)
    return res


def _read_json(
    path: Path, text: str, res: ImportResult, *, valid_ids: set[str], annotator: str | None, mtime: float
) -> None:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        where = f"line {exc.lineno} column {exc.colno}: " if isinstance(exc, json.JSONDecodeError) else ""
        res.errors.append(f"{path}: {where}not valid JSON ({getattr(exc, 'msg', exc)}); file skipped")
        return
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("labels"), list):
        res.errors.append(f"{path}: not a labels file of the annotation form (format {FORMAT}); file skipped")
        return
    sch = _scheme(doc.get("scheme"), None)
    if sch is None:
        res.errors.append(f"{path}: unknown scheme {str(doc.get('scheme'))[:40]!r}; file skipped")
        return
    who = _annotator(doc.get("annotator")) or _annotator(annotator)
    if who is None:
        res.errors.append(f"{path}: no usable annotator name (give --annotator); file skipped")
        return
    for i, entry in enumerate(doc["labels"]):
        where = f"{path}: labels[{i}]"
        if not isinstance(entry, dict):
            res.errors.append(f"{where}: not an object; skipped")
            continue
        item = entry.get("item")
        values = entry.get("values")
        if not isinstance(item, str) or item not in valid_ids:
            res.errors.append(f"{where}: unknown item id {str(item)[:40]!r}; skipped")
            continue
        if not isinstance(values, dict):
            res.errors.append(f"{where}: no label values; skipped")
            continue
        values = {str(k): str(v) for k, v in values.items()}
        why = sch.check(values)
        if why is not None:
            res.errors.append(f"{where}: {why}; skipped")
            continue
        t = entry.get("time")
        created = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else mtime
        res.rows.append((item, who, sch.name, sch.encode(values), _note(entry.get("note")), created))
        res.wheres.append(where)


def _read_csv(
    path: Path,
    text: str,
    res: ImportResult,
    *,
    valid_ids: set[str],
    annotator: str | None,
    scheme: str | None,
    mtime: float,
) -> None:
    limit = csv.field_size_limit()
    csv.field_size_limit(
        max(limit, len(text) + 1)
    )  # items.csv holds whole answers: longer than csv's 128 KiB default
    try:
        _read_csv_rows(path, text, res, valid_ids=valid_ids, annotator=annotator, scheme=scheme, mtime=mtime)
    finally:
        csv.field_size_limit(limit)


def _read_csv_rows(
    path: Path,
    text: str,
    res: ImportResult,
    *,
    valid_ids: set[str],
    annotator: str | None,
    scheme: str | None,
    mtime: float,
) -> None:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        res.errors.append(f"{path}: line 1: not CSV ({exc}); file skipped")
        return
    if "id" not in header:
        res.errors.append(f"{path}: line 1: no 'id' column; file skipped")
        return
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            res.errors.append(f"{path}: line {start}: not CSV ({exc}); rest of file skipped")
            return
        line = reader.line_num
        where = f"{path}: line {start}"
        sch = _scheme((row.get("scheme") or "").strip(), scheme)
        if sch is None:
            res.errors.append(f"{where}: unknown or missing scheme (a 'scheme' column or --scheme); skipped")
            continue
        values = {f: (row.get(f) or "").strip() for f in sch.field_names}
        if not any(values.values()):
            res.unlabelled += 1
            continue
        item = (row.get("id") or "").strip()
        if item not in valid_ids:
            res.errors.append(f"{where}: unknown item id {item[:40]!r}; skipped")
            continue
        why = sch.check(values)
        if why is not None:
            res.errors.append(f"{where}: {why}; skipped")
            continue
        who = _annotator(row.get("annotator") or "") or _annotator(annotator)
        if who is None:
            res.errors.append(f"{where}: no annotator (an 'annotator' column or --annotator); skipped")
            continue
        res.rows.append((item, who, sch.name, sch.encode(values), _note(row.get("note")), mtime))
        res.wheres.append(where)


def import_labels(
    store: Store,
    paths: Iterable[str | Path],
    *,
    valid_ids: set[str],
    annotator: str | None = None,
    scheme: str | None = None,
) -> ImportResult:
    """Read every file (:func:`read_label_file`) and store the good rows in one transaction; a second label for
    the same (item, annotator, scheme) within this import is reported and the first kept."""
    total = ImportResult()
    seen: dict[tuple[str, str, str], str] = {}
    for p in paths:
        res = read_label_file(Path(p), valid_ids=valid_ids, annotator=annotator, scheme=scheme)
        total.errors += res.errors
        total.unlabelled += res.unlabelled
        for row, where in zip(res.rows, res.wheres, strict=True):
            key = (row[0], row[1], row[2])
            if key in seen:
                total.errors.append(
                    f"{where}: a second {row[2]} label of item {row[0]} by {row[1]!r} (first at {seen[key]}); skipped"
                )
                continue
            seen[key] = where
            total.rows.append(row)
            total.wheres.append(where)
    total.stored = store.put_human_labels(total.rows)
    return total
