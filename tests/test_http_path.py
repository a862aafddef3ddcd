"""The streaming runner's HTTP path (issue 19): the loop's batch submit, the response cache kept off
the loop (one lookup per refill, answers written per judged group), and what the window changes in
the interpreter (restored afterwards). The speed itself is measured in benchmarks/http_path.py."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import sys
import threading
from pathlib import Path

import pytest

from mmsafe.config import RunConfig
from mmsafe.models.cached import CachedModel, request_key
from mmsafe.models.scripted import ScriptedModel
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.runner.aio import LoopThread
from mmsafe.store import Store
from mmsafe.types import Generation, Message, Prompt

pytest.importorskip("aiohttp", reason="the openai backend needs aiohttp (pip install 'mmsafe[api]')")

from _stub_openai import StubOpenAI
from mmsafe.models.openai import OpenAICompatModel, _env_proxy


def _prompt(text: str) -> Prompt:
    return Prompt(messages=[Message.user(text)])


# -- LoopThread.submit_many ---------------------------------------------------------------------------
def test_submit_many_runs_every_coroutine_and_keeps_each_outcome() -> None:
    async def square(x: int) -> int:
        await asyncio.sleep(0.01 * (5 - x))  # finish in the reverse order
        if x == 3:
            raise ValueError("three")
        return x * x

    with LoopThread(name="t-many") as loop:
        futures = loop.submit_many([square(i) for i in range(5)])
        assert [f.result(5) for f in futures[:3]] == [0, 1, 4]
        with pytest.raises(ValueError, match="three"):
            futures[3].result(5)
        assert futures[4].result(5) == 16


def test_submit_many_cancelling_a_future_cancels_its_task() -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with LoopThread(name="t-cancel") as loop:
        (fut,) = loop.submit_many([forever()])
        assert started.wait(5)
        assert fut.cancel()
        assert cancelled.wait(5)  # the task on the loop was cancelled, not left running


def test_submit_many_on_a_closed_loop_raises_and_closes_the_coroutines() -> None:
    loop = LoopThread(name="t-closed")
    loop.close()

    async def never() -> None:  # pragma: no cover - never awaited
        raise AssertionError

    coro = never()
    with pytest.raises(RuntimeError, match="closed"):
        loop.submit_many([coro])
    assert coro.cr_frame is None  # closed: no "never awaited" warning


# -- the response cache ---------------------------------------------------------------------------------
def test_buffered_answers_are_written_on_flush_and_seen_before(tmp_path: Path) -> None:
    model = ScriptedModel(default="ok")
    with Store(tmp_path) as store:
        cached = CachedModel(model, store)
        p = _prompt("hello")
        key = request_key(model, p, 0)
        assert cached.key(p, 0) == key
        with cached.buffered():
            g = asyncio.run(cached.agenerate(p, seed=0))
            assert g.text == "ok" and not g.cached
            assert store.get_responses([key]) == {}  # held, not written per request
            assert cached.lookup([key])[key].cached  # but answered from memory meanwhile
            cached.flush()
            assert key in store.get_responses([key])
            q = _prompt("again")
            asyncio.run(cached.agenerate(q, seed=0))
        assert cached.key(q, 0) in store.get_responses([cached.key(q, 0)])  # the block's end flushes
        r = _prompt("unbuffered")
        asyncio.run(cached.agenerate(r, seed=0))
        assert cached.key(r, 0) in store.get_responses([cached.key(r, 0)])  # outside: written at once


def _bench(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"q{i:03d}", "text": f"Question {i}?"}) + "\n" for i in range(n))
    )
    return path


def _config(bench: Path, base_url: str, *, defenses: list[str] | None = None) -> RunConfig:
    return RunConfig(
        name="http-path",
        models=[{"name": "openai", "params": {"base_url": base_url, "concurrency": 4}}],
        benchmarks=[{"name": "jsonl", "params": {"file": str(bench)}}],
        attacks=["none"],
        defenses=defenses or ["none"],
        judges=["refusal"],
        window=6,
    )


def test_a_rerun_is_answered_by_the_cache_looked_up_before_sending(tmp_path: Path) -> None:
    """Records gone, answers cached: the window answers every item from the cache (one lookup per
    refill on the main thread) and sends nothing; the records equal the first run's."""
    bench = _bench(tmp_path / "data", 20)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    with StubOpenAI() as stub:
        first = run(_config(bench, stub.base_url), tmp_path / "out", registry=reg, progress=False)
        assert first.written == 20 and first.errors == 0 and stub.requests == 20
        with sqlite3.connect(tmp_path / "out" / "mmsafe.sqlite") as db:
            assert db.execute("SELECT count(*) FROM responses").fetchone() == (20,)  # all flushed
            before = {k: json.loads(r)["response"] for k, r in db.execute("SELECT key, record FROM records")}
            db.execute("DELETE FROM records")
        second = run(_config(bench, stub.base_url), tmp_path / "out", registry=reg, progress=False)
        assert second.written == 20 and stub.requests == 20  # nothing sent again
    with Store(tmp_path / "out") as store:
        records = list(store.iter_records())
    assert {r.key: r.response for r in records} == before
    assert all(r.generation is not None and r.generation["cached"] for r in records)


def test_defended_items_share_the_window_and_the_cache(tmp_path: Path) -> None:
    """A defended cell asks the cache from its defense's thread; its answers are cached too."""
    bench = _bench(tmp_path / "data", 8)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    with StubOpenAI() as stub:
        result = run(
            _config(bench, stub.base_url, defenses=["none", "system-prompt"]),
            tmp_path / "out",
            registry=reg,
            progress=False,
        )
        assert result.written == 16 and result.errors == 0 and stub.requests == 16
    with sqlite3.connect(tmp_path / "out" / "mmsafe.sqlite") as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone() == (16,)


def test_the_window_restores_the_interpreter(tmp_path: Path) -> None:
    """The switch interval and the frozen heap are the window's only: both are back afterwards."""
    bench = _bench(tmp_path / "data", 3)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    interval = sys.getswitchinterval()
    with StubOpenAI() as stub:
        run(_config(bench, stub.base_url), tmp_path / "out", registry=reg, progress=False)
    assert sys.getswitchinterval() == interval and gc.get_freeze_count() == 0


def test_a_host_processs_own_freeze_is_left_alone(tmp_path: Path) -> None:
    """A process that froze its heap itself (a server before it forks) still has it frozen after a run."""
    bench = _bench(tmp_path / "data", 3)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with StubOpenAI() as stub:
            run(_config(bench, stub.base_url), tmp_path / "out", registry=reg, progress=False)
        # still frozen (objects freed by reference counting leave the count; an unfreeze would empty it)
        assert gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()


# -- the HTTP client's environment ---------------------------------------------------------------------
def test_the_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    assert _env_proxy("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    assert _env_proxy("https://api.example.com/v1") == "http://proxy.local:3128"
    assert _env_proxy("http://api.example.com/v1") is None  # no proxy named for plain http
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert _env_proxy("https://api.example.com/v1") is None


def test_a_spec_and_its_key_are_built_once_for_frozen_params() -> None:
    model = OpenAICompatModel(base_url="http://127.0.0.1:9/v1")
    spec = model.spec
    assert model.spec is spec and spec.key == spec.key
    fresh = OpenAICompatModel(base_url="http://127.0.0.1:9/v1").spec
    assert fresh == spec and fresh.key == spec.key and fresh is not spec
    assert spec.model_dump() == fresh.model_dump() and "key" not in spec.model_dump()
    other = OpenAICompatModel(base_url="http://127.0.0.1:9/v1", concurrency=3)
    assert other.spec.key == spec.key  # runtime params stay out of the key
    changed = OpenAICompatModel(base_url="http://127.0.0.1:8/v1")
    assert changed.spec.key != spec.key


def test_an_answer_from_a_closed_port_fails_its_item_with_the_reason() -> None:
    import socket

    with socket.socket() as s:  # a local port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = OpenAICompatModel(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff_base_s=0.01)
    (res,) = m.generate([_prompt("x")], seeds=[0])
    assert not isinstance(res, Generation)
    assert "after 2 attempts" in str(res) and "connection error" in str(res)
