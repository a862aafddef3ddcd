"""The run's limits (mmsafe.limits): each one fails only the item over it, with a reason naming the limit."""

from __future__ import annotations

import asyncio
import random
import struct
import time
import zlib
from collections.abc import Iterator
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from mmsafe.attacks.base import Attack
from mmsafe.config import load_config
from mmsafe.datasets._util import ImageLoadError, load_image
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.limits import (
    MAX_IMAGE_FILE_BYTES,
    DeadlineExceeded,
    Limits,
    PatternTimeout,
    check_prompt,
    check_sample,
    current_deadline,
    regex_search,
    request_deadline,
    truncate_answer,
    within_deadline,
)
from mmsafe.models.base import ModelBackend
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.store import Store
from mmsafe.types import Generation, Image, ImageTooLarge, Message, Prompt, Sample

# -- images made cheaply: the header says huge, the file is small ---------------------------------------


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def huge_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of ``width`` × ``height``, its IDAT compressed row by row (no
    width×height buffer is ever allocated): 12,500² px is ~25 KB on disk and 156 Mpx decoded."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> Image:
    return Image.from_bytes(huge_png(12_500, 12_500), source="bomb.png")


def _noise_png(size: int = 128) -> Image:
    """Seeded noise: PNG cannot compress it (~49 KB for 128²), and the same bytes every time."""
    from PIL import Image as PILImage

    pixels = random.Random(0).randbytes(size * size * 3)
    return Image.from_pil(PILImage.frombytes("RGB", (size, size), pixels), source="noise.png")


def _small_png() -> Image:
    from PIL import Image as PILImage

    return Image.from_pil(PILImage.new("RGB", (8, 8), "white"), source="small.png")


@pytest.fixture
def no_decoding(monkeypatch):
    """Any pixel decoding fails the test: the checks must read headers only."""
    from PIL import ImageFile

    def load(self):  # pragma: no cover - reached only when a check decodes
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def test_a_12500_px_png_is_refused_from_its_header(bomb, no_decoding):
    assert len(bomb.data) < 100_000  # small on disk
    assert bomb.size_from_header() == (12_500, 12_500)
    problem = check_sample(Sample(id="s", benchmark="b", text="hi", images=(bomb,)), Limits())
    assert problem == "image bomb.png is 12500×12500 px (156,250,000), over limits.image_pixels (25,000,000)"
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"image bomb.png is 12500×12500 px \(156,250,000\), over the"):
        bomb.to_pil()
    assert time.perf_counter() - t0 < 1.0
    # the limit may be raised up to the decoding ceiling (100 Mpx), not past it
    big = Sample(id="s", benchmark="b", images=(Image.from_bytes(huge_png(6000, 6000), source="36mpx.png"),))
    assert check_sample(big, Limits()) == "image 36mpx.png is 6000×6000 px (36,000,000), over limits.image_pixels (25,000,000)"
    assert check_sample(big, Limits(image_pixels=100_000_000)) is None
    with pytest.raises(ValueError, match="less than or equal to 100000000"):
        Limits(image_pixels=200_000_000)


def test_an_image_pil_refuses_to_open_is_over_the_limit_too(no_decoding):
    image = Image.from_bytes(huge_png(20_000, 20_000), source="bigger.png")  # 400 Mpx: PIL's own error
    with pytest.raises(ImageTooLarge, match="400,000,000 px"):
        image.to_pil()
    problem = check_prompt(Prompt(messages=(Message.user("x", [image]),)), Limits())
    assert problem == "image bigger.png is 400,000,000 px, over limits.image_pixels (25,000,000)"


def test_small_and_corrupt_images_pass_the_checks_and_decode_as_before():
    small = _small_png()
    assert check_sample(Sample(id="s", benchmark="b", images=(small,)), Limits()) is None
    assert small.to_pil().size == (8, 8)
    corrupt = Image.from_bytes(b"not an image", source="bad.png")
    assert check_sample(Sample(id="s", benchmark="b", images=(corrupt,)), Limits()) is None  # the decoder says
    with pytest.raises(ValueError, match=r"cannot decode image bad\.png"):
        corrupt.to_pil()


def test_image_bytes_limit_and_the_loaders_hard_ceiling(tmp_path):
    noise = _noise_png()
    assert 32768 < len(noise.data) < 1 << 20
    problem = check_sample(Sample(id="s", benchmark="b", images=(noise,)), Limits(image_bytes=32768))
    assert problem == f"image noise.png is {len(noise.data):,} bytes, over limits.image_bytes (32,768 bytes)"
    # a loader never reads a file over the ceiling: a sparse file costs no disk and no memory
    big = tmp_path / "big.png"
    with big.open("wb") as fh:
        fh.truncate(MAX_IMAGE_FILE_BYTES + 1)
    with pytest.raises(ImageLoadError, match=r"image 'big.png' is 256 MiB; no image over 256 MiB is read"):
        load_image(tmp_path, "big.png")
    (tmp_path / "ok.png").write_bytes(noise.data)
    assert load_image(tmp_path, "ok.png").data == noise.data


def test_prompt_chars_counts_every_turn():
    limits = Limits(prompt_chars=100)
    ok = Prompt(messages=(Message.system("s" * 40), Message.user("u" * 60)))
    assert check_prompt(ok, limits) is None
    over = Prompt(messages=(Message.system("s" * 41), Message.user("u" * 60)))
    assert check_prompt(over, limits) == "prompt is 101 chars, over limits.prompt_chars (100)"
    sample = Sample(id="s", benchmark="b", text="x" * 1_048_576)
    assert check_sample(sample, Limits()) == "sample text is 1,048,576 chars, over limits.prompt_chars (200,000)"


@pytest.mark.parametrize(
    ("text", "limit", "kept"),
    [
        ("a" * 2000, 1024, "a" * 1024),
        ("é" * 2000, 1025, "é" * 512),  # 2-byte characters: never cut in the middle of one
        ("a" + "😀" * 600, 1024, "a" + "😀" * 255),  # 4-byte ones: 1 + 4·255 = 1021 bytes
    ],
)
def test_truncate_answer_cuts_at_a_character_boundary_and_flags_it(text, limit, kept):
    gen = Generation(text=text, finish_reason="stop", metadata={"x": 1})
    out = truncate_answer(gen, Limits(answer_bytes=limit))
    assert out.text == kept
    assert len(out.text.encode()) <= limit
    assert out.finish_reason == "length"
    assert out.metadata == {"x": 1, "truncated_from_bytes": len(text.encode())}
    assert truncate_answer(Generation(text="short"), Limits(answer_bytes=limit)).metadata == {}


def test_within_deadline_cancels_and_says_which_limit():
    async def slow():
        await asyncio.sleep(30)

    async def own_timeout():
        raise TimeoutError("the backend's own")

    t0 = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match=r"^no answer within 0.2 s \(limits.request_deadline_s\)$"):
        asyncio.run(within_deadline(slow(), 0.2, setting="limits.request_deadline_s"))
    assert time.perf_counter() - t0 < 5
    with pytest.raises(TimeoutError, match="the backend's own"):
        asyncio.run(within_deadline(own_timeout(), 600, setting="limits.request_deadline_s"))


def test_the_request_deadline_is_the_runs_unless_the_model_sets_its_own():
    class Own:
        name = "api"

        class params:
            deadline_s = 30

    class NoneSet(Own):
        class params:
            deadline_s = None

    limits = Limits(request_deadline_s=120)
    assert request_deadline(Own(), limits) == (30.0, "deadline_s of model 'api'")
    assert request_deadline(NoneSet(), limits) == (120.0, "limits.request_deadline_s")
    assert request_deadline(object(), limits) == (120.0, "limits.request_deadline_s")

    async def inside():  # the backend learns how long it has
        d = current_deadline()
        return d.seconds, d.setting, 0 < d.left() <= 7

    assert current_deadline() is None
    assert asyncio.run(within_deadline(inside(), 7, setting="x")) == (7, "x", True)
    assert current_deadline() is None


# -- regexes on attacker-shaped text ---------------------------------------------------------------------

#: a nested quantifier the regex engine cannot simplify: exponential on "aaaa…!"
EVIL = r"(a|aa)+$"
ATTACK = "a" * 60 + "!"


def test_regex_search_times_out_on_a_nested_quantifier():
    assert regex_search(r"sure,?\s+here", "Sure, here it is", ignore_case=True, timeout_s=0.2)
    t0 = time.perf_counter()
    with pytest.raises(PatternTimeout, match=r"regex '\(a\|aa\)\+\$' took over 0.2 s on a 61-char text"):
        regex_search(EVIL, ATTACK, timeout_s=0.2)
    assert time.perf_counter() - t0 < 3.0  # about the timeout (the engine checks the clock now and then)


def test_target_string_judge_gives_a_judgement_error_within_about_the_timeout():
    from mmsafe.judges.target_string import TargetStringJudge

    judge = TargetStringJudge(targets=[EVIL, "here is"], match="regex", regex_timeout_s=0.2)
    sample = Sample(id="s", benchmark="b", text="q")
    prompt = Prompt(messages=(Message.user("q"),))
    t0 = time.perf_counter()
    verdict = judge.judge(sample, prompt, Generation(text=ATTACK))
    assert time.perf_counter() - t0 < 3.0
    assert verdict.success is None
    assert verdict.error is not None and "took over 0.2 s" in verdict.error and "regex_timeout_s" in verdict.error
    fine = judge.judge(sample, prompt, Generation(text="Sure, here is how"))
    assert fine.error is None and fine.success is True
    # the timeout is how the judge runs, not what it computes: same identity
    assert judge.spec.key == TargetStringJudge(targets=[EVIL, "here is"], match="regex").spec.key
    assert judge.spec.runtime == {"regex_timeout_s": 0.2}
    with pytest.raises(ValueError, match="invalid regex"):
        TargetStringJudge(targets=["(unclosed"], match="regex")


def test_ocr_filter_extra_pattern_timeout_fails_only_that_item():
    from mmsafe.defenses.ocr_filter import OCRFilter

    defense = OCRFilter(extra_patterns=[EVIL], regex_timeout_s=0.2)
    t0 = time.perf_counter()
    first, second = defense._detect([ATTACK, "a quiet request about gardening"])
    assert time.perf_counter() - t0 < 3.0
    assert isinstance(first, PatternTimeout) and "took over 0.2 s" in str(first)
    assert second == (False, {"detector": "keywords", "matches": []})
    assert defense.spec.runtime == {"regex_timeout_s": 0.2}


# -- through the runner ----------------------------------------------------------------------------------


class KindsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kinds: tuple[str, ...] = ("ok", "ok")


class KindsBench(Benchmark):
    """One sample per kind: ok, bomb (12,500² px PNG), noisy (a 49 KB PNG), long (5,000 chars), grow
    (short, but the test attack makes it long), slow (the test backend takes 30 s)."""

    name: ClassVar[str] = "kinds"
    Params = KindsParams

    def load(self) -> Iterator[Sample]:
        for i, kind in enumerate(self.params.kinds):
            images: tuple[Image, ...] = ()
            text = f"request {i} ({kind})"
            if kind == "bomb":
                images = (Image.from_bytes(huge_png(12_500, 12_500), source="bomb.png"),)
            elif kind == "noisy":
                images = (_noise_png(),)
            elif kind == "ok":
                images = (_small_png(),)
            elif kind == "long":
                text = "x" * 5000
            yield Sample(id=f"{kind}-{i}", benchmark="kinds", text=text, images=images)


class Grow(Attack):
    """Test attack: repeats the text of 'grow' samples 150 times."""

    name: ClassVar[str] = "grow"

    def apply(self, sample, *, seed, target=None):
        text = sample.text * 150 if "grow" in sample.text else sample.text
        return Prompt(messages=(Message.user(text, sample.images),))


class SlowParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    concurrency: int = 4


class SlowAsync(ModelBackend):
    """Test backend (async): 30 s for prompts saying 'slow', an instant answer otherwise."""

    name: ClassVar[str] = "slow-async"
    Params = SlowParams
    capabilities: ClassVar[frozenset[str]] = frozenset({"images"})
    is_async: ClassVar[bool] = True

    async def agenerate(self, prompt, *, seed):
        if "slow" in prompt.messages[-1].text:
            await asyncio.sleep(30)
        return Generation(text="I cannot help with that.", finish_reason="stop")


@pytest.fixture
def registry() -> Registry:
    reg = Registry(entry_points=False)
    reg.register("benchmark", "kinds", KindsBench)
    reg.register("attack", "grow", Grow)
    reg.register("model", "slow-async", SlowAsync)
    return reg


def _config(kinds, *, model="scripted", attacks=("none",), judges=("refusal",), **kw):
    return load_config(
        None,
        overrides={
            "name": "limits",
            "models": [model],
            "benchmarks": [{"name": "kinds", "params": {"kinds": list(kinds)}}],
            "attacks": list(attacks),
            "judges": list(judges),
            **kw,
        },
    )


def _records(out):
    with Store(out) as store:
        return {r.sample_id: r for r in store.iter_records()}


def test_items_over_a_limit_fail_alone_and_a_rerun_with_higher_limits_redoes_only_them(tmp_path, registry):
    kinds = ["ok", "bomb", "noisy", "long", "grow", "ok"]
    limits = {"image_bytes": 32768, "prompt_chars": 2000}
    res = run(_config(kinds, attacks=["grow"], limits=limits), tmp_path, registry=registry, progress=False)
    recs = _records(tmp_path)
    assert res.written == 6 and res.errors == 4
    assert recs["ok-0"].error is None and recs["ok-5"].error is None and recs["ok-0"].response
    noisy = _noise_png()  # the benchmark's
    assert {k: (r.error_stage, r.error) for k, r in recs.items() if r.error} == {
        "bomb-1": ("limit", "image bomb.png is 12500×12500 px (156,250,000), over limits.image_pixels (25,000,000)"),
        "noisy-2": ("limit", f"image noise.png is {len(noisy.data):,} bytes, over limits.image_bytes (32,768 bytes)"),
        "long-3": ("limit", "sample text is 5,000 chars, over limits.prompt_chars (2,000)"),
        "grow-4": ("limit", "prompt is 2,400 chars, over limits.prompt_chars (2,000)"),  # after the attack
    }
    # an item over a limit stores neither its prompt nor its images
    assert recs["bomb-1"].prompt is None and recs["bomb-1"].image_hashes == ()
    with Store(tmp_path) as store:
        assert store.get_image(Image.from_bytes(huge_png(12_500, 12_500)).sha256) is None
    # limits are part of no key: raising them redoes exactly the failed items (the bomb stays over the
    # 100 Mpx ceiling that image_pixels cannot pass)
    higher = {"image_bytes": 1 << 20, "prompt_chars": 10_000, "image_pixels": 100_000_000}
    res = run(_config(kinds, attacks=["grow"], limits=higher), tmp_path, registry=registry, progress=False)
    assert res.written == 4 and res.skipped == 2 and res.errors == 1
    recs = _records(tmp_path)
    assert [k for k, r in recs.items() if r.error] == ["bomb-1"]
    assert recs["bomb-1"].error.endswith("over limits.image_pixels (100,000,000)")


def test_a_long_answer_is_cut_before_it_is_cached_or_stored(tmp_path, registry):
    model = {
        "name": "scripted",
        "params": {"default": "é" * 3000, "generation": {"max_new_tokens": 1000}},
    }
    run(_config(["ok"], model=model, limits={"answer_bytes": 2049}), tmp_path, registry=registry, progress=False)
    rec = _records(tmp_path)["ok-0"]
    assert rec.response == "é" * 1024  # 2,048 bytes: the 2,049th would split a character
    assert rec.generation["finish_reason"] == "length"
    assert rec.generation["metadata"]["truncated_from_bytes"] == 6000
    # a new judge reuses the cached answer: it was cached cut, so the whole one was never stored
    cfg = _config(["ok"], model=model, judges=["target-string"], limits={"answer_bytes": 1 << 20})
    run(cfg, tmp_path, registry=registry, progress=False)
    with Store(tmp_path) as store:
        (again,) = [r for r in store.iter_records() if r.judge.name == "target-string"]
    assert again.generation["cached"] is True and again.response == "é" * 1024


def test_request_deadline_fails_the_slow_request_only(tmp_path, registry):
    t0 = time.perf_counter()
    cfg = _config(["ok", "slow", "ok"], model="slow-async", limits={"request_deadline_s": 0.5})
    res = run(cfg, tmp_path, registry=registry, progress=False)
    assert time.perf_counter() - t0 < 10
    recs = _records(tmp_path)
    assert res.errors == 1
    assert recs["slow-1"].error_stage == "generate"
    assert recs["slow-1"].error == "DeadlineExceeded: no answer within 0.5 s (limits.request_deadline_s)"
    assert recs["ok-0"].response == recs["ok-2"].response == "I cannot help with that."


def test_limits_config_errors_name_the_limit_fields(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(["ok"], limits={"image_pixel": 5})
    assert "limits.image_pixel: unknown field; allowed: image_bytes, image_pixels, prompt_chars" in str(err.value)
    with pytest.raises(ConfigError, match=r"limits\.image_bytes: Input should be less than or equal to"):
        _config(["ok"], limits={"image_bytes": MAX_IMAGE_FILE_BYTES + 1})
    assert _config(["ok"]).limits == Limits()
