"""Synchronous code that needs async code: the one way mmsafe does it.

Two places meet here. An async backend (an HTTP endpoint) answers from an event loop, where its
client and connection pool live; and synchronous code (a defense's ``defend``, a judge, a notebook
cell) calls that backend's ``generate``. :func:`run_sync` runs the coroutine to completion:

- in a thread started by :func:`in_thread` (how a defended async model runs its defense off the
  loop): on the loop that started the thread, so the backend reuses that loop's client;
- with no event loop running in this thread: on a new loop (``asyncio.run``);
- inside a running loop (a notebook): on a new loop in a worker thread, never blocking that loop
  from inside.

:func:`generate_all` is the one way synchronous code calls *any* backend (a judge's model, PAIR's
attacker and target, the runner's batches): one batched ``generate`` call, or, for an I/O backend or
one that only has ``agenerate``, :func:`agenerate_all` through :func:`run_sync`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend
    from mmsafe.types import Generation, Prompt

__all__ = ["agenerate_all", "generate_all", "in_thread", "run_sync"]

log = logging.getLogger("mmsafe.aio")

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


async def agenerate_all(
    model: ModelBackend, prompts: Sequence[Prompt], seeds: Sequence[int]
) -> list[Generation | Exception]:
    """One answer (or the exception it raised) per prompt, through ``model.agenerate``, with at most
    ``model.concurrency`` requests in flight."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    sem = asyncio.Semaphore(max(1, model.concurrency))

    async def one(prompt: Prompt, seed: int) -> Generation | Exception:
        async with sem:
            try:
                return await model.agenerate(prompt, seed=seed)
            except Exception as exc:
                return exc

    return list(await asyncio.gather(*(one(p, s) for p, s in zip(prompts, seeds, strict=True))))


def generate_all(
    model: ModelBackend, prompts: Sequence[Prompt], seeds: Sequence[int]
) -> list[Generation | Exception]:
    """One answer (or the exception) per prompt from any backend, from synchronous code, also inside
    a running event loop; never raises for an item.

    An I/O backend (``is_async``), or one whose ``generate`` is not implemented, answers through
    :func:`agenerate_all` on the loop :func:`run_sync` picks. Any other backend gets one batched
    ``generate`` call; a batch that raises (or returns the wrong number of results) is retried one
    prompt at a time, so the item that broke it fails alone.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        return []
    if model.is_async:
        return run_sync(lambda: agenerate_all(model, prompts, seeds))
    try:
        out = list(model.generate(prompts, seeds=seeds))
        if len(out) != len(prompts):
            raise RuntimeError(f"backend returned {len(out)} results for {len(prompts)} prompts")
        return out
    except NotImplementedError:
        return run_sync(lambda: agenerate_all(model, prompts, seeds))
    except Exception as exc:
        if len(prompts) == 1:
            return [exc]
        from mmsafe.errors import describe

        log.warning("batch of %d failed (%s); retrying one at a time", len(prompts), describe(exc, limit=500))
    res: list[Generation | Exception] = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        try:
            (one,) = model.generate([prompt], seeds=[seed])
            res.append(one)
        except Exception as e:
            res.append(e)
    return res
