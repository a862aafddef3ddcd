"""The HTTP path of a full ``mmsafe run`` against a bare sliding-window client, at concurrency 8, 32 and 64.

Issue 19, "The HTTP path at >= 0.9 of a sliding-window client". A stub OpenAI-compatible server runs
in a subprocess of this script (raw asyncio, HTTP/1.1 keep-alive): it answers
``POST /v1/chat/completions`` after ``--latency-s`` (50 ms), and with stragglers on, the requests
whose text hashes (SHA-256 of ``"straggler:" + text``) below 10% take 10x as long, so every client
meets the same slow requests. Side by side, interleaved, for each concurrency C and stragglers
off/on, repeated ``--repeat`` times (median shown):

- ``mmsafe``: ``mmsafe run`` (a subprocess) of the ``openai`` backend at ``concurrency: C`` over
  ``--n`` (256) text items with the ``refusal`` judge, each run into a fresh folder (the response
  cache cold). Timed from the server's first request in to the last record stored (the latest
  ``created`` of the store's records): the generation phase of the run, judges and store writes
  included, start-up and report writing left out.
- the limit: a bare sliding-window asyncio client in this process (C workers share one iterator of
  the same request bodies, so C requests are always in flight and a new one starts as soon as one
  returns), timed from the first request sent to the last answer read; once for each HTTP client
  library: ``aiohttp``, ``httpx``, and raw sockets (asyncio streams, one keep-alive connection per
  worker, Content-Length framing: the floor of what Python's asyncio can do here).

``ratio = limit / mmsafe`` with the limit the best HTTP *library* (aiohttp or httpx; raw sockets are
printed beside it): the target is >= 0.9. The straggler-free time is also compared with its ideal,
``ceil(n / C) x latency``, and the straggler runs with greedy list scheduling of the same requests
in the same order onto C slots (what any sliding window achieves).

    python benchmarks/http_path.py                         # C 8/32/64, stragglers off/on, 3 repeats
    python benchmarks/http_path.py --concurrency 64 --repeat 5 --stragglers on
    python benchmarks/http_path.py --quick                 # C 32 only, 1 repeat: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

SLOW_FACTOR = 10
SLOW_SHARE = 0.10


def is_slow(text: str) -> bool:
    """Whether ``text``'s request is a straggler: a seeded hash of the content, the same on every side."""
    h = hashlib.sha256(("straggler:" + text).encode("utf-8")).digest()
    return int.from_bytes(h[:4], "big") < SLOW_SHARE * 2**32


# -- the stub server (run as `python http_path.py --serve PORT_FILE`) -----------------------------------
class _Server:
    def __init__(self) -> None:
        self.latency = 0.05
        self.stragglers = False
        self.reset()

    def reset(self) -> None:
        self.first_in: float | None = None
        self.last_out = 0.0
        self.in_flight = self.max_in_flight = self.served = 0
        self.arrivals: list[float] = []

    def stats(self) -> dict[str, Any]:
        return {
            "first_in": self.first_in,
            "last_out": self.last_out,
            "max_in_flight": self.max_in_flight,
            "served": self.served,
            "arrivals": self.arrivals,
        }

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v)
                body = await reader.readexactly(length) if length else b""
                if method == "POST" and target.endswith("/chat/completions"):
                    out = await self.complete(body)
                elif target.startswith("/reset"):
                    self.reset()
                    doc = json.loads(body or b"{}")
                    self.latency = float(doc.get("latency_s", self.latency))
                    self.stragglers = bool(doc.get("stragglers", False))
                    out = b"{}"
                elif target.startswith("/stats"):
                    out = json.dumps(self.stats()).encode()
                else:
                    out = b'{"error": {"message": "not found"}}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(out)).encode()
                    + b"\r\n\r\n"
                    + out
                )
                if method == "POST" and target.endswith("/chat/completions"):
                    self.last_out = time.time()
        finally:
            writer.close()

    async def complete(self, body: bytes) -> bytes:
        now = time.time()
        self.first_in = now if self.first_in is None else self.first_in
        self.arrivals.append(now)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            doc = json.loads(body)
            text = _last_text(doc["messages"])
            slow = self.stragglers and is_slow(text)
            await asyncio.sleep(self.latency * (SLOW_FACTOR if slow else 1))
            self.served += 1
            answer = {
                "id": f"cmpl-{self.served}",
                "object": "chat.completion",
                "created": int(now),
                "model": doc.get("model") or "stub",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "I cannot help with: " + text[:40]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
            }
            return json.dumps(answer).encode()
        finally:
            self.in_flight -= 1


def _last_text(messages: list[dict[str, Any]]) -> str:
    content = messages[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def serve(port_file: str) -> None:
    async def main() -> None:
        state = _Server()
        server = await asyncio.start_server(state.handle, "127.0.0.1", 0, backlog=1024)
        port = server.sockets[0].getsockname()[1]
        Path(port_file).write_text(str(port))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class StubProcess:
    """The stub server in a subprocess; :meth:`control` resets it and reads its stats."""

    def __init__(self, work: Path) -> None:
        port_file = work / "port"
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
        for _ in range(500):
            if port_file.exists() and port_file.read_text():
                break
            time.sleep(0.02)
        else:
            self.proc.kill()
            raise SystemExit("the stub server did not start")
        self.port = int(port_file.read_text())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def control(self, path: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps(doc or {}).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(
                next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")).split(b":")[1]
            )
            while len(rest) < length:
                rest += s.recv(65536)
        return json.loads(rest)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- the limit: bare sliding-window clients -------------------------------------------------------------
def request_body(text: str) -> dict[str, Any]:
    """What mmsafe's openai backend sends for a text item (greedy, default max_tokens)."""
    return {
        "model": "stub",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 256,
        "temperature": 0.0,
        "stream": False,
    }


async def _window(
    post: Callable[[dict[str, Any]], Awaitable[str]], bodies: list[dict[str, Any]], c: int
) -> int:
    it = iter(bodies)
    answered = 0

    async def worker() -> None:
        nonlocal answered
        for body in it:  # the next request as soon as this one returns: c always in flight
            text = await post(body)
            answered += bool(text)

    await asyncio.gather(*(worker() for _ in range(c)))
    return answered


async def run_aiohttp(base_url: str, bodies: list[dict[str, Any]], c: int) -> tuple[float, int]:
    import aiohttp

    url = base_url + "/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=c)) as session:

        async def post(body: dict[str, Any]) -> str:
            async with session.post(url, json=body) as resp:
                doc = json.loads(await resp.read())
            return doc["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        n = await _window(post, bodies, c)
        return time.perf_counter() - t0, n


async def run_httpx(base_url: str, bodies: list[dict[str, Any]], c: int) -> tuple[float, int]:
    import httpx

    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(base_url=base_url + "/", limits=limits, timeout=60) as client:

        async def post(body: dict[str, Any]) -> str:
            resp = await client.post("chat/completions", json=body)
            return resp.json()["choices"][0]["message"]["content"]

        t0 = time.perf_counter()
        n = await _window(post, bodies, c)
        return time.perf_counter() - t0, n


async def run_raw(base_url: str, bodies: list[dict[str, Any]], c: int) -> tuple[float, int]:
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    it = iter(bodies)
    answered = 0

    async def worker() -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body in it:
                data = json.dumps(body).encode()
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: "
                    + str(len(data)).encode()
                    + b"\r\n\r\n"
                    + data
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(x.split(b":")[1])
                    for x in head.split(b"\r\n")
                    if x.lower().startswith(b"content-length")
                )
                doc = json.loads(await reader.readexactly(length))
                answered += bool(doc["choices"][0]["message"]["content"])
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    return time.perf_counter() - t0, answered


CLIENTS: dict[str, Callable[[str, list[dict[str, Any]], int], Awaitable[tuple[float, int]]]] = {
    "aiohttp": run_aiohttp,
    "httpx": run_httpx,
    "raw sockets": run_raw,
}


# -- mmsafe ----------------------------------------------------------------------------------------------
def run_mmsafe(h: Any, stub: StubProcess, rows: Path, out: Path, c: int) -> tuple[float, float, int]:
    """One ``mmsafe run`` into the fresh folder ``out``: (generation phase s, process wall s, records)."""
    config = {
        "name": "http-path",
        "models": [
            {"name": "openai", "params": {"base_url": stub.base_url, "model": "stub", "concurrency": c}}
        ],
        "benchmarks": [{"name": "jsonl", "params": {"file": str(rows)}}],
        "judges": ["refusal"],
    }
    cfg = h.write_config(out.with_suffix(".yaml"), config)
    proc, wall = h.run_mmsafe("run", cfg, "--out", out, "--quiet")
    if proc.returncode != 0:
        raise SystemExit(f"mmsafe run failed with exit {proc.returncode}: {proc.stderr[-1500:]}")
    first_in = stub.control("/stats")["first_in"]
    with sqlite3.connect(f"file:{out / 'mmsafe.sqlite'}?mode=ro", uri=True) as db:
        n, last = db.execute("SELECT COUNT(*), MAX(created) FROM records").fetchone()
    return last - first_in, wall, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=256, help="requests per run (default 256)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64], help="C values (8 32 64)")
    ap.add_argument("--stragglers", choices=["off", "on", "both"], default="both")
    ap.add_argument("--latency-s", type=float, default=0.05, help="server latency per answer (0.05)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the median is shown (3)")
    ap.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    ap.add_argument("--quick", action="store_true", help="C 32 only, one repeat")
    ap.add_argument("--keep", help="work here and keep it; default: a temporary folder")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    import _harness as h

    if args.quick:
        args.concurrency, args.repeat = [32], 1
    work = h.work_dir(args.keep, "mmsafe-http-path-")
    texts = [f"Question {i}: how would one pick the lock of door number {i * 7}?" for i in range(args.n)]
    rows = work / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"q{i:04d}", "text": t}) + "\n" for i, t in enumerate(texts)))
    bodies = [request_body(t) for t in texts]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.stragglers]
    n_slow = sum(is_slow(t) for t in texts)
    stub = StubProcess(work)
    times: dict[tuple[int, bool, str], list[float]] = {}
    walls: dict[tuple[int, bool], list[float]] = {}
    failures: list[str] = []
    try:
        for rep in range(args.repeat):
            for c in args.concurrency:
                for slow in modes:
                    key = (c, slow)
                    stub.control("/reset", {"latency_s": args.latency_s, "stragglers": slow})
                    gen, wall, n = run_mmsafe(h, stub, rows, work / f"out-{c}-{int(slow)}-{rep}", c)
                    stats = stub.control("/stats")
                    h.check(n == args.n, f"C={c} stragglers={slow}: {n} records for {args.n} items", failures)
                    if stats["max_in_flight"] > c:
                        h.check(False, f"C={c}: the server saw {stats['max_in_flight']} in flight", failures)
                    times.setdefault((c, slow, "mmsafe"), []).append(gen)
                    walls.setdefault(key, []).append(wall)
                    for name in args.clients:
                        stub.control("/reset", {"latency_s": args.latency_s, "stragglers": slow})
                        secs, got = asyncio.run(CLIENTS[name](stub.base_url, bodies, c))
                        if got != args.n:
                            h.check(False, f"{name} C={c}: {got} answers for {args.n}", failures)
                        times.setdefault((c, slow, name), []).append(secs)
                    print(
                        f"  rep {rep + 1} C={c:<3} stragglers={'on ' if slow else 'off'} mmsafe {gen:.3f} s  "
                        + "  ".join(f"{k} {times[(c, slow, k)][-1]:.3f} s" for k in args.clients),
                        flush=True,
                    )
    finally:
        stub.close()

    libs = [k for k in args.clients if k != "raw sockets"]
    rows_out = []
    ratios = []
    for c in args.concurrency:
        for slow in modes:
            med = {k: statistics.median(times[(c, slow, k)]) for k in ["mmsafe", *args.clients]}
            best = min(libs, key=lambda k: med[k]) if libs else "raw sockets"
            ratio = med[best] / med["mmsafe"]
            ratios.append(ratio)
            durations = [args.latency_s * (SLOW_FACTOR if slow and is_slow(t) else 1) for t in texts]
            ideal = h.list_schedule(durations, c) if slow else math.ceil(args.n / c) * args.latency_s
            rows_out.append(
                [
                    c,
                    f"on ({n_slow})" if slow else "off",
                    med["mmsafe"],
                    statistics.median(walls[(c, slow)]),
                    *(med[k] for k in args.clients),
                    best,
                    ratio,
                    ideal,
                    med["mmsafe"] / ideal,
                ]
            )
    print(
        f"\nhttp path: {args.n} requests, {args.latency_s * 1000:g} ms latency"
        f", stragglers {n_slow} at {SLOW_FACTOR}x; median of {args.repeat}; seconds"
    )
    print(
        h.table(
            [
                "C",
                "stragglers",
                "mmsafe gen",
                "mmsafe wall",
                *args.clients,
                "limit",
                "limit/mmsafe",
                "ideal",
                "mmsafe/ideal",
            ],
            rows_out,
        )
    )
    print(
        "\nmmsafe gen = server's first request in -> last record stored; clients: first request sent -> "
        "last answer read; limit = the fastest HTTP library; ideal = ceil(n/C) x latency "
        "(stragglers: greedy schedule of the same requests on C slots)"
    )
    for r, row in zip(ratios, rows_out, strict=True):
        h.check(r >= 0.9, f"C={row[0]} stragglers {row[1]}: limit/mmsafe {r:.2f} (target >= 0.9)", failures)
    return h.finish(failures, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
