"""Stragglers: 256 requests at concurrency 32 where 10% take 10x longer, against the same run with none slow.

Issue 15, "Must show" 3. ``mmsafe run`` (a subprocess) sends ``--n`` text prompts (default 256)
through the ``openai`` backend at ``--concurrency`` (32) to tests/_stub_openai.py, served from this
process. Every answer takes ``--base-s`` (0.5 s); in the slow run, the 10% of prompts with the
lowest SHA-256 of their text (26 of 256) take 10x as long. Printed for both runs: the process wall
time and the server's window (first request in to last answer out, which leaves out start-up and
report writing), the most requests the server saw at once, and the slow/fast ratio of the windows.

Read the ratio against the floor. With 32 request slots the slow run holds slots for
(230 + 26·10)·t = 490·t against 256·t, so no scheduler can finish it in less than
max(490·t/32, 10·t) = 15.3·t against 8·t: **1.91x is the floor** (slot-time bound), and the
issue's "≤ 1.3x" cannot be reached at a hard cap of 32 in flight. The script also prints two
simulations of the same requests in the same order: greedy list scheduling onto 32 slots (what a
runner that refills a slot as soon as it frees achieves) and chunks of 4 x concurrency that each
wait for their slowest request (how mmsafe ran I/O backends before streaming). The greedy one is
above the floor because a runner cannot know which requests will be slow: one started late still
takes 10·t. The measured ratio over the floor and over the greedy schedule says how close the runner gets.

    python benchmarks/stragglers.py                    # 256 requests, concurrency 32, 0.5 s per answer
    python benchmarks/stragglers.py --quick            # the same at 0.25 s per answer
    python benchmarks/stragglers.py --n 512 --concurrency 64 --base-s 0.2 --window 128
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import _harness as h
from _stub_openai import StubOpenAI, _last_text

SLOW_FACTOR = 10
SLOW_SHARE = 0.10


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TimedStub(StubOpenAI):
    """Every answer after ``base_s``; prompts whose text hashes into ``slow`` after ``factor`` x that.
    Records the window (first request in, last answer out) and the most requests in flight."""

    def __init__(self, *, base_s: float, factor: int) -> None:
        super().__init__("normal")
        self.base_s, self.factor = base_s, factor
        self.slow: set[str] = set()
        self.reset()

    def reset(self) -> None:
        self.first_in: float | None = None
        self.last_out = 0.0
        self.in_flight = self.max_in_flight = 0

    async def _answer(self, name: str, doc: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        now = time.perf_counter()
        self.first_in = now if self.first_in is None else self.first_in
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            slow = _digest(_last_text(doc.get("messages") or [])) in self.slow
            await asyncio.sleep(self.base_s * (self.factor if slow else 1))
            return await super()._answer(name, doc, writer)
        finally:
            self.in_flight -= 1
            self.last_out = time.perf_counter()


def chunked(durations: list[float], slots: int, chunk: int) -> float:
    """Makespan when requests go in chunks of ``chunk`` that each wait for their slowest request."""
    return sum(h.list_schedule(durations[i : i + chunk], slots) for i in range(0, len(durations), chunk))


def one_run(
    stub: TimedStub, work: Path, label: str, rows: Path, args: argparse.Namespace
) -> dict[str, float]:
    config: dict[str, Any] = {
        "name": f"stragglers-{label}",
        "models": [
            {
                "name": "openai",
                "params": {"base_url": stub.base_url, "model": "stub", "concurrency": args.concurrency},
            }
        ],
        "benchmarks": [{"name": "jsonl", "params": {"file": str(rows)}}],
        "judges": ["refusal"],
    }
    if args.window:
        config["window"] = args.window
    cfg = h.write_config(work / f"{label}.yaml", config)
    stub.reset()
    proc, wall = h.run_mmsafe("run", cfg, "--out", work / f"out-{label}", "--quiet")
    if proc.returncode != 0:
        raise SystemExit(f"mmsafe run ({label}) failed with exit {proc.returncode}: {proc.stderr[-1500:]}")
    window = stub.last_out - (stub.first_in or stub.last_out)
    return {
        "wall": wall,
        "window": window,
        "max_in_flight": stub.max_in_flight,
        "records": h.count_records(work / f"out-{label}"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="requests (default 256)")
    ap.add_argument("--concurrency", type=int, default=32, help="the backend's concurrency (default 32)")
    ap.add_argument("--base-s", type=float, default=0.5, help="seconds per answer; slow ones take 10x (0.5)")
    ap.add_argument("--window", type=int, help="RunConfig.window (items in flight), if the runner has it")
    ap.add_argument("--quick", action="store_true", help="a smoke version: 0.25 s per answer")
    ap.add_argument("--keep", help="work here and keep it; default: a temporary folder")
    args = ap.parse_args()
    if args.quick:
        args.base_s = min(args.base_s, 0.25)
    work = h.work_dir(args.keep, "mmsafe-straggle-")

    texts = [f"Question {i}: name a prime number larger than {i * 7}." for i in range(args.n)]
    rows = work / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"q{i:04d}", "text": t}) + "\n" for i, t in enumerate(texts)))
    n_slow = round(SLOW_SHARE * args.n)
    slow = set(sorted(_digest(t) for t in texts)[:n_slow])
    t, c = args.base_s, args.concurrency

    with TimedStub(base_s=t, factor=SLOW_FACTOR) as stub:
        fast = one_run(stub, work, "fast", rows, args)
        stub.slow = slow
        slow_run = one_run(stub, work, "slow", rows, args)

    durations = [t * (SLOW_FACTOR if _digest(x) in slow else 1) for x in texts]
    fast_floor = h.list_schedule([t] * args.n, c)
    slot_bound = max(sum(durations) / c, max(durations))
    floor = slot_bound / fast_floor
    greedy = h.list_schedule(durations, c) / fast_floor
    chunk_ratio = chunked(durations, c, 4 * c) / fast_floor
    ratio = slow_run["window"] / fast["window"]

    print(
        f"stragglers: {args.n} requests, concurrency {c}, {t:g} s per answer, {n_slow} slow ones at "
        f"{SLOW_FACTOR}x (lowest prompt hashes)" + (f", window {args.window}" if args.window else "")
    )
    print(
        h.table(
            ["run", "records", "process wall s", "server window s", "most in flight", "ideal window s"],
            [
                [
                    "no slow requests",
                    fast["records"],
                    fast["wall"],
                    fast["window"],
                    fast["max_in_flight"],
                    fast_floor,
                ],
                [
                    f"{n_slow} slow ({SLOW_SHARE:.0%})",
                    slow_run["records"],
                    slow_run["wall"],
                    slow_run["window"],
                    slow_run["max_in_flight"],
                    slot_bound,
                ],
            ],
        )
    )
    print()
    sw = slow_run["window"]
    print(
        h.table(
            ["slow run: schedule", "window s", "slow / no-slow", "measured slow window / this"],
            [
                ["measured (server window)", sw, ratio, 1.0],
                [
                    f"floor: slot-time bound, {sum(durations) / t:.0f}t / {c} slots",
                    slot_bound,
                    floor,
                    sw / slot_bound,
                ],
                [
                    "simulated: refill a slot as soon as it frees",
                    greedy * fast_floor,
                    greedy,
                    sw / (greedy * fast_floor),
                ],
                [
                    f"simulated: chunks of {4 * c}, each waits for its slowest",
                    chunk_ratio * fast_floor,
                    chunk_ratio,
                    sw / (chunk_ratio * fast_floor),
                ],
                ["issue's target", 1.3 * fast_floor, 1.3, sw / (1.3 * fast_floor)],
            ],
        )
    )
    print(
        f"\nslow / no-slow: measured {ratio:.2f}x (process wall {slow_run['wall'] / fast['wall']:.2f}x) against the "
        f"{floor:.2f}x floor; the no-slow window is {fast['window'] / fast_floor:.2f}x its ideal "
        f"{fast_floor:.2f} s (the client's own time per request), which lowers the measured ratio"
    )
    failures: list[str] = []
    for label, res in (("no slow", fast), ("slow", slow_run)):
        h.check(
            res["records"] == args.n, f"{label}: {res['records']} records for {args.n} requests", failures
        )
        h.check(
            res["max_in_flight"] <= c,
            f"{label}: at most {res['max_in_flight']} requests in flight (concurrency {c})",
            failures,
        )
    return h.finish(failures, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
