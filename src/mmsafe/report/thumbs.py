"""Images for the sample browser: a thumbnail and a larger view of each stored image, as ``data:image/`` URIs.

Each distinct image (by sha256) is decoded once with Pillow, after its header says it is not a decompression
bomb (:data:`mmsafe.types.MAX_DECODE_PIXELS`), scaled down to :data:`THUMB_SIDE` px (thumbnail) and
:data:`FULL_SIDE` px (larger view) on its longer side, and encoded as whichever of PNG, JPEG and WebP is
smallest — typographic attack images (black text on white) come out as 8-bit grey PNGs, photos as JPEG or WebP.
A larger view that needs no scaling keeps the image's own bytes when they are a browser format and smaller.

Bytes that do not decode give ``{"error": "image unreadable: …"}`` (the page shows a placeholder), an image the
store does not hold ``{"error": "image missing from the store"}``: never an exception.
"""

from __future__ import annotations

import base64
import io
import os
import sqlite3
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mmsafe.types import MAX_DECODE_PIXELS

if TYPE_CHECKING:
    from mmsafe.report.item_cache import ItemCache

__all__ = ["FULL_SIDE", "THUMB_SIDE", "image_mime", "image_views", "views"]

THUMB_SIDE = 160
FULL_SIDE = 1024


def image_mime(data: bytes) -> str | None:
    """The Content-Type of ``data`` by its magic number, for the four formats a browser is given; else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _decode(data: bytes, max_side: int) -> tuple[Any, tuple[int, int]]:
    """``data`` decoded and scaled to fit ``max_side`` (RGB, or RGBA when it has transparency), and its size
    before scaling; ``ValueError`` when it does not decode or is too large to."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            size = opened.size
            if size[0] * size[1] > MAX_DECODE_PIXELS:
                raise ValueError(f"{size[0]}×{size[1]} px, too many to decode")
            opened.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when it can
            alpha = opened.mode in ("RGBA", "LA", "PA") or (
                opened.mode == "P" and "transparency" in opened.info
            )
            mode = "RGBA" if alpha else "RGB"
            opened.load()
            img: Image.Image = opened if opened.mode == mode else opened.convert(mode)  # no copy when it can
        img.thumbnail((max_side, max_side), reducing_gap=3.0)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from exc
    return img, size


def _is_grey(img: Any) -> bool:
    """Whether every pixel of an RGB image is a shade of grey (black text on white, as typographic attacks draw)."""
    from PIL import ImageChops

    if img.mode != "RGB":
        return False
    r, g, b = img.split()
    return ImageChops.difference(r, g).getbbox() is None and ImageChops.difference(g, b).getbbox() is None


def _smallest(img: Any, *, grey: bool, thumb: bool) -> tuple[str, bytes]:
    """``img`` encoded in the candidate formats that suit it, the smallest kept.

    Grey images: an 8-bit grey PNG (lossless; about half the RGB PNG of a FigStep image). A thumbnail: also a
    palette PNG when it has at most 256 colours, WebP, and JPEG for an opaque one of many colours. A larger view
    (where WebP and palette quantisation cost tens of milliseconds): PNG when it has at most 256 colours, else
    JPEG (opaque) or WebP (transparent)."""
    out: list[tuple[str, bytes]] = []

    def save(mime: str, im: Any, fmt: str, **kw: Any) -> None:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        out.append((mime, buf.getvalue()))

    if grey:
        save("image/png", img.convert("L"), "PNG")
    colours = img.getcolors(256)
    if thumb:
        if not grey:
            few = colours is not None and img.mode == "RGB"
            save("image/png", img.quantize(len(colours)) if few and colours else img, "PNG")
        save("image/webp", img, "WEBP", quality=80, method=4)
        if (
            colours is None and img.mode == "RGB"
        ):  # a flat image loses its edges in JPEG; a photo is what it is for
            save("image/jpeg", img, "JPEG", quality=82, optimize=True)
    elif not grey:
        if colours is not None:
            save("image/png", img, "PNG")
        elif img.mode == "RGB":
            save("image/jpeg", img, "JPEG", quality=85, optimize=True)
        else:
            save("image/webp", img, "WEBP", quality=85, method=2)
    return min(out, key=lambda c: len(c[1]))


def views(data: bytes, *, full: bool) -> tuple[str, str | None]:
    """The thumbnail URI of ``data`` and (with ``full``) its larger view's, from one decode; ``ValueError``
    when it does not decode. The larger view is the image's own bytes when they are a browser format, fit and
    are smaller than a re-encoding."""
    img, size = _decode(data, FULL_SIDE)
    big = None
    if full:
        grey = _is_grey(img)
        mime, encoded = _smallest(img, grey=grey, thumb=False)
        own = image_mime(data)
        if own and max(size) <= FULL_SIDE and len(data) <= len(encoded):
            mime, encoded = own, data
        big = _uri(mime, encoded)
    img.thumbnail((THUMB_SIDE, THUMB_SIDE), reducing_gap=3.0)
    return _uri(*_smallest(img, grey=_is_grey(img), thumb=True)), big


def image_views(
    db: sqlite3.Connection, hashes: Iterable[str], *, budget_bytes: int, kept: ItemCache | None = None
) -> dict[str, dict[str, Any]]:
    """For each distinct sha256 in ``hashes`` (first-seen order): ``{"thumb": uri, "full": uri | None}``, or
    ``{"error": why}``. Larger views are made in that order until the first that would take their URIs' total
    over ``budget_bytes``; from there on ``full`` is None (the page shows the thumbnail and points to
    ``mmsafe view``), and no more are encoded. ``kept``: views drawn by an earlier report are taken from there
    (by the image's sha256), and those drawn now are kept there (:mod:`mmsafe.report.item_cache`)."""
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    order = list(dict.fromkeys(hashes))
    known = kept.get_views(order) if kept is not None else {}
    drawn: dict[str, tuple[str | None, str | None, str | None]] = {}
    out: dict[str, dict[str, Any]] = {}
    spent = 0
    room = budget_bytes > 0
    pending = iter(order)

    def usable(v: tuple[str | None, str | None, str | None] | None, full: bool) -> bool:
        return v is not None and (v[2] is not None or (v[0] is not None and (not full or v[1] is not None)))

    # Pillow decodes, scales and encodes with the GIL released: a chunk of images is made on every core, then
    # taken in order against the budget (at most one chunk of larger views is made and not kept)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        while chunk := list(islice(pending, _CHUNK)):
            full = room
            todo = [sha for sha in chunk if not usable(known.get(sha), full)]
            rows = [db.execute("SELECT data FROM images WHERE sha256=?", (sha,)).fetchone() for sha in todo]
            drawn.update(
                zip(todo, pool.map(lambda row, f=full: _views_or_error(row, full=f), rows), strict=True)
            )
            for sha in chunk:
                thumb, big, error = drawn[sha] if sha in drawn else known[sha]
                if error is not None:
                    out[sha] = {"error": error}
                    continue
                if big is not None and (not room or spent + len(big) > budget_bytes):
                    big, room = None, False
                spent += len(big or "")
                out[sha] = {"thumb": thumb, "full": big}
    if kept is not None:
        kept.put_views(drawn, used=order)
    return out


_WORKERS = max(1, min(8, os.cpu_count() or 1))
_CHUNK = 8 * _WORKERS


def _views_or_error(row: tuple[Any, ...] | None, *, full: bool) -> tuple[str | None, str | None, str | None]:
    """(thumbnail, larger view, None) of a stored image row, or (None, None, why) — never an exception."""
    if row is None or not isinstance(row[0], bytes):
        return None, None, "image missing from the store"
    try:
        thumb, big = views(row[0], full=full)
    except ValueError as exc:
        return None, None, f"image unreadable: {str(exc)[:200]}"
    return thumb, big, None
