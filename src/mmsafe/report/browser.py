"""The sample browser: a section of ``report.html`` (every item embedded) and the page of ``mmsafe view`` (items
fetched from the local server), built from the same markup and script.

:func:`browser_section` returns a :class:`Section` — markup, script (``assets/browser.js``) and JSON data blocks
— that a page built with :func:`mmsafe.report.page.page` includes; its stylesheet is :data:`BROWSER_CSS`
(``assets/browser.css``). The markup holds only constant text and numbers; every item's text reaches the page
through the script's ``textContent`` (see the script's header and ``docs/browse.md``).

Static size: every item is embedded (its response cut at :data:`~mmsafe.report.items.MAX_RESPONSE_CHARS`, with
the count of cut characters shown), every image's thumbnail always, and larger views while their total stays
under ``image_budget_bytes``; past it the lightbox shows the thumbnail and says "full size: mmsafe view".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mmsafe.report.item_cache import ItemCache
from mmsafe.report.items import MAX_RESPONSE_CHARS, ItemReader, facets_of
from mmsafe.report.page import RawJSON, compact_json, esc
from mmsafe.report.thumbs import image_views
from mmsafe.store.sqlite import Store

__all__ = ["BROWSER_CSS", "BROWSER_JS", "IMAGE_BUDGET_BYTES", "Section", "browser_section"]

#: the larger views a static page embeds at most (base64 bytes); thumbnails are not counted
IMAGE_BUDGET_BYTES = 30_000_000
PAGE_SIZE = 50
_FILTERS = ("model", "benchmark", "attack", "defense", "category", "expected", "judge", "verdict")


def _asset(name: str) -> str:
    return (resources.files("mmsafe.report") / "assets" / name).read_text(encoding="utf-8")


BROWSER_JS = _asset("browser.js")
BROWSER_CSS = _asset("browser.css")


@dataclass(frozen=True)
class Section:
    """One section of a report page: ``html`` is trusted markup (constants and :func:`esc`-ed text), ``js`` a
    script the page runs (named in its policy by hash), ``data`` the JSON blocks by element id, ``css`` its stylesheet."""

    id: str
    title: str
    html: str
    js: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    #: the section's stylesheet, appended to the page's
    css: str = ""


#: what the facets and images of the browser read of an item (its head, kept beside a kept item's text)
_HEAD = ("model", "benchmark", "attack", "defense", "category", "expected", "images")


def _kept_items(
    reader: ItemReader, cache: ItemCache, max_items: int | None, max_response_chars: int
) -> tuple[list[str], list[dict[str, Any]], int]:
    """The first ``max_items`` items as JSON texts (:func:`~mmsafe.report.page.compact_json`) with their heads
    (:data:`_HEAD`), from those kept in ``cache`` where their records are as they were, the rest read from the
    store (and kept); and the number of items there are."""
    groups: list[tuple[str, list[int], tuple[tuple[str, int], ...] | None]] = []
    n_total = 0
    db = reader.conn()
    db.execute("BEGIN")  # one snapshot of a store a run may be writing: the items read are those named
    try:
        for group in reader.keyed_groups():
            n_total += 1
            if max_items is None or len(groups) < max_items:
                groups.append(group)
        return (*_items_of(reader, groups, cache, max_response_chars), n_total)
    finally:
        db.execute("COMMIT")


def _items_of(
    reader: ItemReader,
    groups: list[tuple[str, list[int], tuple[tuple[str, int], ...] | None]],
    cache: ItemCache,
    max_response_chars: int,
) -> tuple[list[str], list[dict[str, Any]]]:
    import json

    labels = sorted(f"{axis}\0{key}\0{label}" for (axis, key), label in reader.labels.items())
    cache.scope(json.dumps([max_response_chars, labels]))
    idents = [None if keys is None else cache.ident(keys) for _, _, keys in groups]
    kept = cache.get({i for i in idents if i is not None})
    missing = [
        rid for (_, rowids, _), i in zip(groups, idents, strict=True) if i not in kept for rid in rowids
    ]
    fresh = {
        item["id"]: item for item in reader.items(rowids=missing, max_response_chars=max_response_chars)
    } if missing else {}  # fmt: skip
    kept_heads = [kept[i][1] for i in idents if i is not None and i in kept]
    parsed = iter(json.loads("[" + ",".join(kept_heads) + "]"))
    texts: list[str] = []
    heads: list[dict[str, Any]] = []
    new: list[tuple[str, str, str]] = []
    for (item_id, _, _), ident in zip(groups, idents, strict=True):
        if ident is not None and ident in kept:
            texts.append(kept[ident][0])
            heads.append(dict(zip(_HEAD, next(parsed), strict=True)))
        elif (item := fresh.get(item_id)) is not None:  # None: its records went since the first query
            text = compact_json(item)
            texts.append(text)
            heads.append({k: item[k] for k in _HEAD})
            if ident is not None:
                new.append((ident, text, json.dumps([item[k] for k in _HEAD], ensure_ascii=False)))
    cache.put(new, used={i for i in idents if i is not None})
    return texts, heads


def _markup(title: str, notes: list[str]) -> str:
    selects = "".join(
        f'<label>{esc(name)}<select id="mb-f-{esc(name)}"><option value="">all</option></select></label>'
        for name in _FILTERS
    )
    note_html = "".join(f'<p class="mb-note">{esc(n)}</p>' for n in notes)
    return (
        f'<section id="browser" class="mb"><h2>{esc(title)}</h2>{note_html}'
        f'<div class="mb-filters">{selects}'
        '<label>search prompt and response<input type="search" id="mb-search" autocomplete="off"></label></div>'
        '<div class="mb-bar"><span id="mb-count" class="mb-count" aria-live="polite"></span>'
        '<button type="button" id="mb-prev">previous</button><span id="mb-page"></span>'
        '<button type="button" id="mb-next">next</button><span id="mb-status" class="mb-status"></span></div>'
        '<ol id="mb-list" class="mb-list"></ol>'
        '<div id="mb-lightbox" class="mb-lightbox" hidden tabindex="-1" role="dialog" aria-label="image">'
        '<figure><img id="mb-lightbox-img" alt="larger view"><figcaption id="mb-lightbox-note"></figcaption>'
        "</figure></div>"
        "<noscript><p>The sample browser needs JavaScript.</p></noscript></section>"
    )


def _store_path(store: Store | str | Path) -> Path:
    """The store file; a folder or file that is not an mmsafe store raises :class:`~mmsafe.errors.StoreError`."""
    if isinstance(store, Store):
        return store.path
    with Store.open_existing(store) as opened:
        return opened.path


def browser_section(
    store: Store | str | Path,
    *,
    server: bool = False,
    image_budget_bytes: int = IMAGE_BUDGET_BYTES,
    max_items: int | None = None,
    max_response_chars: int = MAX_RESPONSE_CHARS,
    title: str = "Samples",
    keep: tuple[Path, str] | None = None,
) -> Section:
    """The sample browser of the run in ``store`` (a :class:`Store`, a run folder or its ``mmsafe.sqlite``).

    ``server``: the page of ``mmsafe view``, whose script asks ``/api`` (no item is embedded). Otherwise every
    item (at most ``max_items``, first in browser order) with its images' thumbnails and, within
    ``image_budget_bytes``, their larger views. With ``keep`` (a file and a salt naming what else the items are a
    function of: the store, mmsafe's code), items are kept there between calls and only those whose records
    changed are read again (:mod:`mmsafe.report.item_cache`): the same section either way."""
    config = {"mode": "server" if server else "static", "page_size": PAGE_SIZE}
    if server:
        return Section(
            "browser", title, _markup(title, []), BROWSER_JS, {"mmsafe-browser-config": config}, BROWSER_CSS
        )
    reader = ItemReader(_store_path(store))
    cache = None if keep is None else ItemCache(*keep)
    try:
        items: list[dict[str, Any]] | RawJSON
        if keep is None:
            items = []
            n_total = 0
            for item in reader.items(max_response_chars=max_response_chars):
                n_total += 1
                if max_items is None or len(items) < max_items:
                    items.append(item)
            heads: list[dict[str, Any]] = items
        else:
            assert cache is not None
            texts, heads, n_total = _kept_items(reader, cache, max_items, max_response_chars)
            items = RawJSON("[" + ",".join(texts) + "]")  # the page takes them as they are
        images = image_views(
            reader.conn(),
            (h for it in heads for h in it["images"]),
            budget_bytes=image_budget_bytes,
            kept=cache,
        )
        facets = facets_of(heads, reader.judges)
        unreadable = reader.unreadable
    finally:
        reader.close()
        if cache is not None:
            cache.close()
    notes = []
    if len(heads) < n_total:
        notes.append(
            f"The first {len(heads):,} of {n_total:,} items are in this file; `mmsafe view` shows all."
        )
    no_full = sum(1 for v in images.values() if "thumb" in v and not v.get("full"))
    if no_full:
        notes.append(
            f"{no_full:,} images are here as thumbnails only (size budget); `mmsafe view` shows them full size."
        )
    if unreadable:
        notes.append(f"{unreadable:,} records could not be read and are not shown.")
    data = {"items": items, "images": images, "facets": facets, "n_unreadable": unreadable}
    return Section(
        "browser",
        title,
        _markup(title, notes),
        BROWSER_JS,
        {"mmsafe-browser-config": config, "mmsafe-browser-data": data},
        BROWSER_CSS,
    )
