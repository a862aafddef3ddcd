"""Shared by the must-show scripts of issue 15 (hostile_inputs, kill_resume, memory_flat, stragglers).

Each of them runs the real ``mmsafe`` command in a subprocess (``python -m mmsafe`` from this
checkout's ``src``), then reads the run folder's store read-only with sqlite3, so what is measured
is what a user gets. Nothing here is a test: the scripts print numbers and say which checks held.
"""

from __future__ import annotations

import heapq
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
TESTS = REPO / "tests"
for _p in (str(SRC), str(TESTS)):  # mmsafe from this checkout; the stub server from tests/
    if _p not in sys.path:
        sys.path.insert(0, _p)

#: record fields that differ between two runs of the same item by design: when it was written, how
#: long each stage and request took, and whether the answer came from the response cache (a resumed
#: run reuses answers a killed run cached but did not record)
VOLATILE = ("created", "timings")
VOLATILE_GENERATION = ("latency_s", "cached")
VOLATILE_GENERATION_METADATA = ("total_s",)  # the openai backend's wall time over all attempts


def env() -> dict[str, str]:
    """The environment of every child: this checkout's mmsafe, one BLAS thread, unbuffered output."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [out.get("PYTHONPATH")])])
    out.setdefault("OMP_NUM_THREADS", "1")
    out["PYTHONUNBUFFERED"] = "1"
    return out


def mmsafe_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "mmsafe", *(str(a) for a in args)]


def run_mmsafe(*args: str | Path, timeout: float = 3600) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``mmsafe ARGS``; returns the finished process (text output captured) and its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run(mmsafe_cmd(*args), env=env(), capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


_PEAK_WRAPPER = r"""
import json, resource, sqlite3, subprocess, sys, tempfile, time
spec = json.loads(sys.argv[1])
db, target = spec.get("db"), spec.get("records")

def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0

def count():
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.Error:
        return 0

err = tempfile.TemporaryFile()
t0 = time.perf_counter()
p = subprocess.Popen(spec["cmd"], stdout=subprocess.DEVNULL, stderr=err)
before_last, n, tick = 0, 0, 0
while p.poll() is None:
    if db and n < target:
        if tick % 5 == 0:
            n = count()
        if n < target:
            before_last = max(before_last, rss_kb(p.pid))
    tick += 1
    time.sleep(0.05)
wall = time.perf_counter() - t0
kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
err.seek(0)
print(json.dumps({"rc": p.returncode, "maxrss_kb": kb, "before_last_kb": before_last, "wall_s": wall,
                  "stderr": err.read().decode("utf-8", "replace")[-2000:]}))
"""


def peak_rss(
    cmd: Sequence[str | Path], *, records_in: Path | None = None, records: int = 0, timeout: float = 7200
) -> dict[str, Any]:
    """Peak RSS of ``cmd`` alone: a fresh wrapper process runs it and reads RUSAGE_CHILDREN, which then
    covers that one child (and its own children) only. Returns rc, maxrss_kb (Linux: KiB), wall_s.

    With ``records_in`` (a run folder) and ``records`` (how many the run writes), the wrapper also
    samples the child's VmRSS every 50 ms until the store holds that many records: ``before_last_kb``
    is the largest sample while items were still being written (the work phase, without the report
    written at the end). A sample can miss a short spike; the peak cannot."""
    if sys.platform != "linux":  # ru_maxrss is bytes on macOS
        raise SystemExit("peak RSS is read as KiB from getrusage: run this on Linux")
    spec = {"cmd": [str(c) for c in cmd], "records": records}
    if records_in is not None:
        spec["db"] = str(records_in / "mmsafe.sqlite")
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_WRAPPER, json.dumps(spec)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def self_peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """A run config as YAML (JSON is YAML); ``path`` is returned."""
    path.write_text(json.dumps(config, indent=1), encoding="utf-8")
    return path


def _connect(out_dir: Path) -> sqlite3.Connection:
    db = out_dir / "mmsafe.sqlite"
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def count_records(out_dir: Path) -> int:
    """Records in the run folder's store right now (0 when there is no store yet, or it is busy)."""
    if not (out_dir / "mmsafe.sqlite").exists():
        return 0
    try:
        with _connect(out_dir) as db:
            return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    except sqlite3.Error:
        return 0


def raw_records(out_dir: Path) -> dict[str, str]:
    """key → the record's JSON text, exactly as stored."""
    db = _connect(out_dir)
    try:
        return dict(db.execute("SELECT key, record FROM records"))
    finally:
        db.close()


def cell_duplicates(out_dir: Path) -> int:
    """Rows minus distinct (model, benchmark, attack, defense, judge, sample) cells: 0 when nothing is doubled."""
    db = _connect(out_dir)
    try:
        rows = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        cells = db.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT model, benchmark, attack, defense, judge, sample_id FROM records)"
        ).fetchone()[0]
        return int(rows - cells)
    finally:
        db.close()


def normalised(record_json: str) -> dict[str, Any]:
    """A stored record without the fields that legitimately differ between runs (:data:`VOLATILE`)."""
    doc = json.loads(record_json)
    for k in VOLATILE:
        doc.pop(k, None)
    gen = doc.get("generation")
    if isinstance(gen, dict):
        for k in VOLATILE_GENERATION:
            gen.pop(k, None)
        if isinstance(gen.get("metadata"), dict):
            for k in VOLATILE_GENERATION_METADATA:
                gen["metadata"].pop(k, None)
    return doc


def compare_stores(expected_dir: Path, got_dir: Path) -> dict[str, int]:
    """lost / extra / differing records of ``got_dir`` against ``expected_dir`` (after :func:`normalised`),
    and doubled cells in ``got_dir``."""
    want, got = raw_records(expected_dir), raw_records(got_dir)
    common = want.keys() & got.keys()
    return {
        "expected": len(want),
        "got": len(got),
        "lost": len(want.keys() - got.keys()),
        "extra": len(got.keys() - want.keys()),
        "duplicated": cell_duplicates(got_dir),
        "differing": sum(1 for k in common if normalised(want[k]) != normalised(got[k])),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (left-aligned text, right-aligned numbers)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(r[i], int | float) for r in rows) if rows else False for i in range(len(headers))
    ]
    lines = []
    for n, r in enumerate(cells):
        parts = [
            c.rjust(w) if numeric[i] and n else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def check(ok: bool, what: str, failures: list[str]) -> None:
    """Print one check's outcome; a failed one is remembered for the exit status."""
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def work_dir(keep: str | None, prefix: str) -> Path:
    """The folder a script works in: ``keep`` (emptied first; kept at the end), else a new temporary one."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix=prefix))
    if keep and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def finish(failures: list[str], work: Path, *, keep: str | None) -> int:
    """The end of every script: say how many checks failed (and which), remove ``work`` unless it was
    given with ``--keep``, and return the exit status (1 if any check failed)."""
    print(f"\n{len(failures)} check(s) failed" + (": " + "; ".join(failures) if failures else ""))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def list_schedule(durations: Sequence[float], slots: int) -> float:
    """Makespan of greedy list scheduling in order: each request takes the first of ``slots`` that frees (what a
    client that refills every slot the moment it frees would need for these request durations)."""
    free = [0.0] * slots
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
        end = max(end, start + d)
    return end
