"""The sample browser's parts without a browser: image views (format choice, size, bad bytes, bombs), query
filters, and the facet order."""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib

import pytest

from _browse_data import grid_store
from mmsafe.report.items import Filters, ItemIndex, ItemReader
from mmsafe.report.thumbs import THUMB_SIDE, image_mime, views


def _encoded(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _decode_uri(uri: str):
    from PIL import Image

    head, b64 = uri.split(",", 1)
    return head, Image.open(io.BytesIO(base64.b64decode(b64)))


def test_views_pick_the_smallest_encoding_and_fit_the_sides() -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    photo = Image.frombytes("RGB", (900, 600), bytes(rng.randrange(256) for _ in range(900 * 600 * 3)))
    text = Image.new("RGB", (760, 760), "white")
    ImageDraw.Draw(text).text((20, 20), "Steps to do it.\n1.\n2.\n3.", fill="black")
    for img in (photo, text):
        thumb, full = views(_encoded(img, "PNG"), full=True)
        head, small = _decode_uri(thumb)
        assert max(small.size) == THUMB_SIDE and head.startswith("data:image/")
        assert full is not None and _decode_uri(full)[1].size == img.size  # fits 1024: not scaled
    thumb, _ = views(_encoded(photo, "PNG"), full=False)
    assert not thumb.startswith("data:image/png")  # noise: JPEG or WebP beat PNG
    big = Image.new("RGB", (3000, 1500), "white")
    _, full = views(_encoded(big, "PNG"), full=True)
    assert full is not None and _decode_uri(full)[1].size == (1024, 512)
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 0))
    head, small = _decode_uri(views(_encoded(rgba, "PNG"), full=False)[0])
    assert (
        small.mode in ("RGBA", "P", "LA")
        or "transparency" in small.info
        or head.startswith("data:image/webp")
    )


def test_bad_bytes_and_bombs_are_value_errors() -> None:
    for data in (b"", b"\x89PNG\r\n\x1a\ngarbage", b"GIF89a\x00", b"<svg onload=alert(1)>"):
        with pytest.raises(ValueError):
            views(data, full=True)
    # a PNG header that claims 60,000 × 60,000 px (3.6 billion): refused before any pixel is decoded
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    with pytest.raises(ValueError):
        views(png, full=True)
    assert image_mime(png) == "image/png" and image_mime(b"<svg") is None
    assert image_mime(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"


def test_query_filters() -> None:
    f = Filters.from_query({"attack": "figstep", "model": "", "verdict": "refused", "offset": "3"})
    assert (f.attack, f.model, f.verdict, f.mark()) == ("figstep", None, "refused", "*\x1frefused")
    assert Filters.from_query({"judge": "j"}).mark() == "j\x1f*"
    assert Filters().mark() is None
    with pytest.raises(ValueError, match="verdict must be one of"):
        Filters.from_query({"verdict": "pwned"})


def test_index_facets_and_selection(tmp_path) -> None:
    grid_store(tmp_path / "run", n_samples=30).close()
    reader = ItemReader(tmp_path / "run")
    index = ItemIndex(reader)
    assert len(index) == 60 and index.unreadable == 0
    assert index.facets["category"] == ["c0", "c1", "c2", "c3"]
    assert index.facets["expected"] == ["refuse", "comply"]
    assert set(index.facets["judge"]) == {"rule", "other"}
    both = index.select(Filters(judge="rule", verdict="success", category="c0"))
    assert [index.heads[i]["sample_id"] for i in both][:3] == ["s00000", "s00004", "s00008"]
    assert len(index.select(Filters(judge="other", verdict="success"))) == 0  # "other" never decides success
    assert len(index.select(Filters(verdict="not-success"))) == 30  # odd samples, by "rule"
    page = index.page(Filters(attack="typo"), offset=28, limit=5)
    assert page["total"] == 30 and [it["sample_id"] for it in page["items"]] == ["s00028", "s00029"]
    assert [v["judge"] for v in page["items"][0]["verdicts"]] == [
        v["judge"] for v in page["items"][1]["verdicts"]
    ]
    reader.close()


def test_kept_image_views_are_not_drawn_again_and_keep_the_budget(tmp_path, monkeypatch) -> None:
    """Views kept by sha256 (item_cache) give the views drawn from nothing, under any budget; an image whose kept
    views lack the larger one is drawn again when there is room for it."""
    import sqlite3

    from mmsafe.report import thumbs
    from mmsafe.report.item_cache import ItemCache
    from mmsafe.report.thumbs import image_views

    grid_store(tmp_path / "run", n_samples=5).close()
    db = sqlite3.connect(tmp_path / "run" / "mmsafe.sqlite")
    shas = [r[0] for r in db.execute("SELECT sha256 FROM images ORDER BY sha256")]
    everything = image_views(db, shas, budget_bytes=10**9)
    budget = len(everything[shas[0]]["full"]) + len(everything[shas[1]]["full"]) + 1
    fresh = {b: image_views(db, shas, budget_bytes=b) for b in (0, budget, 10**9)}
    drawn: list[bool] = []
    real = thumbs._views_or_error

    def counting(row, *, full):
        drawn.append(full)
        return real(row, full=full)

    monkeypatch.setattr(thumbs, "_views_or_error", counting)
    cache = ItemCache(tmp_path / "out" / "items.sqlite", "salt")
    assert image_views(db, shas, budget_bytes=0, kept=cache) == fresh[0]
    assert drawn == [False] * len(shas)  # thumbnails only: kept without larger views
    drawn.clear()
    assert image_views(db, shas, budget_bytes=budget, kept=cache) == fresh[budget]
    assert drawn and all(drawn) and len(drawn) < 2 * len(shas)  # the larger views there is room for
    drawn.clear()
    for b in (0, budget, 10**9):
        got = image_views(db, shas, budget_bytes=b, kept=cache)
        assert got == fresh[b]
    assert drawn == [] or all(drawn)  # at most the larger views past the earlier budget
    drawn.clear()
    assert image_views(db, shas, budget_bytes=10**9, kept=cache) == fresh[10**9]
    assert drawn == []  # every view kept now
    other = ItemCache(tmp_path / "out" / "items.sqlite", "another mmsafe")
    image_views(db, shas[:1], budget_bytes=0, kept=other)
    assert drawn == [False]  # another salt (code, Pillow): drawn again
    cache.close(), other.close()
    db.close()


def test_larger_views_stop_at_the_budget_in_order(tmp_path) -> None:
    import sqlite3

    from mmsafe.report.thumbs import image_views

    grid_store(tmp_path / "run", n_samples=5).close()
    db = sqlite3.connect(tmp_path / "run" / "mmsafe.sqlite")
    shas = [r[0] for r in db.execute("SELECT sha256 FROM images ORDER BY sha256")]
    everything = image_views(db, shas, budget_bytes=10**9)
    sizes = [len(everything[s]["full"]) for s in shas]
    budget = sizes[0] + sizes[1] + sizes[2] - 1  # room for two and most of a third
    limited = image_views(db, [*shas, shas[0]], budget_bytes=budget)
    assert list(limited) == shas  # each image once, in first-seen order
    assert [limited[s]["full"] is not None for s in shas] == [True, True, False, False, False]
    assert all(limited[s]["thumb"] == everything[s]["thumb"] for s in shas)
    assert all(v["full"] is None for v in image_views(db, shas, budget_bytes=0).values())
    db.close()
