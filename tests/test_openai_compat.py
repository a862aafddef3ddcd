"""The OpenAI-compatible backend against a real server: ``transformers serve`` on the tiny random LLaVA.

The server is started once per session on a free loopback port (skipped, with the reason, when it
cannot start). Faults are injected by a small proxy of our own (``_fault_proxy.py``) between the
backend and that server, so retries are tested on real HTTP, not on a mock of the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image as PILImage
from PIL import ImageDraw

from mmsafe.config import RunConfig
from mmsafe.errors import ConfigError
from mmsafe.models.base import GenerationParams
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.store import Store
from mmsafe.types import Generation, Image, Message, Prompt

aiohttp = pytest.importorskip(
    "aiohttp", reason="the openai backend needs aiohttp (pip install 'mmsafe[api]')"
)
httpx = pytest.importorskip("httpx", reason="the server fixture polls with httpx (pip install 'mmsafe[api]')")

from _fault_proxy import FaultProxy  # noqa: E402
from _stub_openai import StubOpenAI  # noqa: E402
from mmsafe.models.openai import (  # noqa: E402
    EndpointError,
    OpenAICompatModel,
    _ErrorAnswer,
    _Reply,
    _server_message,
    image_data_url,
    parse_retry_after,
    sniff_mime,
    to_openai_messages,
)

MAX_TOKENS = 4
SECRET = "sk-mmsafe-test-SECRET-0123456789"


# -- helpers ---------------------------------------------------------------------------------------
def _png(i: int, size: tuple[int, int] = (40, 32)) -> bytes:
    img = PILImage.new("RGB", size, ((53 * i) % 256, (97 * i) % 256, 140))
    ImageDraw.Draw(img).text((2, 2), str(i), fill=(255, 255, 255))
    return Image.from_pil(img).data


def _prompt(text: str, *, image: int | None = 0, system: str | None = None) -> Prompt:
    msgs = []
    if system is not None:
        msgs.append(Message.system(system))
    imgs = [Image.from_bytes(_png(image), source=f"{image}.png")] if image is not None else []
    msgs.append(Message.user(text, imgs))
    return Prompt(messages=tuple(msgs))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command() -> list[str] | None:
    exe = Path(sys.executable).with_name("transformers")
    if exe.exists():
        return [str(exe), "serve"]
    found = shutil.which("transformers")
    return [found, "serve"] if found else None


class Server:
    def __init__(self, port: int, model_path: str) -> None:
        self.port = port
        self.model_path = model_path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def model(self, base_url: str | None = None, **params) -> OpenAICompatModel:
        params.setdefault("generation", {"max_new_tokens": MAX_TOKENS})
        return OpenAICompatModel(base_url=base_url or self.base_url, model=self.model_path, **params)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``transformers serve`` preloading a tiny random LLaVA, on a free 127.0.0.1 port."""
    for mod in ("torch", "transformers", "fastapi", "uvicorn"):
        pytest.importorskip(
            mod, reason=f"transformers serve needs {mod} (pip install 'transformers[serving]')"
        )
    cmd = _serve_command()
    if cmd is None:
        pytest.skip("the `transformers` command is not installed")
    from mmsafe.models.tiny_llava import build_tiny_llava

    root = tmp_path_factory.mktemp("openai-serve")
    model_dir = build_tiny_llava(root / "tiny-llava")
    port = _free_port()
    log_path = root / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(root / "hf")}
    env["OMP_NUM_THREADS"] = "1"  # a tiny model: extra threads only slow it down on a busy machine
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port), str(model_dir)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: teardown ends it and its children
        )
    srv = Server(port, str(model_dir))

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-1500:]

    try:
        deadline = time.monotonic() + 120.0
        ready = False
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.skip(f"transformers serve exited with {proc.returncode}: {log_tail()}")
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            time.sleep(0.25)
        if not ready:
            pytest.skip(f"transformers serve not ready within 120 s: {log_tail()}")
        warm = srv.model().generate([_prompt("warm up")], seeds=[0])[0]
        if isinstance(warm, Exception):
            pytest.skip(f"transformers serve does not answer chat completions: {warm}; log: {log_tail()}")
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _write_bench(folder: Path, n: int) -> Path:
    (folder / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        (folder / "img" / f"{i}.png").write_bytes(_png(i, (32 + i % 5, 28 + i % 3)))
        row = {"id": f"q{i:03d}", "text": f"Question {i}: what is in the picture?", "image": f"img/{i}.png"}
        lines.append(json.dumps(row))
    path = folder / "bench.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_bench(tmp_path: Path, n: int, model_params: dict) -> list:
    """Run ``n`` items (the same bench and --out on a second call: a resume) and return every record."""
    bench = tmp_path / "data" / "bench.jsonl"
    if not bench.exists():
        _write_bench(tmp_path / "data", n)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    config = RunConfig(
        name="openai-e2e",
        models=[{"name": "openai", "params": model_params}],
        benchmarks=[{"name": "jsonl", "params": {"file": str(bench)}}],
        attacks=["none"],
        judges=["refusal"],
    )
    out = tmp_path / "out"
    result = run(config, out, registry=reg, progress=False)
    with Store(out) as store:
        records = list(store.iter_records())
    assert result.written == len(records)
    return records


# -- pure parts (no server) --------------------------------------------------------------------------
def test_params_validate_and_key_stays_out_of_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSAFE_TEST_KEY", SECRET)
    m = OpenAICompatModel(
        base_url="http://127.0.0.1:9/v1/", api_key_env="MMSAFE_TEST_KEY", concurrency=3, health_check=False
    )
    m.load()
    spec = m.spec
    assert spec.params["base_url"] == "http://127.0.0.1:9/v1"
    assert spec.runtime["concurrency"] == 3 and "timeout_s" in spec.runtime and "max_retries" in spec.runtime
    assert spec.runtime["deadline_s"] is None and spec.runtime["max_response_bytes"] == 8 * 1024 * 1024
    assert SECRET not in spec.model_dump_json()
    # execution-only params do not change the cache key
    assert (
        OpenAICompatModel(
            base_url="http://127.0.0.1:9/v1",
            max_retries=0,
            concurrency=1,
            deadline_s=5,
            max_response_bytes=4096,
        ).spec.key
        == spec.key
    )
    for bad in (
        {"base_url": "127.0.0.1:8000/v1"},
        {"base_url": "http://h/v1/chat/completions"},
        {"base_url": "http://h/v1", "api_key_env": "sk-not a name"},
        {"base_url": "http://h/v1", "extra_body": {"messages": []}},
        {"base_url": "http://h/v1", "api_key": SECRET},
    ):
        with pytest.raises(ValueError):
            OpenAICompatModel(**bad)


def test_missing_key_variable_fails_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MMSAFE_ABSENT_KEY", raising=False)
    m = OpenAICompatModel(base_url="http://127.0.0.1:9/v1", api_key_env="MMSAFE_ABSENT_KEY")
    with pytest.raises(ConfigError, match=r"MMSAFE_ABSENT_KEY.*not set"):
        m.load()


def test_request_body_and_messages() -> None:
    m = OpenAICompatModel(
        base_url="http://127.0.0.1:9/v1",
        model="m",
        generation=GenerationParams(max_new_tokens=7, temperature=0.7, top_p=0.9),
        extra_body={"top_k": 5},
    )
    body = m.build_body(_prompt("hello", system="be careful"), seed=42)
    assert body["max_tokens"] == 7 and body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["seed"] == 42 and body["top_k"] == 5 and body["model"] == "m" and body["stream"] is False
    system, user = body["messages"]
    assert system == {"role": "system", "content": "be careful"}
    assert [p["type"] for p in user["content"]] == ["image_url", "text"]
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    greedy = OpenAICompatModel(base_url="http://127.0.0.1:9/v1").build_body(_prompt("hi", image=None), seed=1)
    assert "seed" not in greedy and "model" not in greedy and "top_p" not in greedy
    assert greedy["messages"] == [{"role": "user", "content": "hi"}]


def test_images_keep_their_format_or_become_png() -> None:
    rgb = PILImage.new("RGB", (8, 8), (1, 2, 3))
    encoded = {}
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP"):
        buf = __import__("io").BytesIO()
        rgb.save(buf, format=fmt)
        encoded[fmt] = Image.from_bytes(buf.getvalue())
    assert sniff_mime(encoded["JPEG"].data) == "image/jpeg"
    assert image_data_url(encoded["JPEG"]).startswith("data:image/jpeg;base64,")
    assert image_data_url(encoded["WEBP"]).startswith("data:image/webp;base64,")
    assert image_data_url(encoded["GIF"]).startswith("data:image/gif;base64,")
    assert image_data_url(encoded["BMP"]).startswith("data:image/png;base64,")  # re-encoded
    assert image_data_url(encoded["JPEG"], image_format="png").startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="only user messages"):
        to_openai_messages(
            Prompt(messages=(Message(role="assistant", content=Message.user("x", [encoded["PNG"]]).content),))
        )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # 10 s after `now` below
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=now) == expected


def test_backoff_is_full_jitter_and_capped() -> None:
    m = OpenAICompatModel(
        base_url="http://127.0.0.1:9/v1", backoff_base_s=1.0, backoff_max_s=5.0, retry_after_max_s=7
    )
    for attempt, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0)]:
        delays = [m._backoff(attempt, None) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > 0.5 * cap  # spread over the whole range, not a fixed delay
    assert m._backoff(0, 3.0) == 3.0 and m._backoff(5, 100.0) == 7.0


def test_connection_refused_gives_up_with_reason() -> None:
    port = _free_port()  # nothing listens there
    m = OpenAICompatModel(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_base_s=0.01)
    (res,) = m.generate([_prompt("x")], seeds=[0])
    assert isinstance(res, EndpointError) and res.attempts == 3 and res.status is None
    assert "after 3 attempts" in str(res) and "connection error" in str(res)


def test_retry_after_is_honoured_and_capped() -> None:
    with FaultProxy(None, rate=1.0, modes=("429",), retry_after="1") as proxy:
        m = OpenAICompatModel(base_url=proxy.base_url, max_retries=1)
        t0 = time.monotonic()
        (res,) = m.generate([_prompt("x")], seeds=[0])
        waited = time.monotonic() - t0
        assert isinstance(res, EndpointError) and res.status == 429 and res.attempts == 2
        assert "HTTP 429: injected fault 429" in str(res)
        assert waited >= 0.95
    with FaultProxy(None, rate=1.0, modes=("429",), retry_after="3600") as proxy:
        m = OpenAICompatModel(base_url=proxy.base_url, max_retries=2, retry_after_max_s=0.05)
        t0 = time.monotonic()
        (res,) = m.generate([_prompt("x")], seeds=[0])
        assert isinstance(res, EndpointError) and res.attempts == 3 and proxy.requests == 3
        assert time.monotonic() - t0 < 5.0


def test_timeouts_are_retried() -> None:
    with FaultProxy(None, rate=1.0, modes=("hang",), hang_s=3.0) as proxy:
        m = OpenAICompatModel(base_url=proxy.base_url, timeout_s=0.3, max_retries=1, backoff_base_s=0.01)
        (res,) = m.generate([_prompt("x")], seeds=[0])
        assert isinstance(res, EndpointError) and res.attempts == 2 and proxy.requests == 2
        assert "timeout" in str(res)


# -- against the stub server (tests/_stub_openai.py: fast, offline) ---------------------------------------
def _text_prompt(text: str) -> Prompt:
    return Prompt(messages=(Message.user(text, []),))


def _one(m: OpenAICompatModel, text: str):
    t0 = time.monotonic()
    (res,) = m.generate([_text_prompt(text)], seeds=[0])
    return res, time.monotonic() - t0


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("error", "finish_reason 'error': Error: the model backend crashed"),
        ("error_key", "with an error body: upstream overloaded"),
        ("null", "no content (message.content is null)"),
    ],
)
def test_error_shaped_answers_are_retried_errors(behaviour: str, reason: str) -> None:
    with StubOpenAI() as stub:
        m = OpenAICompatModel(base_url=stub.base_url, max_retries=2, backoff_base_s=0.01)
        res, _ = _one(m, f"q [stub:{behaviour}]")
        assert isinstance(res, EndpointError) and res.attempts == 3 and res.status == 200, res
        assert reason in str(res) and "after 3 attempts" in str(res)
        # retryable like a 5xx: an error first, then a real answer
        res, _ = _one(m, f"q [stub:{behaviour},normal]")
        assert isinstance(res, Generation), res
        assert res.text == f"echo: q [stub:{behaviour},normal]" and res.metadata["retries"] == 1
        assert stub.served[behaviour] == 4 and stub.served["normal"] == 1


def _reply(doc: object) -> _Reply:
    return _Reply(200, json.dumps(doc).encode(), {}, "OK")


def _choice(message: dict, finish: object = "stop", **top: object) -> dict:
    return {"choices": [{"message": message, "finish_reason": finish}], **top}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_choice({"content": "hi"}), ("hi", "stop")),
        (_choice({"content": ""}, "length"), ("", "length")),  # an empty answer is still an answer
        (
            _choice({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            ("ab", "stop"),
        ),
        (_choice({"content": None, "refusal": "no"}), ("no", "stop")),
        (_choice({"content": None, "tool_calls": [{"id": "1"}]}, "tool_calls"), ("", "tool_calls")),
        (_choice({"content": "hi"}, error=None), ("hi", "stop")),  # `"error": null` is not an error
        (_choice({"content": "hi"}, 7, usage={"prompt_tokens": 1e400}), ("hi", None)),  # odd types tolerated
        (_choice({"content": "Error: boom"}, "error"), "finish_reason 'error': Error: boom"),
        (_choice({"content": "fine"}, error={"message": "but failed"}), "with an error body: but failed"),
        ({"error": "quota exceeded"}, "with an error body: quota exceeded"),
        (_choice({"content": None}), "no content"),
        (_choice({}), "no content"),
        (_choice({"content": None, "refusal": ""}), "no content"),
        (_choice({"content": "Error: \x1b[31mred\x1b[0m"}, "error"), "Error: \ufffd[31mred\ufffd[0m"),
        ({"choices": []}, EndpointError),
        ([1, 2], EndpointError),
        ({"choices": ["x"]}, EndpointError),
    ],
)
def test_parse_table(doc: object, expected: object) -> None:
    m = OpenAICompatModel(base_url="http://127.0.0.1:9/v1")
    kw = {"url": "http://127.0.0.1:9/v1/chat/completions", "latency": 0.1, "retries": 0, "total": 0.1}
    if isinstance(expected, tuple):
        g = m._parse(_reply(doc), **kw)
        assert (g.text, g.finish_reason) == expected
    elif expected is EndpointError:
        with pytest.raises(EndpointError, match="is not a chat completion"):
            m._parse(_reply(doc), **kw)
    else:
        with pytest.raises(_ErrorAnswer) as info:
            m._parse(_reply(doc), **kw)
        assert expected in str(info.value) and "\x1b" not in str(info.value)
    deep = b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(EndpointError, match="not a chat completion"):
        m._parse(_Reply(200, deep, {}, "OK"), **kw)


def test_server_message_is_one_clean_line() -> None:
    assert _server_message(b'{"error": {"message": "bad \\u001b[2J\\nthing"}}') == "bad \ufffd[2J thing"
    assert _server_message(b"", "Bad Gateway") == "Bad Gateway"
    assert _server_message(b"x" * 1000).endswith("…") and len(_server_message(b"x" * 1000)) == 301


def test_error_answers_are_never_cached_or_stored(tmp_path: Path) -> None:
    with StubOpenAI(behaviour="error") as stub:
        params = {"base_url": stub.base_url, "max_retries": 1, "backoff_base_s": 0.01, "concurrency": 2}
        records = _run_bench(tmp_path, 3, params)
        assert len(records) == 3 and stub.requests == 6
        for r in records:
            assert r.error_stage == "generate" and r.response is None and r.judgement is None
            assert "finish_reason 'error'" in r.error
        with sqlite3.connect(tmp_path / "out" / "mmsafe.sqlite") as db:
            assert db.execute("SELECT count(*) FROM responses").fetchone() == (0,)
        stub.behaviour = "null"  # the rerun retries them: a null answer is no better
        records = _run_bench(tmp_path, 3, params)
        assert all("no content" in r.error for r in records) and stub.requests == 12
        stub.behaviour = "normal"
        records = _run_bench(tmp_path, 3, params)
        assert stub.requests == 15
        assert all(r.error is None and r.response.startswith("echo: Question") for r in records)
        with sqlite3.connect(tmp_path / "out" / "mmsafe.sqlite") as db:
            assert db.execute("SELECT count(*) FROM responses").fetchone() == (3,)


def test_a_run_inside_a_running_event_loop(tmp_path: Path) -> None:
    """A notebook cell: the runner, a defense calling the model, PAIR's attacker and target (all on
    the endpoint) run while the caller's event loop is running."""
    bench = _write_bench(tmp_path / "data", 3)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    with StubOpenAI() as stub:
        endpoint = {"name": "openai", "params": {"base_url": stub.base_url, "concurrency": 2}}
        config = RunConfig(
            name="notebook",
            models=[endpoint],
            benchmarks=[{"name": "jsonl", "params": {"file": str(bench)}}],
            attacks=["none", {"name": "pair", "params": {"attacker": endpoint, "n_iterations": 1}}],
            defenses=["none", "adashield"],
            judges=["refusal"],
        )

        async def cell() -> object:
            return run(config, tmp_path / "out", registry=reg, progress=False)

        result = asyncio.run(cell())
    with Store(tmp_path / "out") as store:
        records = list(store.iter_records())
    assert len(records) == 12 and result.errors == 0, [r.error for r in records if r.error]
    assert all(r.error is None and r.response.startswith("echo: ") for r in records)
    pair = [r for r in records if r.attack.name == "pair"]
    assert len(pair) == 6 and all(r.prompt["attack_metadata"]["queries"] == 1 for r in pair)


@pytest.mark.parametrize("defense", ["system-prompt", "adashield"])
def test_a_defended_model_shares_the_sessions_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defense: str
) -> None:
    """A defense runs in a worker thread and calls the model's sync ``generate``: those calls go to
    the runner's session loop, so one HTTP client serves every request, defended or not."""
    made: list[int] = []
    real = aiohttp.ClientSession

    def counted(*args: object, **kwargs: object) -> aiohttp.ClientSession:
        made.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(aiohttp, "ClientSession", counted)
    bench = _write_bench(tmp_path / "data", 12)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    with StubOpenAI() as stub:
        config = RunConfig(
            name="defended",
            models=[{"name": "openai", "params": {"base_url": stub.base_url, "concurrency": 3}}],
            benchmarks=[{"name": "jsonl", "params": {"file": str(bench)}}],
            attacks=["none"],
            defenses=["none", defense],
            judges=["refusal"],
        )
        result = run(config, tmp_path / "out", registry=reg, progress=False)
        assert result.written == 24 and result.errors == 0
        assert stub.requests >= 24  # every item asked the server, the defended ones included
    assert len(made) == 1  # one client for the session (was: a new one per defended call)
    with Store(tmp_path / "out") as store:
        defended = [r for r in store.iter_records() if r.defense.name == defense]
    assert len(defended) == 12 and all(r.response.startswith("echo: ") for r in defended)


def test_a_trickling_answer_is_cut_at_timeout_s() -> None:
    # one byte every 0.05 s: a per-read timeout never fires, and the whole body would take ~200 s
    with StubOpenAI(trickle_s=0.05, trickle_bytes=4096) as stub:
        m = OpenAICompatModel(base_url=stub.base_url, timeout_s=0.5, max_retries=0)
        res, took = _one(m, "q [stub:trickle]")
        assert isinstance(res, EndpointError) and res.status is None
        assert "timeout (no complete answer within 0.5 s)" in str(res)
        assert 0.45 <= took < 3.0
        res, _ = _one(m, "fine")  # the connection cut mid-body did not poison the client
        assert isinstance(res, Generation) and res.text == "echo: fine"


def test_deadline_covers_all_attempts_and_backoffs() -> None:
    with StubOpenAI(trickle_s=0.05, trickle_bytes=4096) as stub:
        m = OpenAICompatModel(
            base_url=stub.base_url, timeout_s=0.4, max_retries=50, backoff_base_s=0.01, deadline_s=1.0
        )
        res, took = _one(m, "q [stub:trickle]")
        assert isinstance(res, EndpointError), res
        assert "no answer within 1 s (deadline_s; " in str(res) and "last: timeout" in str(res)
        assert 3 <= res.attempts <= 4 and stub.requests == res.attempts  # 0.4 + 0.4 + the 0.2 left
        assert 0.95 <= took < 3.0
    # a backoff that would end past the deadline is not started
    with FaultProxy(None, rate=1.0, modes=("429",), retry_after="3") as proxy:
        m = OpenAICompatModel(base_url=proxy.base_url, max_retries=5, deadline_s=1.0)
        res, took = _one(m, "x")
        assert isinstance(res, EndpointError) and res.attempts == 1 and proxy.requests == 1
        assert "no answer within 1 s (deadline_s; 1 attempt); last: HTTP 429" in str(res)
        assert took < 0.9


def _deadline_run(tmp_path: Path, base_url: str, *, limits: dict, defense: str = "none", **params: object):
    bench = tmp_path / "data" / "bench.jsonl"
    if not bench.exists():
        _write_bench(tmp_path / "data", 1)
    reg = Registry(entry_points=False)
    reg.register("model", "openai", OpenAICompatModel)
    config = RunConfig(
        name="deadline",
        models=[{"name": "openai", "params": {"base_url": base_url, **params}}],
        benchmarks=[{"name": "jsonl", "params": {"file": str(bench)}}],
        attacks=["none"],
        defenses=[defense],
        judges=["refusal"],
        limits=limits,
    )
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}"
    run(config, out, registry=reg, progress=False)
    with Store(out) as store:
        (record,) = store.iter_records()
    return record


def test_a_models_deadline_s_overrides_the_runs_request_deadline(tmp_path: Path) -> None:
    """One knob, two levels: limits.request_deadline_s for every async model of the run, a model's
    deadline_s for that model (larger or smaller); the error names the setting that applied."""
    with StubOpenAI(behaviour="delay", delay_s=1.0) as stub:
        rec = _deadline_run(tmp_path, stub.base_url, limits={"request_deadline_s": 0.3})
        assert rec.error == "DeadlineExceeded: no answer within 0.3 s (limits.request_deadline_s)"
        rec = _deadline_run(tmp_path, stub.base_url, limits={"request_deadline_s": 0.3}, deadline_s=20)
        assert rec.error is None and rec.response.startswith("echo: ")  # the model's own, longer
        rec = _deadline_run(tmp_path, stub.base_url, limits={"request_deadline_s": 20}, deadline_s=0.3)
        assert rec.error == "DeadlineExceeded: no answer within 0.3 s (deadline_s of model 'openai')"


@pytest.mark.parametrize("defense", ["none", "system-prompt"])
def test_the_runs_deadline_stops_retries_that_cannot_finish(tmp_path: Path, defense: str) -> None:
    """The backend knows the run's deadline (also behind a defense, in its worker thread): a
    Retry-After that would end past it is not waited out."""
    with FaultProxy(None, rate=1.0, modes=("429",), retry_after="3") as proxy:
        rec = _deadline_run(
            tmp_path,
            proxy.base_url,
            limits={"request_deadline_s": 1},
            defense=defense,
            max_retries=5,
            health_check=False,  # every request is a 429 here, the health check's too
        )
        assert proxy.requests == 1
    assert rec.error_stage == "generate" and rec.error.startswith("EndpointError: ")
    assert "no answer within 1 s (limits.request_deadline_s; 1 attempt); last: HTTP 429" in rec.error


@pytest.mark.parametrize("behaviour", ["huge", "huge_declared", "gzip_bomb"])
def test_an_oversize_answer_is_refused(behaviour: str) -> None:
    with StubOpenAI(huge_bytes=3 * 1024 * 1024) as stub:
        m = OpenAICompatModel(base_url=stub.base_url, max_response_bytes=1024 * 1024, max_retries=3)
        res, _ = _one(m, f"q [stub:{behaviour}]")
        assert isinstance(res, EndpointError) and res.attempts == 1 and stub.requests == 1  # not retried
        assert "larger than max_response_bytes (1 MiB" in str(res)
        if behaviour == "huge_declared":
            assert "Content-Length 3 MiB" in str(res)
        big = OpenAICompatModel(base_url=stub.base_url, max_response_bytes=4 * 1024 * 1024)
        res, _ = _one(big, f"q [stub:{behaviour}]")
        assert isinstance(res, Generation) and len(res.text) > 3_000_000


def test_base_url_with_credentials_is_rejected() -> None:
    for url in ("http://user:s3cret-pw@127.0.0.1:8000/v1", "https://tok-s3cret-pw@api.example.com/v1"):
        with pytest.raises(ValueError, match="api_key_env") as info:
            OpenAICompatModel(base_url=url)
        assert "s3cret" not in str(info.value)
        with pytest.raises(ConfigError, match="must not hold credentials") as info:
            Registry(entry_points=False).create("model", "openai", {"base_url": url}, where="models[0]")
        assert "s3cret" not in str(info.value)
    assert OpenAICompatModel(base_url="http://127.0.0.1:8000/v1/a@b").params.base_url.endswith("/a@b")


@pytest.mark.parametrize("verbose", [False, True])
def test_request_logging_only_with_verbose(tmp_path: Path, verbose: bool) -> None:
    bench = _write_bench(tmp_path / "data", 1)
    with StubOpenAI() as stub:
        cfg = tmp_path / "run.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "name": "log",
                    "models": [{"name": "openai", "params": {"base_url": stub.base_url}}],
                    "benchmarks": [{"name": "jsonl", "params": {"file": str(bench)}}],
                    "attacks": ["none"],
                    "judges": ["refusal"],
                }
            )
        )
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, "-m", "mmsafe", *(["-v"] if verbose else []), "run", str(cfg)]
        done = subprocess.run(
            [*cmd, "--out", str(tmp_path / "out"), "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert stub.requests == 1
    assert ("HTTP Request: POST" in done.stderr) == verbose, done.stderr[-2000:]


# -- against the real server ---------------------------------------------------------------------------
@pytest.mark.slow
def test_one_request_with_image(server: Server) -> None:
    m = server.model(generation={"max_new_tokens": MAX_TOKENS})
    m.load()
    with_image, text_only = m.generate(
        [
            _prompt("What is in the image?", image=3, system="Answer briefly."),
            _prompt("What is in the image?", image=None),
        ],
        seeds=[0, 0],
    )
    assert not isinstance(with_image, Exception), with_image
    assert not isinstance(text_only, Exception), text_only
    assert isinstance(with_image.text, str) and with_image.text.strip()
    assert with_image.finish_reason in ("length", "stop")
    assert 1 <= (with_image.usage.completion_tokens or 0) <= MAX_TOKENS
    # the image reached the model: 16 patches + CLS become image tokens in the prompt
    assert with_image.usage.prompt_tokens - text_only.usage.prompt_tokens >= 16
    assert with_image.latency_s > 0 and with_image.metadata["retries"] == 0
    # the async path on a caller's loop, twice (a fresh loop each time gets its own client)
    for _ in range(2):
        g = asyncio.run(m.agenerate(_prompt("Again?", image=1), seed=0))
        assert g.text.strip() and g.usage.prompt_tokens
    assert len(m._clients) == 0  # the clients of finished loops were closed, not kept
    m.close()


@pytest.mark.slow
def test_generate_from_inside_a_running_loop(server: Server) -> None:
    m = server.model()

    async def notebook_cell():
        return m.generate([_prompt("hi", image=2)], seeds=[0])

    (g,) = asyncio.run(notebook_cell())
    assert not isinstance(g, Exception) and g.text


@pytest.mark.slow
def test_client_error_is_not_retried(server: Server) -> None:
    with FaultProxy(server.port, rate=0.0) as proxy:
        m = OpenAICompatModel(base_url=proxy.base_url, model="not-the-served-model", max_retries=5)
        (res,) = m.generate([_prompt("x")], seeds=[0])
        assert isinstance(res, EndpointError) and res.status == 400 and res.attempts == 1
        assert proxy.requests == 1
        assert "HTTP 400" in str(res) and "not-the-served-model" in str(res)  # the server's own message


@pytest.mark.slow
def test_runner_end_to_end_with_api_key(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMSAFE_TEST_KEY", SECRET)
    params = {
        "base_url": server.base_url,
        "model": server.model_path,
        "api_key_env": "MMSAFE_TEST_KEY",
        "concurrency": 4,
        "generation": {"max_new_tokens": MAX_TOKENS},
    }
    records = _run_bench(tmp_path, 6, params)
    assert sorted(r.sample_id for r in records) == [f"q{i:03d}" for i in range(6)]
    for r in records:
        assert r.error is None, r.error
        assert r.response and r.generation["usage"]["prompt_tokens"] > 16
        assert len(r.image_hashes) == 1 and r.model.name == "openai"
        assert r.judgement is not None
    # the key is nowhere on disk: not in records, specs, caches or reports
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.parametrize("max_retries", [0, 8])
def test_faults_lose_nothing(server: Server, tmp_path: Path, max_retries: int) -> None:
    """~20% of requests fail (500, 429 + Retry-After: 0, dropped connections): every item is accounted for."""
    n = 40
    # seed 1 fails 10 of the 40 first attempts (4×500, 2×429, 4 drops); the draws depend only on
    # each request's messages, so they are the same in every session and at any concurrency
    with FaultProxy(server.port, rate=0.2, seed=1) as proxy:
        params = {
            "base_url": proxy.base_url,
            "model": server.model_path,
            "concurrency": 8,
            "max_retries": max_retries,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "generation": {"max_new_tokens": MAX_TOKENS},
            "health_check": False,  # the faults are drawn for chat requests; the check's GET is not one
        }
        records = _run_bench(tmp_path, n, params)
    assert len(records) == n
    assert len({r.key for r in records}) == n and len({r.sample_id for r in records}) == n
    assert set(proxy.faults) == {"500", "429", "drop"}, proxy.faults  # every kind was exercised
    assert 0.1 * n <= proxy.total_faults <= 0.5 * n
    answered = [r for r in records if r.error is None]
    failed = [r for r in records if r.error is not None]
    assert proxy.forwarded == len(answered)  # each answered item reached the server exactly once
    if max_retries == 0:
        assert len(failed) == proxy.total_faults  # one attempt each: a fault fails its item
        for r in failed:
            assert r.error_stage == "generate" and r.response is None
            assert "after 1 attempt" in r.error
            assert any(s in r.error for s in ("HTTP 500", "HTTP 429", "Server disconnected")), r.error
    else:
        assert not failed, [r.error for r in failed]
        assert sum(r.generation["metadata"]["retries"] for r in answered) == proxy.total_faults


def test_the_health_check_stops_a_run_against_no_server_or_a_refused_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At load, before any item: GET {base_url}/models. Nothing listening, or a 401, is a ConfigError that says
    what to do; a model the server does not list is a warning; health_check false skips it."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dead = OpenAICompatModel(base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ConfigError, match=r"no answer from .*start the server first"):
        dead.load()
    OpenAICompatModel(base_url=f"http://127.0.0.1:{port}/v1", health_check=False).load()  # no check, no error
    with StubOpenAI() as stub:
        ok = OpenAICompatModel(base_url=stub.base_url, model="stub")
        ok.load()
        assert stub.model_lists == 1 and stub.requests == 0
        assert ok.check_health() == ["stub"]
        with caplog.at_level("WARNING", logger="mmsafe.models.openai"):
            OpenAICompatModel(base_url=stub.base_url, model="llava-13b").load()
        assert "does not list 'llava-13b'" in caplog.text
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MMSAFE_TEST_KEY", "sk-test-secret-123")
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        with pytest.raises(ConfigError, match=r"refused the API key .*MMSAFE_TEST_KEY") as info:
            OpenAICompatModel(base_url=url, api_key_env="MMSAFE_TEST_KEY").load()
        assert "sk-test-secret-123" not in str(info.value)
    finally:
        server.shutdown()
        server.server_close()
