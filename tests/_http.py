"""What the test HTTP servers share (``_stub_openai.py``, ``_fault_proxy.py``): a loopback server in a
daemon thread with its own event loop, reading HTTP/1.1 requests with a timeout on every read.

A subclass implements ``_handle(reader, writer)`` for each connection and reads each request on it
with :func:`read_request`; :func:`head` builds a response's status line and headers.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Self

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


@dataclass(frozen=True)
class Request:
    """One request: its head lines (request line first, then the headers) and its body."""

    lines: list[str]
    body: bytes


async def read_request(reader: asyncio.StreamReader, timeout_s: float) -> Request | None:
    """The next request on a keep-alive connection, each read within ``timeout_s``; None when the
    client closed an idle connection. The body is read by ``Content-Length`` (chunked requests raise
    ``ValueError``: httpx sends a length with a JSON body)."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    lines = raw.decode("latin-1").split("\r\n")[:-2]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            raise ValueError("chunked requests are not supported by the test servers")
    body = await asyncio.wait_for(reader.readexactly(length), timeout_s) if length else b""
    return Request(lines, body)


def head(status: int, headers: dict[str, str]) -> bytes:
    """A response's status line and headers, up to and including the blank line."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class LoopbackServer:
    """``with Server() as s: ... s.base_url ...``: serves ``_handle`` on 127.0.0.1 (a free port)."""

    thread_name = "test-http"

    def __init__(self, *, io_timeout_s: float) -> None:
        self.io_timeout_s = io_timeout_s
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name=self.thread_name, daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10.0) or not self.port:
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15.0)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, host="127.0.0.1", port=0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()  # no wait_closed(): asyncio.run cancels the handlers still open

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
