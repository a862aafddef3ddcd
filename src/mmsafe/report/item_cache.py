"""The sample browser's items and image views kept between reports, each under what it is made of, so a report
reads and draws again only what changed.

An item of ``report.html``'s sample browser (:meth:`mmsafe.report.items.ItemReader.items`) is a function of its
records' content, the report's labels of the specs, the response cut and mmsafe's code. Each record's content is
named by its key and its write sequence number (``record_facts.seq``: a record written again gets a new one; one
changed by another program has none, and its item is always made again), so an item is kept under a digest of
those (:meth:`ItemCache.ident`) within a namespace that holds the rest (the salt: the store's id and mmsafe's
code; the labels and the cut: :meth:`ItemCache.scope`). An image's views (thumbnail and larger view,
:func:`mmsafe.report.thumbs.views`) are a function of its bytes, named by their sha256, and of the code and Pillow
that drew them. Keeping them per item and per image rather than the whole browser is what makes a report after
one new record cost about what one after a new human label costs (``benchmarks/resume_report.py``).

Everything is kept in a SQLite file of the output folder (``.mmsafe-cache/items.sqlite``), never in the run's
store (which a report opens read-only): deleting it loses nothing but time. A cache that cannot be opened, read
or written is a warning, and everything is made from the store as if there were none. Entries the last report
did not use are dropped once they are more than those it did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path

__all__ = ["ItemCache", "Views"]

log = logging.getLogger("mmsafe.report")

#: an item's JSON text (as the page holds it: :func:`~mmsafe.report.page.compact_json`) and its head (what the
#: browser's facets and images read of it, so kept items are never parsed); an image's views
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS items_v1 (ident TEXT PRIMARY KEY, item TEXT NOT NULL, head TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS views_v1 (ident TEXT PRIMARY KEY, thumb TEXT, full TEXT, error TEXT);"
)

#: an image's views as :func:`mmsafe.report.thumbs.image_views` makes them: (thumbnail, larger view, error)
Views = tuple[str | None, str | None, str | None]


def _prefix(namespace: str) -> bytes:
    return hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:16].encode("ascii") + b"\0"


class ItemCache:
    """Items and image views in the SQLite file at ``path`` (made when missing), under ``salt``."""

    def __init__(self, path: Path, salt: str) -> None:
        self.path = path
        self._salt = salt
        self._items = _prefix(salt)
        try:
            from PIL import __version__ as pillow
        except ImportError:
            pillow = "none"
        self._views = _prefix(f"{salt}\0views\0{pillow}")
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM items_v1 LIMIT 1").fetchone()
            self._db = db
        except sqlite3.Error as exc:
            self._warn("open", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        log.warning(
            "cannot %s the kept items in %s (%s); items are made from the store", what, self.path, exc
        )
        if self._db is not None:
            self._db.close()
            self._db = None

    def scope(self, namespace: str) -> None:
        """Name the items from here on within ``namespace`` too (what else they are a function of)."""
        self._items = _prefix(f"{self._salt}\0{namespace}")

    def ident(self, keys: Sequence[tuple[str, int]]) -> str:
        """The name of the item made of the records with these (key, write sequence number) pairs, in order."""
        digest = hashlib.blake2b(self._items, digest_size=16)
        for key, seq in keys:
            digest.update(f"{key}\0{seq}\0".encode())
        return digest.hexdigest()

    def _view_ident(self, sha: str) -> str:
        return hashlib.blake2b(self._views + sha.encode("ascii", "replace"), digest_size=16).hexdigest()

    def _select(self, sql: str, idents: Collection[str]) -> list[tuple[str, ...]]:
        if self._db is None or not idents:
            return []
        try:
            return self._db.execute(sql, (json.dumps(list(idents)),)).fetchall()
        except sqlite3.Error as exc:
            self._warn("read", exc)
            return []

    def get(self, idents: Collection[str]) -> dict[str, tuple[str, str]]:
        """The kept JSON text and head of each of ``idents`` that is kept."""
        rows = self._select(
            "SELECT ident, item, head FROM items_v1 WHERE ident IN (SELECT value FROM json_each(?))", idents
        )
        return {ident: (item, head) for ident, item, head in rows}

    def put(self, items: Sequence[tuple[str, str, str]], *, used: Collection[str]) -> None:
        """Keep ``items`` (ident, JSON text, head); then, when more items are kept than ``used`` (the idents this
        report shows) holds, drop every other one."""
        self._put("items_v1 (ident, item, head) VALUES (?, ?, ?)", items, used)

    def get_views(self, shas: Collection[str]) -> dict[str, Views]:
        """The kept views of each image of ``shas`` (sha256) that has them."""
        by_ident = {self._view_ident(sha): sha for sha in shas}
        rows = self._select(
            "SELECT ident, thumb, full, error FROM views_v1 WHERE ident IN (SELECT value FROM json_each(?))",
            by_ident,
        )
        return {by_ident[ident]: (thumb, full, error) for ident, thumb, full, error in rows}

    def put_views(self, views: dict[str, Views], *, used: Collection[str]) -> None:
        """Keep ``views`` (by sha256); drop those of images not in ``used`` once they are the more."""
        rows = [(self._view_ident(sha), *v) for sha, v in views.items()]
        self._put(
            "views_v1 (ident, thumb, full, error) VALUES (?, ?, ?, ?)",
            rows,
            [self._view_ident(s) for s in used],
        )

    def _put(self, into: str, rows: Sequence[tuple[str | None, ...]], used: Collection[str]) -> None:
        if self._db is None:
            return
        table = into.split(" ", 1)[0]
        try:
            with self._db:
                self._db.executemany(f"INSERT OR REPLACE INTO {into}", rows)
                kept = int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                if kept > 2 * len(used):
                    self._db.execute(
                        f"DELETE FROM {table} WHERE ident NOT IN (SELECT value FROM json_each(?))",
                        (json.dumps(list(used)),),
                    )
        except sqlite3.Error as exc:
            self._warn("write", exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
