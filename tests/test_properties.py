"""Property-based tests (hypothesis): hostile input never ends a run.

Examples are drawn the same way on every run (the ``mmsafe`` profile in conftest.py: derandomised,
no example database); ``HYPOTHESIS_PROFILE=mmsafe-thorough`` draws ten times as many.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from mmsafe.datasets.jsonl import GenericFile
from mmsafe.types import Record, Sample, lone_surrogate, stable_hash

hypothesis = pytest.importorskip("hypothesis")  # the dev extra; CI (MMSAFE_STRICT_SKIPS) fails on a skip
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# text with every kind of code point, lone surrogates (Cs) and control characters included
ANY_CHAR = st.characters(categories=["Lu", "Ll", "Lo", "Nd", "Po", "Sm", "So", "Zs", "Zl", "Cc", "Cf", "Cs"])
TEXT = st.text(ANY_CHAR, max_size=20)
SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
JSON_VALUE = st.recursive(
    SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=20
)
COLUMN = st.sampled_from(["id", "text", "image", "category", "expected", "label", "target", "answers", "note"])


def _json_line(obj: object) -> bytes:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a hostile file would carry them
    return json.dumps(obj, ensure_ascii=True).encode()


def _deep(depth: int) -> bytes:
    return b'{"id": "deep", "text": "t", "n": ' + b"[" * depth + b"]" * depth + b"}"


def _big_int(digits: int) -> bytes:
    return b'{"text": "t", "n": ' + b"7" * digits + b"}"


LINE = st.one_of(
    st.dictionaries(COLUMN, JSON_VALUE, max_size=6).map(_json_line),  # rows shaped like a benchmark's
    JSON_VALUE.map(_json_line),  # any JSON at all (lists, strings, numbers)
    st.integers(1, 1500).map(_deep),  # parses below ~1000, RecursionError above
    st.integers(4200, 6000).map(_big_int),  # around the int-to-str limit (4300 digits)
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),  # not JSON, not UTF-8
    st.sampled_from([b"", b"   ", b"\xef\xbb\xbf", b"\t\r"]),  # blank-ish
)


def _non_blank_lines(content: bytes) -> int:
    """Lines a JSONL reader must turn into a Sample each: everything but blank lines."""
    lines = content.split(b"\n")[:-1]
    count = 0
    for n, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            count += 1
            continue
        if n == 1:
            text = text.removeprefix("\ufeff")
        count += bool(text.strip())
    return count


def _check_storable(samples: list[Sample]) -> None:
    ids = [s.id for s in samples]
    assert len(ids) == len(set(ids))
    for s in samples:
        json.loads(s.model_dump_json())  # the runner stores records as this JSON
        stable_hash(s.model_dump(mode="json"))
        s.id.encode("utf-8")  # ids are keys: no lone surrogate


def _load(name: str, content: bytes) -> list[Sample]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content)
        return list(GenericFile(file=str(path)).load())


@given(st.lists(LINE, max_size=12))
def test_jsonl_loader_never_raises_and_gives_one_sample_per_line(lines: list[bytes]):
    content = b"\n".join(lines) + b"\n"
    samples = _load("b.jsonl", content)
    assert len(samples) == _non_blank_lines(content)
    _check_storable(samples)


@given(st.lists(st.dictionaries(COLUMN, JSON_VALUE, min_size=1, max_size=6), max_size=8))
def test_jsonl_rows_that_load_clean_keep_their_text(rows: list[dict]):
    samples = _load("b.jsonl", b"".join(_json_line(r) + b"\n" for r in rows))
    assert len(samples) == len(rows)
    for row, s in zip(rows, samples, strict=True):
        if s.error is None:
            assert s.text == row["text"] and s.text.strip()
    _check_storable(samples)


CSV_CELL = st.one_of(st.text(ANY_CHAR.filter(lambda c: c not in "\r\n"), max_size=12), st.binary(max_size=12))


@given(st.lists(st.lists(CSV_CELL, min_size=1, max_size=4), max_size=8), st.booleans())
def test_csv_loader_never_raises(rows: list[list], quote: bool):
    def cell(value: str | bytes) -> bytes:
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        return b'"' + raw.replace(b'"', b'""') + b'"' if quote else raw

    content = b"id,text,image\n" + b"".join(b",".join(cell(c) for c in r) + b"\n" for r in rows)
    _check_storable(_load("b.csv", content))


def _record(gen_text: str, gen_meta: dict, rationale: str, details: dict, notes: dict) -> Record:
    from mmsafe.types import ComponentSpec, Expected, Generation, Judgement

    spec = ComponentSpec(kind="model", name="m")
    gen = Generation(text=gen_text, metadata=gen_meta)  # repairs lone surrogates in text and metadata strings
    return Record(
        key="k" * 64, run="r", sample_id="s", benchmark="b", category="c", expected=Expected.refuse,
        model=spec, benchmark_spec=spec, attack=spec, defense=spec, judge=spec,
        prompt={"messages": [], "attack_metadata": notes},
        response=gen.text,
        generation=gen.model_dump(mode="json", exclude={"text"}),
        judgement=Judgement(rationale=rationale, details=details),
    )


@given(TEXT, st.dictionaries(TEXT, JSON_VALUE, max_size=3), TEXT, st.dictionaries(TEXT, JSON_VALUE, max_size=3),
       st.dictionaries(TEXT, JSON_VALUE, max_size=3))
def test_any_answer_or_verdict_text_is_stored_and_read_back(text, meta, rationale, details, notes):
    from mmsafe.runner.records import storable
    from mmsafe.store import Store

    record = storable(_record(text, meta, rationale, details, notes))
    assert lone_surrogate(record.response or "") is None  # an answer is repaired, never refused
    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        store.put_records([record])  # never raises: an unstorable payload is a "store" error record
        (back,) = list(store.iter_records())
    assert back.model_dump_json() == record.model_dump_json()  # (pydantic writes a surrogate in a dict key as U+FFFD)
    if record.error:
        assert record.error_stage == "store" and record.error.startswith("cannot store this record: ")
