"""mmsafe.aio: synchronous code calling async code runs on the right event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mmsafe.aio import in_thread, run_sync


async def _where() -> tuple[asyncio.AbstractEventLoop, str]:
    return asyncio.get_running_loop(), threading.current_thread().name


def test_without_a_loop_it_runs_on_a_new_one_here():
    loop, thread = run_sync(_where)
    assert thread == threading.current_thread().name and loop.is_closed()


def test_inside_a_running_loop_it_runs_on_another_thread():
    async def cell():
        return asyncio.get_running_loop(), run_sync(_where)

    outer, (inner, thread) = asyncio.run(cell())
    assert inner is not outer and thread.startswith("mmsafe-sync")


def test_from_a_thread_of_in_thread_it_goes_back_to_the_host_loop():
    async def host():
        here = asyncio.get_running_loop()
        seen = await in_thread(lambda: run_sync(_where))
        later = await asyncio.to_thread(lambda: run_sync(_where))  # a plain thread: a loop of its own
        return here, seen, later

    here, (loop, thread), (other, _) = asyncio.run(host())
    assert loop is here and thread == threading.current_thread().name
    assert other is not here


def test_errors_come_back_to_the_caller():
    async def boom():
        raise ValueError("from the coroutine")

    async def host():
        return await in_thread(lambda: run_sync(boom))

    with pytest.raises(ValueError, match="from the coroutine"):
        asyncio.run(host())
