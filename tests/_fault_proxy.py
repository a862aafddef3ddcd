"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for testing retries against a real server.

It reads each request on a client connection (keep-alive honoured), then either injects a fault or
forwards the request to the upstream server (a fresh ``Connection: close`` connection each time) and
relays the answer with its body length fixed. Faults, drawn per request:

- ``"500"``: ``500 Internal Server Error`` with an OpenAI-style JSON error body;
- ``"429"``: ``429 Too Many Requests`` with ``Retry-After: <retry_after>``;
- ``"drop"``: the connection is closed after the request was read, without a response;
- ``"hang"``: no response for ``hang_s`` seconds, then the connection is closed (client timeouts).

Whether the n-th arrival of a request fails is decided by ``Random(f"{seed}:{sha256(messages)}:{n}")``
(``messages`` of the JSON body; the whole body if it has none), so each item meets the same faults in the same order whatever the concurrency or arrival order.
Only loopback; every read has a timeout; the server runs in a thread with its own event loop (``_http.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence

from _http import LoopbackServer, head, read_request


class FaultProxy(LoopbackServer):
    """``with FaultProxy(upstream_port, rate=0.2, seed=0) as proxy: ... proxy.base_url ...``."""

    thread_name = "fault-proxy"

    def __init__(
        self,
        upstream_port: int | None,
        *,
        rate: float = 0.2,
        seed: int = 0,
        modes: Sequence[str] = ("500", "429", "drop"),
        retry_after: str = "0",
        hang_s: float = 5.0,
        io_timeout_s: float = 60.0,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be in [0, 1]")
        unknown = set(modes) - {"500", "429", "drop", "hang"}
        if unknown or not modes:
            raise ValueError(f"unknown fault modes {sorted(unknown)}")
        super().__init__(io_timeout_s=io_timeout_s)
        self.upstream_port = upstream_port
        self.rate = rate
        self.seed = seed
        self.modes = tuple(modes)
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.requests = 0  # requests read from clients
        self.forwarded = 0  # requests answered by the upstream server
        self.faults: Counter[str] = Counter()
        self.faulted_bodies: Counter[str] = Counter()  # request identity sha256 → faults injected for it
        self._seen: Counter[str] = Counter()

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    # -- per connection ----------------------------------------------------------------------------
    def _decide(self, body: bytes) -> str | None:
        digest = hashlib.sha256(_identity(body)).hexdigest()
        self._seen[digest] += 1
        rng = random.Random(f"{self.seed}:{digest}:{self._seen[digest]}")
        if rng.random() >= self.rate:
            return None
        fault = rng.choice(self.modes)
        self.faults[fault] += 1
        self.faulted_bodies[digest] += 1
        return fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100_000):  # bounded keep-alive loop
                request = await read_request(reader, self.io_timeout_s)
                if request is None:
                    return
                lines, body = request.lines, request.body
                self.requests += 1
                fault = self._decide(body)
                if fault == "drop":
                    return
                if fault == "hang":
                    await asyncio.sleep(self.hang_s)
                    return
                if fault in ("500", "429"):
                    status = int(fault)
                    msg = {"error": {"message": f"injected fault {status}", "type": "fault_proxy"}}
                    extra = {"Retry-After": self.retry_after} if status == 429 else {}
                    writer.write(_response(status, json.dumps(msg).encode(), extra))
                    await writer.drain()
                    continue
                writer.write(await self._forward(lines, body))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def _forward(self, lines: list[str], body: bytes) -> bytes:
        if self.upstream_port is None:
            return _response(502, b'{"error": {"message": "no upstream"}}', {})
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.upstream_port), self.io_timeout_s
        )
        try:
            kept = [h for h in lines[1:] if h.partition(":")[0].strip().lower() not in ("connection", "host")]
            out = [lines[0], f"Host: 127.0.0.1:{self.upstream_port}", *kept, "Connection: close", "", ""]
            up_writer.write("\r\n".join(out).encode("latin-1") + body)
            await up_writer.drain()
            raw = await asyncio.wait_for(up_reader.read(), self.io_timeout_s)  # until EOF
        finally:
            up_writer.close()
        resp_head, _, resp_body = raw.partition(b"\r\n\r\n")
        resp_lines = resp_head.decode("latin-1").split("\r\n")
        status = int(resp_lines[0].split()[1])
        headers = {}
        for line in resp_lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() in ("connection", "content-length", "transfer-encoding"):
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    raise ValueError("chunked upstream responses are not supported by the fault proxy")
                continue
            headers[name.strip()] = value.strip()
        self.forwarded += 1
        return _response(status, resp_body, headers)


def _identity(body: bytes) -> bytes:
    """What names a request across runs: its ``messages`` (the model path differs per test session)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict) and "messages" in doc:
        return json.dumps(doc["messages"], sort_keys=True).encode()
    return body


def _response(status: int, body: bytes, headers: dict[str, str]) -> bytes:
    hdrs = dict(headers)
    if not any(k.lower() == "content-type" for k in hdrs):
        hdrs["Content-Type"] = "application/json"
    hdrs["Content-Length"] = str(len(body))
    return head(status, hdrs) + body
