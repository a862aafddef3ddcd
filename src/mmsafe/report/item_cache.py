"""The sample browser's items kept between reports, each under what it is made of, so a report reads again only
the items whose records changed.

An item of ``report.html``'s sample browser (:meth:`mmsafe.report.items.ItemReader.items`) is a function of its
records' content, the report's labels of the specs, the response cut and mmsafe's code. Each record's content is
named by its key and its write sequence number (``record_facts.seq``: a record written again gets a new one; one
changed by another program has none, and its item is always made again), so an item is kept under a digest of
those (:meth:`ItemCache.ident`) within a namespace that holds the rest (the store's id, the labels, the cut, the
code). Keeping them per item rather than the whole browser is what makes a report after one new record cost about
what one after a new human label costs (``benchmarks/resume_report.py``).

The items are kept as their JSON text in a SQLite file of the output folder (``.mmsafe-cache/items.sqlite``),
never in the run's store (which a report opens read-only): deleting it loses nothing but time. A cache that
cannot be opened, read or written is a warning, and the items are made from the store as if there were none.
Items the last report did not use are dropped once they are more than those it did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path

__all__ = ["ItemCache"]

log = logging.getLogger("mmsafe.report")

_SCHEMA = "CREATE TABLE IF NOT EXISTS items (ident TEXT PRIMARY KEY, item TEXT NOT NULL)"


class ItemCache:
    """Items by :meth:`ident`, in the SQLite file at ``path`` (made when missing), under ``namespace``."""

    def __init__(self, path: Path, namespace: str) -> None:
        self.path = path
        self._prefix = hashlib.sha256(namespace.encode("utf-8")).hexdigest()[:16].encode("ascii") + b"\0"
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute("SELECT COUNT(*) FROM items LIMIT 1").fetchone()
            self._db = db
        except sqlite3.Error as exc:
            self._warn("open", exc)

    def _warn(self, what: str, exc: Exception) -> None:
        log.warning("cannot %s the kept items in %s (%s); items are made from the store", what, self.path, exc)
        if self._db is not None:
            self._db.close()
            self._db = None

    def ident(self, keys: Sequence[tuple[str, int]]) -> str:
        """The name of the item made of the records with these (key, write sequence number) pairs, in order."""
        digest = hashlib.blake2b(self._prefix, digest_size=16)
        for key, seq in keys:
            digest.update(f"{key}\0{seq}\0".encode())
        return digest.hexdigest()

    def get(self, idents: Collection[str]) -> dict[str, str]:
        """The kept JSON text of each of ``idents`` that is kept."""
        if self._db is None or not idents:
            return {}
        try:
            rows = self._db.execute(
                "SELECT ident, item FROM items WHERE ident IN (SELECT value FROM json_each(?))",
                (json.dumps(list(idents)),),
            ).fetchall()
        except sqlite3.Error as exc:
            self._warn("read", exc)
            return {}
        return dict(rows)

    def put(self, items: Sequence[tuple[str, str]], *, used: Collection[str]) -> None:
        """Keep ``items`` (ident, JSON text); then, when more items are kept than ``used`` (the idents this report
        shows) holds, drop every other one."""
        if self._db is None:
            return
        try:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO items (ident, item) VALUES (?, ?)", items)
                kept = int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
                if kept > 2 * len(used):
                    self._db.execute(
                        "DELETE FROM items WHERE ident NOT IN (SELECT value FROM json_each(?))",
                        (json.dumps(list(used)),),
                    )
        except sqlite3.Error as exc:
            self._warn("write", exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
