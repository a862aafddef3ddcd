"""The runner's helper threads: one event loop per model session, one thread for the judges.

The runner drives an I/O backend (an HTTP endpoint) from the main thread: it submits each request to
a :class:`LoopThread` and waits for whichever finishes first, so a slow request delays only itself.
One loop for the whole session means one HTTP client (connection pool) for the whole session, where
one loop per batch would open and close a client per batch.

The answers are judged in a :class:`Worker` thread, so a slow judge (an LLM judge behind an
endpoint, a local classifier) does not hold up the main thread, which keeps sending requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

log = logging.getLogger("mmsafe.runner")

T = TypeVar("T")

__all__ = ["LoopThread", "Worker"]


class LoopThread:
    """An asyncio event loop running in a daemon thread until :meth:`close` (or the ``with`` block ends).

    :meth:`submit` schedules a coroutine on it from any thread and returns a
    :class:`concurrent.futures.Future`. ``threads`` sizes the pool behind ``asyncio.to_thread`` (default:
    Python's, ``min(32, cpus + 4)``). :meth:`close` cancels whatever is still running (an HTTP
    backend's client keeper closes its client when cancelled), waits for worker threads the loop
    started (``asyncio.to_thread``), then stops and closes the loop.
    """

    def __init__(self, *, name: str = "mmsafe-loop", threads: int | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        if threads is not None:  # the worker threads of asyncio.to_thread (a defense runs in one per request)
            self._loop.set_default_executor(
                concurrent.futures.ThreadPoolExecutor(max(1, threads), thread_name_prefix=f"{name}-to-thread")
            )
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

    def submit_many(self, coros: list[Coroutine[Any, Any, T]]) -> list[concurrent.futures.Future[T]]:
        """:meth:`submit` for several coroutines at once: one wake-up of the loop starts them all
        (one ``call_soon_threadsafe``, not one per coroutine), in order."""
        if self._loop.is_closed() or not self._thread.is_alive():
            for coro in coros:
                coro.close()
            raise RuntimeError("the event loop thread is closed")
        futures: list[concurrent.futures.Future[T]] = [concurrent.futures.Future() for _ in coros]

        def start() -> None:
            for coro, fut in zip(coros, futures, strict=True):
                if fut.cancelled():  # cancelled before it started
                    coro.close()
                    continue
                # the future stays pending while the task runs (as with run_coroutine_threadsafe),
                # so cancelling it from the submitting thread cancels the task
                task = self._loop.create_task(coro)
                task.add_done_callback(partial(_settle, fut))
                fut.add_done_callback(partial(_cancel_task, self._loop, task))

        self._loop.call_soon_threadsafe(start)
        return futures

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


class Worker:
    """One daemon thread that runs the calls given to :meth:`submit` one after another, in order.

    Each call's result (or exception) arrives in the :class:`concurrent.futures.Future` that
    :meth:`submit` returns. The thread is a daemon, so a call that never returns (a hung judge)
    cannot keep the process alive after Ctrl-C; :meth:`close` lets the calls already given finish
    (``wait=True``) or drops those not started (``wait=False``).
    """

    def __init__(self, *, name: str = "mmsafe-worker") -> None:
        self._calls: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while (call := self._calls.get()) is not None:
            fut, fn = call
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # handed to the waiting thread, never lost
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            del call, fut, fn  # let the call's arguments go before waiting for the next one

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the thread after the calls given before it."""
        if self._closed:
            raise RuntimeError("the worker thread is closed")
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((fut, lambda: fn(*args)))
        return fut

    def close(self, *, wait: bool = True, timeout: float | None = None) -> None:
        """Stop taking calls; with ``wait``, let the queued ones finish (at most ``timeout`` s), else
        cancel those not started and return at once."""
        if self._closed:
            return
        self._closed = True
        if not wait:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call[0].cancel()
        self._calls.put(None)
        if wait:
            self._thread.join(timeout)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(wait=exc_type is None)


def _settle(fut: concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
    """Copy a finished task's outcome into the future the submitting thread holds."""
    if task.cancelled():
        fut.cancel()
        return
    if not fut.set_running_or_notify_cancel():  # cancelled meanwhile
        return
    if (exc := task.exception()) is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(task.result())


def _cancel_task(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], fut: concurrent.futures.Future[Any]
) -> None:
    """A future cancelled from another thread cancels its task on the loop."""
    if fut.cancelled() and not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)


async def _shutdown() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()
