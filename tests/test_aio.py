"""mmsafe.aio: synchronous code calling async code runs on the right event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

import pytest

from mmsafe.aio import generate_all, in_thread, run_sync
from mmsafe.config import RunConfig
from mmsafe.datasets.base import Benchmark
from mmsafe.models.base import ModelBackend
from mmsafe.models.scripted import ScriptedModel, ScriptedParams
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.store import Store
from mmsafe.types import Expected, Generation, Message, Prompt, Sample


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


# -- generate_all: the one way synchronous code calls any backend ------------------------------------
class AsyncOnly(ModelBackend):
    """An I/O backend with ``agenerate`` only (its ``generate`` is the base class's: not implemented)."""

    name: ClassVar[str] = "async-only"
    Params = ScriptedParams
    capabilities: ClassVar[frozenset[str]] = frozenset({"images", "system_prompt"})
    is_async: ClassVar[bool] = True
    in_flight = 0
    most = 0

    async def agenerate(self, prompt: Prompt, *, seed: int) -> Generation:
        cls = type(self)
        cls.in_flight += 1
        cls.most = max(cls.most, cls.in_flight)
        try:
            await asyncio.sleep(0.005)
            text = prompt.messages[-1].text
            if "boom" in text:
                raise RuntimeError("scripted failure")
            return Generation(text=f"async: {text}", finish_reason="stop")
        finally:
            cls.in_flight -= 1


def _prompts(*texts: str) -> list[Prompt]:
    return [Prompt(messages=(Message.user(t),)) for t in texts]


@pytest.mark.parametrize("in_a_loop", [False, True])
def test_generate_all_answers_from_an_async_only_backend(in_a_loop):
    AsyncOnly.most = 0
    model = AsyncOnly(concurrency=2)
    prompts = _prompts("a", "boom", "c", "d", "e")

    async def cell():
        return generate_all(model, prompts, [0] * 5)

    out = asyncio.run(cell()) if in_a_loop else generate_all(model, prompts, [0] * 5)
    assert [o.text if isinstance(o, Generation) else str(o) for o in out] == [
        "async: a",
        "scripted failure",
        "async: c",
        "async: d",
        "async: e",
    ]
    assert AsyncOnly.most == 2  # the backend's own concurrency, never more


def test_generate_all_isolates_the_item_that_breaks_a_batch():
    class Breaks(ScriptedModel):
        def generate(self, prompts, *, seeds):
            if len(prompts) > 1 and any("bad" in p.messages[-1].text for p in prompts):
                raise RuntimeError("the whole batch")
            if "bad" in prompts[0].messages[-1].text:
                raise ValueError("this one")
            return super().generate(prompts, seeds=seeds)

    out = generate_all(Breaks(echo=True), _prompts("x", "bad", "y"), [0, 0, 0])
    assert out[0].text == "x" and out[2].text == "y"
    assert isinstance(out[1], ValueError) and str(out[1]) == "this one"


class _Two(Benchmark):
    """Two requests."""

    name: ClassVar[str] = "two"

    def load(self):
        for i in range(2):
            yield Sample(id=f"s{i}", benchmark="two", text=f"request {i}", expected=Expected.refuse)


def test_pair_and_a_defense_against_an_async_only_model_inside_a_running_loop(tmp_path):
    """A notebook cell: the runner, PAIR's target calls, a defense's calls and the judges all run
    under a running loop. Before: PAIR called ``asyncio.run`` for a backend without ``generate``
    (refused inside a running loop), and a defense called that missing ``generate``."""
    reg = Registry(entry_points=False)
    reg.register("model", "async-only", AsyncOnly)
    reg.register("benchmark", "two", _Two)
    config = RunConfig(
        name="nb",
        models=["async-only"],
        benchmarks=["two"],
        attacks=["none", {"name": "pair", "params": {"attacker": "scripted", "n_iterations": 2}}],
        defenses=["none", "system-prompt"],  # a defense calls the model's sync generate
        judges=["refusal"],
    )

    async def cell():
        return run(config, tmp_path, registry=reg, progress=False)

    result = asyncio.run(cell())
    with Store(tmp_path) as store:
        records = list(store.iter_records())
    assert result.errors == 0 and len(records) == 8, [r.error for r in records]
    assert all(r.error is None and r.response.startswith("async: ") for r in records)
    for r in (r for r in records if r.attack.name == "pair"):
        meta = r.prompt["attack_metadata"]
        assert meta["queries"] == 1 and meta["success"] is True  # the target's first answer is no refusal
