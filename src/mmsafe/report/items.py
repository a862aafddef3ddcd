"""The sample browser's items: one per generation (model × benchmark × attack × defense × sample), with every
judge's verdict on it, read from a run's store.

An item's id is :func:`mmsafe.store.sqlite.generation_id` of its spec keys and sample id (the id human labels
are stored against). Its model, benchmark, attack, defense and judge are named by the labels the report uses
(:func:`mmsafe.metrics.labels_of` over the store's specs, as ``summarise_tally`` does), so a filter value is a
name the reader saw in a table.

The store is read with SQL and ``json_extract`` on a separate read-only connection (``mode=ro``, one per
thread, so ``mmsafe view``'s request threads never share one), never by validating each record with pydantic:
100,000 records are one pass of SQLite's C JSON code. A row that is not valid JSON, or whose ``expected`` is not
one mmsafe writes, is skipped and counted (:attr:`ItemReader.unreadable`), never a crash.

Two uses:

* the static page (:func:`mmsafe.report.browser.browser_section`) reads every item whole
  (:meth:`ItemReader.items`);
* the server (:class:`ItemIndex`) keeps one light tuple per item (labels, verdict marks, record rowids), filters
  and pages in memory, and reads the long parts (prompt, response, rationales) of one page's items by rowid.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mmsafe.metrics import labels_of
from mmsafe.store.sqlite import generation_id
from mmsafe.types import ComponentSpec

__all__ = ["AXES", "VERDICTS", "Filters", "ItemIndex", "ItemReader", "facets_of", "matches"]

#: the axes of an item, as the report names them (the judge is per verdict)
AXES = ("model", "benchmark", "attack", "defense")
_SPEC_PATHS = {"model": "model", "benchmark": "benchmark_spec", "attack": "attack", "defense": "defense",
               "judge": "judge"}  # fmt: skip
#: what a verdict filter can ask: the judge said success / not success / refused, or the verdict failed
VERDICTS = ("success", "not-success", "refused", "error")
EXPECTED = ("refuse", "comply", "label")
#: response characters an item carries at most (the rest is cut, with the count shown)
MAX_RESPONSE_CHARS = 20_000
MAX_RATIONALE_CHARS = 4_000
_META_KEYS = 24  # attack metadata entries shown at most
_META_CHARS = 300  # characters of one metadata value shown at most

_LIGHT_COLS = (
    "rowid, model, benchmark, attack, defense, judge, sample_id, category, "
    "json_extract(record, '$.expected'), json_extract(record, '$.judgement.success'), "
    "json_extract(record, '$.judgement.refused'), json_extract(record, '$.judgement.error'), error, "
    "json_extract(record, '$.error_stage')"
)
_HEAVY_COLS = (
    ", json_extract(record, '$.label'), json_extract(record, '$.prompt'), json_extract(record, '$.response'), "
    "json_extract(record, '$.image_hashes'), json_extract(record, '$.judgement.score'), "
    "json_extract(record, '$.judgement.label'), json_extract(record, '$.judgement.rationale')"
)
_ORDER = " ORDER BY model, benchmark, attack, defense, sample_id, judge, key"


@dataclass(frozen=True)
class Filters:
    """What the browser shows: items matching every field that is set. ``judge`` and ``verdict`` combine
    (that judge's verdict is that); ``verdict`` alone matches a verdict of any judge, ``judge`` alone an item
    that judge judged. ``search``: a substring of the prompt's text or the response (ASCII letters
    case-insensitive)."""

    model: str | None = None
    benchmark: str | None = None
    attack: str | None = None
    defense: str | None = None
    category: str | None = None
    expected: str | None = None
    judge: str | None = None
    verdict: str | None = None
    search: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        """Filters from URL query parameters (empty values are unset); ``ValueError`` for an unknown verdict."""
        values = {f.name: (query.get(f.name) or None) for f in fields(cls)}
        if values["verdict"] is not None and values["verdict"] not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        if values["search"] is not None:
            values["search"] = values["search"][:200]
        return cls(**values)

    def mark(self) -> str | None:
        """The verdict mark an item needs for the judge/verdict part (see :func:`_marks`), or None."""
        if self.judge is None and self.verdict is None:
            return None
        return f"{self.judge or '*'}\x1f{self.verdict or '*'}"


def _verdict_codes(success: Any, refused: Any, error: Any) -> list[str]:
    codes = []
    if error:
        codes.append("error")
    if success == 1:
        codes.append("success")
    elif success == 0:
        codes.append("not-success")
    if refused == 1:
        codes.append("refused")
    return codes


def _marks(verdicts: Iterable[tuple[str, list[str]]]) -> frozenset[str]:
    """``judge\\x1fverdict`` for every verdict code, with ``*`` for any judge and any verdict."""
    out = set()
    for judge, codes in verdicts:
        out.add(f"{judge}\x1f*")
        for c in codes:
            out.add(f"{judge}\x1f{c}")
            out.add(f"*\x1f{c}")
    return frozenset(out)


def _ascii_lower(text: str) -> str:
    return text.translate({c: c + 32 for c in range(65, 91)})


def _cut(text: str | None, limit: int) -> tuple[str | None, int]:
    if text is None or len(text) <= limit:
        return text, 0
    return text[:limit], len(text) - limit


def _prompt_parts(prompt_json: str | None) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The text parts of the prompt's messages in order, with their role, and its attack metadata compacted
    (scalars and short JSON, at most :data:`_META_KEYS` entries of :data:`_META_CHARS` characters)."""
    try:
        prompt = json.loads(prompt_json) if prompt_json else None
    except ValueError:
        prompt = None
    if not isinstance(prompt, dict):
        return [], {}
    parts: list[dict[str, str]] = []
    messages = prompt.get("messages")
    for m in messages if isinstance(messages, list) else ():
        content = m.get("content") if isinstance(m, dict) else None
        for p in content if isinstance(content, list) else ():
            if isinstance(p, dict) and p.get("type") == "text":
                parts.append({"role": str(m.get("role", "")), "text": str(p.get("text", ""))})
    meta: dict[str, Any] = {}
    raw = prompt.get("attack_metadata")
    raw = raw if isinstance(raw, dict) else {}
    for k, v in raw.items():
        if len(meta) >= _META_KEYS:
            meta["…"] = f"{len(raw) - _META_KEYS} more"
            break
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        meta[str(k)] = text if len(text) <= _META_CHARS else text[: _META_CHARS - 1] + "…"
    return parts, meta


def _hashes(text: str | None) -> list[str]:
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return [h for h in value if isinstance(h, str) and len(h) == 64] if isinstance(value, list) else []


class ItemReader:
    """Reads items from the store at ``path`` (a run folder or its ``mmsafe.sqlite``) on read-only connections
    of its own, one per thread. :attr:`labels` maps ``(axis, spec key)`` to the report's label."""

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        self.path = p / "mmsafe.sqlite" if p.is_dir() else p
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        #: rows skipped by the last full pass (:meth:`light_items` or :meth:`items`)
        self.unreadable = 0
        #: judge labels in the order first met by a full pass
        self.judges: dict[str, None] = {}
        self.labels = self._labels()

    def conn(self) -> sqlite3.Connection:
        """This thread's read-only connection (an idle one given back by :meth:`release`, or a new one)."""
        db = getattr(self._local, "db", None)
        if db is None:
            with self._lock:
                db = self._idle.pop() if self._idle else None
            if db is None:
                # one thread at a time uses it (check_same_thread off: a pool hands it on, close() closes it)
                uri = self.path.resolve().as_uri() + "?mode=ro"
                db = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False)
                db.execute("PRAGMA query_only=1")
                with self._lock:
                    self._conns.append(db)
            self._local.db = db
        return db

    def release(self) -> None:
        """Give this thread's connection back for another thread (a server's request thread, when it is done)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            self._local.db = None
            with self._lock:
                self._idle.append(db)

    def close(self) -> None:
        with self._lock:
            for db in self._conns:
                db.close()
            self._conns.clear()
            self._idle.clear()
        self._local = threading.local()

    def _labels(self) -> dict[tuple[str, str], str]:
        """The report's labels of every spec in the store, from the first readable record of each spec key."""
        specs: dict[str, list[ComponentSpec]] = {}
        db = self.conn()
        for col, path in _SPEC_PATHS.items():  # the records table's column of each axis is named after it
            q = (
                f"SELECT {col}, IIF(json_valid(record), json_extract(record, '$.{path}'), NULL) FROM records "
                f"WHERE rowid IN (SELECT MIN(rowid) FROM records GROUP BY {col})"
            )
            for key, text in db.execute(q).fetchall():
                if text is None:  # that row is damaged: any readable one of the key
                    row = db.execute(
                        f"SELECT json_extract(record, '$.{path}') FROM records WHERE {col}=? AND json_valid(record) "
                        "LIMIT 1",
                        (key,),
                    ).fetchone()
                    text = row[0] if row else None
                try:
                    spec = ComponentSpec.model_validate_json(text) if text else None
                except ValueError:
                    spec = None
                if spec is not None and spec.key == key:
                    specs.setdefault(col, []).append(spec)
        return labels_of(specs)

    def label(self, axis: str, key: str) -> str:
        return self.labels.get((axis, key)) or f"?{key[:8]}"

    def _rows(self, *, heavy: bool, where: str = "", params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        cols = _LIGHT_COLS + (_HEAVY_COLS if heavy else "")
        q = f"SELECT {cols} FROM records WHERE json_valid(record){where}{_ORDER}"
        yield from self.conn().execute(q, tuple(params))

    def _count_invalid(self) -> int:
        return int(
            self.conn().execute("SELECT COUNT(*) FROM records WHERE NOT json_valid(record)").fetchone()[0]
        )

    def _grouped(self, rows: Iterable[tuple[Any, ...]], *, count: bool) -> Iterator[list[tuple[Any, ...]]]:
        """Rows of one generation together (rows come sorted by cell and sample); bad rows left out (and with
        ``count``, counted in :attr:`unreadable`)."""
        group: list[tuple[Any, ...]] = []
        gkey: tuple[Any, ...] | None = None
        for row in rows:
            if row[8] not in EXPECTED:
                self.unreadable += count
                continue
            self.judges.setdefault(self.label("judge", row[5]))
            k = (row[1], row[2], row[3], row[4], row[6])
            if k != gkey and group:
                yield group
                group = []
            gkey = k
            group.append(row)
        if group:
            yield group

    def _head(self, group: list[tuple[Any, ...]]) -> dict[str, Any]:
        r = group[0]
        return {
            "id": generation_id(r[1], r[2], r[3], r[4], r[6]),
            **{axis: self.label(axis, r[1 + i]) for i, axis in enumerate(AXES)},
            "sample_id": r[6],
            "category": r[7],
            "expected": r[8],
        }

    def light_items(self) -> Iterator[tuple[dict[str, Any], frozenset[str], tuple[int, ...]]]:
        """Every item's head (id, labels, sample, category, expected), verdict marks and record rowids."""
        self.unreadable = self._count_invalid()
        for group in self._grouped(self._rows(heavy=False), count=True):
            verdicts = [
                (self.label("judge", r[5]), _verdict_codes(r[9], r[10], r[11] or r[12])) for r in group
            ]
            yield self._head(group), _marks(verdicts), tuple(r[0] for r in group)

    def keyed_groups(self) -> Iterator[tuple[str, list[int], tuple[tuple[str, int], ...] | None]]:
        """Every item as :meth:`items` would give it (same items, same order, same :attr:`unreadable` and
        :attr:`judges` after the pass), but only its id, its records' rowids and, when each has one, their keys
        with their write sequence numbers (``record_facts.seq``: a record written again gets a new one), which
        name the item's content; None for an item with a record that has none (written before them, or changed
        by another program). Reads no record's JSON but those without a sequence number, so it costs an index
        walk: what :mod:`mmsafe.report.item_cache` needs to tell which items changed."""
        db = self.conn()
        has_seq = "seq" in {r[1] for r in db.execute("PRAGMA table_info(record_facts)")}
        # two plain scans (the seqs, then the records in the browser's order) cost less than one joined query
        seqs: dict[str, int] = dict(db.execute("SELECT key, seq FROM record_facts WHERE seq IS NOT NULL")) if has_seq else {}  # fmt: skip
        rows = db.execute(
            "SELECT rowid, model, benchmark, attack, defense, judge, sample_id, key FROM records "
            "ORDER BY model, benchmark, attack, defense, sample_id, judge, key"
        ).fetchall()
        # a row with a seq was validated whole when written; any other is checked here, as items() checks it
        others = [r[0] for r in rows if r[7] not in seqs]
        expected_of: dict[int, Any] = {}
        for i in range(0, len(others), 500):
            chunk = others[i : i + 500]
            expected_of.update(
                db.execute(
                    "SELECT rowid, IIF(json_valid(record), coalesce(json_extract(record, '$.expected'), ''), NULL) "
                    f"FROM records WHERE rowid IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        self.unreadable = 0
        rowids: list[int] = []
        keys: list[tuple[str, int]] | None = []
        gkey: tuple[Any, ...] | None = None
        judge_label = self.label
        for rowid, model, bench, attack, defense, judge, sample_id, key in rows:
            wseq = seqs.get(key)
            # no seq, and not JSON or not a record mmsafe writes
            if wseq is None and expected_of.get(rowid) not in EXPECTED:
                self.unreadable += 1
                continue
            self.judges.setdefault(judge_label("judge", judge))
            k = (model, bench, attack, defense, sample_id)
            if k != gkey and rowids:
                yield generation_id(*gkey), rowids, None if keys is None else tuple(keys)  # type: ignore[misc]
                rowids, keys = [], []
            gkey = k
            rowids.append(rowid)
            if keys is not None:
                if wseq is None:
                    keys = None
                else:
                    keys.append((key, int(wseq)))
        if rowids:
            yield generation_id(*gkey), rowids, None if keys is None else tuple(keys)  # type: ignore[misc]

    def items(
        self, *, rowids: Sequence[int] | None = None, max_response_chars: int = MAX_RESPONSE_CHARS
    ) -> Iterator[dict[str, Any]]:
        """Whole items: every item of the store, or those whose records have these ``rowids``."""
        if rowids is None:
            self.unreadable = self._count_invalid()
            groups = self._grouped(self._rows(heavy=True), count=True)
        else:
            rows: list[tuple[Any, ...]] = []
            ids = list(rowids)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                where = f" AND rowid IN ({','.join('?' * len(chunk))})"
                rows.extend(self._rows(heavy=True, where=where, params=chunk))
            order = {rid: n for n, rid in enumerate(ids)}
            rows.sort(key=lambda r: order[r[0]])
            groups = self._grouped(rows, count=False)
        for group in groups:
            yield self._full(group, max_response_chars)

    def _full(self, group: list[tuple[Any, ...]], max_response_chars: int) -> dict[str, Any]:
        first = group[0]
        prompt, meta = _prompt_parts(first[15])
        response, cut = _cut(first[16] if isinstance(first[16], str) else None, max_response_chars)
        stage_row = next((r for r in group if r[13]), None)  # a failure before the judges: the generation's
        verdicts = []
        for r in group:
            rationale, _ = _cut(r[20] if isinstance(r[20], str) else "", MAX_RATIONALE_CHARS)
            error = r[11] or (r[12] if r[13] in (None, "judge") else None)
            verdicts.append(
                {
                    "judge": self.label("judge", r[5]),
                    "success": None if r[9] is None else bool(r[9]),
                    "refused": None if r[10] is None else bool(r[10]),
                    "score": r[18] if isinstance(r[18], int | float) else None,
                    "label": None if r[19] is None else str(r[19]),
                    "rationale": rationale or "",
                    "error": None if error is None else str(error),
                }
            )
        return {
            **self._head(group),
            "label": None if first[14] is None else str(first[14]),
            "prompt": prompt,
            "attack_meta": meta,
            "images": _hashes(first[17]),
            "response": response,
            "response_cut": cut,
            "error": str(stage_row[12]) if stage_row and stage_row[12] else None,
            "error_stage": str(stage_row[13]) if stage_row else None,
            "verdicts": verdicts,
        }

    def search(self, text: str) -> set[str]:
        """Ids of the items whose prompt text or response holds ``text`` (ASCII letters case-insensitive)."""
        q = (
            "SELECT model, benchmark, attack, defense, sample_id FROM records WHERE json_valid(record) AND ("
            "instr(lower(json_extract(record, '$.response')), ?1) > 0 OR EXISTS (SELECT 1 FROM "
            "json_tree(record, '$.prompt.messages') WHERE key = 'text' AND type = 'text' "
            "AND instr(lower(value), ?1) > 0))"
        )
        return {generation_id(*row) for row in self.conn().execute(q, (_ascii_lower(text),))}


def matches(head: Mapping[str, Any], marks: frozenset[str], filters: Filters) -> bool:
    """Whether an item (its head and verdict marks) passes every filter but the free-text search."""
    for name in (*AXES, "category", "expected"):
        want = getattr(filters, name)
        if want is not None and head[name] != want:
            return False
    mark = filters.mark()
    return mark is None or mark in marks


def facets_of(heads: Iterable[Mapping[str, Any]], judges: Iterable[str]) -> dict[str, list[str]]:
    """The values each filter can take: axes in the order first seen (cell order), categories sorted."""
    out: dict[str, dict[str, None]] = {name: {} for name in (*AXES, "category", "expected")}
    for h in heads:
        for name in out:
            out[name].setdefault(h[name], None)
    facets = {name: list(v) for name, v in out.items()}
    facets["category"].sort()
    facets["expected"].sort(key=lambda e: EXPECTED.index(e) if e in EXPECTED else 99)
    facets["judge"] = list(dict.fromkeys(judges))
    facets["verdict"] = list(VERDICTS)
    return facets


class ItemIndex:
    """Every item of a store as a light tuple, for ``mmsafe view``: filtered and paged in memory, a page's
    details read by rowid. Built once, from one SQL pass; a run still being written is seen as it was then."""

    def __init__(self, reader: ItemReader) -> None:
        self.reader = reader
        strings: dict[str, str] = {}
        shared: dict[frozenset[str], frozenset[str]] = {}
        self.heads: list[dict[str, Any]] = []
        self.marks: list[frozenset[str]] = []
        self.rowids: list[tuple[int, ...]] = []
        for head, marks, rowids in reader.light_items():
            self.heads.append(
                {k: strings.setdefault(v, v) if isinstance(v, str) else v for k, v in head.items()}
            )
            self.marks.append(shared.setdefault(marks, marks))
            self.rowids.append(rowids)
        self.position = {h["id"]: i for i, h in enumerate(self.heads)}
        self.facets = facets_of(self.heads, reader.judges)
        self.unreadable = reader.unreadable
        self._search_cache: dict[str, set[str]] = {}
        self._selections: dict[Filters, list[int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.heads)

    def select(self, filters: Filters) -> list[int]:
        """Positions (in browser order) of the items that pass ``filters``. The last few selections are kept, so
        paging through one filtered list filters once."""
        with self._lock:
            cached = self._selections.get(filters)
        if cached is not None:
            return cached
        found: set[str] | None = None
        if filters.search:
            with self._lock:
                found = self._search_cache.get(filters.search)
            if found is None:
                found = self.reader.search(filters.search)
                with self._lock:
                    if len(self._search_cache) >= 16:
                        self._search_cache.clear()
                    self._search_cache[filters.search] = found
        conds = [(n, w) for n in (*AXES, "category", "expected") if (w := getattr(filters, n)) is not None]
        mark = filters.mark()
        chosen = [
            i
            for i, (h, m) in enumerate(zip(self.heads, self.marks, strict=True))
            if all(h[n] == w for n, w in conds)
            and (mark is None or mark in m)
            and (found is None or h["id"] in found)
        ]
        with self._lock:
            if len(self._selections) >= 16:
                self._selections.clear()
            self._selections[filters] = chosen
        return chosen

    def page(
        self, filters: Filters, *, offset: int, limit: int, max_response_chars: int = 100_000
    ) -> dict[str, Any]:
        """``{"total", "offset", "limit", "items"}``: the whole items at ``offset`` of the filtered list."""
        chosen = self.select(filters)
        window = chosen[offset : offset + limit]
        rowids = [rid for i in window for rid in self.rowids[i]]
        items = list(self.reader.items(rowids=rowids, max_response_chars=max_response_chars))
        return {"total": len(chosen), "offset": offset, "limit": limit, "items": items}
