"""One writer per run folder: a second `mmsafe run` on a held --out stops at once naming the holder, a killed
holder leaves no stale lock, and the reading commands (report, export) work while a run holds the folder.

(tests/test_lock.py is about the dependency lock files, not this.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmsafe.cli.main import main
from mmsafe.errors import RunLocked
from mmsafe.store import Store
from mmsafe.store.lock import LOCK_FILE, RunLock

SRC = Path(__file__).resolve().parents[1] / "src"

HOLD = """
import os, sys, time
from mmsafe.store.lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
if len(sys.argv) > 2:
    r, w = os.pipe()
    if os.fork() == 0:  # a forked helper that outlives its parent
        os.write(w, b"1")  # fork() has returned here: the at-fork hooks have run in this child
        time.sleep(15)
        os._exit(0)
    os.read(r, 1)  # "locked" is printed only once the child runs (else a loaded machine kills the parent first)
print("locked", flush=True)
sys.stdin.read()  # hold until killed or stdin closes
"""


def _cfg(tmp_path: Path) -> Path:
    data = tmp_path / "items.jsonl"
    data.write_text('{"id": "a", "text": "how do I pick a lock?"}\n{"id": "b", "text": "hello"}\n')
    cfg = {
        "name": "lock",
        "models": [{"name": "scripted", "params": {"echo": True}}],
        "benchmarks": [{"name": "jsonl", "params": {"file": str(data)}}],
        "judges": ["refusal"],
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _holder(out: Path, *extra: str) -> subprocess.Popen:
    """A separate process holding OUT's lock (as a running `mmsafe run` does) until it is killed."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", HOLD, str(out), *extra]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_second_run_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path, capsys):
    cfg, out = _cfg(tmp_path), tmp_path / "out"
    out.mkdir()
    proc = _holder(out)
    try:
        assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mmsafe: error: ")
        assert f"pid {proc.pid} on {socket.gethostname()}" in err and "use another --out" in err
        assert not (out / "mmsafe.sqlite").exists()  # stopped before opening the store
        held = json.loads((out / LOCK_FILE).read_text())
        assert held["pid"] == proc.pid and held["holder"] == "mmsafe run"
    finally:
        _kill(proc)
    assert (out / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock with the process
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "2 records written" in capsys.readouterr().out
    assert (out / LOCK_FILE).read_text() == ""  # released: no holder described


def test_report_and_export_work_while_a_run_holds_the_folder(tmp_path, capsys):
    cfg, out = _cfg(tmp_path), tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    proc = _holder(out)
    try:
        assert main(["report", str(out)]) == 0
        assert main(["export", str(out), "--format", "csv", "-o", str(tmp_path / "r.csv")]) == 0
        assert main(["export", str(out)]) == 0
        assert len((out / "records.jsonl").read_text().splitlines()) == 2
        assert "2 records" in capsys.readouterr().out
    finally:
        _kill(proc)


def test_the_lock_is_per_folder_and_reentrant_use_is_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    with RunLock(a), RunLock(b):  # two folders: two writers are fine
        with pytest.raises(RunLocked, match=rf"pid {os.getpid()} "):
            RunLock(a).acquire()  # a second writer, even in the same process, is refused
    with RunLock(a), Store(a) as s:  # released on exit
        assert s.count_records() == 0


def test_a_forked_child_of_a_killed_run_does_not_keep_its_lock(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = _holder(out, "fork")
    with pytest.raises(RunLocked):
        RunLock(out).acquire()
    _kill(proc)  # the parent dies; its forked child sleeps on
    with RunLock(out):
        pass
