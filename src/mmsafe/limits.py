"""Limits on what a run takes from outside: image size, prompt length, answer size, request time, regex time.

Benchmark rows, images, attack output, model answers and the patterns that judge them can all be
hostile (a 455 KB PNG that says 12,500×12,500 px, a 1 MB prompt, a 50 MB answer, a regex that
backtracks for ever on a crafted answer). Each is checked against a limit before it can cost memory
or time, and an item over a limit fails alone, with one line saying which limit and by how much,
while the run goes on. The run's limits are :class:`Limits` (``RunConfig.limits``); they are part of
no record or cache key, so changing them reruns nothing that succeeded, and the next run retries the
items that failed a limit under the new values. docs/running.md ("Limits") lists every limit.

The runner calls :func:`check_sample` before the attack and :func:`check_prompt` just before
generation; :class:`~mmsafe.models.cached.CachedModel` calls :func:`truncate_answer` before an answer
is cached or stored, and the runner's async path bounds each request with :func:`within_deadline`
(the run's ``request_deadline_s``, or the model's own ``deadline_s`` where it sets one:
:func:`request_deadline`).
Components that run user-supplied patterns on attacker-controlled text search with
:func:`regex_search` (a ``regex_timeout_s`` param of their own).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.types import MAX_DECODE_PIXELS, Generation, Image, ImageTooLarge, Prompt, Sample, TextPart

__all__ = [
    "DEFAULT_REGEX_TIMEOUT_S",
    "DEFAULT_REQUEST_DEADLINE_S",
    "MAX_IMAGE_FILE_BYTES",
    "ContextTooLong",
    "Deadline",
    "DeadlineExceeded",
    "Limits",
    "PatternTimeout",
    "check_prompt",
    "check_sample",
    "compile_pattern",
    "current_deadline",
    "image_problem",
    "regex_search",
    "request_deadline",
    "truncate_answer",
    "within_deadline",
]

MiB = 1 << 20

#: Loaders never read an image file larger than this (checked with ``stat`` before reading): a hard
#: ceiling, because a loader does not see the run's limits. ``limits.image_bytes`` may not exceed it.
MAX_IMAGE_FILE_BYTES = 256 * MiB

#: Default wall time of one user-supplied regex search (the ``regex_timeout_s`` param of the
#: ``target-string`` judge and the ``ocr-filter`` defense).
DEFAULT_REGEX_TIMEOUT_S = 1.0

#: Default wall time of one request to an async backend (``limits.request_deadline_s``).
DEFAULT_REQUEST_DEADLINE_S = 600.0

T = TypeVar("T")


class Limits(BaseModel):
    """The run's limits (``limits:`` in the config). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_bytes: int = Field(
        20 * MiB,
        ge=1024,
        le=MAX_IMAGE_FILE_BYTES,
        description="largest encoded image (a sample's or an attack's); a larger one fails its item",
    )
    image_pixels: int = Field(
        25_000_000,
        ge=1,
        le=MAX_DECODE_PIXELS,
        description="most pixels (width × height, read from the header) of an image; more fails its item",
    )
    prompt_chars: int = Field(
        200_000,
        ge=1,
        le=100_000_000,
        description="most characters of text in a sample and in a prompt (all turns) before generation",
    )
    answer_bytes: int = Field(
        1 * MiB,
        ge=1024,
        le=256 * MiB,
        description="largest answer (UTF-8) kept: a longer one is cut before it is cached or stored and "
        "flagged (finish_reason 'length', metadata.truncated_from_bytes)",
    )
    request_deadline_s: float = Field(
        DEFAULT_REQUEST_DEADLINE_S,
        gt=0.0,
        le=86400.0,
        description="wall time of one request to an async backend (an API), every retry and backoff "
        "included; a model's own deadline_s param, where it has one, overrides it for that model",
    )


class ContextTooLong(ValueError):
    """A prompt that does not fit the model's context with room for the answer."""


class DeadlineExceeded(TimeoutError):
    """No answer within the request deadline (``limits.request_deadline_s`` or a model's ``deadline_s``)."""


class PatternTimeout(ValueError):
    """A regex search that took longer than its time limit."""


# -- images and prompts --------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n:,} bytes"


def image_problem(image: Image, limits: Limits) -> str | None:
    """Why ``image`` is over ``limits.image_bytes`` or ``limits.image_pixels``, or None.

    Only the header is read. An image whose header cannot be read is not this function's business
    (None): the decoder fails the item that uses it, with its own reason."""
    size = len(image.data)
    if size > limits.image_bytes:
        return f"image {image.name} is {_size(size)}, over limits.image_bytes ({_size(limits.image_bytes)})"
    try:
        width, height = image.size_from_header()
    except ImageTooLarge as exc:
        return f"image {image.name} is {exc.pixels:,} px, over limits.image_pixels ({limits.image_pixels:,})"
    except ValueError:
        return None
    if width * height > limits.image_pixels:
        return (
            f"image {image.name} is {width}×{height} px ({width * height:,}), "
            f"over limits.image_pixels ({limits.image_pixels:,})"
        )
    return None


def _images_problem(images: Iterable[Image], limits: Limits) -> str | None:
    seen: set[str] = set()
    for image in images:
        if image.sha256 not in seen:
            seen.add(image.sha256)
            problem = image_problem(image, limits)
            if problem:
                return problem
    return None


def check_sample(sample: Sample, limits: Limits) -> str | None:
    """Why ``sample`` is over a limit (its text, one of its images), or None. Before the attack, so an
    attack never renders a megabyte of text or decodes a decompression bomb."""
    if len(sample.text) > limits.prompt_chars:
        return (
            f"sample text is {len(sample.text):,} chars, over limits.prompt_chars ({limits.prompt_chars:,})"
        )
    return _images_problem(sample.images, limits)


def check_prompt(prompt: Prompt, limits: Limits) -> str | None:
    """Why ``prompt`` (the attack's output) is over a limit, or None. Just before generation: the text
    of every turn together against ``prompt_chars``, each image against ``image_bytes`` and ``image_pixels``."""
    chars = sum(len(p.text) for m in prompt.messages for p in m.content if isinstance(p, TextPart))
    if chars > limits.prompt_chars:
        return f"prompt is {chars:,} chars, over limits.prompt_chars ({limits.prompt_chars:,})"
    return _images_problem(prompt.images, limits)


# -- answers -------------------------------------------------------------------------------------------


def truncate_answer(generation: Generation, limits: Limits) -> Generation:
    """``generation`` with its text cut to ``limits.answer_bytes`` of UTF-8 (at a character boundary),
    ``finish_reason="length"`` and ``metadata["truncated_from_bytes"]`` (the size before); unchanged
    when it fits."""
    text = generation.text
    if len(text) * 4 <= limits.answer_bytes:  # no character takes more than 4 bytes
        return generation
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limits.answer_bytes:
        return generation
    cut = limits.answer_bytes
    while cut > 0 and data[cut] & 0xC0 == 0x80:  # not inside a multi-byte character
        cut -= 1
    return generation.model_copy(
        update={
            "text": data[:cut].decode("utf-8", "surrogatepass"),
            "finish_reason": "length",
            "metadata": {**generation.metadata, "truncated_from_bytes": len(data)},
        }
    )


# -- requests ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """The deadline of the request being answered: ``at`` (``time.monotonic()``), the ``seconds`` it
    allowed, and the ``setting`` that gave them (named in errors)."""

    at: float
    seconds: float
    setting: str

    @classmethod
    def starting_now(cls, seconds: float, setting: str) -> Deadline:
        return cls(time.monotonic() + seconds, seconds, setting)

    def left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.at - time.monotonic()


_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("mmsafe_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline :func:`within_deadline` set for the request this code runs for (it follows the
    request into the coroutines it awaits and into a defense's worker thread), or None."""
    return _DEADLINE.get()


def request_deadline(model: Any, limits: Limits) -> tuple[float, str]:
    """The request deadline of ``model`` in a run with ``limits``, and the setting that gives it: the
    model's own ``deadline_s`` param where it sets one (a per-model override), else the run's
    ``limits.request_deadline_s``."""
    own = getattr(getattr(model, "params", None), "deadline_s", None)
    if isinstance(own, int | float) and not isinstance(own, bool):
        return float(own), f"deadline_s of model '{getattr(model, 'name', '?')}'"
    return limits.request_deadline_s, "limits.request_deadline_s"


async def within_deadline(request: Awaitable[T], seconds: float, *, setting: str) -> T:
    """Await ``request`` for at most ``seconds``; then cancel it and raise :class:`DeadlineExceeded`
    naming ``setting`` (a ``TimeoutError`` raised by the request itself passes through). While it
    runs, :func:`current_deadline` tells the backend how long it has, so it starts no retry it
    cannot finish."""
    token = _DEADLINE.set(Deadline.starting_now(seconds, setting))
    scope = asyncio.timeout(seconds)
    try:
        async with scope:
            return await request
    except TimeoutError:
        if scope.expired():
            raise DeadlineExceeded(f"no answer within {seconds:g} s ({setting})") from None
        raise
    finally:
        _DEADLINE.reset(token)


# -- patterns ------------------------------------------------------------------------------------------


def compile_pattern(pattern: str) -> None:
    """Check that ``pattern`` compiles as :func:`regex_search` will run it; ``ValueError`` saying why not."""
    import regex

    try:
        regex.compile(pattern)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regex {pattern[:200]!r}: {exc}") from None


def regex_search(pattern: str, text: str, *, ignore_case: bool = False, timeout_s: float) -> bool:
    """Whether ``pattern`` matches anywhere in ``text``, searched for at most ``timeout_s`` seconds
    (0: no limit), with the ``regex`` package (the syntax of ``re``). A search that runs out of time
    raises :class:`PatternTimeout`: a nested quantifier such as ``(a|aa)+$`` on a crafted answer can
    otherwise take longer than the age of the universe."""
    import regex

    flags = regex.IGNORECASE if ignore_case else 0
    try:
        return regex.search(pattern, text, flags, timeout=timeout_s or None) is not None
    except TimeoutError:
        raise PatternTimeout(
            f"regex {pattern[:80]!r} took over {timeout_s:g} s on a {len(text):,}-char text (regex_timeout_s)"
        ) from None
