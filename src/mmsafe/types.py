"""The data that flows through mmsafe: samples in, records out.

config → :class:`Sample` → attack → :class:`Prompt` → defense → model → :class:`Generation`
→ judge → :class:`Judgement` → store (:class:`Record`) → report.

Every type here is a frozen pydantic model, so it validates on construction and serialises to JSON.
Images travel as :class:`Image`: encoded bytes plus their SHA-256, so a record can name an image by
hash and the store can keep each distinct image once. Importing this module never imports torch.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import sys
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

__all__ = [
    "GREY_PNG_LEVEL",
    "MAX_DECODE_PIXELS",
    "ComponentSpec",
    "DefenseAccount",
    "DefenseAction",
    "Expected",
    "Generation",
    "Image",
    "ImagePart",
    "ImageTooLarge",
    "Judgement",
    "Message",
    "Prompt",
    "Record",
    "Sample",
    "TextPart",
    "lone_surrogate",
    "repair_strings",
    "stable_hash",
    "surrogate_key",
]

_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> int | None:
    """Index of the first lone surrogate (U+D800–U+DFFF) in ``text``, or None.

    Python strings can hold them (a JSON ``"\\ud800"`` escape, bytes decoded with
    ``surrogateescape``), but UTF-8 cannot encode them, so such text can be neither stored nor sent.
    """
    m = _SURROGATE.search(text)
    return m.start() if m else None


def stable_hash(obj: Any) -> str:
    """SHA-256 hex digest of ``obj`` rendered as canonical JSON (sorted keys, no whitespace).

    Text is encoded as UTF-8 with ``surrogatepass``, so a lone surrogate hashes instead of raising
    (valid text gives the same bytes, and so the same keys, as plain UTF-8). An integer too long for
    ``str`` (over ``sys.get_int_max_str_digits()`` digits) hashes by its hex form.
    """
    try:
        text = _canonical_json(obj)
    except ValueError:  # an int over the str-conversion limit: only such objects take this path
        text = _canonical_json(_hex_big_ints(obj))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _hex_big_ints(obj: Any) -> Any:
    if _big_int(obj):
        return {"$int": hex(obj)}
    if isinstance(obj, dict):
        return {f"$int:{hex(k)}" if _big_int(k) else k: _hex_big_ints(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_hex_big_ints(v) for v in obj]
    return obj


def _big_int(obj: Any) -> bool:
    """True for every int ``str`` refuses (more digits than the limit means more than 3.3 bits a digit)."""
    if not isinstance(obj, int) or isinstance(obj, bool):
        return False
    return obj.bit_length() > 3 * sys.get_int_max_str_digits()


#: :meth:`Image.to_pil` decodes no image with more pixels than this (read from the header first): a
#: 455 KB PNG can say 12,500×12,500 px and take gigabytes to decode. A hard ceiling; the run's own limit
#: is ``limits.image_pixels`` (:mod:`mmsafe.limits`), which may not exceed it.
MAX_DECODE_PIXELS = 100_000_000

_PIL_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


#: zlib level of the 8-bit grey PNGs :meth:`Image.from_pil` writes. Measured on the 500 SafeBench FigStep
#: images (benchmarks/typographic_render.py): level 1 encodes in about half the time of level 6 for ~20% more bytes
#: (still ~35% fewer than today's RGB PNG); level 3 sits in between. Typography is rendered, stored once by hash
#: and decoded by every model call, so encode time, not the last kilobytes, is what the attack pays for.
GREY_PNG_LEVEL = 1


class ImageTooLarge(ValueError):
    """An image with more pixels than a limit allows; ``pixels`` is its pixel count."""

    def __init__(self, message: str, *, pixels: int) -> None:
        super().__init__(message)
        self.pixels = pixels


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Image(_Frozen):
    """An encoded image (PNG, JPEG, …) identified by the SHA-256 of its bytes.

    ``data`` is never written into JSON (records name images by ``sha256``; the store keeps the
    bytes once). Decoding happens only when a model or defense needs pixels, so a corrupt file
    fails the one item that uses it, with the decoder's message as the reason.
    """

    sha256: str
    data: bytes = Field(repr=False, exclude=True)
    source: str | None = None  # where it came from (dataset-relative path, attack name), for humans

    @model_validator(mode="before")
    @classmethod
    def _fill_hash(cls, values: Any) -> Any:
        if isinstance(values, dict) and "data" in values and not values.get("sha256"):
            values = {**values, "sha256": hashlib.sha256(values["data"]).hexdigest()}
        return values

    @model_validator(mode="after")
    def _check_hash(self) -> Image:
        if hashlib.sha256(self.data).hexdigest() != self.sha256:
            raise ValueError("image sha256 does not match its bytes")
        return self

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str | None = None) -> Image:
        return cls(data=data, sha256=hashlib.sha256(data).hexdigest(), source=source)

    @classmethod
    def from_path(cls, path: str | Path, *, source: str | None = None) -> Image:
        p = Path(path)
        return cls.from_bytes(p.read_bytes(), source=source if source is not None else p.name)

    @classmethod
    def from_pil(cls, img: Any, *, source: str | None = None) -> Image:
        """Encode a PIL image losslessly as PNG (deterministic bytes for identical pixels).

        The encoding is chosen here, for every caller, by the image's mode. An 8-bit grey image (mode
        ``"L"``: typography drawn grey, e.g. ``render_figstep(..., mode="L")``) is stored as an 8-bit grey
        PNG at zlib level :data:`GREY_PNG_LEVEL` (1): for a FigStep image 4–5× faster to encode than an RGB
        PNG at PIL's default level 6, and ~35% smaller. It decodes to the same RGB pixels (R = G = B = the
        grey value) wherever it is read: :meth:`to_pil`, hence OCR and the HF processors; the ``openai``
        backend's data URI carries the PNG bytes as they are, and any PNG decoder expands grey the same
        way. Any other mode keeps PIL's default PNG in that mode (level 6, unchanged since the first
        release). A caller whose RGB image is grey by construction passes ``img.convert("L")`` (exact
        when R = G = B); nothing here checks pixels, so the encoding costs no extra pass.

        Encoding an image differently changes its bytes, hence its ``sha256``: a response cached for the
        same pixels under the RGB encoding is not reused (the model is asked again, with identical pixels).
        """
        buf = io.BytesIO()
        if img.mode == "L":
            img.save(buf, format="PNG", optimize=False, compress_level=GREY_PNG_LEVEL)
        else:
            img.save(buf, format="PNG", optimize=False)
        return cls.from_bytes(buf.getvalue(), source=source)

    @property
    def name(self) -> str:
        """How messages name this image: its source (cut to 80 characters), else the start of its hash."""
        name = self.source or self.sha256[:12]
        return name if len(name) <= 80 else f"{name[:79]}…"

    def _open(self) -> Any:
        """The image opened lazily by PIL (header read, no pixel decoded). ``ValueError`` naming the image
        when the header cannot be read; :class:`ImageTooLarge` when PIL itself refuses the size (over twice
        ``PIL.Image.MAX_IMAGE_PIXELS``)."""
        import warnings

        from PIL import Image as PILImage
        from PIL import UnidentifiedImageError

        try:
            with warnings.catch_warnings():  # the callers check the size themselves
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
                return PILImage.open(io.BytesIO(self.data))
        except PILImage.DecompressionBombError as exc:
            m = _PIL_BOMB_PIXELS.search(str(exc))
            pixels = int(m.group(1)) if m else 2 * (PILImage.MAX_IMAGE_PIXELS or 0) + 1
            raise ImageTooLarge(
                f"image {self.name} is {pixels:,} px, too many to decode", pixels=pixels
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode image {self.name}: {exc}") from exc

    def size_from_header(self) -> tuple[int, int]:
        """``(width, height)`` as the image's header states it; no pixel is decoded.

        Raises ``ValueError`` naming the image when the header cannot be read, :class:`ImageTooLarge`
        when PIL refuses to open an image that big at all."""
        with self._open() as img:
            return img.size

    def to_pil(self, mode: str = "RGB", *, max_pixels: int = MAX_DECODE_PIXELS) -> Any:
        """Decode to a PIL image in ``mode``; raises ``ValueError`` naming the image on bad bytes.

        The header is read first: an image of more than ``max_pixels`` pixels raises
        :class:`ImageTooLarge` (a ``ValueError``) before any pixel is decoded."""
        img = self._open()
        width, height = img.size
        if width * height > max_pixels:
            img.close()
            raise ImageTooLarge(
                f"image {self.name} is {width}×{height} px ({width * height:,}), over the {max_pixels:,} px "
                "that can be decoded",
                pixels=width * height,
            )
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode image {self.name}: {exc}") from exc
        return img.convert(mode) if mode and img.mode != mode else img


class TextPart(_Frozen):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Frozen):
    type: Literal["image"] = "image"
    image: Image

    @field_serializer("image")
    def _ser_image(self, image: Image) -> dict[str, Any]:
        return {"sha256": image.sha256, "source": image.source}


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Frozen):
    """One chat turn; ``content`` is an ordered list of text and image parts."""

    role: Literal["system", "user", "assistant"]
    content: tuple[Part, ...]

    @classmethod
    def user(cls, text: str, images: tuple[Image, ...] | list[Image] = ()) -> Message:
        """A user turn with the images first, then the text (the order most MLLM chat templates use)."""
        parts: list[TextPart | ImagePart] = [ImagePart(image=i) for i in images]
        parts.append(TextPart(text=text))
        return cls(role="user", content=tuple(parts))

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=(TextPart(text=text),))

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(p.image for p in self.content if isinstance(p, ImagePart))


class Prompt(_Frozen):
    """What is sent to a model: a conversation plus the attack's notes on how it was built."""

    messages: tuple[Message, ...]
    attack_metadata: dict[str, Any] = Field(default_factory=dict)
    #: what the dataset knows about the request and the model is not shown — ``image_description``
    #: (e.g. VLSafe's COCO caption) — for defenses that may use it (ECSO's ``caption_source:
    #: dataset``). Set by the runner from the sample; never sent to a model, not in the fingerprint,
    #: not stored with the record (it is the sample's, which the record names).
    context: dict[str, str] = Field(default_factory=dict, exclude=True)

    @property
    def images(self) -> tuple[Image, ...]:
        return tuple(i for m in self.messages for i in m.images)

    def fingerprint(self) -> dict[str, Any]:
        """JSON-able form with images by hash: the part of a request that a response cache keys on."""
        return {"messages": [m.model_dump(mode="json") for m in self.messages]}


class Expected(str, Enum):
    """What a safe model should do with a sample."""

    refuse = "refuse"  # harmful request: a compliant answer is an attack success
    comply = "comply"  # benign request (over-refusal controls): a refusal is an over-refusal
    label = "label"  # detection-style item with a ground-truth ``label``


class Sample(_Frozen):
    """One benchmark item, before any attack.

    ``text`` is the request in plain words. ``error`` is set by a loader for a row it could not
    read (missing image, bad field): the runner records that item as failed with this reason
    instead of dropping it or stopping the run.
    """

    id: str
    benchmark: str
    category: str = "uncategorised"
    text: str = ""
    images: tuple[Image, ...] = ()
    expected: Expected = Expected.refuse
    label: str | None = None
    target: str | None = None  # an affirmative target string ("Sure, here is …") when the data has one
    references: tuple[str, ...] = ()  # reference answers (VQA answers, captions) for utility scoring
    metadata: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class ComponentSpec(_Frozen):
    """A resolved component: registry kind + name, fully validated params (defaults filled) and version.

    Params that change only how a component runs, not what it computes (batch size, concurrency,
    CPU threads), sit in ``runtime`` and stay out of :attr:`key`, so changing them neither re-runs
    nor re-generates anything.
    """

    kind: str
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    runtime: dict[str, Any] = Field(default_factory=dict)  # how it runs (batch size, threads): not identity
    version: str = "0"

    @functools.cached_property
    def key(self) -> str:
        """Stable 16-hex id of this configuration (kind, name, params, version; not ``runtime``).
        Computed once per spec (it is frozen); pydantic compares and dumps fields only, so the cached
        value changes neither equality nor serialisation."""
        return stable_hash(self.model_dump(mode="json", exclude={"runtime"}))[:16]

    @functools.cached_property
    def surrogate_key(self) -> str | None:
        """:func:`surrogate_key` of ``params`` and then ``runtime`` (with the field's name), or None:
        looked for once per spec (it is frozen), not once per record that carries it."""
        for name in ("params", "runtime"):
            where = surrogate_key(getattr(self, name))
            if where:
                return f"{name}: {where}"
        return None


class Usage(_Frozen):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Generation(_Frozen):
    """A model's answer to one prompt. ``text`` is attacker-controlled: escape it wherever it is shown.

    Lone surrogates (which UTF-8 cannot encode, so such an answer could be neither cached nor stored)
    in ``text`` and in the string values of ``metadata`` are replaced with U+FFFD on construction,
    and ``metadata["text_repaired"]`` counts them: the answer is kept, flagged, instead of failing its
    item on every rerun.
    """

    text: str
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_s: float | None = None
    cached: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _repair_surrogates(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        text, meta = values.get("text"), values.get("metadata")
        text_fixed, n_text = _SURROGATE.subn("\ufffd", text) if isinstance(text, str) else (text, 0)
        meta_fixed, n_meta = repair_strings(meta) if isinstance(meta, dict) else (meta, 0)
        if not n_text and not n_meta:
            return values
        fixed = dict(meta_fixed or {})
        fixed["text_repaired"] = int(fixed.get("text_repaired") or 0) + n_text + n_meta
        return {**values, "text": text_fixed, "metadata": fixed}


def repair_strings(obj: Any, depth: int = 0) -> tuple[Any, int]:
    """``obj`` (JSON-like) with lone surrogates in its strings replaced by U+FFFD, and how many were."""
    if isinstance(obj, str):
        n = len(_SURROGATE.findall(obj))
        return (_SURROGATE.sub("\ufffd", obj), n) if n else (obj, 0)
    if depth > 64 or not isinstance(obj, dict | list | tuple):
        return obj, 0  # deeper than any answer's metadata: left as is (the store's fallback covers it)
    total = 0
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            k2, nk = repair_strings(k, depth + 1) if isinstance(k, str) else (k, 0)
            v2, nv = repair_strings(v, depth + 1)
            out[k2] = v2
            total += nk + nv
        return (out, total) if total else (obj, 0)
    items = [repair_strings(v, depth + 1) for v in obj]
    total = sum(n for _, n in items)
    return (type(obj)(v for v, _ in items), total) if total else (obj, 0)


def surrogate_key(obj: Any, depth: int = 0) -> str | None:
    """The first lone surrogate (``"U+D800"``) in a dict *key* anywhere in ``obj`` (JSON-like), or None.

    pydantic writes such a key of a ``dict`` field as three U+FFFD without a word (a value, or a key
    nested deeper, raises instead), so the store looks for them first: nothing is changed silently."""
    if depth > 64:
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and (m := _SURROGATE.search(k)):
                return f"U+{ord(m.group()):04X}"
            found = surrogate_key(v, depth + 1)
            if found:
                return found
    elif isinstance(obj, list | tuple):
        for v in obj:
            found = surrogate_key(v, depth + 1)
            if found:
                return found
    return None


#: what a defense did with an item (:class:`DefenseAccount`)
DefenseAction = Literal["passed", "blocked", "rewritten", "modified-input", "steered", "flagged"]
DEFENSE_ACTIONS: tuple[str, ...] = ("passed", "blocked", "rewritten", "modified-input", "steered", "flagged")


class DefenseAccount(BaseModel):
    """A defense's account of one item, kept as ``Generation.metadata["defense"]``.

    Defenses write it (``mmsafe.defenses.base.mark``; the defended model adds ``name`` and
    ``seconds``; ``stack`` adds each layer's account in ``layers``, outermost first) and the report
    reads it back with :meth:`of`, so both sides share one schema instead of string keys.
    Defense-specific details (a guard's categories, a rewrite's reason) ride along as extra keys.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    action: DefenseAction = "passed"
    #: model calls the item cost (1 = just the answer; a stack's is the mean over its batch)
    calls: int | float = Field(1, ge=0)
    name: str | None = None
    #: the item's share of its batch's wall time
    seconds: float | None = Field(None, ge=0)
    layers: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, metadata: Mapping[str, Any] | None) -> DefenseAccount | None:
        """The account in a generation's ``metadata``; None when there is none. Raises
        ``ValueError`` (pydantic's ``ValidationError``) when there is one that does not fit."""
        raw = (metadata or {}).get("defense")
        return None if not raw else cls.model_validate(raw)

    def to_metadata(self) -> dict[str, Any]:
        """The JSON-able dict stored in ``metadata["defense"]`` (fields never set are left out)."""
        return self.model_dump(exclude_unset=True)


class Judgement(_Frozen):
    """A judge's verdict on one generation.

    ``success``: the response does what the attack wanted (harmful compliance, target string
    produced). ``refused``: the response declines. Either may be ``None`` when the judge does not
    decide it; a judge that cannot parse or reach its backend sets ``error`` and leaves both None.
    """

    success: bool | None = None
    refused: bool | None = None
    score: float | None = None
    label: str | None = None
    rationale: str = ""
    error: str | None = None
    #: judge-specific structured output (an ensemble's member verdicts, an LLM judge's raw scores…)
    details: dict[str, Any] = Field(default_factory=dict)


class Record(_Frozen):
    """One cell of the grid for one sample: everything needed to read, re-judge or replay it."""

    key: str
    run: str
    sample_id: str
    benchmark: str
    category: str
    expected: Expected
    label: str | None = None  # the sample's ground-truth label (detection-style benchmarks)
    model: ComponentSpec
    benchmark_spec: ComponentSpec
    attack: ComponentSpec
    defense: ComponentSpec
    judge: ComponentSpec
    prompt: dict[str, Any] | None = None  # Prompt.fingerprint() + attack metadata
    image_hashes: tuple[str, ...] = ()
    response: str | None = None
    generation: dict[str, Any] | None = None
    judgement: Judgement | None = None
    error: str | None = None
    error_stage: str | None = None  # load | limit | attack | generate | judge
    timings: dict[str, float] = Field(default_factory=dict)
    random_weights: bool = False
    model_note: str | None = None  # e.g. "random weights": printed beside every number from this model
    created: float = 0.0
