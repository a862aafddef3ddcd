"""One event loop in a thread of its own, for the requests of one model session.

The runner drives an I/O backend (an HTTP endpoint) from the main thread: it submits each request to
this loop and waits for whichever finishes first, so a slow request delays only itself. One loop for
the whole session means one HTTP client (connection pool) for the whole session, where one loop per
batch would open and close a client per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("mmsafe.runner")

T = TypeVar("T")

__all__ = ["LoopThread"]


class LoopThread:
    """An asyncio event loop running in a daemon thread until :meth:`close` (or the ``with`` block ends).

    :meth:`submit` schedules a coroutine on it from any thread and returns a
    :class:`concurrent.futures.Future`. :meth:`close` cancels whatever is still running (an HTTP
    backend's client keeper closes its client when cancelled), waits for worker threads the loop
    started (``asyncio.to_thread``), then stops and closes the loop.
    """

    def __init__(self, *, name: str = "mmsafe-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            asyncio.set_event_loop(None)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; its result (or exception) arrives in the returned future."""
        if self._loop.is_closed() or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the event loop thread is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self, *, timeout: float = 30.0) -> None:
        """Cancel every task, wait (at most ``timeout`` s) for them and the loop's worker threads, stop."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(timeout)
            except (concurrent.futures.TimeoutError, RuntimeError) as exc:
                log.warning("event loop did not shut down cleanly within %.0f s: %s", timeout, exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _shutdown() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()
