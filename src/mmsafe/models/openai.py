"""Any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, Ollama, llama.cpp, hosted APIs) over HTTP.

:class:`OpenAICompatModel` is an async I/O backend: the runner drives :meth:`~OpenAICompatModel.agenerate`
with ``concurrency`` requests in flight; :meth:`~OpenAICompatModel.generate` does the same for a list
of prompts from synchronous code. Images travel inline as ``data:`` URLs, so the server needs no access
to mmsafe's files. The API key is read from an environment variable named by ``api_key_env`` when the
model is loaded; only that *name* appears in specs, records and logs.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import math
import os
import random
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe.aio import agenerate_all, run_sync
from mmsafe.errors import ConfigError, MmsafeError, describe, require
from mmsafe.limits import DEFAULT_REQUEST_DEADLINE_S, Deadline, current_deadline
from mmsafe.models.base import GenerationParams, ModelBackend
from mmsafe.types import Generation, Image, ImagePart, Message, Prompt, TextPart, Usage

__all__ = ["EndpointError", "OpenAICompatModel", "OpenAICompatParams", "image_data_url", "to_openai_messages"]

log = logging.getLogger(__name__)

#: HTTP statuses worth another attempt (as the official OpenAI client: timeout, conflict, rate limit, 5xx).
RETRY_STATUSES = frozenset({408, 409, 429}) | (frozenset(range(500, 600)) - {501, 505})

#: Body keys ``extra_body`` may not set: mmsafe owns the conversation and reads one whole response.
_RESERVED_BODY_KEYS = frozenset({"messages", "stream", "n"})

_MAX_ERROR_CHARS = 300

#: Bytes of a non-2xx body read for its message (the rest is dropped: only a snippet is shown).
_MAX_ERROR_BODY = 64 * 1024

_MIB = 1024 * 1024

#: C0/C1 control characters (ESC among them) in server text: replaced before it reaches an error message.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


class EndpointError(MmsafeError):
    """The endpoint refused a request, or kept failing until the retries ran out.

    ``status`` is the last HTTP status (None for a timeout or connection error), ``attempts`` how many
    requests were sent for the item.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class _ErrorAnswer(Exception):
    """A 2xx body that is an error, not an answer (``finish_reason: "error"``, an ``error`` key, null content)."""


class _BodyTooLarge(Exception):
    def __init__(self, status: int, seen: str) -> None:
        super().__init__(seen)
        self.status = status
        self.seen = seen


@dataclass(frozen=True)
class _Reply:
    """One HTTP response, its body read (capped)."""

    status: int
    body: bytes
    headers: Any
    reason_phrase: str


class OpenAICompatParams(BaseModel):
    # a rejected value is never echoed back (a base_url may hold a password)
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    base_url: str = Field(
        min_length=1,
        description="API root ending in /v1, e.g. http://127.0.0.1:8000/v1 (POSTs go to /chat/completions)",
    )
    model: str | None = Field(
        None, description="model name sent in each request; omit it for servers that serve one model"
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable holding the API key (never the key itself)",
    )
    generation: GenerationParams = Field(default_factory=GenerationParams)
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="extra request fields (e.g. {'top_k': 20} for vLLM); may override model/max_tokens",
    )
    image_format: Literal["original", "png"] = Field(
        "original",
        description="'original': send Image.data as is (PNG/JPEG/GIF/WebP, MIME type sniffed from the bytes; "
        "any other format is re-encoded as PNG); 'png': re-encode every image as PNG",
    )
    concurrency: int = Field(8, ge=1, le=1024, description="requests in flight at once")
    timeout_s: float = Field(
        120.0,
        gt=0.0,
        le=3600.0,
        description="wall-time limit of one attempt, from sending to the last body byte",
    )
    deadline_s: float | None = Field(
        None,
        gt=0.0,
        le=86400.0,
        description="wall-time limit of one item, every attempt and backoff together, for this model: "
        "overrides the run's limits.request_deadline_s (default: that, 600 s)",
    )
    max_response_bytes: int = Field(
        8 * _MIB,
        ge=1024,
        le=1024 * _MIB,
        description="largest answer body read (decoded); a larger one fails the item",
    )
    max_retries: int = Field(6, ge=0, le=100, description="extra attempts after a retryable failure")
    backoff_base_s: float = Field(0.5, ge=0.0, le=60.0, description="first backoff cap; doubles per attempt")
    backoff_max_s: float = Field(30.0, ge=0.0, le=600.0, description="largest backoff between attempts")
    retry_after_max_s: float = Field(60.0, ge=0.0, le=3600.0, description="cap on a server's Retry-After")
    health_check: bool = Field(
        True,
        description="at load, before any item: GET {base_url}/models (10 s); an unreachable server or a refused "
        "API key stops the run with the reason, a model the server does not list is a warning",
    )

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(
                "must start with http:// or https:// and name a host, e.g. http://127.0.0.1:8000/v1"
            )
        if "@" in urlsplit(v).netloc:
            raise ValueError(
                "must not hold credentials (user:password@host): they would be stored in every record; "
                "put the API key in an environment variable and name it in api_key_env"
            )
        if v.endswith("/chat/completions"):
            raise ValueError("give the API root (…/v1), not the /chat/completions endpoint")
        return v

    @field_validator("extra_body")
    @classmethod
    def _check_extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(_RESERVED_BODY_KEYS & set(v))
        if bad:
            raise ValueError(f"extra_body may not set {', '.join(bad)} (mmsafe builds them)")
        return v


class OpenAICompatModel(ModelBackend):
    """An OpenAI-compatible chat-completions endpoint (vLLM, SGLang, Ollama, llama.cpp, hosted APIs).

    Each prompt becomes one ``POST {base_url}/chat/completions`` (non-streaming). System turns go as
    role ``system``; user turns as content parts ``{"type": "text"}`` and
    ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}`` in the prompt's order.
    Decoding: ``max_tokens`` ← ``generation.max_new_tokens``, ``temperature``, ``top_p`` (when < 1),
    and the item's ``seed`` when sampling (``temperature > 0``). ``extra_body`` is merged last.

    Failures: 408/409/429/5xx, timeouts and connection errors (refused, reset, dropped mid-response)
    are retried up to ``max_retries`` times with exponential backoff and full jitter
    (``uniform(0, min(backoff_max_s, backoff_base_s·2^attempt))``), or after the server's
    ``Retry-After`` (seconds or HTTP date, capped at ``retry_after_max_s``). Any other 4xx fails the
    item at once with the server's message. Each :class:`~mmsafe.types.Generation` carries token
    usage, ``finish_reason``, ``latency_s`` (of the successful attempt) and ``metadata["retries"]``.

    An error dressed as an answer is an error, retried like a 5xx and never cached or stored as an
    answer: a 2xx body with a top-level ``error`` field, a choice with ``finish_reason: "error"``, or
    ``message.content: null`` without a ``refusal`` or tool calls. A body that is not a chat
    completion at all fails the item at once.

    Limits (runtime-only, like ``concurrency`` and the retry knobs: they do not change the cache key):

    - ``timeout_s`` (120): wall time of one attempt, from sending the request to the last byte of
      the answer; a server that trickles bytes is cut off, not only one that goes silent.
    - the request deadline: wall time of the whole item, every attempt and backoff included; no
      backoff is started that would end past it. In a run it is the run's
      ``limits.request_deadline_s`` (600), unless this model sets ``deadline_s``, which overrides it
      for this model (:func:`mmsafe.limits.request_deadline`); called directly, ``deadline_s`` or
      600 s. The error names the setting: ``no answer within 600 s (limits.request_deadline_s; …)``.
    - ``max_response_bytes`` (8 MiB): the answer body is read as it streams in (after
      content-decoding) and the item fails once it passes this size, or at once when
      ``Content-Length`` says so. Not retried: the same request would get the same answer.

    ``base_url`` may not carry credentials (``user:password@host``): it is part of every record, so
    such a URL is rejected; put the key in an environment variable named by ``api_key_env``.

    Pointing it at a server::

        # vLLM:       vllm serve llava-hf/llava-1.5-7b-hf --port 8000
        {base_url: "http://127.0.0.1:8000/v1", model: "llava-hf/llava-1.5-7b-hf"}
        # SGLang:     python -m sglang.launch_server --model-path Qwen/Qwen2.5-VL-7B-Instruct --port 30000
        {base_url: "http://127.0.0.1:30000/v1", model: "Qwen/Qwen2.5-VL-7B-Instruct"}
        # Ollama:     ollama pull llava:7b   (serves on 11434)
        {base_url: "http://127.0.0.1:11434/v1", model: "llava:7b"}
        # llama.cpp:  llama-server -m model.gguf --mmproj mmproj.gguf --port 8080
        {base_url: "http://127.0.0.1:8080/v1"}                       # one model: name omitted
        # LM Studio:  Developer tab → Start server (port 1234)
        {base_url: "http://127.0.0.1:1234/v1", model: "qwen2.5-vl-7b-instruct"}
        # transformers serve --host 127.0.0.1 --port 8000 /path/to/model   (model = that path, or omit)
        {base_url: "http://127.0.0.1:8000/v1", generation: {max_new_tokens: 256}}
        # A hosted API: export OPENAI_API_KEY=... first; only the variable's NAME goes in the config
        {base_url: "https://api.openai.com/v1", model: "gpt-4o-mini", api_key_env: OPENAI_API_KEY,
         concurrency: 16}

    The HTTP client is aiohttp, chosen by measurement (``benchmarks/http_path.py``: 256 requests to a
    local server answering in 50 ms, a bare sliding-window client on each library, 2 cores). At
    concurrency 8 / 32 / 64, aiohttp took 1.7-1.8 / 0.47-0.55 / 0.26-0.34 s, within 10% of raw
    asyncio sockets (1.66 / 0.43 / 0.24 s); httpx 0.29 took 1.8-2.1 / 1.3-2.9 / 2.9-5.4 s and burnt
    0.6 / 1.3 / 2.5 s of CPU (aiohttp: 0.2 / 0.07 / 0.06 s), nearly all in httpcore's connection
    pool, which rescans every connection for every queued request on each assignment (quadratic in
    the concurrency: encode/httpcore#1035, encode/httpx#3215). aiohttp's connector hands a freed
    connection to the next waiter directly. Each attempt is one ``POST`` of compact UTF-8 JSON
    (as httpx sent it); proxies come from the environment and TLS uses certifi's bundle, as with httpx.

    Needs ``aiohttp``: ``pip install 'mmsafe[api]'``.
    """

    name: ClassVar[str] = "openai"
    example_params: ClassVar[dict[str, Any]] = {"base_url": "http://127.0.0.1:9/v1"}
    version: ClassVar[str] = "1"
    Params = OpenAICompatParams
    capabilities: ClassVar[frozenset[str]] = frozenset({"images", "system_prompt", "async"})
    is_async: ClassVar[bool] = True
    runtime_params: ClassVar[frozenset[str]] = ModelBackend.runtime_params | {
        "health_check",
        "api_key_env",
        "timeout_s",
        "deadline_s",
        "max_response_bytes",
        "max_retries",
        "backoff_base_s",
        "backoff_max_s",
        "retry_after_max_s",
    }

    params: OpenAICompatParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._api_key: str | None = None
        self._key_loaded = False
        self._rng = random.Random()
        self._lock = threading.Lock()
        # one client per event loop (the runner's session loop, or one of generate's own): an aiohttp
        # session's connections belong to the loop that opened them
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._proxy: str | None = None  # from the environment, when the first client is made

    # -- lifecycle ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Check aiohttp is installed, read the API key from ``api_key_env`` and, with ``health_check``, ask the
        server for its models (:meth:`check_health`)."""
        require("aiohttp", extra="api", purpose="the OpenAI-compatible backend")
        self._load_key()
        if self.params.health_check:
            self.check_health()

    def check_health(self, timeout_s: float = 10.0) -> list[str] | None:
        """``GET {base_url}/models`` once, before any item is sent: the ids the server lists (None when it has no
        such route). A server that cannot be reached, or that refuses the API key (401/403), is a
        :class:`~mmsafe.errors.ConfigError` saying so: a run against it would fail every item. A ``model`` the
        server does not list is a warning (some servers load models on demand). Every served endpoint of
        docs/endpoints.md (vLLM, SGLang, Ollama, llama.cpp, LM Studio, ``transformers serve``, hosted APIs) answers
        this route."""
        url = f"{self.params.base_url}/models"
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        proxy = _env_proxy(url)
        handlers: list[Any] = [urllib.request.ProxyHandler({urlsplit(url).scheme: proxy} if proxy else {})]
        if url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=_ssl_context()))
        opener = urllib.request.build_opener(*handlers)
        where = self._redact(self.params.base_url)
        try:
            with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
                body = resp.read(self.params.max_response_bytes)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise ConfigError(
                    f"model 'openai': {where} refused the API key (HTTP {exc.code}); check "
                    f"{self.params.api_key_env or 'params.api_key_env (none is set)'}"
                ) from None
            log.info("health check: %s answered HTTP %d to GET /models; going on", where, exc.code)
            return None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"model 'openai': no answer from {where} ({self._redact(describe(reason))}); start the server "
                "first (docs/endpoints.md), or set params.health_check: false to start the run anyway"
            ) from None
        try:
            data = json.loads(body)
            ids = [str(m["id"]) for m in data["data"] if isinstance(m, dict) and "id" in m]
        except (ValueError, KeyError, TypeError):
            log.info("health check: %s answered GET /models with no model list; going on", where)
            return None
        model = self.params.model
        if model is not None and ids and model not in ids:
            shown = ", ".join(repr(i) for i in ids[:5]) + (" …" if len(ids) > 5 else "")
            log.warning("model 'openai': %s does not list %r among its models (%s)", where, model, shown)
        return ids

    def _load_key(self) -> None:
        if self._key_loaded:
            return
        env = self.params.api_key_env
        if env is not None:
            key = os.environ.get(env, "").strip()
            if not key:
                raise ConfigError(
                    f"model 'openai': params.api_key_env names the environment variable {env}, "
                    f"which is not set or empty; export {env}=<your key> before running"
                )
            self._api_key = key
        self._key_loaded = True

    def close(self) -> None:
        """Close the HTTP clients of event loops that are not running; forget the others."""
        with self._lock:
            items = list(self._clients.items())
            self._clients.clear()
        for loop, (_client, keeper) in items:
            if loop.is_closed() or keeper.done():
                continue
            if loop.is_running():  # another thread's loop: its keeper closes the client there
                loop.call_soon_threadsafe(keeper.cancel)
                continue
            keeper.cancel()
            try:
                loop.run_until_complete(asyncio.gather(keeper, return_exceptions=True))
            except Exception:  # closing is best effort
                log.debug("closing the HTTP client failed", exc_info=True)

    # -- request building ----------------------------------------------------------------------------
    def build_body(self, prompt: Prompt, *, seed: int) -> dict[str, Any]:
        """The JSON body of the chat-completions request for ``prompt`` (public for inspection)."""
        gen = self.generation
        body: dict[str, Any] = {}
        if self.params.model is not None:
            body["model"] = self.params.model
        body["messages"] = to_openai_messages(prompt, image_format=self.params.image_format)
        body["max_tokens"] = gen.max_new_tokens
        body["temperature"] = gen.temperature
        if gen.top_p < 1.0:
            body["top_p"] = gen.top_p
        if not gen.greedy:
            body["seed"] = int(seed)
        body["stream"] = False
        body.update(self.params.extra_body)
        return body

    def _redact(self, text: str) -> str:
        key = self._api_key
        if key:
            text = text.replace(key, "***")
        return text

    # -- async path ----------------------------------------------------------------------------------
    def _client(self) -> Any:
        """The aiohttp session of the running loop, created on first use in that loop.

        A keeper task owns each session and closes it when it is cancelled, which ``asyncio.run``
        does to every pending task before it closes the loop: connections are closed in their own
        loop and a session is never used from another one.

        The pool holds up to ``concurrency`` keep-alive connections (no per-host cap below that);
        waiting for a free connection has no time limit of its own (the request's ``timeout_s``
        and deadline bound it); the whole attempt is timed by :meth:`agenerate`, not by aiohttp.
        As httpx did, proxies are read from the environment (``HTTPS_PROXY``, ``NO_PROXY``, …)
        and TLS is verified against certifi's CA bundle when it is installed (``SSL_CERT_FILE``
        wins), else the system's. The proxy is looked up once per session, not per request
        (aiohttp's ``trust_env`` would look it up, and read ``~/.netrc``, in a worker thread for
        every request: a thread hop per request, and a deadlock when a defense holds every worker
        thread waiting for this loop).
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(loop)
            if entry is not None:
                return entry[0]
            aiohttp = require("aiohttp", extra="api", purpose="the OpenAI-compatible backend")
            headers = {"Accept": "application/json", "User-Agent": "mmsafe"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            n = self.concurrency
            tls = _ssl_context() if self.params.base_url.startswith("https:") else True
            connector = aiohttp.TCPConnector(limit=n, limit_per_host=n, ssl=tls)
            client = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
                trust_env=False,
                raise_for_status=False,
            )
            self._proxy = _env_proxy(self.params.base_url)
            keeper = loop.create_task(self._keep(loop, client), name="mmsafe-openai-client")
            self._clients[loop] = (client, keeper)
            return client

    async def _keep(self, loop: asyncio.AbstractEventLoop, client: Any) -> None:
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            with self._lock:
                entry = self._clients.get(loop)
                if entry is not None and entry[0] is client:
                    del self._clients[loop]
            await client.close()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.params.retry_after_max_s)
        cap = min(self.params.backoff_max_s, self.params.backoff_base_s * (2.0**attempt))
        return self._rng.uniform(0.0, cap)

    async def agenerate(self, prompt: Prompt, *, seed: int) -> Generation:
        """Answer one prompt: one request, retried on transient failures; raises :class:`EndpointError`.

        Each attempt is bounded by ``timeout_s`` of wall time (sending, waiting and reading the whole
        body), and all attempts and backoffs together by the request deadline (the class docstring).
        """
        aiohttp = require("aiohttp", extra="api", purpose="the OpenAI-compatible backend")
        self._load_key()
        url = self.params.base_url + "/chat/completions"
        data = _encode_json(self.build_body(prompt, seed=seed))
        client = self._client()
        # refused, reset or dropped connections, proxy failures, a malformed or cut-short response
        retryable_exc = (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        # in a run, the runner's deadline (it cancels an attempt still running at the deadline, with
        # its own error); called directly, this call's own, which also cuts the last attempt short
        run_limit = current_deadline()
        limit = run_limit or Deadline.starting_now(
            self.params.deadline_s or DEFAULT_REQUEST_DEADLINE_S, "deadline_s"
        )
        deadline = started + limit.left()
        reason, status = "no attempt", None
        attempts = 0
        out_of_time = False
        for attempt in range(self.params.max_retries + 1):
            left = deadline - loop.time()
            budget = self.params.timeout_s if run_limit is not None else min(self.params.timeout_s, left)
            if left <= 0:
                out_of_time = True
                break
            attempts = attempt + 1
            retry_after: float | None = None
            t0 = loop.time()
            try:
                async with asyncio.timeout(budget):
                    reply = await self._post(client, url, data)
            except retryable_exc as exc:
                status = None
                kind = "timeout" if isinstance(exc, TimeoutError) else "connection error"
                detail = str(exc).strip()
                reason = f"{kind} ({type(exc).__name__}{': ' + detail[:200] if detail else ''})"
            except TimeoutError:
                status = None
                reason = f"timeout (no complete answer within {budget:.3g} s)"
            except _BodyTooLarge as exc:
                raise EndpointError(
                    f"HTTP {exc.status} from {url}: the answer is larger than max_response_bytes "
                    f"({_size(self.params.max_response_bytes)}{exc.seen}); raise max_response_bytes "
                    "or lower generation.max_new_tokens",
                    status=exc.status,
                    attempts=attempts,
                ) from None
            else:
                status = reply.status
                if 200 <= status < 300:
                    try:
                        return self._parse(
                            reply,
                            url=url,
                            latency=loop.time() - t0,
                            retries=attempt,
                            total=loop.time() - started,
                        )
                    except _ErrorAnswer as exc:  # an error dressed as an answer: retried like a 5xx
                        reason = str(exc)
                else:
                    message = self._redact(_server_message(reply.body, reply.reason_phrase))
                    if status not in RETRY_STATUSES:
                        raise EndpointError(
                            f"HTTP {status} from {url}: {message}", status=status, attempts=attempts
                        )
                    reason = f"HTTP {status}: {message}"
                    retry_after = parse_retry_after(reply.headers.get("retry-after"))
            if attempt == self.params.max_retries:
                break
            delay = self._backoff(attempt, retry_after)
            if loop.time() + delay >= deadline:  # no time left for another attempt after the wait
                out_of_time = True
                break
            log.debug("%s: attempt %d failed (%s); retrying in %.2fs", url, attempts, reason, delay)
            await asyncio.sleep(delay)
        plural = "s" if attempts != 1 else ""
        if out_of_time:
            raise EndpointError(
                f"{url}: no answer within {limit.seconds:g} s ({limit.setting}; "
                f"{attempts} attempt{plural}); last: {reason}",
                status=status,
                attempts=attempts,
            )
        raise EndpointError(
            f"{url} failed after {attempts} attempt{plural}; last: {reason}",
            status=status,
            attempts=attempts,
        )

    async def _post(self, client: Any, url: str, data: bytes) -> _Reply:
        """One POST, its body read as it streams in: at most ``max_response_bytes`` of an answer."""
        async with client.post(
            url, data=data, headers=_JSON_HEADERS, allow_redirects=False, proxy=self._proxy
        ) as resp:
            status = resp.status
            log.debug("HTTP Request: POST %s %d", url, status)
            ok = 200 <= status < 300
            cap = self.params.max_response_bytes if ok else _MAX_ERROR_BODY
            declared = _to_int(resp.headers.get("content-length"))
            if ok and declared is not None and declared > cap:
                raise _BodyTooLarge(status, f"; Content-Length {_size(declared)}")
            chunks: list[bytes] = []
            n = 0
            async for chunk in resp.content.iter_any():  # decoded (gzip, deflate) as it arrives
                n += len(chunk)
                if n > cap:
                    if ok:
                        raise _BodyTooLarge(status, "")
                    chunks.append(chunk[: len(chunk) - (n - cap)])  # an error body: its head is enough
                    break
                chunks.append(chunk)
            return _Reply(status, b"".join(chunks), resp.headers, resp.reason or "")

    def _parse(self, reply: _Reply, *, url: str, latency: float, retries: int, total: float) -> Generation:
        """A chat completion → :class:`Generation`; an error-shaped one raises :class:`_ErrorAnswer`."""
        try:
            data = json.loads(reply.body)
            choice = {} if _present(data.get("error")) else data["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
            snippet = self._redact(_clip(reply.body[:_MAX_ERROR_CHARS].decode("utf-8", "replace")))
            raise EndpointError(
                f"HTTP {reply.status} from {url} is not a chat completion: {snippet!r}",
                status=reply.status,
                attempts=retries + 1,
            ) from None
        if _present(data.get("error")):
            err = data["error"]
            err = err.get("message", err) if isinstance(err, dict) else err
            raise _ErrorAnswer(f"HTTP {reply.status} with an error body: {self._redact(_clip(_str(err)))}")
        if not isinstance(message, dict):
            message = {}
        content = message.get("content")
        if choice.get("finish_reason") == "error":
            raise _ErrorAnswer(
                f"HTTP {reply.status} answer with finish_reason 'error': "
                f"{self._redact(_clip(_content_text(content))) or '(no text)'}"
            )
        tool_calls = message.get("tool_calls") or message.get("function_call")
        if content is None and not message.get("refusal") and not tool_calls:
            raise _ErrorAnswer(f"HTTP {reply.status} answer with no content (message.content is null)")
        text = _content_text(content)
        meta: dict[str, Any] = {"retries": retries, "attempts": retries + 1, "total_s": round(total, 6)}
        if not text and message.get("refusal"):  # OpenAI puts structured refusals here
            text = _str(message["refusal"])
            meta["refusal_field"] = True
        if tool_calls:
            meta["tool_calls"] = len(tool_calls) if isinstance(tool_calls, list) else 1
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            meta["reasoning"] = reasoning
        if data.get("model") is not None:
            meta["served_model"] = str(data["model"])
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        finish = choice.get("finish_reason")
        return Generation(
            text=text,
            finish_reason=finish if isinstance(finish, str) else None,
            usage=Usage(
                prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
                completion_tokens=_int_or_none(usage.get("completion_tokens")),
            ),
            latency_s=latency,
            metadata=meta,
        )

    # -- sync path -----------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        """Answer ``prompts`` with ``concurrency`` requests in flight (:func:`mmsafe.aio.run_sync`): on
        the runner's loop when a defense calls it from there (one client for the whole session), else
        on an event loop of its own."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        return run_sync(lambda: agenerate_all(self, prompts, seeds))


# -- helpers (pure) ------------------------------------------------------------------------------------
_JSON_HEADERS = {"Content-Type": "application/json"}


def _encode_json(body: dict[str, Any]) -> bytes:
    """The request body as compact UTF-8 JSON; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``,
    unless ``NO_PROXY`` covers its host), as httpx read it; None for a direct connection."""
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    # the environment's NO_PROXY only (urllib.request.proxy_bypass would also ask macOS/Windows
    # settings, which httpx did not); not in typeshed, hence getattr
    bypass = getattr(urllib.request, "proxy_bypass_environment")  # noqa: B009
    if not proxies or bypass(parts.hostname or "", proxies):
        return None
    return proxies.get(parts.scheme) or proxies.get("all") or None


def _ssl_context() -> ssl.SSLContext:
    """TLS verification as httpx did it: ``SSL_CERT_FILE`` if set, else certifi's bundle, else the system's."""
    cafile = os.environ.get("SSL_CERT_FILE") or None
    if cafile is None:
        try:
            import certifi
        except ImportError:
            pass
        else:
            cafile = certifi.where()
    return ssl.create_default_context(cafile=cafile)


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def sniff_mime(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG, GIF or WebP bytes, or None for anything else."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_data_url(image: Image, *, image_format: str = "original") -> str:
    """``data:<mime>;base64,…`` for ``image``: its own bytes when the format is one APIs accept, else PNG."""
    mime = sniff_mime(image.data) if image_format == "original" else None
    data = image.data
    if mime is None:
        buf = io.BytesIO()
        image.to_pil("RGBA" if _has_alpha(image) else "RGB").save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _has_alpha(image: Image) -> bool:
    img = image.to_pil(mode="")
    return img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)


def to_openai_messages(prompt: Prompt, *, image_format: str = "original") -> list[dict[str, Any]]:
    """mmsafe messages → OpenAI chat messages (text-only turns as strings, others as content parts)."""
    out: list[dict[str, Any]] = []
    for msg in prompt.messages:
        out.append({"role": msg.role, "content": _content(msg, image_format=image_format)})
    return out


def _content(msg: Message, *, image_format: str) -> str | list[dict[str, Any]]:
    if not msg.images:
        return msg.text
    if msg.role != "user":
        raise ValueError(f"a {msg.role} message carries images; only user messages may")
    parts: list[dict[str, Any]] = []
    for part in msg.content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            url = image_data_url(part.image, image_format=image_format)
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        return "".join(_str(p.get("text", "")) for p in content if isinstance(p, dict))
    return _str(content)


def _str(v: Any) -> str:
    """``str(v)`` of a parsed JSON value, which may nest too deep to print."""
    if isinstance(v, str):
        return v
    try:
        return str(v)
    except RecursionError:
        return "(a value nested too deep to show)"


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return int(v) if math.isfinite(v) else None


def _to_int(header: str | None) -> int | None:
    try:
        return int(header) if header is not None else None
    except ValueError:
        return None


def _present(v: Any) -> bool:
    """Whether a body's ``error`` field holds something (``null``, ``""`` and ``{}`` do not)."""
    return v is not None and v is not False and v != "" and v != {} and v != []


def _size(n: int) -> str:
    return f"{n / _MIB:.3g} MiB" if n >= _MIB else f"{n:,} bytes"


def _clip(text: str) -> str:
    """Server text fit for one line of an error message: controls replaced, whitespace folded, truncated."""
    text = " ".join(_CONTROL.sub("\ufffd", text).split())
    return text[:_MAX_ERROR_CHARS] + "…" if len(text) > _MAX_ERROR_CHARS else text


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # HTTP dates are GMT
            import datetime as _dt

            when = when.replace(tzinfo=_dt.timezone.utc)
        secs = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(secs) or math.isinf(secs):
        return None
    return max(0.0, secs)


def _server_message(body: bytes, reason_phrase: str = "") -> str:
    """The error text a server put in its response body (OpenAI, FastAPI, Ollama shapes), truncated."""
    text = ""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            text = _str(err)
    if not text:
        text = body.decode("utf-8", "replace") or reason_phrase or ""
    return _clip(text) or "(empty response)"
