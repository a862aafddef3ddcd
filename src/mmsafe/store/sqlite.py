"""The run store: one SQLite file (WAL) with records, a response cache and content-addressed images.

Crash safety: every batch of records is written in one transaction, in WAL mode, so a process killed
at any instant leaves the file with whole batches only; a rerun skips what is there. Records are
keyed by the grid cell (model, benchmark, sample, attack, defense, judge), responses by a hash of
(model spec, request), images by the SHA-256 of their bytes. Nothing read back is ever executed or
unpickled: everything is JSON text or raw image bytes.

Failures of the file itself (not an SQLite file, damaged, truncated, another program's database, a
newer schema, a full disk) raise :class:`~mmsafe.errors.StoreError` with what to do. A record row
that cannot be read back (damaged, or written by another mmsafe version) is skipped and counted in
:attr:`Store.unreadable`, so that the rest can still be reported and exported.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from mmsafe.errors import StoreError
from mmsafe.types import Generation, Image, Record

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
"""

STORE_FILE = "mmsafe.sqlite"

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
        return StoreError(f"I/O error on {path} ({why}); check the disk, then rerun the same command to resume")
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
        with _translated(p):
            if readonly:  # mode=ro: never creates or changes the file (SQLite's WAL lets it read during a run)
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
        if not tables and not self.readonly:  # a new store: the schema and its version in one transaction
            self._wal()
            self._db.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}"
                f"INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');COMMIT;"
            )
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
            self._db.executescript(_SCHEMA)  # tables or indexes added since the store was made

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
        """Write records (and the images they name) in one transaction; a record with the same key is replaced."""
        rows = []
        for r in records:
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

    def iter_records(self) -> Iterator[Record]:
        """Every readable record; a row that cannot be read is skipped and noted in :attr:`unreadable`."""
        self.unreadable = {}
        with self._lock, _translated(self.path):
            rows = self._db.execute("SELECT key, record FROM records ORDER BY created, key")
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
            yield record

    @_sql
    def count_records(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def runs(self) -> list[dict[str, Any]]:
        text = self.get_meta("runs")
        return json.loads(text) if text else []

    def add_run(self, info: dict[str, Any]) -> None:
        with self._lock:
            runs = [r for r in self.runs() if r.get("name") != info.get("name")] + [info]
            self.set_meta("runs", json.dumps(runs))

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
