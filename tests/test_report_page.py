"""The shared page base (mmsafe.report.page): escaping, JSON blocks and the hash-based policy, in a real browser."""

from __future__ import annotations

import json

from _browser import browser
from mmsafe.report.page import RawJSON, compact_json, csp, esc, json_text, page, source_hash

HOSTILE = [
    "<script>document.title='pwned-script'</script>",
    "<img src=x onerror=\"document.title='pwned-img'\">",
    "<a href=\"javascript:document.title='pwned-link'\">click</a>",
    "<style>body{display:none}</style>",
    "</script><script>document.title='pwned-break'</script>",
    "\u2028\u2029 & \" ' `",
]

SCRIPT = (
    "const d=JSON.parse(document.getElementById('d').textContent);"
    "const ul=document.getElementById('out');"
    "for(const s of d.items){const li=document.createElement('li');li.textContent=s;ul.appendChild(li);}"
    "document.body.dataset.ready='1';"
)


def test_json_text_cannot_close_its_block_and_round_trips() -> None:
    text = json_text({"items": HOSTILE})
    assert "<" not in text and ">" not in text and "&" not in text
    assert "\u2028" not in text and "\u2029" not in text
    assert json.loads(text) == {"items": HOSTILE}


def test_raw_json_goes_in_as_made_and_is_escaped_like_the_rest() -> None:
    """Kept items travel as their JSON text (RawJSON): the block is the one written from the objects, byte for
    byte, and hostile text inside the raw part is escaped all the same."""
    items = [{"text": h, "n": i} for i, h in enumerate(HOSTILE)]
    raw = RawJSON("[" + ",".join(compact_json(it) for it in items) + "]")
    nested = {"config": {"a": 1}, "data": {"items": raw, "images": {"x": [1, 2]}, "n": 3}}
    plain = {"config": {"a": 1}, "data": {"items": items, "images": {"x": [1, 2]}, "n": 3}}
    assert json_text(nested) == json_text(plain)
    assert json_text(raw) == json_text(items)
    text = json_text(nested)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == plain


def test_policy_names_exactly_the_page_sources() -> None:
    policy = csp(styles=["b{}"], scripts=["1"], server=False)
    assert "default-src 'none'" in policy and "connect-src" not in policy
    assert source_hash("b{}") in policy and source_hash("1") in policy
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "connect-src 'self'" in csp(styles=[], scripts=[], server=True)
    assert esc('"<x>&') == "&quot;&lt;x&gt;&amp;"


def test_hostile_text_executes_nothing_in_chromium(tmp_path) -> None:
    body = "".join(f"<p class=raw>{esc(s)}</p>" for s in HOSTILE) + '<ul id="out"></ul>'
    doc = page("t", body, css="li{color:#333}", scripts=[SCRIPT], data={"d": {"items": HOSTILE}})
    path = tmp_path / "p.html"
    path.write_text(doc, encoding="utf-8")
    with browser() as b:
        b.open(path)
        b.wait(lambda: b.js("return document.body.dataset.ready"), what="the page script")
        assert b.driver.title == "t"
        shown = b.js("return [...document.querySelectorAll('#out li')].map(e => e.textContent)")
        assert shown == HOSTILE  # the data block round-trips exactly, as text
        raw = b.js("return [...document.querySelectorAll('p.raw')].map(e => e.textContent)")
        assert raw == HOSTILE
        # nothing the text holds became an element
        assert b.js("return document.querySelectorAll('img, a, style').length") == 1  # the page's own <style>
        assert b.js("return document.querySelectorAll('script').length") == 2  # the data block and SCRIPT
        errors = [e for e in b.console() if e["level"] == "SEVERE"]
        assert errors == [], errors


def test_policy_blocks_a_script_the_page_did_not_name(tmp_path) -> None:
    doc = page("t", "<p>x</p>", css="", scripts=[SCRIPT], data={"d": {"items": []}})
    doc = doc.replace("</body>", "<script>document.title='injected'</script></body>")
    path = tmp_path / "p.html"
    path.write_text(doc, encoding="utf-8")
    with browser() as b:
        b.open(path)
        b.wait(lambda: b.js("return document.body.dataset.ready"), what="the page script")
        assert b.driver.title == "t"
        assert any("Content Security Policy" in e["message"] for e in b.console())
