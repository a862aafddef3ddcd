"""report.html (mmsafe.report.html): written by every run, its matrices hold the summary's numbers, its charts are
SVG images, its links resolve; hostile labels stay text in a real browser; without matplotlib every table is still
there."""

from __future__ import annotations

import base64
import json
import re
import sys
from typing import Any

import pytest

from _browser import browser
from mmsafe.cli.main import main
from mmsafe.metrics.rates import rate
from mmsafe.report.browser import Section
from mmsafe.report.html import plane_points, render_html
from mmsafe.report.htmlkit import NO_CHARTS, q

HOSTILE = [
    "<script>document.title='pwned-script'</script>",
    "<img src=x onerror=\"document.title='pwned-img'\">",
    "javascript:document.title='pwned-link'",
    "</style><style>body{display:none}</style>",
    "$\\alpha$ & $x^2$",
]
IMG_SRC = re.compile(r'<img class="[^"]*" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"')


def _svgs(html: str) -> list[str]:
    return [base64.b64decode(m).decode("utf-8") for m in IMG_SRC.findall(html)]


# -- a real run of the scripted model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "run"
    argv = ["run", "--model", "scripted", "--benchmark", "starter", "--judge", "refusal", "--out", str(out)]
    argv += [
        "--attack",
        "none",
        "--attack",
        "figstep",
        "--defense",
        "none",
        "--defense",
        "system-prompt",
        "--quiet",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return out, summary, (out / "report.html").read_text(encoding="utf-8")


def test_every_run_writes_the_page_and_report_rewrites_it(run):
    out, _, html = run
    assert html.startswith("<!doctype html>") and "Content-Security-Policy" in html
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    again = (out / "report.html").read_text(encoding="utf-8")
    strip = re.compile(r"generated [^<]*</p>")  # the generation time is the only difference
    assert strip.sub("", again) == strip.sub("", html)


def test_charts_are_deterministic_svg_images(run):
    _, _, html = run
    svgs = _svgs(html)
    # 1 category chart + 2 plane panels (one per attack) + 1 cost chart + 1 effects forest
    assert len(svgs) == 5
    assert all(s.lstrip().startswith("<?xml") and "<svg" in s for s in svgs)
    assert NO_CHARTS not in html


def test_browser_shows_each_matrix_with_the_summary_numbers_and_links_resolve(run):
    out, summary, _ = run
    overall = {
        (r["attack"], r["defense"]): r
        for r in summary["rows"]
        if r["category"] == "ALL" and r["judge"] == "refusal"
    }
    with browser() as b:
        b.open(out / "report.html")
        tables = b.js(
            "return [...document.querySelectorAll('table.mx')].map(t => ({caption: t.previousElementSibling.textContent,"
            " cols: [...t.tHead.rows[0].cells].slice(1).map(c => c.textContent),"
            " rows: [...t.tBodies[0].rows].map(r => [r.cells[0].textContent,"
            " [...r.cells].slice(1).map(c => [c.className, c.querySelector('.rate').textContent])])}))"
        )
        assert len(tables) == 1  # one (benchmark, model, judge)
        t = tables[0]
        assert "starter · scripted · judge refusal" in t["caption"] and "non-refusal rate" in t["caption"]
        assert "harmful" not in t["caption"]
        assert t["cols"] == ["none", "system-prompt"]
        assert [r[0] for r in t["rows"]] == ["none", "figstep"]
        for attack, cells in t["rows"]:
            for defense, (cls, text) in zip(t["cols"], cells, strict=True):
                asr = overall[(attack, defense)]["asr"]
                assert cls == q(asr["value"])
                want = f"{100 * asr['value']:.1f}% [{100 * asr['lo']:.1f}, {100 * asr['hi']:.1f}] {asr['k']}/{asr['n']}"
                assert text == want
        links = b.js("return [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))")
        assert len(links) == 8 and links[-1] == "#browser"  # the report's 7 sections, then the sample browser
        assert b.js(
            "const ids = [...document.querySelectorAll('[id]')].map(e => e.id);"
            "return ids.length === new Set(ids).size"
        )  # no id twice (the browser brings its own section)
        b.wait(
            lambda: b.js("return document.querySelectorAll('#mb-list > li').length") > 0, what="browser items"
        )
        assert all(b.js("return !!document.getElementById(arguments[0])", h[1:]) for h in links)
        # every image with a source decodes (the sample browser's lightbox has none until a thumbnail is clicked)
        assert b.js(
            "const im = [...document.images].filter(i => i.getAttribute('src'));"
            "return im.length > 5 && im.every(i => i.complete && i.naturalWidth > 0)"
        )
        assert "scripted responses, not a model" in b.js(
            "return document.querySelector('#matrices').innerText"
        )
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []


# -- a hand-made summary: every label hostile ------------------------------------------------------------------


def _rate(k: int, n: int) -> dict[str, Any]:
    return rate(k, n).as_dict()


def _summary(label: str) -> dict[str, Any]:
    """A summary whose every label (components, categories, notes, data names) is ``label``-derived."""
    cell = {"benchmark": f"b{label}", "model": f"m{label}", "judge": f"j{label}"}
    rows = []
    for attack, defense, k in ((f"a{label}", "none", 7), (f"a{label}", f"d{label}", 2), ("none", "none", 0)):
        for category in ("ALL", f"c{label}", "violence"):
            rows.append(
                {
                    **cell,
                    "attack": attack,
                    "defense": defense,
                    "category": category,
                    "n": 14,
                    "n_errors": 0,
                    "asr": _rate(k, 10),
                    "refusal": _rate(10 - k, 10),
                    "over_refusal": _rate(1, 4),
                    "rate_name": "non-refusal rate",
                }
            )
    diff = {"diff": -0.5, "lo": -0.8, "hi": -0.1, "n_a": 10, "n_b": 10, "n_unmatched": 0, "paired": True}
    defense = {**cell, "attack": f"a{label}", "defense": f"d{label}", "defense_success": _rate(8, 10)}
    defense |= {
        "over_refusal": _rate(2, 4),
        "over_refusal_price": diff,
        "utility": None,
        "utility_price": None,
    }
    defense |= {"actions": {f"act{label}": 3}, "calls_per_item": 2.0, "seconds_per_item": 0.25}
    return {
        "generated": 0.0,
        "runs": [f"r{label}"],
        "n_records": 42,
        "n_errors": 1,
        "n_unreadable": 1,
        "unreadable": [f"k{label}"],
        "models": [{"label": f"m{label}", "key": "1", "note": f"random weights {label}"}],
        "components": {},
        "rows": rows,
        "adversarial": [
            {**cell, "attack": f"a{label}", "defense": "none", "images": 3, "success": _rate(1, 3)}
            | {"steps": 100.0, "seconds": 1.5, "universal": False, "eps": 0.03, "norm": f"n{label}"}
            | {"linf_max": 0.03, "l2": 1.2, "ssim": 0.9, "psnr": 30.0, "crafted_on": [f"m{label}"]}
        ],
        "judge_agreement": [
            {"a": f"j{label}", "b": "refusal", "n": 10, "agreement": _rate(9, 10)}
            | {"kappa": {"value": 0.8, "lo": 0.5, "hi": 1.0}, "both_success": 3, "only_a": 1, "only_b": 0}
        ],
        "effects": [
            {**cell, "axis": "defense", "attack": f"a{label}", "defense": f"d{label}", "baseline": "none"}
            | diff
        ],
        "defenses": [defense],
        "judges": [
            {"label": f"j{label}", "version": "1", "rate_name": "non-refusal rate", "construct": "refusal"}
            | {
                "evals": [
                    {"data_name": f"data{label}", "n": 50, "accuracy": _rate(45, 50), "kappa": {"value": 0.7}}
                ]
            }
        ],
        "calibrated": [],
        "human": {
            "scheme": f"s{label}",
            "annotators": [f"alice{label}", "bob"],
            "n_items": 10,
            "interrater": {
                "n": 10,
                "fleiss_kappa": 0.61,
                "krippendorff_alpha": 0.6,
                "pairs": [{"a": f"alice{label}", "b": "bob", "n": 10, "kappa": 0.61, "agreement": 0.8}],
            },
            "judges": [{"judge": f"j{label}", "n": 10, "agreement": _rate(8, 10), "kappa": None}],
            "rows": [
                {**cell, "attack": f"a{label}", "defense": "none", "n": 10, "human": _rate(4, 10)}
                | {"judges": {f"j{label}": _rate(7, 10)}}
            ],
        },
    }


def test_hostile_labels_stay_text_in_chromium(tmp_path):
    hostile = " ".join(HOSTILE)
    errors = [(f"stage{hostile}", f"b{hostile}", 1, f"s1: {hostile}")]
    js = "document.body.dataset.extra = JSON.parse(document.getElementById('extra-data').textContent).x;"
    markup = '<section id="browser"><h2>Samples</h2><p id=extra>x</p></section>'
    extra = Section("browser", f"Samples {hostile}", markup, js, {"extra-data": {"x": hostile}})
    html = render_html(_summary(hostile), errors=errors, sections=[extra])  # type: ignore[arg-type]
    svgs = _svgs(html)
    maths = _svgs(render_html(_summary("$\\alpha$")))  # type: ignore[arg-type]
    drawn = [re.sub(r"<!--.*?-->", "", s, flags=re.S) for s in maths]  # the SVG's comments hold the raw label
    assert drawn and all("$\\alpha$" in s and "α" not in s for s in drawn)  # no mathtext: "$" drawn as text
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    with browser() as b:
        b.open(path)
        b.wait(lambda: b.js("return document.body.dataset.extra"), what="the extra section's script")
        assert b.js("return document.body.dataset.extra") == hostile  # its data block round-trips
        assert b.driver.title == f"mmsafe report: r{hostile}"
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []
        # nothing the labels hold became an element: every image is a chart, every link is the nav's
        assert b.js("return [...document.images].every(i => i.src.startsWith('data:image/svg+xml;base64,'))")
        assert b.js("return document.images.length") == len(svgs)
        assert b.js("return [...document.links].every(a => a.parentNode.tagName === 'NAV')")
        assert b.js("return document.querySelectorAll('style').length") == 1
        assert b.js("return document.querySelectorAll('script:not([type])').length") == 1
        assert b.js("return getComputedStyle(document.body).display") == "block"
        text = b.js("return document.body.innerText")
        for s in HOSTILE:
            assert s in text
        nav = b.js("return [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))")
        assert nav[-1] == "#browser" and all(
            b.js("return !!document.getElementById(arguments[0])", h[1:]) for h in nav
        )
        human = b.js("return document.querySelector('#judges').innerText")
        assert "Fleiss κ 0.61" in human and "Krippendorff α 0.60" in human and "human majority" in human


def test_without_matplotlib_every_table_is_there_and_each_chart_says_how(monkeypatch):
    summary = _summary("x")
    with_charts = render_html(summary)  # type: ignore[arg-type]
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, as on a core-only install
    without = render_html(summary)  # type: ignore[arg-type]
    n_charts = len(_svgs(with_charts))
    assert n_charts == 4  # categories, plane, cost, effects
    assert "<img" not in without and without.count(NO_CHARTS) == n_charts
    assert without.count("<table") == with_charts.count("<table")


def test_colour_class_follows_the_value():
    assert [q(v) for v in (0.0, 0.04, 0.05, 0.35, 0.7, 0.96, 1.0, None)] == [
        "q0", "q0", "q1", "q4", "q7", "q10", "q10", "na",
    ]  # fmt: skip
    html = render_html(_summary("x"))  # type: ignore[arg-type]
    cells = re.findall(r'<td class="(q\d+|na)"><div class="rate"><span class="v">([\d.]+)%', html)
    assert sorted(cells) == sorted([("q7", "70.0"), ("q2", "20.0"), ("q0", "0.0")])


def test_plane_baseline_is_one_minus_the_rate_and_defenses_come_from_the_summary():
    summary = _summary("x")
    panels = plane_points(summary)  # type: ignore[arg-type]
    assert list(panels) == [("bx", "mx", "ax", "jx")]  # the attack-none cell has no defense: no panel
    xlabel, points = panels[("bx", "mx", "ax", "jx")]
    assert xlabel == "over-refusal on must-comply items"
    base, defended = points
    asr = next(r["asr"] for r in summary["rows"] if r["attack"] == "ax" and r["defense"] == "none")
    assert base.baseline and base.y.value == pytest.approx(1 - asr["value"])
    assert (base.y.lo, base.y.hi) == pytest.approx((1 - asr["hi"], 1 - asr["lo"]))
    assert base.y.lo == pytest.approx(rate(3, 10).lo)  # the interval of 10 - 7 held out of 10
    assert defended.label == "dx" and defended.y.value == 0.8 and defended.x.value == 0.5


def test_matrix_cells_show_utility_accuracy_and_protection_where_the_row_has_them():
    summary = _summary("x")
    row = next(r for r in summary["rows"] if r["category"] == "ALL" and r["defense"] == "dx")
    row |= {"utility": {"value": 0.72, "lo": 0.6, "hi": 0.8, "n": 4}, "accuracy": _rate(9, 10)}
    row["protection"] = {"value": 0.5, "lo": None, "hi": None}
    html = render_html(summary)  # type: ignore[arg-type]
    cell = re.search(r'<td class="q2">(.*?)</td>', html)
    assert cell is not None
    text = " ".join(re.sub(r"<[^>]+>", " ", cell.group(1)).split())
    assert "utility 0.72 [0.60, 0.80]" in text and "protection 0.50" in text and "accuracy 90.0% [" in text
    other = re.search(r'<td class="q7">(.*?)</td>', html)
    assert other is not None and "utility" not in other.group(1)
