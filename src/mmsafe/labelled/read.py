"""Reading labelled files: CSV / TSV / JSONL / JSON tables, JailbreakBench artifact files and —
through :mod:`mmsafe.labelled.presets` — the published human-labelled sets."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mmsafe.errors import ConfigError
from mmsafe.labelled.rows import (
    LabelledData,
    LabelledRow,
    _BadRow,
    _check_class_names,
    _check_construct,
    parse_expected,
    parse_label,
)
from mmsafe.types import Expected

__all__ = ["read_jailbreakbench", "read_labelled"]

log = logging.getLogger("mmsafe.labelled")

#: column names tried, in order, when a column is not given (``id`` and ``expected`` are optional)
_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "request", "goal", "question", "instruction", "behavior", "query"),
    "response": ("response", "completion", "generation", "output", "answer"),
    "label": ("label", "jailbroken", "human_label", "harmful", "unsafe", "is_harmful", "is_jailbroken"),
    "id": ("id", "ID", "Id", "Index", "index", "sample_id", "item_id", "uid", "case_id"),
    "expected": (
        "expected",
        "expected_behavior",
        "expected_behaviour",
        "behavior_type",
        "behaviour_type",
        "behavior type",
        "behaviour type",
    ),
}
_REQUIRED = ("prompt", "response", "label")
_OPTIONAL = ("id", "expected")
_OPTION = {
    "prompt": "prompt_col",
    "response": "response_col",
    "label": "label_col",
    "id": "id_col",
    "expected": "expected_col",
}
#: JailbreakBench artifact records: the plain request is ``goal``; ``prompt`` is the jailbreak prompt
_JBB_COLUMNS = {"prompt": "goal", "response": "response", "label": "jailbroken"}


def _check_encoding(encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(
            f"unknown encoding {encoding!r} (any name Python's codecs know: utf-8, latin-1, cp1252, …)"
        ) from None
    # a UTF-8 file may start with a byte-order mark; it is not part of the first column's name
    return "utf-8-sig" if name == "utf-8" else name


def _decode(path: Path, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: cannot decode byte {data[exc.start : exc.start + 1]!r} as {encoding.removesuffix('-sig')} "
            f"({exc.reason}); pass the file's encoding (--encoding latin-1, cp1252, …)"
        ) from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve_columns(
    available: Sequence[str],
    given: Mapping[str, str | None],
    defaults: Mapping[str, str],
    where: str,
    *,
    optional: bool = True,
) -> dict[str, str]:
    """The column of each role: the one given (which must exist), else a default or an alias.

    ``prompt``, ``response`` and ``label`` must be found; ``id`` and ``expected`` are looked up
    among their aliases when ``optional`` (else only when given) and left out when absent.
    """
    out = {}
    for role in (*_REQUIRED, *_OPTIONAL):
        want = given.get(role)
        if want is not None:
            if want not in available:
                raise ConfigError(
                    f"{where}: no column {want!r} ({_OPTION[role]}); columns: {', '.join(available) or '(none)'}"
                )
            out[role] = want
            continue
        if role in _OPTIONAL:
            found = next((c for c in _ALIASES[role] if c in available), None) if optional else None
            if found is not None:
                out[role] = found
            continue
        candidates = (defaults[role],) if role in defaults else _ALIASES[role]
        found = next((c for c in candidates if c in available), None)
        if found is None:
            raise ConfigError(
                f"{where}: no {role} column (tried {', '.join(candidates)}); "
                f"columns: {', '.join(available) or '(none)'}; name it with {_OPTION[role]}"
            )
        out[role] = found
    return out


def _text_field(obj: Mapping[str, Any], col: str) -> str:
    if col not in obj:
        raise _BadRow(f"no {col!r} field")
    v = obj[col]
    if not isinstance(v, str):
        raise _BadRow(f"{col!r} is {type(v).__name__}, not text")
    return v


def _id_value(value: Any) -> str | None:
    """A row id from a field: text or a number, stripped; None when empty or absent."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _expected_value(obj: Mapping[str, Any], col: str | None) -> Expected:
    if col is None or _id_value(obj.get(col)) is None:
        return Expected.refuse  # no column, or left empty: a harmful request, as every row used to be
    try:
        return parse_expected(obj[col])
    except ValueError as exc:
        raise _BadRow(f"{col!r}: {exc} (name another column with expected_col / --expected-col)") from None


def _row(
    obj: Mapping[str, Any], cols: Mapping[str, str], label_map: Mapping[str, bool] | None, source: str
) -> LabelledRow:
    prompt = _text_field(obj, cols["prompt"])
    response = _text_field(obj, cols["response"])
    if cols["label"] not in obj:
        raise _BadRow(f"no {cols['label']!r} field")
    try:
        label = parse_label(obj[cols["label"]], label_map)
    except ValueError as exc:
        raise _BadRow(f"{cols['label']!r}: {exc}") from None
    return LabelledRow(
        prompt=prompt,
        response=response,
        label=label,
        source=source,
        id=_id_value(obj.get(cols["id"])) if "id" in cols else None,
        expected=_expected_value(obj, cols.get("expected")),
    )


class _Collector:
    """Rows and skipped rows of one read; raises on a bad row unless ``on_bad == "skip"``."""

    def __init__(self, on_bad: str) -> None:
        self.rows: list[LabelledRow] = []
        self.skipped: list[str] = []
        self.on_bad = on_bad

    def bad(self, where: str, why: str) -> None:
        if self.on_bad == "error":
            raise ConfigError(f"{where}: {why} (on_bad='skip' / --skip-bad leaves such rows out)")
        self.skipped.append(f"{where}: {why}")


@dataclass(frozen=True)
class _Table:
    """The records of a tabular file: its column names, where to point a column error, and each
    record with its ``file:line`` (JSON list items: ``file:item N``)."""

    columns: list[str]
    where: str
    records: list[tuple[str, dict[str, Any]]]


def _csv_table(path: Path, text: str, delimiter: str, coll: _Collector) -> _Table:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records: list[tuple[str, dict[str, Any]]] = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ConfigError(f"{path}:{start}: not valid CSV: {exc}") from None
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in fields]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise ConfigError(f"{path}:{start}: duplicate column names {dupes}")
            continue
        where = f"{path}:{start}"
        if len(fields) != len(header):
            coll.bad(where, f"{len(fields)} fields, the header has {len(header)}")
            continue
        records.append((where, dict(zip(header, fields, strict=True))))
    if header is None:
        raise ConfigError(f"{path}: empty file (no header row)")
    return _Table(columns=header, where=str(path), records=records)


def _jsonl_table(path: Path, text: str, coll: _Collector) -> _Table:
    records: list[tuple[str, dict[str, Any]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            coll.bad(where, f"not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            coll.bad(where, f"a JSON {type(obj).__name__}, not an object")
            continue
        records.append((where, obj))
    if not records:
        raise ConfigError(f"{path}: no JSON objects")
    return _Table(columns=list(records[0][1]), where=records[0][0], records=records)


def _json_list_table(path: Path, obj: Any, coll: _Collector) -> _Table:
    if not isinstance(obj, list):
        raise ConfigError(f"{path}: a JSON file must hold a list of objects or a JailbreakBench artifact")
    records: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(obj):
        where = f"{path}:item {i}"
        if not isinstance(item, dict):
            coll.bad(where, f"a JSON {type(item).__name__}, not an object")
            continue
        records.append((where, item))
    first = records[0] if records else (str(path), {})
    return _Table(columns=list(first[1]), where=first[0], records=records)


def _load_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def _table(path: Path, text: str, coll: _Collector) -> _Table:
    """The records of a ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.ndjson`` / ``.json`` (list) file."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_table(path, text, "\t" if suffix == ".tsv" else ",", coll)
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_table(path, text, coll)
    if suffix == ".json":
        return _json_list_table(path, _load_json(path, text), coll)
    raise ConfigError(
        f"{path}: unknown format {suffix or '(no suffix)'}; use .csv, .tsv, .jsonl, .json or a folder"
    )


def _read_jbb_file(
    path: Path,
    obj: Mapping[str, Any],
    base: Path,
    given: Mapping[str, str | None],
    label_map,
    coll: _Collector,
) -> dict[str, str]:
    records = obj.get("jailbreaks")
    rel = path.relative_to(base).as_posix() if path != base else path.name
    if not isinstance(records, list):
        raise ConfigError(f"{path}: 'jailbreaks' is not a list")
    params = obj.get("parameters") or {}
    first = next((r for r in records if isinstance(r, dict)), None)
    if first is None:
        return {}
    cols = _resolve_columns(list(first), given, _JBB_COLUMNS, f"{rel}:jailbreaks[0]", optional=False)
    stem = rel.removesuffix(".json")
    for i, rec in enumerate(records):
        where = f"{rel}:jailbreaks[{i}]"
        if not isinstance(rec, dict):
            coll.bad(where, "not an object")
            continue
        if rec.get(cols["response"]) is None:
            # the attack submitted nothing for this behaviour (PAIR): no response to judge
            coll.skipped.append(f"{where}: no response (the attack submitted no prompt)")
            continue
        try:
            row = _row(rec, cols, label_map, where)
        except _BadRow as exc:
            coll.bad(where, str(exc))
            continue
        attack = rec.get("prompt") if cols["prompt"] != "prompt" else None
        group = rec.get("index", rec.get("behavior"))
        index = _id_value(rec.get("index"))
        coll.rows.append(
            LabelledRow(
                prompt=row.prompt,
                response=row.response,
                label=row.label,
                source=where,
                attack_prompt=attack if isinstance(attack, str) else None,
                group=None if group is None else f"jbb:{group}",
                id=row.id or (f"{stem}/{index}" if index is not None else None),
                expected=row.expected,
                metadata={"category": rec["category"]} if isinstance(rec.get("category"), str) else {},
            )
        )
    log.debug("%s: %s on %s, %d records", rel, params.get("method"), params.get("model"), len(records))
    return cols


def read_jailbreakbench(
    path: str | Path,
    *,
    prompt_col: str | None = None,
    response_col: str | None = None,
    label_col: str | None = None,
    id_col: str | None = None,
    expected_col: str | None = None,
    label_map: Mapping[str, bool] | None = None,
    on_bad: Literal["error", "skip"] = "error",
) -> LabelledData:
    """JailbreakBench attack artifacts (one ``{method}/{type}/{model}.json`` file or a folder of them).

    Each artifact record becomes a row: ``prompt`` = the behaviour's ``goal`` (the plain request),
    ``attack_prompt`` = the jailbreak ``prompt``, ``response``, ``label`` = ``jailbroken`` — the
    verdict of JailbreakBench's automatic judge, not a human label — ``group`` = the behaviour
    index, so a train/validation split keeps a behaviour's responses together, and ``id`` =
    ``{file path without .json}/{index}`` (``GCG/transfer/gpt-4-0125-preview/0``). Records without
    a response (PAIR submitted none for that behaviour) are skipped and listed in ``skipped``. Any
    column can be renamed, e.g. ``label_col="jailbroken_llama_guard1"`` for Llama Guard's verdicts.
    Folders are read recursively, files in sorted order; JSON files without ``jailbreaks``
    (``attack-info.json``) are ignored.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"labelled data {p} does not exist")
    files = sorted(f for f in p.rglob("*.json") if f.is_file()) if p.is_dir() else [p]
    given = {
        "prompt": prompt_col,
        "response": response_col,
        "label": label_col,
        "id": id_col,
        "expected": expected_col,
    }
    coll = _Collector(on_bad)
    h = hashlib.sha256()
    cols: dict[str, str] = {}
    used = 0
    for f in files:
        data = f.read_bytes()
        obj = _load_json(f, _decode(f, data, "utf-8-sig"))
        if not isinstance(obj, dict) or "jailbreaks" not in obj:
            if p.is_dir():
                continue
            raise ConfigError(f"{f}: not a JailbreakBench artifact file (no 'jailbreaks' list)")
        base = p if p.is_dir() else f
        cols = _read_jbb_file(f, obj, base, given, label_map, coll) or cols
        rel = f.relative_to(p).as_posix() if p.is_dir() else f.name
        h.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        used += 1
    if not used:
        raise ConfigError(f"{p}: no JailbreakBench artifact files (*.json with a 'jailbreaks' list)")
    return LabelledData(
        rows=tuple(coll.rows),
        path=str(p),
        sha256=h.hexdigest() if p.is_dir() else _sha256_file(p),
        columns=cols or dict(_JBB_COLUMNS),
        encoding="utf-8",
        skipped=tuple(coll.skipped),
        class_names=("safe", "jailbroken"),
    )


def read_labelled(
    path: str | Path,
    *,
    prompt_col: str | None = None,
    response_col: str | None = None,
    label_col: str | None = None,
    id_col: str | None = None,
    expected_col: str | None = None,
    encoding: str = "utf-8",
    label_map: Mapping[str, bool] | None = None,
    on_bad: Literal["error", "skip"] = "error",
    preset: str | None = None,
    construct: str | None = None,
    class_names: Sequence[str] | None = None,
    behaviors: str | Path | None = None,
) -> LabelledData:
    """Read labelled responses from ``path``.

    Formats, by suffix: ``.csv`` and ``.tsv`` (a header row; fields may span lines), ``.jsonl`` /
    ``.ndjson`` (one object a line), ``.json`` (a list of objects, or a JailbreakBench artifact
    file) and a folder (JailbreakBench artifact files, see :func:`read_jailbreakbench`).
    ``encoding`` is any name Python's codecs know (``latin-1``, ``cp1252``, ``utf-16``, …); a UTF-8
    byte-order mark is dropped. A column not given is looked up among common names (``prompt``,
    ``request``, ``goal``… / ``response``, ``completion``… / ``label``, ``jailbroken``…). Labels
    are read by :func:`parse_label` with ``label_map``. Optional columns: the row ``id`` (``id``,
    ``Index``, ``sample_id``…; else rows are named by ``file:line``) and the request's
    ``expected`` behaviour (``expected``, ``behavior type``…; read by :func:`parse_expected`;
    absent or empty: ``refuse``).

    ``preset`` reads one of the published human-labelled sets by its documented format instead
    (:data:`mmsafe.labelled.presets.PRESETS`: ``jbb-human``, ``harmbench-text``,
    ``harmbench-mm``, ``xstest-v2``, ``msts``); a preset fixes the columns (``label_col`` may
    still pick another label column, ``expected_col`` an expected-behaviour column), the
    construct and the class names. ``behaviors`` (HarmBench presets only) is HarmBench's
    behaviour CSV, to give each row its plain behaviour and context.

    ``construct`` (``harm`` or ``refusal``, default ``harm`` or the preset's) says what the labels
    measure; ``class_names`` (negative, positive) the words used in reports.

    A bad row raises :class:`ConfigError` naming ``file:line`` (JSON list items: ``file:item N``);
    with ``on_bad="skip"`` it is left out and listed in :attr:`LabelledData.skipped`. Column and
    encoding problems always raise.
    """
    p = Path(path)
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    construct = _check_construct(construct)
    names = _check_class_names(class_names)
    if preset is not None:
        from mmsafe.labelled.presets import read_preset

        for option, value in (("prompt_col", prompt_col), ("response_col", response_col), ("id_col", id_col)):
            if value is not None:
                raise ConfigError(
                    f"{option} does not apply with preset {preset!r}: the preset reads the columns of the "
                    "published format (label_col and expected_col may still be given)"
                )
        return read_preset(
            preset,
            p,
            label_col=label_col,
            expected_col=expected_col,
            encoding=encoding,
            label_map=label_map,
            on_bad=on_bad,
            construct=construct,
            class_names=names,
            behaviors=behaviors,
        )
    if behaviors is not None:
        raise ConfigError("behaviors (a HarmBench behaviour CSV) is only read with the harmbench-* presets")
    if not p.exists():
        raise FileNotFoundError(f"labelled data {p} does not exist")
    given = {
        "prompt": prompt_col,
        "response": response_col,
        "label": label_col,
        "id": id_col,
        "expected": expected_col,
    }
    construct = construct or "harm"

    def artifacts() -> LabelledData:
        data = read_jailbreakbench(
            p, **{f"{k}_col": v for k, v in given.items()}, label_map=label_map, on_bad=on_bad
        )
        # the artifacts' labels are JailbreakBench's "jailbroken" verdicts: a harm construct
        return replace(
            data,
            construct=construct,
            class_names=names or (data.class_names if construct == "harm" else None),
        )

    if p.is_dir():
        return artifacts()
    enc = _check_encoding(encoding)
    raw = p.read_bytes()
    text = _decode(p, raw, enc)
    coll = _Collector(on_bad)
    if p.suffix.lower() == ".json":
        obj = _load_json(p, text)
        if isinstance(obj, dict) and "jailbreaks" in obj:
            return artifacts()
        table = _json_list_table(p, obj, coll)
    else:
        table = _table(p, text, coll)
    cols: dict[str, str] = {}
    if table.columns:  # an empty JSON list has none: no rows, nothing to check
        cols = _resolve_columns(table.columns, given, {}, table.where)
    for where, obj in table.records:
        try:
            coll.rows.append(_row(obj, cols, label_map, where))
        except _BadRow as exc:
            coll.bad(where, str(exc))
    return LabelledData(
        rows=tuple(coll.rows),
        path=str(p),
        sha256=hashlib.sha256(raw).hexdigest(),
        columns=cols,
        encoding=enc.removesuffix("-sig"),
        skipped=tuple(coll.skipped),
        construct=construct,
        class_names=names,
    )
