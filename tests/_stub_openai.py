"""A stub OpenAI chat-completions server on 127.0.0.1 (stdlib asyncio), for fast offline tests.

It answers ``POST …/chat/completions`` with a behaviour chosen per request:

- a ``[stub:NAME]`` tag in the request's last message text wins; ``[stub:A,B,C]`` gives the n-th
  arrival of that same request the n-th behaviour (the last one repeats), so "fail, then answer" is
  ``[stub:error,normal]``;
- otherwise ``stub.behaviour``: a name, or a callable ``(body: dict, arrival: int) -> name``
  (settable between runs).

Behaviours:

========================  ===========================================================================
``normal``                200, ``content: "echo: <last text>"``, ``finish_reason: "stop"``, usage
``delay``                 ``normal`` after ``delay_s`` seconds
``error``                 200, a choice with ``finish_reason: "error"`` and content ``"Error: …"``
``error_key``             200, a top-level ``{"error": {"message": …}}`` (no choices)
``null``                  200, ``content: null`` (no refusal, no tool calls)
``refusal``               200, ``content: null, refusal: "I can't help with that."`` (a real answer)
``trickle``               200 with a ``Content-Length`` for a ``normal`` body padded to
                          ``trickle_bytes``, sent one byte every ``trickle_s`` seconds
``huge``                  200, a ``normal`` answer of ``huge_bytes``, no ``Content-Length``
                          (delimited by closing the connection), sent in 64 KiB chunks
``huge_declared``         like ``huge`` but with its ``Content-Length`` header
``gzip_bomb``             200, ``Content-Encoding: gzip``: a small body that inflates to ``huge_bytes``
``500``                   500 with an OpenAI-style error body
``drop``                  the connection is closed without a response
========================  ===========================================================================

``stub.requests`` counts requests read, ``stub.served`` counts behaviours served. The server runs in
a daemon thread with its own event loop; every read has a timeout; only loopback (``_http.py``).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from _http import LoopbackServer, head, read_request

BEHAVIOURS = frozenset(
    {
        "normal",
        "delay",
        "error",
        "error_key",
        "null",
        "refusal",
        "trickle",
        "huge",
        "huge_declared",
        "gzip_bomb",
        "500",
        "drop",
    }
)
_TAG = re.compile(r"\[stub:([a-z0-9_,]+)\]")
_CHUNK = 64 * 1024

Chooser = Callable[[dict[str, Any], int], str]


class StubOpenAI(LoopbackServer):
    """``with StubOpenAI() as stub: OpenAICompatModel(base_url=stub.base_url) ...``."""

    thread_name = "stub-openai"

    def __init__(
        self,
        behaviour: str | Chooser = "normal",
        *,
        delay_s: float = 1.0,
        trickle_s: float = 0.05,
        trickle_bytes: int = 4096,
        huge_bytes: int = 20 * 1024 * 1024,
        io_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(io_timeout_s=io_timeout_s)
        self.behaviour = behaviour
        self.delay_s = delay_s
        self.trickle_s = trickle_s
        self.trickle_bytes = trickle_bytes
        self.huge_bytes = huge_bytes
        self.requests = 0
        #: GET …/models asked (the backend's health check), answered with one model, "stub"
        self.model_lists = 0
        self.served: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()

    # -- choosing ------------------------------------------------------------------------------------
    def _choose(self, doc: dict[str, Any]) -> str:
        messages = doc.get("messages") or []
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        self._seen[digest] += 1
        n = self._seen[digest]
        m = _TAG.search(_last_text(messages))
        if m:
            names = m.group(1).split(",")
            name = names[min(n, len(names)) - 1]
        elif callable(self.behaviour):
            name = self.behaviour(doc, n)
        else:
            name = self.behaviour
        if name not in BEHAVIOURS:
            raise ValueError(f"unknown stub behaviour {name!r}; allowed: {', '.join(sorted(BEHAVIOURS))}")
        self.served[name] += 1
        return name

    # -- per connection ------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(100_000):  # bounded keep-alive loop
                request = await read_request(reader, self.io_timeout_s)
                if request is None:
                    return
                if request.lines[0].startswith("GET ") and request.lines[0].split()[1].endswith("/models"):
                    self.model_lists += 1  # the backend's health check at load: not a completion request
                    _send(writer, 200, _json({"object": "list", "data": [{"id": "stub", "object": "model"}]}))
                    await writer.drain()
                    continue
                self.requests += 1
                try:
                    doc = json.loads(request.body)
                except ValueError:
                    writer.write(head(400, {"Content-Length": "0"}))
                    await writer.drain()
                    continue
                keep = await self._answer(self._choose(doc), doc, writer)
                if not keep:
                    return
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def _answer(self, name: str, doc: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        """Write the response for ``name``; False when the connection must close afterwards."""
        text = "echo: " + _last_text(doc.get("messages") or [])
        if name == "drop":
            return False
        if name == "delay":
            await asyncio.sleep(self.delay_s)
        if name in ("normal", "delay"):
            _send(writer, 200, _completion({"role": "assistant", "content": text}, "stop"))
        elif name == "error":
            msg = {"role": "assistant", "content": "Error: the model backend crashed"}
            _send(writer, 200, _completion(msg, "error"))
        elif name == "error_key":
            _send(writer, 200, _json({"error": {"message": "upstream overloaded", "type": "server_error"}}))
        elif name == "null":
            _send(writer, 200, _completion({"role": "assistant", "content": None}, "stop"))
        elif name == "refusal":
            msg = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
            _send(writer, 200, _completion(msg, "stop"))
        elif name == "500":
            _send(writer, 500, _json({"error": {"message": "stub fault 500", "type": "stub"}}))
        elif name == "trickle":
            body = _padded(text, self.trickle_bytes)
            writer.write(head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}))
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(self.trickle_s)
        elif name in ("huge", "huge_declared"):
            body = _padded(text, self.huge_bytes)
            headers = {"Content-Type": "application/json", "Connection": "close"}
            if name == "huge_declared":
                headers["Content-Length"] = str(len(body))
            writer.write(head(200, headers))
            for i in range(0, len(body), _CHUNK):
                writer.write(body[i : i + _CHUNK])
                await writer.drain()
            return False
        elif name == "gzip_bomb":
            body = gzip.compress(_padded(text, self.huge_bytes), compresslevel=9)
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            writer.write(head(200, {**headers, "Content-Length": str(len(body))}) + body)
        await writer.drain()
        return True


def _last_text(messages: list[Any]) -> str:
    if not messages or not isinstance(messages[-1], dict):
        return ""
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _completion(message: dict[str, Any], finish_reason: str) -> bytes:
    return _json(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": "stub",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )


def _padded(text: str, size: int) -> bytes:
    """A valid ``normal`` completion of exactly ``size`` bytes (at least its minimal size)."""
    base = _completion({"role": "assistant", "content": text}, "stop")
    pad = max(0, size - len(base))
    return _completion({"role": "assistant", "content": text + " " * pad}, "stop")


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _send(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    writer.write(head(status, {"Content-Type": "application/json", "Content-Length": str(len(body))}) + body)
