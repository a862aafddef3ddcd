"""kill -9 a real `mmsafe run` mid-way, rerun it, and get exactly the records of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmsafe.store import Store

pytestmark = pytest.mark.slow


def _config(tmp: Path, figstep: Path) -> Path:
    cfg = {
        "name": "resume",
        "models": [{"name": "tiny-llava", "params": {"batch_size": 2}}],
        "benchmarks": [{"name": "figstep", "params": {"path": str(figstep), "split": "tiny"}}],
        "attacks": ["text-only", "figstep"],
        "judges": ["refusal", {"name": "target-string", "params": {"targets": ["1."]}}],
    }
    p = tmp / "resume.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cmd(cfg: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "mmsafe", "run", str(cfg), "--out", str(out), "--quiet"]


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _snapshot(out: Path) -> dict[str, tuple]:
    with Store(out) as s:
        return {
            r.key: (
                r.sample_id,
                r.attack.name,
                r.judge.name,
                r.response,
                r.image_hashes,
                r.error,
                r.judgement.model_dump_json() if r.judgement else None,
            )
            for r in s.iter_records()
        }


def test_kill_dash_nine_then_rerun_equals_uninterrupted(tmp_path, shared_data):
    env = {**os.environ, "MMSAFE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    cfg = _config(tmp_path, shared_data / "figstep")
    full = tmp_path / "full"
    subprocess.run(_cmd(cfg, full), env=env, check=True, capture_output=True, timeout=600)
    expected = _snapshot(full)
    assert len(expected) == 50 * 2 * 2

    crashed = tmp_path / "crashed"
    killed_at = []
    for _ in range(2):  # two crashes at different points, then a clean finish
        proc = subprocess.Popen(
            _cmd(cfg, crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        start = _count(crashed / "mmsafe.sqlite")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if _count(crashed / "mmsafe.sqlite") >= start + 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at.append(_count(crashed / "mmsafe.sqlite"))
    assert 0 < killed_at[0] < killed_at[1] < len(expected)

    done = subprocess.run(_cmd(cfg, crashed), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{killed_at[1]} already in the store" in done.stdout
    got = _snapshot(crashed)
    assert got.keys() == expected.keys()
    assert got == expected
    assert (crashed / "summary.json").exists() and (crashed / "report.md").exists()


def test_kill_dash_nine_while_an_endpoint_streams_then_rerun_equals_uninterrupted(tmp_path):
    """An async model streams (a window of requests in flight, records written as each finishes): three
    kill -9 at different points, then a rerun, give exactly the records of an uninterrupted run."""
    rows = [{"id": f"q{i:03d}", "text": f"request number {i}", "category": "ab"[i % 2]} for i in range(60)]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    delays = {f"number {i}": 0.02 + 0.01 * (i % 7) for i in range(60)}  # answers finish out of order
    cfg = {
        "name": "stream",
        "models": [
            {
                "name": "scripted",
                "params": {"async_io": True, "concurrency": 4, "delays": delays, "fail_on": ["number 13"],
                           "rules": {"number 3": "I'm sorry, I cannot help with that."}},
            }
        ],
        "benchmarks": [{"name": "jsonl", "params": {"file": str(tmp_path / "b.jsonl")}}],
        "attacks": ["none", "prefix-injection"],
        "defenses": ["none", "system-prompt"],
        "judges": ["refusal", {"name": "target-string", "params": {"targets": ["Sure"]}}],
    }
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = tmp_path / "full"
    subprocess.run(_cmd(path, full), env=env, check=True, capture_output=True, timeout=600)
    expected = _snapshot(full)
    assert len(expected) == 60 * 2 * 2 * 2

    crashed = tmp_path / "crashed"
    killed_at = []
    for _ in range(3):
        proc = subprocess.Popen(_cmd(path, crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = _count(crashed / "mmsafe.sqlite")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if _count(crashed / "mmsafe.sqlite") >= start + 50:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at.append(_count(crashed / "mmsafe.sqlite"))
    assert 0 < killed_at[0] < killed_at[1] < killed_at[2] < len(expected)
    assert all(n % 2 == 0 for n in killed_at)  # an item's two records are written together, never one alone

    done = subprocess.run(_cmd(path, crashed), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    got = _snapshot(crashed)
    assert got == expected  # nothing lost, nothing duplicated (keys are unique), nothing different
