"""Synchronous code that needs async code: the one way mmsafe does it.

Two places meet here. An async backend (an HTTP endpoint) answers from an event loop, where its
client and connection pool live; and synchronous code (a defense's ``defend``, a judge, a notebook
cell) calls that backend's ``generate``. :func:`run_sync` runs the coroutine to completion:

- in a thread started by :func:`in_thread` (how a defended async model runs its defense off the
  loop): on the loop that started the thread, so the backend reuses that loop's client;
- with no event loop running in this thread: on a new loop (``asyncio.run``);
- inside a running loop (a notebook): on a new loop in a worker thread, never blocking that loop
  from inside.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["in_thread", "run_sync"]

T = TypeVar("T")

#: the event loop that handed the current thread its work (:func:`in_thread`), if any
_HOST: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "mmsafe_host_loop", default=None
)


async def in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, awaited from a coroutine; :func:`run_sync` calls
    that ``fn`` makes there go back to this coroutine's loop."""
    loop = asyncio.get_running_loop()

    def call() -> T:
        token = _HOST.set(loop)
        try:
            return fn(*args, **kwargs)
        finally:
            _HOST.reset(token)

    return await asyncio.to_thread(call)


def run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """The result of the coroutine ``factory()``, run to completion from synchronous code (see the
    module docstring for which loop runs it)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    host = _HOST.get()
    if running is None and host is not None and host.is_running() and not host.is_closed():
        return asyncio.run_coroutine_threadsafe(factory(), host).result()
    if running is None:
        return asyncio.run(factory())
    with ThreadPoolExecutor(1, thread_name_prefix="mmsafe-sync") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()
