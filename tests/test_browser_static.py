"""The sample browser in a static page (report.html's section): items from a real small run (scripted model on the
starter suite, attacks none + figstep, judges refusal + target-string), then filtering, paging and the lightbox in
headless Chromium, and bad rows and bad image bytes in the store."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from _browser import browser
from mmsafe.cli.main import main
from mmsafe.report.browser import BROWSER_CSS, browser_section
from mmsafe.report.items import Filters, ItemIndex, ItemReader
from mmsafe.report.page import page
from mmsafe.store.sqlite import Store, generation_id

REFUSAL = "I am sorry, I cannot help with that."
MODEL = f"{{name: scripted, params: {{rules: {{'steal': '{REFUSAL}', 'Wi-Fi': '{REFUSAL}'}}}}}}"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browse") / "run"
    argv = [
        "run",
        "--model",
        MODEL,
        "--benchmark",
        "starter",
        "--judge",
        "refusal",
        "--judge",
        "target-string",
    ]
    argv += ["--attack", "none", "--attack", "figstep", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    return out


def _write_page(section, path: Path) -> Path:
    path.write_text(page("browser", section.html, css=BROWSER_CSS, scripts=[section.js], data=section.data))
    return path


def _ready(b) -> None:
    b.wait(lambda: b.js("return document.getElementById('browser').dataset.ready"), what="the browser")


def _set(b, name: str, value: str) -> None:
    b.js(
        "const s=document.getElementById('mb-f-'+arguments[0]); s.value=arguments[1];"
        "s.dispatchEvent(new Event('change'))",
        name,
        value,
    )


def _count(b) -> str:
    return b.js("return document.getElementById('mb-count').textContent")


def test_one_item_per_generation_with_every_verdict(run) -> None:
    section = browser_section(run)
    items = section.data["mmsafe-browser-data"]["items"]
    with Store.open_existing(run) as store:
        records = list(store.iter_records())
    generations = {
        (r.model.key, r.benchmark_spec.key, r.attack.key, r.defense.key, r.sample_id) for r in records
    }
    assert len(items) == len(generations) == len(records) // 2 == 80
    by_id = {it["id"]: it for it in items}
    assert len(by_id) == len(items)
    for r in records:
        item = by_id[
            generation_id(r.model.key, r.benchmark_spec.key, r.attack.key, r.defense.key, r.sample_id)
        ]
        assert (item["attack"], item["category"], item["expected"]) == (
            r.attack.name,
            r.category,
            r.expected.value,
        )
        assert item["response"] == r.response
        assert [p["text"] for p in item["prompt"]] == [
            p["text"] for m in r.prompt["messages"] for p in m["content"] if p["type"] == "text"
        ]
        assert item["images"] == list(r.image_hashes)
        (v,) = [v for v in item["verdicts"] if v["judge"] == r.judge.name]
        j = r.judgement
        assert (v["success"], v["refused"], v["label"], v["rationale"], v["error"]) == (
            j.success,
            j.refused,
            j.label,
            j.rationale,
            j.error,
        )
    figstep = [it for it in items if it["attack"] == "figstep"]
    assert all(len(it["images"]) == 1 and it["attack_meta"]["attack"] == "figstep" for it in figstep)
    images = section.data["mmsafe-browser-data"]["images"]
    assert all(
        v["thumb"].startswith("data:image/") and v["full"].startswith("data:image/") for v in images.values()
    )


def test_filters_pager_and_lightbox_in_chromium(run, tmp_path) -> None:
    section = browser_section(run)
    items = section.data["mmsafe-browser-data"]["items"]
    reader = ItemReader(run)
    index = ItemIndex(reader)
    refused = len(index.select(Filters(judge="refusal", verdict="refused")))
    assert 0 < refused < len(items)
    assert refused == sum(
        any(v["judge"] == "refusal" and v["refused"] for v in it["verdicts"]) for it in items
    )
    errors = len(index.select(Filters(verdict="error", attack="figstep")))
    assert errors == sum(
        it["attack"] == "figstep" and any(v["error"] for v in it["verdicts"]) for it in items
    )
    reader.close()
    path = _write_page(section, tmp_path / "p.html")
    with browser() as b:
        b.open(path)
        _ready(b)
        assert _count(b) == "80 items of 80"
        assert b.js("return document.querySelectorAll('.mb-item').length") == 50
        first = b.js("return document.querySelector('.mb-item').dataset.id")
        assert first == items[0]["id"]
        assert b.js("return document.getElementById('mb-prev').disabled") is True
        b.js("document.getElementById('mb-next').click()")
        b.wait(lambda: b.js("return document.getElementById('mb-page').textContent") == "page 2 of 2")
        ids = b.js("return [...document.querySelectorAll('.mb-item')].map(e => e.dataset.id)")
        assert ids == [it["id"] for it in items[50:]]
        assert b.js("return document.getElementById('mb-next').disabled") is True

        _set(b, "attack", "figstep")
        b.wait(lambda: _count(b) == "40 items of 80", what="the attack filter")
        shown = b.js("return [...document.querySelectorAll('.mb-item')].map(e => e.dataset.id)")
        assert shown == [it["id"] for it in items if it["attack"] == "figstep"]
        assert "attack=figstep" in b.js("return location.hash")
        _set(b, "verdict", "error")
        b.wait(lambda: _count(b) == f"{errors} items of 80", what="the verdict filter")
        _set(b, "attack", "")
        _set(b, "verdict", "refused")
        _set(b, "judge", "refusal")
        b.wait(lambda: _count(b) == f"{refused} items of 80", what="the judge + verdict filter")
        b.js(
            "const s=document.getElementById('mb-search'); s.value='WI-FI'; s.dispatchEvent(new Event('input'))"
        )
        b.wait(lambda: _count(b) == "2 items of 80", what="the search")  # none + figstep of malware-02

        _set(b, "judge", "")
        _set(b, "verdict", "")
        b.js("const s=document.getElementById('mb-search'); s.value=''; s.dispatchEvent(new Event('input'))")
        _set(b, "attack", "figstep")
        b.wait(lambda: _count(b) == "40 items of 80")
        assert b.js("return document.getElementById('mb-lightbox').hidden") is True
        b.js("document.querySelector('.mb-thumb').click()")
        assert b.js("return document.getElementById('mb-lightbox').hidden") is False
        assert b.js("return document.getElementById('mb-lightbox-img').getAttribute('src')").startswith(
            "data:image/"
        )
        b.wait(lambda: b.js("return document.getElementById('mb-lightbox-img').naturalWidth") > 160)
        b.js("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))")
        assert b.js("return document.getElementById('mb-lightbox').hidden") is True
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []


def test_budget_max_items_and_cut_responses(run, tmp_path) -> None:
    section = browser_section(run, image_budget_bytes=0, max_items=45, max_response_chars=10)
    data = section.data["mmsafe-browser-data"]
    assert len(data["items"]) == 45 and "The first 45 of 80 items" in section.html
    assert all(v["full"] is None for v in data["images"].values()) and "thumbnails only" in section.html
    long = [it for it in data["items"] if it["response_cut"]]
    assert long and all(len(it["response"]) == 10 for it in long)
    path = _write_page(section, tmp_path / "p.html")
    with browser() as b:
        b.open(path)
        _ready(b)
        assert "more chars" in b.js("return document.querySelector('.mb-cut').textContent")
        b.js("document.querySelector('.mb-thumb').click()")
        assert (
            b.js("return document.getElementById('mb-lightbox-note').textContent") == "full size: mmsafe view"
        )
        src = b.js("return document.getElementById('mb-lightbox-img').getAttribute('src')")
        assert src == data["images"][next(iter(data["images"]))]["thumb"]


def test_broken_image_bytes_and_unreadable_rows(run, tmp_path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    db = sqlite3.connect(copy / "mmsafe.sqlite")
    shas = [r[0] for r in db.execute("SELECT sha256 FROM images ORDER BY sha256")]
    db.execute("UPDATE images SET data=? WHERE sha256=?", (b"\x89PNG\r\n\x1a\nnot really", shas[0]))
    db.execute("DELETE FROM images WHERE sha256=?", (shas[1],))
    db.execute("UPDATE records SET record='{not json' WHERE rowid=(SELECT MIN(rowid) FROM records)")
    db.execute(
        "UPDATE records SET record=json_set(record, '$.expected', 'maybe') WHERE rowid=(SELECT MAX(rowid) FROM records)"
    )
    odd = "SELECT rowid FROM records WHERE json_valid(record) ORDER BY rowid LIMIT 1 OFFSET ?"
    for n, (path, value) in enumerate(
        [
            ("$.prompt.messages", "5"),
            ("$.prompt", '"text"'),
            ("$.judgement", '"str"'),
            ("$.image_hashes", "{}"),
        ]
    ):  # valid JSON of shapes mmsafe never writes: shown as far as they go, never a crash
        db.execute(
            f"UPDATE records SET record=json_set(record, '{path}', json(?)) WHERE rowid=({odd})",
            (value, 10 + n),
        )
    db.commit()
    db.close()
    section = browser_section(copy)
    data = section.data["mmsafe-browser-data"]
    assert data["n_unreadable"] == 2 and "2 records could not be read" in section.html
    assert len(data["items"]) == 80  # the two bad rows were verdicts of items that have another
    assert data["images"][shas[0]]["error"].startswith("image unreadable")
    assert data["images"][shas[1]] == {"error": "image missing from the store"}
    path = _write_page(section, tmp_path / "p.html")
    with browser() as b:
        b.open(path)
        _ready(b)
        _set(b, "attack", "figstep")
        b.wait(lambda: _count(b).endswith("items of " + str(len(data["items"]))))
        marks = b.js("return [...document.querySelectorAll('.mb-noimg')].map(e => e.textContent)")
        assert any(m.startswith("image unreadable") for m in marks)
        assert "image missing from the store" in marks
        assert b.js("return document.querySelectorAll('.mb-thumb').length") > 0
