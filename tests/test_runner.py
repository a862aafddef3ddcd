"""Runner logic on a scripted backend: grid, resume, caching, per-item errors, config errors."""

from __future__ import annotations

import gc
import json
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from mmsafe.attacks.base import Attack
from mmsafe.config import load_config
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError, GridError
from mmsafe.judges.base import Judge
from mmsafe.models.scripted import ScriptedModel
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.store import Store
from mmsafe.types import Expected, Generation, Image, Judgement, Message, Prompt, Sample


class ListParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = 6
    broken: bool = False
    repeat_id: bool = False
    explode_at: int | None = None  # raise a KeyError (a malformed copy of built-in data) at this row


class ListBench(Benchmark):
    """An in-memory benchmark for tests."""

    name: ClassVar[str] = "list"
    Params = ListParams

    def load(self) -> Iterator[Sample]:
        for i in range(self.params.n):
            if i == self.params.explode_at:
                raise KeyError("Behavior")
            yield Sample(
                id=f"s{i}",
                benchmark="list",
                category="even" if i % 2 == 0 else "odd",
                text=f"request number {i}",
                expected=Expected.refuse if i < self.params.n - 1 else Expected.comply,
            )
        if self.params.broken:
            yield Sample(id="bad-row", benchmark="list", error="row 7: image file missing")
            yield Sample(
                id="bad-image",
                benchmark="list",
                text="describe the image",
                images=(Image.from_bytes(b"not an image", source="bad.png"),),
            )
        if self.params.repeat_id:
            yield Sample(id="s0", benchmark="list", text="again")


class NeedsGradients(Attack):
    """Pretends to be white-box."""

    name: ClassVar[str] = "needs-grad"
    requires = frozenset({"gradients"})

    def apply(self, sample, *, seed, target=None):  # pragma: no cover - never reached
        return Prompt(messages=(Message.user(sample.text),))


class OddNotes(Attack):
    """The plain request, with notes JSON cannot hold on sample s1 (a lone surrogate)."""

    name: ClassVar[str] = "odd-notes"

    def apply(self, sample, *, seed, target=None):
        notes = {"note": "bad \udc80"} if sample.id == "s1" else {"note": "fine"}
        return Prompt(messages=(Message.user(sample.text),), attack_metadata=notes)


class TrackedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    out: str  # the run folder, to see which items are already stored


class Tracked(Attack):
    """The plain request; each time it builds prompts it checks that every earlier prompt whose records
    are in the store has been let go (``LIVE`` holds weak references only)."""

    name: ClassVar[str] = "tracked"
    Params = TrackedParams
    LIVE: ClassVar[dict[str, weakref.ref]] = {}
    CHECKED: ClassVar[list[str]] = []
    KEPT: ClassVar[list[str]] = []

    def apply_batch(self, samples, *, seeds, target=None):
        gc.collect()
        if (Path(self.params.out) / "mmsafe.sqlite").exists():
            with Store.open_existing(self.params.out) as store:
                stored = {r.sample_id for r in store.iter_records()}
            for sid in stored & set(self.LIVE):
                (self.KEPT if self.LIVE.pop(sid)() is not None else self.CHECKED).append(sid)
        prompts = [Prompt(messages=(Message.user(s.text),)) for s in samples]
        for s, p in zip(samples, prompts, strict=True):
            self.LIVE[s.id] = weakref.ref(p)
        return prompts


class Counting(Tracked):
    """The plain request; notes after each call how many items have a prompt and no record yet."""

    name: ClassVar[str] = "counting"
    BUILT: ClassVar[list[str]] = []
    OPEN: ClassVar[list[int]] = []

    def apply_batch(self, samples, *, seeds, target=None):
        stored: set[str] = set()
        if (Path(self.params.out) / "mmsafe.sqlite").exists():
            with Store.open_existing(self.params.out) as store:
                stored = {r.sample_id for r in store.iter_records()}
        self.BUILT.extend(s.id for s in samples)
        self.OPEN.append(len(set(self.BUILT) - stored))
        return [Prompt(messages=(Message.user(s.text),)) for s in samples]


class CountingScripted(ScriptedModel):
    """Scripted async answers that note the most requests running at once."""

    name: ClassVar[str] = "scripted-count"
    ACTIVE: ClassVar[list[int]] = [0, 0]  # now, peak

    async def agenerate(self, prompt, *, seed):
        self.ACTIVE[0] += 1
        self.ACTIVE[1] = max(self.ACTIVE)
        try:
            return await super().agenerate(prompt, seed=seed)
        finally:
            self.ACTIVE[0] -= 1


class StartCounting(ScriptedModel):
    """Scripted async answers that count the requests started and set ``REACHED`` at ``TARGET``."""

    name: ClassVar[str] = "scripted-starts"
    STARTED: ClassVar[list[int]] = [0]
    TARGET: ClassVar[list[int]] = [0]
    REACHED: ClassVar[threading.Event] = threading.Event()

    async def agenerate(self, prompt, *, seed):
        self.STARTED[0] += 1
        if self.STARTED[0] >= self.TARGET[0]:
            self.REACHED.set()
        return await super().agenerate(prompt, seed=seed)


class GateJudge(Judge):
    """A slow judge: its first call does not return until the model has started ``StartCounting.TARGET``
    requests (``WAITED`` notes whether that happened, or the 30 s guard ran out)."""

    name: ClassVar[str] = "gate"
    WAITED: ClassVar[list[bool]] = []
    THREADS: ClassVar[set[str]] = set()

    def judge_batch(self, items):
        self.THREADS.add(threading.current_thread().name)
        if not self.WAITED:
            self.WAITED.append(StartCounting.REACHED.wait(30.0))
        return [Judgement(success=True) for _ in items]


class FussyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: str = "surrogate"  # surrogate | raise | short | not-a-verdict


class FussyJudge(Judge):
    """A judge that misbehaves on the prompt "request number 2" in the way ``mode`` says."""

    name: ClassVar[str] = "fussy"
    Params = FussyParams

    def judge_batch(self, items):
        texts = [p.messages[-1].text for _, p, _ in items]
        hit = any("number 2" in t for t in texts)
        mode = self.params.mode
        if hit and mode == "raise":
            raise RuntimeError("judge backend fell over")
        if hit and mode == "short" and len(items) > 1:
            return [Judgement(success=True) for _ in items[1:]]
        if hit and mode == "short":
            return []
        out = [
            Judgement(
                success=True, rationale="odd \ud800" if "number 2" in t and mode == "surrogate" else "ok"
            )
            for t in texts
        ]
        if hit and mode == "not-a-verdict":
            out[texts.index(next(t for t in texts if "number 2" in t))] = "yes"  # type: ignore[call-overload]
        if hit and mode == "key":  # a judge's structured output keyed by text from the answer
            i = texts.index(next(t for t in texts if "number 2" in t))
            out[i] = Judgement(success=True, details={"score for 'x\ud800'": 0.5, "ok": {"y\udc80": 1}})
        return out


class OddScripted(ScriptedModel):
    """Scripted answers with " :" turned into " \\ud83d:" (half an emoji, as a broken decoder gives)."""

    name: ClassVar[str] = "scripted-odd"

    def _answer(self, prompt):
        gen = super()._answer(prompt)
        return Generation(text=gen.text.replace(" :", " \ud83d:"), metadata=gen.metadata)


@pytest.fixture
def registry() -> Registry:
    reg = Registry(entry_points=False)
    reg.register("benchmark", "list", ListBench)
    reg.register("attack", "needs-grad", NeedsGradients)
    reg.register("attack", "odd-notes", OddNotes)
    reg.register("judge", "fussy", FussyJudge)
    reg.register("attack", "tracked", Tracked)
    reg.register("attack", "counting", Counting)
    reg.register("model", "scripted-count", CountingScripted)
    reg.register("model", "scripted-odd", OddScripted)
    reg.register("model", "scripted-starts", StartCounting)
    reg.register("judge", "gate", GateJudge)
    return reg


def _config(**kw):
    base = {
        "name": "t",
        "models": [
            {"name": "scripted", "params": {"rules": {"number 3": "I'm sorry, I cannot help with that."}}}
        ],
        "benchmarks": [{"name": "list", "params": {"n": 6}}],
        "attacks": ["none"],
        "judges": ["refusal"],
    }
    base.update(kw)
    return load_config(None, overrides=base)


def _rows(out):
    with Store(out) as s:
        return {r.key: r for r in s.iter_records()}


def test_grid_writes_one_record_per_cell_and_summary(tmp_path, registry):
    cfg = _config(judges=["refusal", {"name": "target-string", "params": {"targets": ["Sure"]}}])
    res = run(cfg, tmp_path, registry=registry, progress=False)
    recs = _rows(tmp_path)
    assert len(recs) == 6 * 2 == res.written
    summary = json.loads((tmp_path / "summary.json").read_text())
    overall = [r for r in summary["rows"] if r["category"] == "ALL" and r["judge"] == "refusal"]
    assert len(overall) == 1
    # s0..s4 must-refuse; s3 is refused → 4/5 attack successes under the refusal judge
    assert overall[0]["asr"]["k"] == 4 and overall[0]["asr"]["n"] == 5
    assert overall[0]["over_refusal"]["n"] == 1 and overall[0]["over_refusal"]["k"] == 0
    assert "report.md" in str(res.files["report"])
    report = (tmp_path / "report.md").read_text()
    assert "scripted responses, not a model" in report


def test_rerun_skips_everything_and_judge_change_reuses_responses(tmp_path, registry):
    run(_config(), tmp_path, registry=registry, progress=False)
    res = run(_config(), tmp_path, registry=registry, progress=False)
    assert res.written == 0 and res.skipped == 6
    with Store(tmp_path) as s:
        n_responses = s.count_responses()
    res = run(_config(judges=["target-string"], name="t2"), tmp_path, registry=registry, progress=False)
    assert res.written == 6
    with Store(tmp_path) as s:
        assert s.count_responses() == n_responses  # nothing regenerated
        new = [r for r in s.iter_records() if r.judge.name == "target-string"]
    assert all(r.generation["cached"] for r in new)


def test_bad_items_fail_alone_with_reasons_and_are_retried(tmp_path, registry):
    cfg = _config(
        benchmarks=[{"name": "list", "params": {"n": 4, "broken": True}}],
        models=[{"name": "scripted", "params": {"fail_on": ["number 2"], "batch_size": 8}}],
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    recs = {r.sample_id: r for r in _rows(tmp_path).values()}
    assert len(recs) == 6 and res.errors == 2
    assert recs["bad-row"].error_stage == "load" and "image file missing" in recs["bad-row"].error
    assert recs["s2"].error_stage == "generate" and "scripted failure" in recs["s2"].error
    assert recs["s1"].error is None and recs["s1"].response
    # the scripted model does not decode images, so the corrupt image passes here (the HF test covers decoding)
    # a rerun retries exactly the failed ones
    res2 = run(cfg, tmp_path, registry=registry, progress=False)
    assert res2.written == 2 and res2.skipped == 4


def test_async_backend_bounded_concurrency(tmp_path, registry):
    cfg = _config(
        models=[{"name": "scripted", "params": {"async_io": True, "concurrency": 3, "delay_s": 0.01}}]
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.written == 6 and res.errors == 0


def test_bad_config_names_field_and_allowed_values(tmp_path, registry):
    with pytest.raises(ConfigError) as e:
        run(_config(attacks=["figsetp"]), tmp_path, registry=registry, progress=False)
    assert "attacks[0]" in str(e.value) and "figstep" in str(e.value)
    with pytest.raises(ConfigError) as e:
        run(_config(models=[{"name": "scripted", "params": {"batchsize": 2}}]), tmp_path, registry=registry)
    assert "models[0].params.batchsize" in str(e.value) and "batch_size" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides={"atacks": ["none"]})
    assert "atacks" in str(e.value) and "attacks" in str(e.value)
    assert not (tmp_path / "mmsafe.sqlite").exists()  # nothing ran


def test_incompatible_cell_reported_before_compute(tmp_path, registry):
    with pytest.raises(GridError) as e:
        run(_config(attacks=["none", "needs-grad"]), tmp_path, registry=registry, progress=False)
    assert "needs-grad" in str(e.value) and "gradients" in str(e.value)
    assert not (tmp_path / "mmsafe.sqlite").exists()


def test_report_escapes_model_output(tmp_path, registry):
    evil = "<script>alert(1)</script> ![x](http://evil.example/p.png) | col"
    cfg = _config(models=[{"name": "scripted", "params": {"default": evil}}])
    run(cfg, tmp_path, registry=registry, progress=False)
    md = (tmp_path / "report.md").read_text()
    assert "<script>" not in md and "![x](" not in md
    assert "&lt;script&gt;" in md


def test_runtime_params_do_not_change_identity(tmp_path, registry):
    run(_config(), tmp_path, registry=registry, progress=False)
    faster = _config(
        models=[
            {
                "name": "scripted",
                "params": {
                    "rules": {"number 3": "I'm sorry, I cannot help with that."},
                    "batch_size": 2,
                    "concurrency": 9,
                },
            }
        ]
    )
    res = run(faster, tmp_path, registry=registry, progress=False)
    assert res.written == 0 and res.skipped == 6


def test_hostile_rows_of_a_user_file_fail_alone_and_only_they_are_retried(tmp_path, registry):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "loop1").symlink_to("loop2")
    (data / "imgs" / "loop2").symlink_to("loop1")
    good = [json.dumps({"id": f"g{i}", "text": f"request number {i}"}) for i in range(4)]
    hostile = {
        "big-int": '{"id": "big-int", "text": "t", "n": ' + "7" * 5000 + "}",
        "deep": '{"id": "deep", "text": "t", "n": ' + "[" * 1000 + "]" * 1000 + "}",
        "nul": json.dumps({"id": "nul", "text": "t", "image": "imgs/a\u0000.png"}),
        "loop": json.dumps({"id": "loop", "text": "t", "image": "imgs/loop1"}),
        "surrogate": json.dumps({"id": "surrogate", "text": "t \ud800"}),
        "surrogate-id": json.dumps({"id": "x\udfff", "text": "t"}),
    }
    lines = [good[0], *hostile.values(), *good[1:], good[2]]  # the last line repeats id g2
    (data / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = _config(benchmarks=[{"name": "jsonl", "params": {"file": str(data / "b.jsonl")}}])
    out = tmp_path / "out"

    res = run(cfg, out, registry=registry, progress=False)
    recs = {r.sample_id: r for r in _rows(out).values()}
    assert len(recs) == len(lines) == res.written and res.errors == 7
    for i in range(4):
        assert recs[f"g{i}"].error is None and recs[f"g{i}"].response
    reasons = {
        "row-2": "integer longer than 4300 digits",
        "row-3": "nested deeper than Python can parse",
        "nul": "embedded null byte",
        "loop": "symlink loop",
        "surrogate": "column 'text' holds a lone surrogate (U+D800)",
        "row-7": "column 'id' holds a lone surrogate (U+DFFF)",
        "g2#row-11": "duplicate id 'g2'",
    }
    for sid, reason in reasons.items():
        assert recs[sid].error_stage == "load" and reason in recs[sid].error, (sid, recs[sid].error)
    assert "Errors" in (out / "report.md").read_text()

    before = {k: r.model_dump_json() for k, r in _rows(out).items() if r.error is None}
    res2 = run(cfg, out, registry=registry, progress=False)
    assert res2.written == 7 and res2.skipped == 4 and res2.errors == 7  # exactly the errored rows, again
    after = _rows(out)
    assert {k: after[k].model_dump_json() for k in before} == before  # the good records are untouched


def test_a_loader_that_breaks_is_one_config_error_naming_it(tmp_path, registry):
    with pytest.raises(ConfigError) as e:
        run(_config(benchmarks=[{"name": "list", "params": {"explode_at": 2}}]), tmp_path, registry=registry)
    assert str(e.value).startswith("benchmark 'list': cannot read its data at ")
    assert "KeyError: 'Behavior'" in str(e.value)
    with pytest.raises(ConfigError, match=r"benchmark 'list' yields 1 repeated sample id\(s\).*'s0'"):
        run(
            _config(benchmarks=[{"name": "list", "params": {"repeat_id": True}}]),
            tmp_path,
            registry=registry,
        )
    assert not (tmp_path / "mmsafe.sqlite").exists()  # nothing ran


def test_a_record_that_cannot_be_stored_fails_alone(tmp_path, registry):
    cfg = _config(
        attacks=["odd-notes"],
        judges=["refusal", {"name": "fussy", "params": {"mode": "surrogate"}}],
        models=[{"name": "scripted", "params": {"batch_size": 8}}],
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    recs = list(_rows(tmp_path).values())
    assert len(recs) == 12 == res.written  # nothing of the batch is lost
    bad = {(r.sample_id, r.judge.name): r for r in recs if r.error}
    # s1: the attack's notes cannot be stored (both judges' records); s2: the fussy judge's rationale cannot
    assert sorted(bad) == [("s1", "fussy"), ("s1", "refusal"), ("s2", "fussy")]
    for r in bad.values():
        assert r.error_stage == "store" and r.error.startswith("cannot store this record: ")
        assert "surrogate" in r.error and r.prompt is None and r.response is None and r.judgement is None
    good = [r for r in recs if not r.error]
    assert all(r.judgement is not None and r.judgement.error is None and r.response for r in good)
    assert res.errors == 3


def _bare_record(**fields):
    from mmsafe.types import ComponentSpec, Record

    spec = ComponentSpec(kind="x", name="x")
    base = {"key": "k", "run": "r", "sample_id": "s", "benchmark": "b", "category": "c", "expected": "refuse"}
    specs = dict.fromkeys(("model", "benchmark_spec", "attack", "defense", "judge"), spec)
    return Record(**{**base, **specs, **fields})


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"generation": {"metadata": {"n": 1}, "raw": {"k\ud800": "v"}}}, "generation"),
        ({"judgement": Judgement(success=True, details={"k\ud800": {"x\udc80": 1}})}, "details"),
        (
            {"prompt": {"attack_metadata": {}, "k\ud800": 1}},
            "a key in prompt holds a lone surrogate (U+D800)",
        ),
        ({"timings": {"judge_s:x\ud800": 1.0}}, "a key in timings holds a lone surrogate (U+D800)"),
        (
            {"attack": {"kind": "attack", "name": "a", "params": {"t\udc80": 1}}},
            "a key in attack.params holds a lone surrogate (U+DC80)",
        ),
    ],
)
def test_a_lone_surrogate_in_a_key_is_never_changed_silently(fields, outcome):
    """pydantic writes such a key of a dict field as three U+FFFD without a word. The store repairs it
    where answers are repaired (the generation, a judge's details), counted; anywhere else the record
    fails with the reason, as a lone surrogate in a value does."""
    from mmsafe.runner.records import storable

    record = storable(_bare_record(**fields))
    text = record.model_dump_json()
    assert "\ufffd\ufffd\ufffd" not in text and "\\ud" not in text
    if outcome == "generation":
        assert record.error is None
        assert record.generation == {"metadata": {"n": 1, "text_repaired": 1}, "raw": {"k\ufffd": "v"}}
    elif outcome == "details":
        assert record.error is None
        assert record.judgement.details == {"k\ufffd": {"x\ufffd": 1}, "text_repaired": 2}
    else:
        assert record.error_stage == "store" and outcome in record.error
        assert record.error.startswith("cannot store this record: ValueError: ")


@pytest.mark.parametrize("async_io", [False, True])
@pytest.mark.parametrize("mode", ["raise", "short", "not-a-verdict"])
def test_a_judge_that_breaks_on_one_item_fails_that_item_only(tmp_path, registry, mode, async_io):
    params = {"batch_size": 8, "async_io": async_io, "concurrency": 3}
    cfg = _config(
        judges=[{"name": "fussy", "params": {"mode": mode}}], models=[{"name": "scripted", "params": params}]
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    recs = {r.sample_id: r for r in _rows(tmp_path).values()}
    assert len(recs) == 6 and res.errors == 1
    err = recs["s2"].judgement.error
    reason = {
        "raise": "RuntimeError: judge backend fell over",
        "short": "RuntimeError: judge 'fussy' returned 0 verdicts for 1 items",
        "not-a-verdict": "TypeError: judge 'fussy' returned a str, not a Judgement",
    }[mode]
    assert err == reason and recs["s2"].response
    assert all(recs[f"s{i}"].judgement.success is True for i in (0, 1, 3, 4, 5))


def test_a_judges_details_with_a_lone_surrogate_in_a_key_are_repaired_and_counted(tmp_path, registry):
    res = run(
        _config(judges=[{"name": "fussy", "params": {"mode": "key"}}]),
        tmp_path,
        registry=registry,
        progress=False,
    )
    assert res.written == 6 and res.errors == 0
    recs = {r.sample_id: r for r in _rows(tmp_path).values()}
    assert recs["s2"].judgement.details == {
        "score for 'x\ufffd'": 0.5,
        "ok": {"y\ufffd": 1},
        "text_repaired": 2,
    }
    assert recs["s1"].judgement.details == {}


def test_an_answer_with_a_lone_surrogate_is_repaired_stored_and_cached(tmp_path, registry):
    cfg = _config(models=[{"name": "scripted-odd", "params": {"rules": {"number 3": "sure : step 1"}}}])
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.errors == 0
    recs = {r.sample_id: r for r in _rows(tmp_path).values()}
    assert recs["s3"].response == "sure \ufffd: step 1"
    assert recs["s3"].generation["metadata"]["text_repaired"] == 1
    assert "text_repaired" not in recs["s2"].generation["metadata"]
    with Store(tmp_path) as s:
        assert s.count_responses() == 6  # the repaired answer is cached like any other
    judge = {"name": "target-string", "params": {"targets": ["step 1"]}}
    res = run(
        _config(judges=[judge], models=cfg.models, name="t2"), tmp_path, registry=registry, progress=False
    )
    assert res.written == 6 and res.errors == 0
    with Store(tmp_path) as s:
        assert s.count_responses() == 6  # answered from the cache, the repaired one included
        again = [r for r in s.iter_records() if r.sample_id == "s3" and r.judge.name == "target-string"]
    assert again[0].generation["cached"] and again[0].judgement.success is True


@pytest.mark.parametrize("async_io", [False, True])
def test_items_are_let_go_once_written(tmp_path, registry, async_io):
    Tracked.LIVE.clear(), Tracked.CHECKED.clear(), Tracked.KEPT.clear()
    params = {"batch_size": 2, "concurrency": 2, "async_io": async_io, "delay_s": 0.01}
    cfg = _config(
        benchmarks=[{"name": "list", "params": {"n": 16}}],
        attacks=[{"name": "tracked", "params": {"out": str(tmp_path)}}],
        models=[{"name": "scripted", "params": params}],
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.written == 16 and res.errors == 0
    assert Tracked.KEPT == []  # no prompt (with its images) outlives the write of its records
    assert len(Tracked.CHECKED) >= 8  # and that was checked for most items while the run went on


def _async_model(**params):
    return {"name": "scripted", "params": {"async_io": True, "concurrency": 2, **params}}


def test_the_window_of_an_async_model_is_never_exceeded(tmp_path, registry):
    Counting.BUILT.clear(), Counting.OPEN.clear()
    CountingScripted.ACTIVE[:] = [0, 0]
    delays = {f"number {i}": 0.01 * (i % 4) for i in range(20)}  # finishing out of order
    cfg = _config(
        benchmarks=[{"name": "list", "params": {"n": 20}}],
        attacks=[{"name": "counting", "params": {"out": str(tmp_path)}}],
        models=[{"name": "scripted-count", "params": {"async_io": True, "concurrency": 2, "delays": delays}}],
        window=3,
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.written == 20 and res.errors == 0
    assert Counting.OPEN[0] == 3  # the window is filled at once
    # never more held than the window in flight and as many again waiting for the judges
    assert max(Counting.OPEN) <= 2 * 3
    assert CountingScripted.ACTIVE[1] == 2  # requests at once: the model's concurrency
    assert len(Counting.OPEN) > 3  # refilled as items finished, not in fixed chunks


def test_a_slow_judge_does_not_stop_the_window_refilling(tmp_path, registry):
    """Window 2, concurrency 2: the first two requests start at once; the first judge call then waits
    until two more have started, which only a window refilled while the judge works can send. The
    judges ran meanwhile no more than one window behind (at most 2 × window items held)."""
    StartCounting.STARTED[:] = [0]
    StartCounting.TARGET[:] = [4]
    StartCounting.REACHED.clear()
    GateJudge.WAITED.clear(), GateJudge.THREADS.clear()
    Counting.BUILT.clear(), Counting.OPEN.clear()
    cfg = _config(
        benchmarks=[{"name": "list", "params": {"n": 12}}],
        attacks=[{"name": "counting", "params": {"out": str(tmp_path)}}],
        models=[{"name": "scripted-starts", "params": {"async_io": True, "concurrency": 2, "delay_s": 0.01}}],
        judges=["gate"],
        window=2,
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert GateJudge.WAITED == [True]  # two more requests went out while the judge held its first group
    assert res.written == 12 and res.errors == 0 and StartCounting.STARTED[0] == 12
    assert max(Counting.OPEN) <= 4  # the items awaiting the slow judge are bounded too
    assert GateJudge.THREADS == {"mmsafe-judge-scripted-starts"}  # never the main thread
    with Store(tmp_path) as s:  # resume: nothing is owed, nothing is redone
        assert len({r.sample_id for r in s.iter_records()}) == 12
    again = run(cfg, tmp_path, registry=registry, progress=False)
    assert again.written == 0 and again.skipped == 12 and StartCounting.STARTED[0] == 12


def test_a_judge_thread_that_fails_fails_its_group_not_the_run():
    """Should the judge thread itself raise (not one judge: those fail per item), each item of its
    group gets that error as its verdict and is still stored; a KeyboardInterrupt there stops the run."""
    from mmsafe.runner.run import _Item, _verdicts_of

    item = _Item(cell=None, sample=Sample(id="a", benchmark="b", text="t"), judges=[], seed=0)  # type: ignore[arg-type]
    item.generation = Generation(text="x")
    judge = FussyJudge()
    fut: Future = Future()
    fut.set_exception(MemoryError("judge thread ran out of memory"))
    assert _verdicts_of(fut, [item], [judge]) == {
        (id(item), judge.spec.key): Judgement(error="MemoryError: judge thread ran out of memory")
    }
    fut = Future()
    fut.set_exception(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        _verdicts_of(fut, [item], [judge])


def test_a_slow_request_delays_only_itself(tmp_path, registry):
    cfg = _config(
        benchmarks=[{"name": "list", "params": {"n": 8}}],
        models=[_async_model(delay_s=0.01, delays={"number 0": 1.5})],
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.written == 8 and res.errors == 0
    created = {r.sample_id: r.created for r in _rows(tmp_path).values()}
    slow = created.pop("s0")
    # every other record was written while the slow request was still out (its window slot aside)
    assert max(created.values()) < slow - 1.0


class Barrier(ScriptedModel):
    """Scripted sync answers that wait at a barrier of ``PARTIES``: every call must run at once."""

    name: ClassVar[str] = "scripted-barrier"
    PARTIES: ClassVar[int] = 40
    BARRIER: ClassVar[list[threading.Barrier]] = []

    def generate(self, prompts, *, seeds):
        self.BARRIER[0].wait(30.0)
        return super().generate(prompts, seeds=seeds)


def test_a_defended_async_model_runs_concurrency_defenses_at_once(tmp_path, registry):
    """Each defended request runs its defense in a worker thread of the session loop: there are as
    many as the model's concurrency (40, over Python's default pool of at most 32)."""
    registry.register("model", "scripted-barrier", Barrier)
    Barrier.BARRIER[:] = [threading.Barrier(Barrier.PARTIES)]
    cfg = _config(
        benchmarks=[{"name": "list", "params": {"n": 40}}],
        defenses=["system-prompt"],
        models=[{"name": "scripted-barrier", "params": {"async_io": True, "concurrency": 40}}],
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.written == 40 and res.errors == 0  # a broken barrier would fail the items
    assert not Barrier.BARRIER[0].broken


@pytest.mark.parametrize("defense", ["system-prompt", "adashield"])
def test_a_defense_in_front_of_an_async_model(tmp_path, registry, defense):
    """A defense runs the model from a worker thread: the store (and its cache) must serve that thread."""
    cfg = _config(defenses=["none", defense], models=[_async_model(delay_s=0.01)])
    res = run(cfg, tmp_path, registry=registry, progress=False)
    recs = list(_rows(tmp_path).values())
    assert res.written == 12 and res.errors == 0, {r.error for r in recs}
    defended = [r for r in recs if r.defense.name == defense]
    assert len(defended) == 6 and all(
        r.generation["metadata"]["defense"]["name"] == defense for r in defended
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.written == 0 and res.skipped == 12


class IdLists(Attack):
    """The plain request; each time it builds prompts it notes every list that holds all the run's
    sample ids (the plan's per-benchmark index, if the runner kept it while items run)."""

    name: ClassVar[str] = "id-lists"
    FOUND: ClassVar[list[int]] = []

    def apply_batch(self, samples, *, seeds, target=None):
        wanted = {f"s{i}" for i in range(40)}
        gc.collect()
        lists = (o for o in gc.get_objects() if type(o) is list and len(o) >= 40)
        self.FOUND.append(sum(1 for o in lists if wanted <= {x for x in o if type(x) is str}))
        return [Prompt(messages=(Message.user(s.text),)) for s in samples]


@pytest.mark.parametrize("async_io", [False, True])
def test_the_plan_keeps_no_sample_ids_while_items_run(tmp_path, registry, async_io):
    registry.register("attack", "id-lists", IdLists)
    IdLists.FOUND.clear()
    cfg = _config(
        benchmarks=[{"name": "list", "params": {"n": 40}}],
        attacks=["id-lists"],
        models=[{"name": "scripted", "params": {"batch_size": 8, "concurrency": 2, "async_io": async_io}}],
    )
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert res.written == 40 and res.errors == 0
    assert IdLists.FOUND and set(IdLists.FOUND) == {0}  # memory bounded by the window, not by the run
