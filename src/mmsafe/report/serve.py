"""``mmsafe view RUN``: the sample browser of a run, served on ``127.0.0.1`` for a store too large for one file.

The server (stdlib :class:`~http.server.ThreadingHTTPServer`) answers GET and HEAD only:

* ``/`` — the page (:func:`_page`: the run's report, as ``report.html``, with the sample browser in server mode);
* ``/api/facets`` — the values each filter can take, the item count and when the index was built;
* ``/api/items?offset=&limit=&model=&benchmark=&attack=&defense=&category=&expected=&judge=&verdict=&search=``
  — one page of whole items (``limit`` ≤ 500) and the filtered total;
* ``/img/<sha256>`` — a stored image's bytes, only when their magic number says PNG, JPEG, GIF or WebP (else 404),
  with that Content-Type.

Security: the socket is bound to 127.0.0.1 only; a request whose ``Host`` is not ``127.0.0.1:PORT`` or
``localhost:PORT`` gets 403 (a page on another site cannot reach the server through DNS rebinding); every answer
carries a Content-Security-Policy header (the page's own, by hash, plus ``frame-ancestors 'none'``; ``default-src
'none'`` for the rest), ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``; the API's answers
``Cache-Control: no-store``. The store is opened read-only.

The index of items (:class:`~mmsafe.report.items.ItemIndex`, one light tuple per item from one SQL pass) is built
at start: a run still being written can be viewed, and shows the items stored when the server started (restart
it to see newer ones). A page's long parts (prompt, response, rationales) are read from the store when asked.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mmsafe.report.browser import browser_section
from mmsafe.report.items import Filters, ItemIndex, ItemReader
from mmsafe.report.thumbs import image_mime
from mmsafe.store.sqlite import Store

__all__ = ["MAX_LIMIT", "ViewServer"]

log = logging.getLogger("mmsafe.view")

MAX_LIMIT = 500
_IMG = re.compile(r"/img/([0-9a-f]{64})")
_META_CSP = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">')
_COMMON = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_BARE_CSP = "default-src 'none'; frame-ancestors 'none'"


def _page(store: Store) -> str:
    """The page ``/`` serves: the run's whole report (:func:`~mmsafe.report.html.render_html`, from the store as
    ``mmsafe report`` builds it) with the sample browser in server mode, which fetches its items from the API."""
    from mmsafe.report import build_summary
    from mmsafe.report.html import render_html

    summary = build_summary(store)
    section = browser_section(store, server=True)
    return render_html(summary, errors=store.error_groups(), sections=[section], server=True)


class _Handler(BaseHTTPRequestHandler):
    server_version = "mmsafe-view"
    sys_version = ""

    def __init__(self, *args: Any, app: ViewServer, **kwargs: Any) -> None:
        self.app = app
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**_COMMON, **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": _BARE_CSP}
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _text(self, status: int, text: str) -> None:
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": _BARE_CSP}
        self._send(status, text.encode("utf-8"), "text/plain; charset=utf-8", headers)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.headers.get("Host") not in self.app.hosts:
            self._text(403, "forbidden: this server answers only to 127.0.0.1 or localhost on its own port\n")
            return
        url = urlsplit(self.path)
        try:
            if url.path == "/":
                headers = {"Cache-Control": "no-store", "Content-Security-Policy": self.app.page_csp,
                           "X-Frame-Options": "DENY"}  # fmt: skip
                self._send(200, self.app.page_bytes, "text/html; charset=utf-8", headers)
            elif url.path == "/api/facets":
                self._json(200, self.app.facets())
            elif url.path == "/api/items":
                self._items(url.query)
            elif url.path == "/favicon.ico":  # browsers ask; nothing to give (a 404 would fill their console)
                self._send(204, b"", "image/x-icon", {"Content-Security-Policy": _BARE_CSP})
            elif m := _IMG.fullmatch(url.path):
                self._image(m.group(1))
            else:
                self._text(404, "not found\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # one bad request must not stop the server
            log.exception("request %r failed", url.path[:100])
            self._json(500, {"error": "internal error; see the server's log"})
        finally:
            self.app.reader.release()  # request threads come and go; their connections are reused

    def _items(self, query: str) -> None:
        q = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            offset = int(q.pop("offset", "0") or 0)
            limit = int(q.pop("limit", "50") or 50)
            if offset < 0 or not 1 <= limit <= MAX_LIMIT:
                raise ValueError(f"offset must be ≥ 0 and limit 1…{MAX_LIMIT}")
            filters = Filters.from_query(q)
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        self._json(200, self.app.index.page(filters, offset=offset, limit=limit))

    def _image(self, sha: str) -> None:
        row = self.app.reader.conn().execute("SELECT data FROM images WHERE sha256=?", (sha,)).fetchone()
        data = row[0] if row and isinstance(row[0], bytes) else b""
        mime = image_mime(data)
        if mime is None:
            self._text(404, "no such image, or not an image a browser is given\n")
            return
        headers = {"Cache-Control": "private, max-age=86400", "Content-Security-Policy": _BARE_CSP}
        self._send(200, data, mime, headers)


class ViewServer:
    """The server of ``mmsafe view`` for the run folder ``run_dir``, bound to ``127.0.0.1:port`` (``port=0``:
    a free one, see :attr:`port`). Build the index and page, then :meth:`serve_forever`; :meth:`close` after."""

    def __init__(self, run_dir: str | Path, *, port: int = 8765) -> None:
        self.store = Store.open_existing(run_dir)  # read-only; StoreError names a missing or foreign folder
        try:
            self.reader = ItemReader(self.store.path)
            started = time.perf_counter()
            self.index = ItemIndex(self.reader)
            self.index_seconds = time.perf_counter() - started
            self.built = time.time()
            text = _page(self.store)
            m = _META_CSP.search(text)
            policy = html.unescape(m.group(1)) if m else "default-src 'none'"
            self.page_csp = f"{policy}; frame-ancestors 'none'"
            self.page_bytes = text.encode("utf-8")
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), partial(_Handler, app=self))
        except BaseException:
            self.store.close()
            raise
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self.url = f"http://127.0.0.1:{self.port}/"

    def facets(self) -> dict[str, Any]:
        return {
            "facets": self.index.facets,
            "n_items": len(self.index),
            "n_unreadable": self.index.unreadable,
            "built": self.built,
        }

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (from another thread)."""
        self.httpd.shutdown()

    def close(self) -> None:
        self.httpd.server_close()
        self.reader.close()
        self.store.close()
