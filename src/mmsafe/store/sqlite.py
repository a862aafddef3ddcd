"""The run store: one SQLite file (WAL) with records, a response cache and content-addressed images.

Crash safety: every batch of records is written in one transaction, in WAL mode, so a process killed
at any instant leaves the file with whole batches only; a rerun skips what is there. Records are
keyed by the grid cell (model, benchmark, sample, attack, defense, judge), responses by a hash of
(model spec, request), images by the SHA-256 of their bytes. Nothing read back is ever executed or
unpickled: everything is JSON text or raw image bytes.

Beside each record the store keeps its facts (:mod:`mmsafe.store.facts`: what the report's numbers read, written in
the record's transaction), and SQL triggers count every change to what a report reads (:meth:`Store.content_stamp`),
so a report is made from what changed and not at all when nothing did (:func:`mmsafe.report.write_outputs`).

Failures of the file itself (not an SQLite file, damaged, truncated, another program's database, a
newer schema, a full disk) raise :class:`~mmsafe.errors.StoreError` with what to do. A record row
that cannot be read back (damaged, or written by another mmsafe version) is skipped and counted in
:attr:`Store.unreadable`, so that the rest can still be reported and exported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import ValidationError

from mmsafe.errors import StoreError
from mmsafe.types import ComponentSpec, Generation, Image, Record

if TYPE_CHECKING:
    from mmsafe.store.facts import RecordFacts

log = logging.getLogger("mmsafe.store")

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY, data BLOB NOT NULL, source TEXT);
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, model_key TEXT NOT NULL, generation TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    model TEXT NOT NULL, benchmark TEXT NOT NULL, attack TEXT NOT NULL,
    defense TEXT NOT NULL, judge TEXT NOT NULL,
    sample_id TEXT NOT NULL, category TEXT NOT NULL,
    error TEXT,
    record TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS records_cell ON records (model, benchmark, attack, defense, judge);
-- what a resume asks of each cell (Store.count_done, Store.done_pairs), answered from the index alone
CREATE INDEX IF NOT EXISTS records_done ON records (model, benchmark, attack, defense, sample_id, judge)
    WHERE error IS NULL;
-- the report's order (cell, then sample): Store.iter_facts walks it instead of sorting every row
CREATE INDEX IF NOT EXISTS records_order ON records (model, benchmark, attack, defense, judge, sample_id, key);
CREATE TABLE IF NOT EXISTS judge_evals (
    judge TEXT NOT NULL, ident TEXT NOT NULL, entry TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (judge, ident));
CREATE TABLE IF NOT EXISTS human_labels (
    item TEXT NOT NULL, annotator TEXT NOT NULL, scheme TEXT NOT NULL, label TEXT NOT NULL, note TEXT,
    created REAL NOT NULL, PRIMARY KEY (item, annotator, scheme));
-- seq: the records_version the row was written under (Store.put_records), so (key, seq) names one content of a
-- record for as long as the store lives: a record written again gets a larger seq, one changed by another program
-- loses its facts (the triggers below); the report keeps its sample browser's items under it (report/item_cache.py)
CREATE TABLE IF NOT EXISTS record_facts (key TEXT PRIMARY KEY, facts TEXT NOT NULL, seq INTEGER);
CREATE TRIGGER IF NOT EXISTS record_facts_stale AFTER UPDATE ON records
    BEGIN DELETE FROM record_facts WHERE key = OLD.key OR key = NEW.key; END;
CREATE TRIGGER IF NOT EXISTS record_facts_gone AFTER DELETE ON records
    BEGIN DELETE FROM record_facts WHERE key = OLD.key; END;
"""

#: The tables a report reads, and the counters in ``meta`` a change to each bumps (through these triggers, so a
#: change made by any program writing the file counts): ``content_version`` for all (:meth:`Store.content_stamp`),
#: ``records_version`` for what the sample browser reads (:meth:`Store.records_stamp`).
_WATCHED = {
    "records": ("content_version", "records_version"),
    "images": ("content_version", "records_version"),
    "human_labels": ("content_version",),
    "judge_evals": ("content_version",),
}


def _bump(counters: tuple[str, ...]) -> str:
    names = ", ".join(f"'{c}'" for c in counters)
    return f"UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key IN ({names})"


_BUMP = _bump(("content_version",))
#: the write sequence number of a facts row (``record_facts.seq``): the records counter as it stands
_SEQ = "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'records_version'"
_SCHEMA += "".join(
    f"CREATE TRIGGER IF NOT EXISTS {table}_{op.lower()}_counts AFTER {op} ON {table} BEGIN {_bump(counters)}; END;\n"
    for table, counters in _WATCHED.items()
    for op in ("INSERT", "UPDATE", "DELETE")
)

STORE_FILE = "mmsafe.sqlite"

#: What :meth:`Store.iter_records` leaves out of a slim record: the parts only a reader of single
#: records needs (they can be long), never anything a metric reads.
SLIM_DROPS = (
    "$.response",
    "$.prompt.messages",
    "$.generation.metadata.reasoning",
    "$.generation.metadata.image_text",
    "$.judgement.rationale",
)
_SPEC_FIELDS = ("model", "benchmark_spec", "attack", "defense", "judge")
#: the records table's column of each spec field
_COLUMNS = ("model", "benchmark", "attack", "defense", "judge")


def generation_id(model: str, benchmark: str, attack: str, defense: str, sample_id: str) -> str:
    """The id of one generation: the spec keys of model, benchmark, attack and defense, and the sample id.

    The records of one generation (one per judge) share it; the sample browser shows one item per generation and
    human labels are stored against it, so a label names the answer it was given for, whatever judged it."""
    text = "\x1f".join((model, benchmark, attack, defense, sample_id))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _intern(record: Record, texts: tuple[Any, ...], interned: dict[str, ComponentSpec]) -> Record:
    """``record`` with each of its specs replaced by the first equal one seen (same JSON text)."""
    update = {}
    for field_name, text in zip(_SPEC_FIELDS, texts, strict=True):
        if not isinstance(text, str):
            continue
        first = interned.setdefault(text, getattr(record, field_name))
        if first is not getattr(record, field_name):
            update[field_name] = first
    return record.model_copy(update=update) if update else record


_F = TypeVar("_F", bound=Callable[..., Any])


def _store_error(exc: sqlite3.DatabaseError, path: Path) -> StoreError:
    """The SQLite error ``exc`` on ``path`` as a message that says what to do."""
    why = str(exc)
    low = why.lower()
    if "is full" in low:
        return StoreError(f"disk full writing {path}; free space and rerun the same command to resume")
    if "not a database" in low or "malformed" in low or "encrypted" in low:
        return StoreError(
            f"{path} is not a readable mmsafe store ({why}); move it away or use another folder"
        )
    if "disk i/o" in low:
        return StoreError(
            f"I/O error on {path} ({why}); check the disk, then rerun the same command to resume"
        )
    if "locked" in low or "busy" in low:
        return StoreError(f"{path} is locked by another process ({why}); wait for it, then rerun")
    return StoreError(f"cannot use the store {path}: {why}")


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    try:
        yield
    except (sqlite3.ProgrammingError, sqlite3.IntegrityError, sqlite3.InterfaceError):
        raise  # misuse by mmsafe itself: a bug to see, not a file to blame
    except sqlite3.DatabaseError as exc:
        raise _store_error(exc, path) from exc


def _sql(method: _F) -> _F:
    """Run ``method`` holding the store's lock, with SQLite's errors about the file turned into
    :class:`StoreError`."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        with self._lock, _translated(self.path):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Store:
    """A SQLite store in ``DIR/mmsafe.sqlite``. Use as a context manager or call :meth:`close`.

    ``Store(DIR)`` creates the store when there is none (the runner); :meth:`open_existing` opens one
    that must exist, read-only by default (``report``, ``export``).

    A store may be used from several threads (the runner's event-loop thread reads and writes the
    response cache while the main thread writes records; a defense's worker thread asks the cache):
    one lock serialises every call, and a transaction holds it from ``BEGIN`` to ``COMMIT``.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        p = Path(path)
        if p.is_dir() or p.suffix == "":
            if not readonly:
                p.mkdir(parents=True, exist_ok=True)
            p = p / STORE_FILE
        self.path = p
        self.readonly = readonly
        #: record key → why it could not be read, for the rows the last :meth:`iter_records` skipped
        self.unreadable: dict[str, str] = {}
        self._lock = threading.RLock()
        self._has_facts = False
        with _translated(p):
            if (
                readonly
            ):  # mode=ro: never creates or changes the file (SQLite's WAL lets it read during a run)
                uri = p.resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, timeout=30.0, isolation_level=None, check_same_thread=False
                )
            else:
                self._db = sqlite3.connect(p, timeout=30.0, isolation_level=None, check_same_thread=False)
            try:
                self._open()
            except BaseException:
                self._db.close()
                raise

    @classmethod
    def open_existing(cls, path: str | Path, *, readonly: bool = True) -> Store:
        """The store of run folder ``path``, which must exist (a mistyped folder is an error, not a new store)."""
        p = Path(path)
        db = p / STORE_FILE if p.is_dir() or p.suffix == "" else p
        if not p.exists():
            raise StoreError(f"no run folder at {p}")
        if not db.is_file():
            raise StoreError(f"no mmsafe store at {db}: is {p} the --out folder of a run?")
        return cls(db, readonly=readonly)

    def _open(self) -> None:
        self._db.execute("PRAGMA busy_timeout=30000")
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        from mmsafe.store.facts import FACTS_VERSION

        if not tables and not self.readonly:  # a new store: the schema and its version in one transaction
            self._wal()
            self._db.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}"
                f"INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');"
                f"{self._stamp_sql()}"
                f"INSERT OR IGNORE INTO meta (key, value) VALUES ('facts_version', '{FACTS_VERSION}');COMMIT;"
            )
            self._has_facts = True
            return
        found = None
        if "meta" in tables:
            try:
                found = self.get_meta("schema_version")
            except StoreError:  # a "meta" table of some other program
                found = None
        if found is None:
            what = f"tables: {', '.join(sorted(tables)[:8])}" if tables else "empty"
            raise StoreError(
                f"{self.path} is not an mmsafe store ({what}); move it away or use another folder"
            )
        if found != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema {found} is not the version this mmsafe reads ({SCHEMA_VERSION}); "
                "use the mmsafe version that wrote it, or another folder"
            )
        if not self.readonly:  # only now that the file is known to be ours
            self._wal()
            # tables or indexes added since the store was made, and its content stamp (stores made before it)
            self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}{self._stamp_sql()}COMMIT;")
            self._has_facts = True
            if "seq" not in {r[1] for r in self._db.execute("PRAGMA table_info(record_facts)")}:
                # facts written before their seq: every row there is of its record's current content
                with self._tx():
                    self._db.execute("ALTER TABLE record_facts ADD COLUMN seq INTEGER")
                    self._db.execute(f"UPDATE record_facts SET seq = ({_SEQ})")
            stale = self.get_meta("facts_version") != str(FACTS_VERSION)  # made before facts, or other facts
            if stale or "record_facts" not in tables:
                self._backfill_facts(FACTS_VERSION)
        else:
            self._has_facts = "record_facts" in tables

    def _backfill_facts(self, version: int) -> None:
        """Write the facts of every readable record (of this mmsafe's ``version``: any older ones are dropped),
        one pass, one transaction; then ``meta.facts_version`` says they are there."""
        from mmsafe.store.facts import encode, record_facts

        rows = self._db.execute("SELECT key, record FROM records")
        facts = []
        for key, text in rows:
            try:
                facts.append((key, encode(record_facts(Record.model_validate_json(text)))))
            except Exception:  # unreadable: the report reads it whole and counts it
                continue
        with self._tx():
            self._db.execute("DELETE FROM record_facts")
            self._db.executemany(f"INSERT INTO record_facts (key, facts, seq) VALUES (?, ?, ({_SEQ}))", facts)
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('facts_version', ?)", (str(version),)
            )
        if facts:
            log.info("computed the report facts of %d records of %s (once)", len(facts), self.path)

    @staticmethod
    def _stamp_sql() -> str:
        return (
            f"INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', '{uuid.uuid4().hex}');"
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('content_version', '0');"
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('records_version', '0');"
        )

    def _wal(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta --------------------------------------------------------------------------------------
    @_sql
    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    @_sql
    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- content stamp -------------------------------------------------------------------------------
    @_sql
    def content_stamp(self) -> str | None:
        """``"<store id>:<content version>:<schema version>"``. The content version goes up with every row written
        to what a report reads (records, images, human labels, judge evaluations: SQL triggers, so a change made by
        another program counts too) and when the list of run names changes, never for the response cache; the
        schema version is SQLite's count of schema changes (a table or trigger dropped or added). Equal stamps
        mean equal report inputs, so outputs written from this store under a stamp are current while it is (see
        :func:`mmsafe.report.write_outputs`). None for a store made before stamps and not opened for writing
        since (its triggers and counters are added then)."""
        return self._stamp("content_version")

    @_sql
    def records_stamp(self) -> str | None:
        """As :meth:`content_stamp`, for the records and images alone (what the sample browser reads)."""
        return self._stamp("records_version")

    def _stamp(self, counter: str) -> str | None:
        rows = dict(self._db.execute("SELECT key, value FROM meta WHERE key IN ('store_id', ?)", (counter,)))
        if "store_id" not in rows or counter not in rows:
            return None
        schema = self._db.execute("PRAGMA schema_version").fetchone()[0]
        return f"{rows['store_id']}:{rows[counter]}:{schema}"

    def _changed(self) -> None:
        """Bump the content version where no trigger does (the list of runs, in ``meta``)."""
        self._db.execute(_BUMP)

    # -- images --------------------------------------------------------------------------------------
    @_sql
    def put_images(self, images: Iterable[Image]) -> None:
        rows = [(i.sha256, i.data, i.source) for i in images]
        if rows:
            with self._tx():
                self._db.executemany(
                    "INSERT OR IGNORE INTO images (sha256, data, source) VALUES (?, ?, ?)", rows
                )

    @_sql
    def get_image(self, sha256: str) -> Image | None:
        row = self._db.execute("SELECT data, source FROM images WHERE sha256=?", (sha256,)).fetchone()
        return Image(sha256=sha256, data=row[0], source=row[1]) if row else None

    @_sql
    def count_images(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    # -- response cache --------------------------------------------------------------------------------
    @_sql
    def get_responses(self, keys: Iterable[str]) -> dict[str, Generation]:
        keys = list(keys)
        out: dict[str, Generation] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT key, generation FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
            for k, g in self._db.execute(q, chunk):
                try:
                    out[k] = Generation.model_validate_json(g)
                except (ValueError, RecursionError):  # an unreadable cache entry is a miss: answered again
                    log.debug("cached response %r cannot be read; ignored", k[:80])
        return out

    @_sql
    def put_responses(self, items: Iterable[tuple[str, str, Generation]]) -> None:
        now = time.time()
        rows = [(k, mk, g.model_dump_json(), now) for k, mk, g in items]
        if rows:
            with self._tx():
                self._db.executemany(
                    "INSERT OR REPLACE INTO responses (key, model_key, generation, created) VALUES (?,?,?,?)",
                    rows,
                )

    @_sql
    def count_responses(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    # -- records -----------------------------------------------------------------------------------------
    @_sql
    def put_records(self, records: Iterable[Record], images: Iterable[Image] = ()) -> None:
        """Write records (and the images they name) in one transaction; a record with the same key is replaced.
        Each record's :func:`~mmsafe.store.facts.record_facts` are written beside it, in the same transaction."""
        from mmsafe.store.facts import encode, record_facts

        rows = []
        fact_rows = []
        for r in records:
            try:
                fact_rows.append((r.key, encode(record_facts(r))))
            except Exception as exc:  # a record the report will read whole (and report as it can)
                log.debug("no facts for record %r (%s); the report reads it whole", r.key[:80], exc)
            err = r.error or (r.judgement.error if r.judgement else None)
            rows.append(
                (
                    r.key,
                    r.run,
                    r.model.key,
                    r.benchmark_spec.key,
                    r.attack.key,
                    r.defense.key,
                    r.judge.key,
                    r.sample_id,
                    r.category,
                    err,
                    r.model_dump_json(),
                    r.created,
                )
            )
        img_rows = [(i.sha256, i.data, i.source) for i in images]
        with self._tx():
            if img_rows:
                self._db.executemany(
                    "INSERT OR IGNORE INTO images (sha256, data, source) VALUES (?, ?, ?)", img_rows
                )
            self._db.executemany(
                "INSERT OR REPLACE INTO records (key, run, model, benchmark, attack, defense, judge, "
                "sample_id, category, error, record, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            if self._has_facts:  # after the records: their seq is the counter their writes bumped
                self._db.executemany(
                    f"INSERT OR REPLACE INTO record_facts (key, facts, seq) VALUES (?, ?, ({_SEQ}))",
                    fact_rows,
                )

    @_sql
    def record_status(self) -> dict[str, bool]:
        """Map record key → True if it completed without error."""
        return {k: e is None for k, e in self._db.execute("SELECT key, error FROM records")}

    @_sql
    def done_keys(self, model: str, benchmark: str, attack: str, defense: str) -> set[str]:
        """Keys of the records of one cell (spec keys of model, benchmark, attack and defense; every
        judge) that completed without error: what a rerun skips."""
        q = (
            "SELECT key FROM records WHERE model=? AND benchmark=? AND attack=? AND defense=? "
            "AND error IS NULL"
        )
        return {k for (k,) in self._db.execute(q, (model, benchmark, attack, defense))}

    @_sql
    def done_pairs(self, model: str, benchmark: str, attack: str, defense: str) -> set[tuple[str, str]]:
        """(sample id, judge spec key) of the records of one cell that completed without error: the same
        records as :meth:`done_keys`, named by the columns a record's key is made of (no key to rebuild)."""
        q = (
            "SELECT sample_id, judge FROM records WHERE model=? AND benchmark=? AND attack=? AND defense=? "
            "AND error IS NULL"
        )
        return set(self._db.execute(q, (model, benchmark, attack, defense)))

    def iter_records(self, *, slim: bool = False, by_cell: bool = False) -> Iterator[Record]:
        """Every readable record, one at a time; a row that cannot be read is skipped and noted in
        :attr:`unreadable`.

        Records come in the order they were written (``rowid``), or with ``by_cell`` by grid cell (spec
        keys of model, benchmark, attack, defense, judge) and sample id: an order that does not depend
        on which request finished first. ``slim`` leaves out what only a reader of single records needs
        (:data:`SLIM_DROPS`: the response, the prompt's messages, long generation metadata, the
        judge's rationale) and shares one :class:`ComponentSpec` object among the records of a
        component, which is what the report's numbers read.
        """
        self.unreadable = {}
        order = "model, benchmark, attack, defense, judge, sample_id, key" if by_cell else "rowid"
        if slim:
            drops = ", ".join(f"'{p}'" for p in SLIM_DROPS)
            specs = ", ".join(f"IIF(ok, json_extract(record, '$.{f}'), NULL)" for f in _SPEC_FIELDS)
            query = (
                f"SELECT key, IIF(ok, json_remove(record, {drops}), record), {specs} FROM "
                f"(SELECT *, rowid AS rid, json_valid(record) AS ok FROM records) ORDER BY "
                + ("rid" if not by_cell else order)
            )
        else:
            query = f"SELECT key, record FROM records ORDER BY {order}"
        interned: dict[str, ComponentSpec] = {}
        with self._lock, _translated(self.path):
            rows = self._db.execute(query)
        while True:
            with self._lock, _translated(self.path):  # a damaged page shows up only when it is reached
                row = rows.fetchone()
            if row is None:
                return
            key, text = str(row[0]), row[1]
            try:
                record = Record.model_validate_json(text)
            except (ValueError, RecursionError) as exc:  # damaged, or written by another mmsafe version
                n = exc.error_count() if isinstance(exc, ValidationError) else 1
                self.unreadable[key] = f"{type(exc).__name__} ({n} error{'s' * (n != 1)})"
                log.debug("record %r cannot be read (%s); skipped", key[:80], self.unreadable[key])
                continue
            if slim:
                record = _intern(record, row[2:], interned)
            yield record

    @_sql
    def count_done(
        self, cells: Iterable[tuple[str, str, str, str]], sample_ids: dict[str, list[str]], judges: list[str]
    ) -> dict[tuple[str, str, str, str], int]:
        """For each cell (spec keys of model, benchmark, attack, defense): how many of its (sample, judge) pairs,
        samples from ``sample_ids[benchmark]`` and judges from ``judges``, have a record that completed without
        error: what :meth:`done_pairs` would hold of them, counted by SQLite (a record's key is a hash of its cell,
        sample and judge, so each pair has at most one record). The sample ids go to a temporary table."""
        out: dict[tuple[str, str, str, str], int] = {}
        marks = ",".join("?" * len(judges))
        self._db.execute(
            "CREATE TEMP TABLE IF NOT EXISTS plan_ids (bench TEXT, id TEXT, PRIMARY KEY (bench, id))"
        )
        try:
            for bench, ids in sample_ids.items():
                self._db.executemany(
                    "INSERT OR IGNORE INTO plan_ids (bench, id) VALUES (?, ?)", ((bench, i) for i in ids)
                )
            q = (
                "SELECT COUNT(*) FROM records r JOIN plan_ids p ON p.bench = r.benchmark AND p.id = r.sample_id "
                f"WHERE r.model=? AND r.benchmark=? AND r.attack=? AND r.defense=? AND r.error IS NULL "
                f"AND r.judge IN ({marks})"
            )
            for cell in cells:
                out[cell] = int(self._db.execute(q, (*cell, *judges)).fetchone()[0])
        finally:
            self._db.execute("DROP TABLE IF EXISTS temp.plan_ids")
        return out

    def iter_facts(
        self,
    ) -> Iterator[tuple[tuple[str, str, str, str, str], list[ComponentSpec], RecordFacts] | Record]:
        """Every readable record in cell order, as ``iter_records(slim=True, by_cell=True)`` gives them, each as
        its spec keys (model, benchmark, attack, defense, judge), those specs and its facts
        (:mod:`mmsafe.store.facts`) when the store has its facts, else as the slim :class:`Record` itself (read
        and validated whole). Unreadable rows are skipped and noted in :attr:`unreadable`."""
        from mmsafe.store.facts import decode

        if not self._has_facts:  # a store from before facts, opened read-only
            yield from self.iter_records(slim=True, by_cell=True)
            return
        self.unreadable = {}
        drops = ", ".join(f"'{p}'" for p in SLIM_DROPS)
        # CASE evaluates lazily: a record with facts is never parsed, only its row read from the index
        specs = ", ".join(
            f"CASE WHEN f.facts IS NULL AND json_valid(r.record) THEN json_extract(r.record, '$.{f}') END"
            for f in _SPEC_FIELDS
        )
        query = (
            "SELECT r.key, r.model, r.benchmark, r.attack, r.defense, r.judge, r.sample_id, r.category, f.facts, "
            "CASE WHEN f.facts IS NOT NULL THEN NULL "
            f"WHEN json_valid(r.record) THEN json_remove(r.record, {drops}) ELSE r.record END, {specs} "
            "FROM records r LEFT JOIN record_facts f ON f.key = r.key "
            "ORDER BY r.model, r.benchmark, r.attack, r.defense, r.judge, r.sample_id, r.key"
        )
        strings: dict[str, str] = {}
        memo: dict[str, Any] = {}
        interned: dict[str, ComponentSpec] = {}
        known: dict[tuple[str, str], ComponentSpec | None] = {}
        cell_specs: dict[tuple[str, ...], list[ComponentSpec | None]] = {}
        with self._lock, _translated(self.path):
            rows = self._db.execute(query)
        while True:
            with self._lock, _translated(self.path):  # a damaged page shows up only when it is reached
                batch = rows.fetchmany(32)  # few rows held at once: memory does not grow with the store
            if not batch:
                return
            for row in batch:
                key = str(row[0])
                keys = (row[1], row[2], row[3], row[4], row[5])
                facts = None if row[8] is None else decode(row[8], row[6], row[7], strings, memo)
                if facts is not None:
                    found = cell_specs.get(keys)
                    if found is None:
                        found = cell_specs[keys] = [
                            self._spec(known, col, k) for col, k in zip(_COLUMNS, keys, strict=True)
                        ]
                    if all(found):
                        yield keys, cast("list[ComponentSpec]", found), facts
                        continue
                text = row[9]
                if text is None:  # facts that could not be used: the record, whole
                    with self._lock, _translated(self.path):
                        text = self._db.execute("SELECT record FROM records WHERE key=?", (key,)).fetchone()[
                            0
                        ]
                try:
                    record = Record.model_validate_json(text)
                except (ValueError, RecursionError) as exc:  # damaged, or written by another mmsafe version
                    n = exc.error_count() if isinstance(exc, ValidationError) else 1
                    self.unreadable[key] = f"{type(exc).__name__} ({n} error{'s' * (n != 1)})"
                    continue
                yield _intern(record, row[10:], interned)

    def _spec(
        self, known: dict[tuple[str, str], ComponentSpec | None], col: str, key: str
    ) -> ComponentSpec | None:
        """The spec with ``key`` in records column ``col``, from a readable record that has it (a key names one
        spec: a hash of it); None when no record of the key can be read."""
        if (col, key) in known:
            return known[(col, key)]
        path = dict(zip(_COLUMNS, _SPEC_FIELDS, strict=True))[col]
        q = f"SELECT json_extract(record, '$.{path}') FROM records WHERE {col}=? AND json_valid(record) LIMIT 8"
        spec = None
        with self._lock, _translated(self.path):
            texts = [t for (t,) in self._db.execute(q, (key,))]
        for text in texts:
            try:
                spec = ComponentSpec.model_validate_json(text) if isinstance(text, str) else None
            except ValueError:
                continue
            if spec is not None and spec.key == key:
                break
            spec = None
        known[(col, key)] = spec
        return spec

    @_sql
    def error_groups(self) -> list[tuple[str, str, int, str]]:
        """Failed records by (stage, benchmark name): ``(stage, benchmark, count, first example)``, the
        example being ``"sample_id: reason"`` of the first failed record in cell order. A failure
        with no stage is a judge's (the record's verdict holds the error)."""
        counts: dict[tuple[str, str], int] = {}
        example: dict[tuple[str, str], str] = {}
        q = (
            "SELECT key, json_extract(record, '$.error_stage'), json_extract(record, '$.benchmark'), "
            "sample_id, error FROM records WHERE error IS NOT NULL AND json_valid(record) "
            "ORDER BY model, benchmark, attack, defense, judge, sample_id, key"
        )
        for key, stage, bench, sample_id, error in self._db.execute(q):
            if key in self.unreadable:
                continue
            group = (str(stage or "judge"), str(bench))
            counts[group] = counts.get(group, 0) + 1
            example.setdefault(group, f"{sample_id}: {error}")
        return [(s, b, n, example[(s, b)]) for (s, b), n in counts.items()]

    @_sql
    def examples(self, k: int, *, max_chars: int = 1000) -> list[dict[str, Any]]:
        """Up to ``k`` answered must-refuse records per (benchmark, model, attack, defense, judge) name,
        the first in cell order: names, ``sample_id``, ``judgement`` (dict or None) and ``response``
        (its first ``max_chars`` characters), read from every record with SQL. The definition: a report picks the
        same examples from the records it has already read (:meth:`examples_of`, tested against this)."""
        seen: dict[tuple[str, ...], int] = {}
        out: list[dict[str, Any]] = []
        q = (
            self._example_cols(max_chars)
            + "ORDER BY model, benchmark, attack, defense, judge, sample_id, key"
        )
        for row in self._db.execute(q):
            self._example(row, k, seen, out)
        return out

    @_sql
    def examples_of(
        self,
        candidates: Iterable[tuple[Sequence[str], str, tuple[str, ...]]],
        k: int,
        *,
        max_chars: int = 1000,
    ) -> list[dict[str, Any]]:
        """:meth:`examples` when the caller already knows, in cell order, every readable must-refuse record: each
        candidate is its cell's spec keys (model, benchmark, attack, defense, judge), its sample id and its
        example cell's names (benchmark, model, attack, defense, judge). Only the records of cells not yet full
        are read, one by one; there is no scan of the store (a report has just read every record's facts)."""
        seen: dict[tuple[str, ...], int] = {}
        out: list[dict[str, Any]] = []
        q = (
            self._example_cols(max_chars)
            + "AND model=? AND benchmark=? AND attack=? AND defense=? AND judge=? AND sample_id=?"
        )
        for keys, sample_id, names in candidates:
            if seen.get(names, 0) >= k:
                continue
            row = self._db.execute(q, (*keys, sample_id)).fetchone()
            if row is not None:
                self._example(row, k, seen, out)
        return out

    @staticmethod
    def _example_cols(max_chars: int) -> str:
        return (
            "SELECT key, json_extract(record, '$.benchmark'), json_extract(record, '$.model.name'), "
            "json_extract(record, '$.attack.name'), json_extract(record, '$.defense.name'), "
            "json_extract(record, '$.judge.name'), sample_id, json_extract(record, '$.judgement'), "
            f"substr(json_extract(record, '$.response'), 1, {int(max_chars)}) FROM records "
            "WHERE json_valid(record) AND json_extract(record, '$.expected') = 'refuse' "
            "AND json_extract(record, '$.response') IS NOT NULL "
        )

    def _example(
        self, row: tuple[Any, ...], k: int, seen: dict[tuple[str, ...], int], out: list[dict[str, Any]]
    ) -> None:
        """Add the example of ``row`` (see :meth:`examples`) unless its record is unreadable or its cell is full."""
        key, bench, model, attack, defense, judge, sample_id, verdict, response = row
        cell = (str(bench), str(model), str(attack), str(defense), str(judge))
        if key in self.unreadable or seen.get(cell, 0) >= k:
            return
        try:
            judgement = json.loads(verdict) if verdict else None
        except ValueError:
            judgement = None
        seen[cell] = seen.get(cell, 0) + 1
        out.append(
            {
                "benchmark": cell[0],
                "model": cell[1],
                "attack": cell[2],
                "defense": cell[3],
                "judge": cell[4],
                "sample_id": sample_id,
                "judgement": judgement if isinstance(judgement, dict) else None,
                "response": str(response),
            }
        )

    @_sql
    def count_records(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def runs(self) -> list[dict[str, Any]]:
        text = self.get_meta("runs")
        return json.loads(text) if text else []

    def add_run(self, info: dict[str, Any]) -> None:
        """Record a run's ``info`` (its name, config, times), replacing the entry of the same name. The report
        reads only the names: the content version goes up only when their list changes."""
        with self._lock, _translated(self.path), self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='runs'").fetchone()
            old = json.loads(row[0]) if row else []
            runs = [r for r in old if r.get("name") != info.get("name")] + [info]
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('runs', ?)", (json.dumps(runs),)
            )
            if [r.get("name") for r in runs] != [r.get("name") for r in old]:
                self._changed()

    # -- judge evaluations --------------------------------------------------------------------------------
    @_sql
    def put_judge_evals(self, judge_key: str, entries: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Record measured agreements of the judge with spec key ``judge_key`` (``(ident, entry)``
        pairs, from :func:`mmsafe.judge_eval.store_judge_evals`); an entry with the same ident (the
        same labelled data and construct) replaces the old one."""
        now = time.time()
        rows = [(judge_key, ident, json.dumps(entry, ensure_ascii=False), now) for ident, entry in entries]
        if rows:
            with self._tx():
                self._db.executemany(
                    "INSERT OR REPLACE INTO judge_evals (judge, ident, entry, created) VALUES (?,?,?,?)", rows
                )

    @_sql
    def judge_evals(self, judge_key: str) -> list[dict[str, Any]]:
        """The judge evaluations recorded in this store for the judge with spec key ``judge_key``, in
        the order they were recorded (``[]`` if none, or if the store predates the table). An entry
        that is not a JSON object is skipped."""
        has = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='judge_evals'"
        ).fetchone()
        if not has:  # a store written before judge evaluations were recorded in it (opened read-only)
            return []
        out = []
        q = "SELECT entry FROM judge_evals WHERE judge=? ORDER BY rowid"
        for (text,) in self._db.execute(q, (judge_key,)):
            try:
                entry = json.loads(text)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                out.append(entry)
            else:
                log.warning(
                    "a judge evaluation of judge %s in %s cannot be read; skipped", judge_key, self.path
                )
        return out

    # -- human labels (mmsafe annotate) ----------------------------------------------------------------------
    @_sql
    def put_human_labels(self, rows: Iterable[tuple[str, str, str, str, str | None, float]]) -> int:
        """Store human labels ``(item, annotator, scheme, label, note, created)`` in one transaction; ``item`` is
        a :func:`generation_id`. A label for the same (item, annotator, scheme) replaces the old one, so
        importing one file twice leaves the table as it was. Returns the number of rows written."""
        rows = list(rows)
        if rows:
            with self._tx():
                self._db.executemany(
                    "INSERT OR REPLACE INTO human_labels (item, annotator, scheme, label, note, created) "
                    "VALUES (?,?,?,?,?,?)",
                    rows,
                )
        return len(rows)

    @_sql
    def human_labels(self, scheme: str | None = None) -> list[dict[str, Any]]:
        """The stored human labels (of one ``scheme``, or all), ordered by scheme, item and annotator: dicts with
        ``item, annotator, scheme, label, note, created``. ``[]`` for a store that predates the table (opened
        read-only, it was never added)."""
        has = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='human_labels'"
        ).fetchone()
        if not has:
            return []
        q = "SELECT item, annotator, scheme, label, note, created FROM human_labels"
        args: tuple[str, ...] = ()
        if scheme is not None:
            q += " WHERE scheme=?"
            args = (scheme,)
        q += " ORDER BY scheme, item, annotator"
        cols = ("item", "annotator", "scheme", "label", "note", "created")
        return [dict(zip(cols, row, strict=True)) for row in self._db.execute(q, args)]

    # -- merging stores (mmsafe merge) ------------------------------------------------------------------------
    @_sql
    def record_versions(self, keys: Iterable[str] | None = None) -> dict[str, tuple[bool, str]]:
        """Record key → (failed, the record's stored text), of every record or of those of ``keys``: what a merge
        compares a store's records with another's by."""
        if keys is None:
            rows = self._db.execute("SELECT key, error IS NOT NULL, record FROM records").fetchall()
        else:
            wanted = list(keys)
            rows = []
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                rows += self._db.execute(
                    f"SELECT key, error IS NOT NULL, record FROM records WHERE key IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
        return {key: (bool(failed), text) for key, failed, text in rows}

    @_sql
    def record_keys(self) -> list[str]:
        return [key for (key,) in self._db.execute("SELECT key FROM records")]

    def copy_from(self, src: Store, *, skip: Collection[str] = (), batch: int = 1000) -> int:
        """Write ``src``'s records as they are stored (with their facts, under this store's write sequence), and
        all its images, cached responses, human labels and judge evaluations (those this store lacks), into this
        store; records whose key is in ``skip`` are left as they are here. One transaction per ``batch`` records.
        Returns the number of records written."""
        from mmsafe.store.facts import FACTS_VERSION

        with src._lock, _translated(src.path):
            facts_ok = src.get_meta("facts_version") == str(FACTS_VERSION)
            tables = {r[0] for r in src._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            facts = "f.facts" if facts_ok and "record_facts" in tables else "NULL"
            join = " LEFT JOIN record_facts f ON f.key = r.key" if facts != "NULL" else ""
            cursor = src._db.execute(
                "SELECT r.key, r.run, r.model, r.benchmark, r.attack, r.defense, r.judge, r.sample_id, r.category, "
                f"r.error, r.record, r.created, {facts} FROM records r{join}"
            )
        written = 0
        while True:
            with src._lock, _translated(src.path):
                fetched = cursor.fetchmany(batch)
            if not fetched:
                break
            rows = [r for r in fetched if r[0] not in skip]
            if not rows:
                continue
            with self._lock, _translated(self.path), self._tx():
                self._db.executemany(
                    "INSERT OR REPLACE INTO records (key, run, model, benchmark, attack, defense, judge, "
                    "sample_id, category, error, record, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [r[:12] for r in rows],
                )
                self._db.executemany(
                    f"INSERT OR REPLACE INTO record_facts (key, facts, seq) VALUES (?, ?, ({_SEQ}))",
                    [(r[0], r[12]) for r in rows if r[12] is not None],
                )
            written += len(rows)
        self._copy_table(src, "images", ("sha256", "data", "source"))
        self._copy_table(src, "responses", ("key", "model_key", "generation", "created"))
        self._copy_table(src, "human_labels", ("item", "annotator", "scheme", "label", "note", "created"))
        self._copy_table(src, "judge_evals", ("judge", "ident", "entry", "created"))
        return written

    def _copy_table(self, src: Store, table: str, cols: tuple[str, ...], batch: int = 500) -> None:
        """The rows of ``src``'s ``table`` this store lacks (by primary key), copied as they are."""
        with src._lock, _translated(src.path):
            has = src._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)
            ).fetchone()
            if not has:
                return
            cursor = src._db.execute(f"SELECT {', '.join(cols)} FROM {table}")
        insert = f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        while True:
            with src._lock, _translated(src.path):
                rows = cursor.fetchmany(batch)
            if not rows:
                return
            with self._lock, _translated(self.path), self._tx():
                self._db.executemany(insert, rows)

    # -- internals -------------------------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not exc_type:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:  # SQLite may have rolled back already (e.g. on a full disk)
            self._db.execute("ROLLBACK")
