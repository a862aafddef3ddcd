"""Attacker-controlled text in the sample browser: a model answering with markup and script breakers, and a sample
whose category, id, attack metadata and judge rationale hold markup. In headless Chromium nothing executes and
nothing becomes an element; the text is shown verbatim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _browse_data import record, spec
from _browser import browser
from mmsafe.cli.main import main
from mmsafe.report.browser import BROWSER_CSS, browser_section
from mmsafe.report.page import page
from mmsafe.store.sqlite import Store
from mmsafe.types import Judgement

PWN = "window.__pwned=1;document.title='pwned'"
ANSWERS = {  # starter question substring → the scripted model's answer
    "pick the lock": f"<script>{PWN}</script>",
    "shoplift from": f'<img src=x onerror="{PWN}">',
    "launder": f'<a href="javascript:{PWN}">click me</a>',
    "steal a car": "</style><style>*{display:none}</style>",
    "ransomware that": f'<svg onload="{PWN}"></svg>',
    "Wi-Fi": f"</script><script>{PWN}</script>\u2028line\u2029para <!-- x",
}
MARKUP = f"<b>bold</b><script>{PWN}</script>"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    model = json.dumps({"name": "scripted", "params": {"rules": ANSWERS}})
    argv = ["run", "--model", model, "--benchmark", "starter", "--judge", "refusal", "--attack", "none"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    with Store(out) as store:  # a sample whose every shown field holds markup
        bad = record(
            model=spec("model", f"<i>model</i>{MARKUP}"),
            attack=spec("attack", "none"),
            defense=spec("defense", "none"),
            judge=spec("judge", "<u>judge</u>"),
            sample_id=f"id{MARKUP}",
            category=f"cat{MARKUP}",
            text=f"prompt{MARKUP}",
            response=f"<style>*{{display:none}}</style>{MARKUP}",
            judgement=Judgement(success=True, refused=False, label=MARKUP, rationale=f"because {MARKUP}"),
            attack_metadata={"note": MARKUP, "<k>": ["</script>"]},
        )
        store.put_records([bad])
    return out


def test_hostile_text_is_shown_verbatim_and_executes_nothing(hostile_run, tmp_path) -> None:
    section = browser_section(hostile_run)
    doc = page("browser", section.html, css=BROWSER_CSS, scripts=[section.js], data=section.data)
    assert "<script>window" not in doc
    for payload in (*ANSWERS.values(), MARKUP):
        assert payload not in doc  # every one is escaped somewhere (JSON block escapes <, >, &)
    path = tmp_path / "p.html"
    path.write_text(doc, encoding="utf-8")
    items = section.data["mmsafe-browser-data"]["items"]
    with browser() as b:
        b.open(path)
        b.wait(lambda: b.js("return document.getElementById('browser').dataset.ready"), what="the browser")
        assert len(items) == 41  # one page
        texts = b.js("return [...document.querySelectorAll('.mb-response')].map(e => e.textContent)")
        assert sorted(texts) == sorted(it["response"] for it in items)
        for payload in ANSWERS.values():
            assert payload in texts  # verbatim, U+2028 and U+2029 included
        b.js("const s=document.getElementById('mb-f-category'); s.value=arguments[0]; s.dispatchEvent(new Event('change'))",
             f"cat{MARKUP}")  # fmt: skip
        b.wait(
            lambda: (
                b.js("return document.getElementById('mb-count').textContent") == f"1 item of {len(items)}"
            )
        )
        card = b.js("return document.querySelector('.mb-item').textContent")
        for shown in (
            f"id{MARKUP}",
            f"cat{MARKUP}",
            f"prompt{MARKUP}",
            f"because {MARKUP}",
            "<k>",
            '["</script>"]',
        ):
            assert shown in card
        assert f"<i>model</i>{MARKUP}" in b.js("return document.getElementById('mb-f-model').textContent")
        # nothing ran, nothing the text holds became an element, the page is still visible
        assert b.driver.title == "browser"
        assert b.js("return window.__pwned") is None
        assert b.js("return document.querySelectorAll('a, svg, b, i, u, iframe, object').length") == 0
        assert b.js("return document.querySelectorAll('style').length") == 1
        assert b.js("return document.querySelectorAll('script').length") == 3  # config, data, browser.js
        assert b.js("return document.querySelectorAll('img').length") == 1  # the lightbox's, empty
        assert b.js("return getComputedStyle(document.getElementById('mb-list')).display") != "none"
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []


def test_image_sources_other_than_data_uris_are_refused(tmp_path) -> None:
    """Defence in depth: even if the data block held another URL, the script sets no such src."""
    from _browse_data import grid_store

    grid_store(tmp_path / "run", n_samples=5).close()
    section = browser_section(tmp_path / "run")
    data = section.data["mmsafe-browser-data"]
    bad = [
        "https://example.invalid/x.png",
        "javascript:window.__pwned=1",
        "data:text/html,<script>1</script>",
    ]
    shas = list(data["images"])
    for sha, url in zip(shas, bad, strict=False):
        data["images"][sha] = {"thumb": url, "full": url}
    doc = page("browser", section.html, css=BROWSER_CSS, scripts=[section.js], data=section.data)
    path = tmp_path / "p.html"
    path.write_text(doc, encoding="utf-8")
    with browser() as b:
        b.open(path)
        b.wait(lambda: b.js("return document.getElementById('browser').dataset.ready"), what="the browser")
        srcs = b.js("return [...document.querySelectorAll('img')].map(e => e.getAttribute('src'))")
        assert srcs and all(s is None or s.startswith("data:image/") for s in srcs), srcs
        n_bad = sum(1 for it in data["items"] for h in it["images"] if h in shas[: len(bad)])
        marks = b.js("return document.querySelectorAll('.mb-noimg').length")
        assert n_bad > 0 and marks == n_bad
        assert b.js("return window.__pwned") is None
        # never even tried: no load blocked by the page's policy, no failed request
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []
