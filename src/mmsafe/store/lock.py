"""One writer per run folder: an exclusive ``flock`` on ``DIR/.mmsafe.lock``.

Two ``mmsafe run`` processes on one folder would each redo the whole grid (both see the same records
missing) and double the model calls. :class:`RunLock` makes the second one stop at once, naming the
holder. The lock is the kernel's (``fcntl.flock``), not the file's existence: the kernel drops it when
the holding process exits or is killed, so a lock can never be left stale, and the file is never
deleted (deleting it would let two processes lock two different files of the same name). The file
only describes the holder, as JSON ``{pid, host, started, argv}``, for the message. Readers
(``mmsafe report``, ``mmsafe export``) never take the lock: SQLite's WAL lets them read while a run
writes. POSIX only (Linux, macOS), like the rest of mmsafe's file locking.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mmsafe.errors import RunLocked

LOCK_FILE = ".mmsafe.lock"

#: descriptors of the locks this process holds. A forked child (a worker pool, a library's helper)
#: shares each one, and with it the flock: it closes its copies at once, so that a SIGKILLed run
#: never leaves its lock held by a child that outlives it.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """Hold ``DIR/.mmsafe.lock`` exclusively while writing ``DIR``; use as a context manager.

    ``acquire`` raises :class:`~mmsafe.errors.RunLocked` at once (it never waits) when another
    process holds it, with the holder's pid, host and start time.
    """

    def __init__(self, out_dir: str | Path, *, holder: str = "mmsafe run") -> None:
        self.dir = Path(out_dir)
        self.path = self.dir / LOCK_FILE
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read(fd)
            os.close(fd)
            raise RunLocked(self._held_by(info)) from None
        except BaseException:
            os.close(fd)
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"holder": self.holder, **info}).encode("utf-8"), 0)
        self._fd = fd
        _HELD.add(fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(fd)
        try:
            os.ftruncate(fd, 0)  # the next reader sees no holder rather than a finished one
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def _held_by(self, info: dict[str, Any]) -> str:
        who = f"`{info.get('holder') or 'mmsafe run'}`"
        if "pid" in info:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started") or 0)))
            who += f" (pid {info['pid']} on {info.get('host') or '?'}, since {when})"
        else:  # locked a moment ago, not yet described
            who += " (another process that has just started)"
        return f"{self.dir} is being written by {who}; wait for it to finish or use another --out"

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 64 * 1024, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

