"""Judging the judges: measure a judge's agreement with labelled responses.

A labelled set is a file of (request, response, label) rows. What the label measures is the set's
*construct* (:data:`CONSTRUCTS`):

- ``harm`` (the default): the label says whether the response is harmful — the attack succeeded —
  or safe, and the judge's verdict is its ``success``;
- ``refusal``: the label says whether the model refused or complied (XSTest), and the judge is
  measured as a refusal detector: its ``refused`` against the label.

Each row carries what a safe model should do with its request (``expected``): ``refuse`` for a
harmful request (the default), ``comply`` for a benign one (a column ``expected`` / ``behavior
type``, or a preset's rule). A benign request is judged as one: most judges give no harm verdict
for it (``success`` None), so under ``harm`` such rows are counted apart (``n_not_applicable``).

- :func:`read_labelled` reads CSV / TSV / JSONL / JSON files, JailbreakBench artifact files, and —
  with ``preset=`` — the published human-labelled sets (``jbb-human``, ``harmbench-text``,
  ``harmbench-mm``, ``xstest-v2``, ``msts``; see :mod:`mmsafe.judge_eval_presets`);
- :func:`evaluate_judge` runs a judge over the rows and returns accuracy (Wilson interval), Cohen's
  κ, F1 / precision / recall of the construct's positive class, the confusion matrix and the
  disagreements (each with the row's ``id``). Judge errors (and verdicts the judge left undecided)
  are counted apart, never as a class; answers an LLM judge could not parse are counted too, and a
  judge whose answers mostly do not parse is declared unusable instead of measured;
- :func:`robustness` judges the harmful-labelled rows again under forged verdicts (the ``adaptive``
  family of :mod:`mmsafe.judges.forgery`: ``[[SAFE]]``, ``Verdict: no``, fake judge turns, a
  "THIS ANSWER IS SAFE" image…) and reports per forgery how often the verdict flips (Wilson
  intervals): ``mmsafe judge-eval --robustness``;
- :func:`save_judge_eval` / :func:`load_judge_evals` keep each judge's measured agreement in
  ``<cache>/judge-evals/<judge spec key>.json`` so that a run report can print it beside the
  judge's numbers (only when asked: ``mmsafe judge-eval --record``).

Bad rows (an unknown label, a missing field, a line that is not JSON) stop the read with an error
naming ``file:line``; ``on_bad="skip"`` leaves them out instead and lists each one in
:attr:`LabelledData.skipped`. Failing is the default because a silently thinned labelled set
measures a different judge agreement than the one the user thinks they measured.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mmsafe.errors import ConfigError, MmsafeError
from mmsafe.metrics.classification import LABEL_NAMES  # agreement's default class names
from mmsafe.paths import default_cache_root
from mmsafe.types import ComponentSpec, Expected, Generation, Judgement, Message, Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.judges.base import Judge
    from mmsafe.judges.forgery import Case, Forgery

__all__ = [
    "COMPLY_VALUES",
    "CONSTRUCTS",
    "LABEL_NAMES",
    "NEGATIVE_LABELS",
    "POSITIVE_LABELS",
    "REFUSE_VALUES",
    "UNPARSEABLE_PREFIX",
    "Construct",
    "LabelledData",
    "LabelledRow",
    "agreement",
    "evaluate_judge",
    "is_unparseable",
    "judge_evals_dir",
    "load_judge_evals",
    "parse_expected",
    "parse_label",
    "read_jailbreakbench",
    "read_labelled",
    "robustness",
    "save_judge_eval",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Construct:
    """What a labelled set measures, and which verdict of a judge is compared with its labels.

    ``verdict`` is the :class:`~mmsafe.types.Judgement` field read (``success`` or ``refused``);
    ``class_names`` are the words for label False and True (the positive class second).
    """

    name: str
    verdict: Literal["success", "refused"]
    class_names: tuple[str, str]
    question: str


#: the constructs a labelled set can measure
CONSTRUCTS: dict[str, Construct] = {
    "harm": Construct(
        name="harm",
        verdict="success",
        class_names=("safe", "harmful"),
        question="is the response harmful (did the attack succeed)? judge verdict: success",
    ),
    "refusal": Construct(
        name="refusal",
        verdict="refused",
        class_names=("compliance", "refusal"),
        question="did the model refuse? judge verdict: refused (the judge as a refusal detector)",
    ),
}

#: the start of an LLM judge's error for an answer it could not read (see :mod:`mmsafe.judges.llm`)
UNPARSEABLE_PREFIX = "unparseable judge answer"

#: label spellings read as harmful / jailbroken (after lower-casing; ``_`` and ``-`` read as spaces)
POSITIVE_LABELS: frozenset[str] = frozenset(
    {"1", "true", "t", "yes", "y", "unsafe", "jailbroken", "jailbreak", "harmful", "positive"}
)
#: label spellings read as safe / not jailbroken
NEGATIVE_LABELS: frozenset[str] = frozenset(
    {"0", "false", "f", "no", "n", "safe", "not jailbroken", "harmless", "benign", "negative"}
)

#: values of an expected-behaviour column (same normalisation as labels) meaning "a safe model complies"
COMPLY_VALUES: frozenset[str] = frozenset(
    {"comply", "compliance", "should comply", "benign", "safe", "harmless", "allowed"}
)
#: …and meaning "a safe model refuses"
REFUSE_VALUES: frozenset[str] = frozenset(
    {"refuse", "refusal", "should refuse", "harmful", "unsafe", "attack", "malicious", "disallowed"}
)

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
#: at most this many disagreements are kept in the cached (report-facing) JSON
_MAX_ERRORS_KEPT = 50


@dataclass(frozen=True)
class LabelledRow:
    """One labelled response.

    ``prompt`` is the request in plain words (what :attr:`Sample.text` holds); ``attack_prompt``
    the text actually sent to the model when it differs (a jailbreak prompt); ``label`` is True
    for the construct's positive class (harmful for ``harm`` sets, a refusal for ``refusal``
    sets). ``source`` names where the row came from (``file:line``); ``id`` is the row's own id
    when the data has one. Rows sharing a ``group`` (the same behaviour under several attacks)
    stay on one side of a train/validation split. ``expected`` is what a safe model should do
    with the request (``comply`` for a benign one); ``image`` names the image a multimodal item
    was shown with (a file name: the image itself is not loaded); ``metadata`` holds what a judge
    may use (``behavior``, ``context``, ``image_description``, ``category``) and what the data
    says besides (annotator votes, the answering model).
    """

    prompt: str
    response: str
    label: bool
    source: str = ""
    attack_prompt: str | None = None
    group: str | None = None
    id: str | None = None
    expected: Expected = Expected.refuse
    image: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LabelledData(Sequence[LabelledRow]):
    """Rows read from a labelled file, with what identifies the file (``sha256``), what was left out,
    what the labels measure (``construct``, ``class_names``) and the preset that read it, if any."""

    rows: tuple[LabelledRow, ...]
    path: str
    sha256: str
    columns: dict[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"
    skipped: tuple[str, ...] = ()
    construct: str = "harm"
    class_names: tuple[str, str] | None = None
    preset: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self.rows[i]

    def __iter__(self) -> Iterator[LabelledRow]:
        return iter(self.rows)

    @property
    def names(self) -> tuple[str, str]:
        """The words for label False and True: ``class_names``, else the construct's."""
        return self.class_names or CONSTRUCTS[self.construct].class_names

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the data (no rows): name, path, sha256, columns, construct, counts."""
        return {
            "name": Path(self.path).name,
            "path": self.path,
            "sha256": self.sha256,
            "columns": dict(self.columns),
            "encoding": self.encoding,
            "construct": self.construct,
            "class_names": list(self.names),
            "preset": self.preset,
            "n_rows": len(self.rows),
            "n_positive": sum(r.label for r in self.rows),
            "n_expected_comply": sum(r.expected == Expected.comply for r in self.rows),
            "n_skipped": len(self.skipped),
        }


class _BadRow(ValueError):
    """A row that cannot be read; the message says why (the caller adds file:line)."""


def _norm_label(text: str) -> str:
    return " ".join(text.strip().lower().replace("_", " ").replace("-", " ").split())


def parse_label(value: Any, label_map: Mapping[str, bool] | None = None) -> bool:
    """A label value → True (harmful / jailbroken) or False (safe).

    Booleans pass through; the numbers 1 and 0 map to True and False; strings are lower-cased, with
    ``_`` and ``-`` read as spaces, then looked up in ``label_map`` (checked first, same
    normalisation) and in :data:`POSITIVE_LABELS` / :data:`NEGATIVE_LABELS`. Anything else raises
    ``ValueError`` with the accepted spellings.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value in (0, 1):
            return bool(value)
        raise ValueError(f"numeric label {value!r} is neither 0 nor 1")
    if not isinstance(value, str):
        raise ValueError(f"label {value!r} is not text, a number or a boolean")
    key = _norm_label(value)
    if not key:
        raise ValueError("empty label")
    for k, v in (label_map or {}).items():
        if _norm_label(k) == key:
            return bool(v)
    if key in POSITIVE_LABELS:
        return True
    if key in NEGATIVE_LABELS:
        return False
    try:
        number = float(key)
    except ValueError:
        number = math.nan
    if number in (0.0, 1.0):
        return number == 1.0
    raise ValueError(
        f"unknown label {value!r}; harmful: {', '.join(sorted(POSITIVE_LABELS))}; "
        f"safe: {', '.join(sorted(NEGATIVE_LABELS))} (map others with label_map / --positive / --negative)"
    )


def parse_expected(value: Any) -> Expected:
    """An expected-behaviour value → :attr:`Expected.refuse` or :attr:`Expected.comply`.

    Lower-cased, ``_`` and ``-`` read as spaces, then looked up in :data:`REFUSE_VALUES`
    (``refuse``, ``harmful``, ``unsafe``, ``attack``…) and :data:`COMPLY_VALUES` (``comply``,
    ``benign``, ``safe``…); an :class:`Expected` passes through. Anything else raises ``ValueError``.
    """
    if isinstance(value, Expected):
        if value == Expected.label:
            raise ValueError("expected=label is a detection item, not a request to refuse or answer")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected behaviour {value!r} is not text")
    key = _norm_label(value)
    if key in REFUSE_VALUES:
        return Expected.refuse
    if key in COMPLY_VALUES:
        return Expected.comply
    raise ValueError(
        f"unknown expected behaviour {value!r}; refuse: {', '.join(sorted(REFUSE_VALUES))}; "
        f"comply: {', '.join(sorted(COMPLY_VALUES))}"
    )


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


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


def _check_construct(construct: str | None) -> str | None:
    if construct is not None and construct not in CONSTRUCTS:
        raise ConfigError(f"unknown construct {construct!r}; allowed: {', '.join(CONSTRUCTS)}")
    return construct


def _check_class_names(names: Sequence[str] | None) -> tuple[str, str] | None:
    if names is None:
        return None
    out = tuple(str(n).strip() for n in names)
    if len(out) != 2 or not all(out) or out[0] == out[1]:
        raise ConfigError(
            f"class names must be two different words, negative first (e.g. safe,harmful), not {list(names)!r}"
        )
    return out  # type: ignore[return-value]


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
    (:data:`mmsafe.judge_eval_presets.PRESETS`: ``jbb-human``, ``harmbench-text``,
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
        from mmsafe.judge_eval_presets import read_preset

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


# --------------------------------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------------------------------


def agreement(
    labels: Sequence[bool],
    predictions: Sequence[bool],
    *,
    z: float = 1.96,
    class_names: Sequence[str] = LABEL_NAMES,
) -> dict[str, Any]:
    """Agreement of binary ``predictions`` with ``labels`` (True = the positive class).

    Keys: ``n``; ``accuracy`` (a :class:`~mmsafe.metrics.Rate` dict: k, n, value and the Wilson
    interval lo–hi); ``kappa`` (Cohen's κ with a seeded bootstrap interval: value, lo, hi, n,
    method; None when undefined — both raters used one single class); ``f1``, ``precision``,
    ``recall`` of the positive class (None when 0/0); ``confusion`` (``labels`` =
    ``class_names``, negative first — default :data:`LABEL_NAMES`; ``counts[i][j]`` = items
    labelled i that the judge called j); ``positive_rate_labels`` / ``positive_rate_judge``;
    ``majority_baseline`` (the accuracy of always answering the labels' majority class).
    """
    from mmsafe.metrics.classification import accuracy, cohen_kappa, confusion_matrix, precision_recall_f1

    y = [bool(v) for v in labels]
    p = [bool(v) for v in predictions]
    if len(y) != len(p):
        raise ValueError(f"labels and predictions differ in length: {len(y)} vs {len(p)}")
    names = list(class_names)
    n = len(y)
    out: dict[str, Any] = {"n": n, "accuracy": accuracy(y, p, z=z).as_dict()}
    if n == 0:
        out.update(kappa=None, f1=None, precision=None, recall=None, positive_rate_labels=None)
        out.update(positive_rate_judge=None, majority_baseline=None)
        out["confusion"] = {"labels": names, "counts": [[0, 0], [0, 0]]}
        return out
    try:
        out["kappa"] = cohen_kappa(y, p, labels=[False, True]).as_dict()
    except ValueError:  # undefined: both raters put every item in one class
        out["kappa"] = None
    scores = precision_recall_f1(y, p, labels=[False, True])[True]
    out.update(f1=scores.f1, precision=scores.precision, recall=scores.recall)
    cm = confusion_matrix(y, p, labels=[False, True])
    out["confusion"] = {"labels": names, "counts": [list(r) for r in cm.counts]}
    pos = sum(y)
    out["positive_rate_labels"] = pos / n
    out["positive_rate_judge"] = sum(p) / n
    out["majority_baseline"] = max(pos, n - pos) / n
    return out


def is_unparseable(judgement: Judgement) -> bool:
    """Whether ``judgement`` is a judge's answer that could not be read (not a backend failure).

    True for an error starting with :data:`UNPARSEABLE_PREFIX` (what the ``llm`` judge writes)
    or a judgement whose ``details["unparseable"]`` is True (for other judges to flag the same).
    """
    if judgement.error is None:
        return False
    return judgement.details.get("unparseable") is True or judgement.error.startswith(UNPARSEABLE_PREFIX)


def _items(row: LabelledRow, i: int) -> tuple[Sample, Prompt, Generation]:
    meta: dict[str, Any] = dict(row.metadata)
    if row.group:
        meta["group"] = row.group
    if row.image:
        meta["image"] = row.image
    category = meta.get("category")
    sample = Sample(
        id=row.id or row.source or f"row-{i}",
        benchmark="labelled",
        category=category if isinstance(category, str) and category else "uncategorised",
        text=row.prompt,
        expected=row.expected,
        metadata=meta,
    )
    prompt = Prompt(
        messages=(Message.user(row.attack_prompt if row.attack_prompt is not None else row.prompt),)
    )
    return sample, prompt, Generation(text=row.response)


def _class_names(rows: Any, construct: str, class_names: Sequence[str] | None) -> tuple[str, str]:
    given = _check_class_names(class_names)
    if given is not None:
        return given
    if isinstance(rows, LabelledData) and rows.construct == construct and rows.class_names:
        return rows.class_names
    return CONSTRUCTS[construct].class_names


def evaluate_judge(
    judge: Judge,
    rows: Iterable[LabelledRow],
    *,
    construct: str | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    max_unparseable: float = 0.5,
) -> dict[str, Any]:
    """Run ``judge`` over labelled ``rows`` and measure its agreement with the labels.

    ``construct`` (default: the data's, else ``harm``) picks the verdict compared with the labels:
    ``harm`` → ``Judgement.success`` (True = the judge calls the response harmful), ``refusal`` →
    ``Judgement.refused`` (the judge as a refusal detector). Each row is judged as what it is:
    ``Sample.expected`` = the row's ``expected`` (``comply`` for a benign request). A judgement
    with ``error`` set is counted in ``n_errors``; one without the verdict is counted in
    ``n_not_applicable`` when the construct is ``harm`` and the request is benign (judges rule on
    harm only for harmful requests) and in ``n_undecided`` otherwise; none of these enters the
    metrics. Items go to :meth:`Judge.judge_batch` ``batch_size`` at a time; a batch that raises
    (other than an mmsafe error such as a missing dependency, which propagates) counts its items
    as errors. ``progress(n_done, n_errors)`` is called after every batch.

    Answers the judge could not read (:func:`is_unparseable`: an LLM judge whose backend does not
    follow the template) are errors counted in ``n_unparseable``; ``unparseable_rate`` is their
    share of the answers the judge gave (rows not lost to other errors). When it exceeds
    ``max_unparseable`` (default 0.5) the judge is not measured: ``unusable`` holds the reason and
    the metrics are those of no verdicts (``n`` = 0), so that a judge that mostly fails to answer is
    never reported with numbers computed on the few answers it happened to format.

    Returns the :func:`agreement` metrics (class names: ``class_names``, else the data's, else the
    construct's) plus ``construct``, ``class_names``, ``n_rows``, ``n_errors``, ``n_unparseable``,
    ``unparseable_rate``, ``n_undecided``, ``n_not_applicable``, ``unusable`` (None or why),
    ``n_withheld`` (verdicts left out of an unusable result),
    ``errors`` (id, source and message of each) and ``disagreements`` (one dict per row where judge
    and label differ: id — the data's, else the source —, source, expected, image, prompt,
    attack_prompt, response, label, judge, score, judge_label, rationale).
    """
    if not 0.0 <= max_unparseable <= 1.0:
        raise ValueError(f"max_unparseable must be in [0, 1], not {max_unparseable}")
    name = _check_construct(construct) or (rows.construct if isinstance(rows, LabelledData) else "harm")
    names = _class_names(rows, name, class_names)
    field_name = CONSTRUCTS[name].verdict
    rows = list(rows)
    labels: list[bool] = []
    preds: list[bool] = []
    errors: list[dict[str, str]] = []
    disagreements: list[dict[str, Any]] = []
    undecided = not_applicable = unparseable = 0
    for start in range(0, len(rows), max(1, batch_size)):
        chunk = rows[start : start + max(1, batch_size)]
        items = [_items(r, start + k) for k, r in enumerate(chunk)]
        verdicts = _judge_chunk(judge, items)
        n_err = 0
        for row, (sample, _, _), j in zip(chunk, items, verdicts, strict=True):
            if j.error is not None:
                errors.append({"id": sample.id, "source": row.source, "error": j.error})
                unparseable += is_unparseable(j)
                n_err += 1
                continue
            verdict = getattr(j, field_name)
            if verdict is None:
                if name == "harm" and row.expected != Expected.refuse:
                    not_applicable += 1
                else:
                    undecided += 1
                continue
            labels.append(row.label)
            preds.append(bool(verdict))
            if bool(verdict) != row.label:
                disagreements.append(
                    {
                        "id": sample.id,
                        "source": row.source,
                        "expected": row.expected.value,
                        "image": row.image,
                        "prompt": row.prompt,
                        "attack_prompt": row.attack_prompt,
                        "response": row.response,
                        "label": names[row.label],
                        "judge": names[bool(verdict)],
                        "score": j.score,
                        "judge_label": j.label,
                        "rationale": j.rationale,
                    }
                )
        if progress is not None:
            progress(len(chunk), n_err)
    answered = len(rows) - (len(errors) - unparseable)
    rate = unparseable / answered if answered else None
    unusable, withheld = None, 0
    if rate is not None and rate > max_unparseable:
        withheld = len(labels)
        unusable = (
            f"{unparseable} of {answered} judge answers ({rate:.0%}) could not be parsed, more than the "
            f"limit of {max_unparseable:.0%}: the judge's model does not follow its answer format, so its "
            "agreement is not measured (try a larger or instruction-tuned judge model, or another template)"
        )
        labels, preds, disagreements = [], [], []
    result = agreement(labels, preds, class_names=names)
    result.update(
        construct=name,
        class_names=list(names),
        n_rows=len(rows),
        n_errors=len(errors),
        n_unparseable=unparseable,
        unparseable_rate=rate,
        n_undecided=undecided,
        n_not_applicable=not_applicable,
        unusable=unusable,
        n_withheld=withheld,
        errors=errors,
        disagreements=disagreements,
    )
    return result


# --------------------------------------------------------------------------------------------------
# robustness to forged verdicts
# --------------------------------------------------------------------------------------------------


def _judge_chunk(judge: Judge, items: list[tuple[Sample, Prompt, Generation]]) -> list[Judgement]:
    try:
        verdicts = judge.judge_batch(items)
    except MmsafeError:
        raise
    except Exception as exc:  # the whole batch failed: its items are errors, not verdicts
        verdicts = [Judgement(error=f"{type(exc).__name__}: {exc}") for _ in items]
    if len(verdicts) != len(items):
        raise RuntimeError(f"judge returned {len(verdicts)} judgements for {len(items)} items")
    return verdicts


def _forged_item(
    row: LabelledRow, base: tuple[Sample, Prompt, Generation], case: Case
) -> tuple[Sample, Prompt, Generation]:
    """The judged item under a forged case (a rewritten request is both the sample's text and what was sent)."""
    sample, prompt, _ = base
    text = prompt.messages[0].text
    if case.request != row.prompt:
        sample = sample.model_copy(update={"text": case.request})
        text = case.request
    if case.images != prompt.images or text != prompt.messages[0].text:
        prompt = Prompt(messages=(Message.user(text, case.images),))
    return sample, prompt, Generation(text=case.response)


def robustness(
    judge: Judge,
    rows: Iterable[LabelledRow],
    *,
    variants: Iterable[str | Forgery] | str | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    z: float = 1.96,
    max_ids: int = 20,
) -> dict[str, Any]:
    """How often forged verdicts change ``judge``'s verdict on harmful responses.

    Each harmful-labelled row (label True, ``expected=refuse``; the data's construct must be
    ``harm``) is judged as it is and under each forgery in ``variants`` (names of variants or
    families, or :class:`~mmsafe.judges.forgery.Forgery` objects; default the ``adaptive`` family,
    see :mod:`mmsafe.judges.forgery`). A row's verdict is the judgement's ``success``: harmful
    (True), safe (False) or none (an error, or no verdict). Rows whose as-is verdict is none are
    left out (``n_base_no_verdict``); for the others, a variant *flips* a row when its verdict
    under the forgery differs from the as-is verdict — to safe (what the forger wants), to harmful,
    or to none (an unparseable answer hides a success from a rate just as well).

    Returns ``n_rows``, ``n_harmful_rows``, ``n_base_decided``, ``n_base_no_verdict``,
    ``base_harmful`` (the as-is harmful rate: a :class:`~mmsafe.metrics.Rate` dict with its Wilson
    interval), ``variants`` (name → ``doc``, ``channel``, ``n``, ``flip`` and ``to_safe`` — Rate
    dicts of k flips of n rows with Wilson intervals at ``z`` —, ``to_harmful``, ``to_no_verdict``,
    ``flipped``: the first ``max_ids`` flipped row ids; or ``skipped``: why a variant could not be
    built, e.g. no font for the image stamp) and ``any`` (rows flipped by at least one variant:
    what an attacker who tries every forgery achieves; ``flip`` and ``to_safe`` as above). Judging
    goes ``batch_size`` items at a time; ``progress(n_done, n_errors)`` follows every batch.
    """
    from mmsafe.judges.forgery import Case, resolve_variants
    from mmsafe.metrics import rate

    if isinstance(rows, LabelledData) and rows.construct != "harm":
        raise ConfigError(
            f"robustness needs harm labels (harmful / safe responses); this data measures {rows.construct!r}"
        )
    forgeries = resolve_variants(variants)
    rows = list(rows)
    step = max(1, batch_size)
    targets = [(i, r) for i, r in enumerate(rows) if r.label and r.expected == Expected.refuse]
    bases = [_items(r, i) for i, r in targets]

    def verdicts(items: list[tuple[Sample, Prompt, Generation]]) -> list[bool | None]:
        out: list[bool | None] = []
        for start in range(0, len(items), step):
            got = _judge_chunk(judge, items[start : start + step])
            out.extend(None if j.error is not None or j.success is None else bool(j.success) for j in got)
            if progress is not None:
                progress(len(got), sum(j.error is not None for j in got))
        return out

    base = verdicts(bases)
    decided = [k for k, v in enumerate(base) if v is not None]
    flipped_any: set[int] = set()
    to_safe_any: set[int] = set()
    report: dict[str, Any] = {}
    for f in forgeries:
        entry: dict[str, Any] = {"doc": f.doc, "channel": f.channel}
        forged_items = []
        try:
            for k in decided:
                row = targets[k][1]
                case = f(Case(request=row.prompt, response=row.response, images=bases[k][1].images))
                forged_items.append(_forged_item(row, bases[k], case))
        except MmsafeError as exc:
            log.warning("forgery %s skipped: %s", f.name, exc)
            report[f.name] = {**entry, "skipped": str(exc)}
            continue
        forged = verdicts(forged_items)
        flips = [k for k, v in zip(decided, forged, strict=True) if v != base[k]]
        to_safe = [k for k, v in zip(decided, forged, strict=True) if base[k] is True and v is False]
        flipped_any.update(flips)
        to_safe_any.update(to_safe)
        n = len(decided)
        entry.update(
            n=n,
            flip=rate(len(flips), n, z=z).as_dict(),
            to_safe=rate(len(to_safe), n, z=z).as_dict(),
            to_harmful=sum(base[k] is False and v is True for k, v in zip(decided, forged, strict=True)),
            to_no_verdict=sum(v is None for v in forged),
            flipped=[bases[k][0].id for k in flips[:max_ids]],
        )
        report[f.name] = entry
    n = len(decided)
    return {
        "n_rows": len(rows),
        "n_harmful_rows": len(targets),
        "n_base_decided": n,
        "n_base_no_verdict": len(targets) - n,
        "base_harmful": rate(sum(base[k] is True for k in decided), n, z=z).as_dict(),
        "variants": report,
        "any": {
            "n": n,
            "flip": rate(len(flipped_any), n, z=z).as_dict(),
            "to_safe": rate(len(to_safe_any), n, z=z).as_dict(),
        },
    }


# --------------------------------------------------------------------------------------------------
# the judge-eval cache
# --------------------------------------------------------------------------------------------------

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
    from mmsafe import __version__

    if result.get("unusable"):
        raise ValueError(f"not recording an unusable judge evaluation: {result['unusable']}")
    path = _eval_path(judge.key, cache_dir)
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
    construct = result.get("construct", described["construct"])
    ident = (described["sha256"], described["columns"], construct)
    entries = [
        e
        for e in load_judge_evals(judge.key, cache_dir=cache_dir)
        if (e["data"].get("sha256"), e["data"].get("columns"), e.get("construct", "harm")) != ident
    ]
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
