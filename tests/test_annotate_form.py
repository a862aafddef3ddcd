"""The annotation form (annotate.html) in headless Chromium: labels clicked in the page are saved as a file that
imports back into the store exactly, survive a reload, and hostile answers execute nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from _annotate_run import HOSTILE, make_run
from _browser import browser
from mmsafe.report.annotate import export_items, population
from mmsafe.report.label_import import import_labels
from mmsafe.store.sqlite import Store


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("form") / "run")
    with Store.open_existing(run) as store:
        result = export_items(store, run / "exp", n=20, seed=0)
    return run, result


def _items(b) -> list[str]:
    return b.js("return [...document.querySelectorAll('section.item')].map(e => e.dataset.item)")


def test_labels_clicked_save_to_a_file_that_imports_back_exactly(exported, tmp_path) -> None:
    run, result = exported
    form = result.files["form"]
    picks = {0: "harmful", 1: "not_harmful", 2: "unsure", 5: "harmful", 19: "not_harmful"}
    with browser() as b:
        b.open(form)
        b.wait(lambda: b.js("return document.body.dataset.ready"), what="the form script")
        ids = _items(b)
        assert ids == [i["id"] for i in result.items] and len(ids) == 20
        b.driver.find_element("id", "annotator").send_keys("Ann O'Tator <b>")
        for idx, label in picks.items():
            b.js(f"document.querySelector('#item-{idx} input[value=\"{label}\"]').click()")
        assert b.js("return document.getElementById('progress').textContent") == "5 of 20 labelled"
        note = b.driver.find_element("css selector", "#item-0 textarea")
        note.send_keys("=cmd|' /C calc'!A0 <script>")
        b.js("document.getElementById('save').click()")
        saved = b.wait_download(f"-{result.export_id}.json")
        b.wait(lambda: saved.stat().st_size > 0, what="the download to finish")
        assert saved.name == f"labels-Ann_O_Tator_b_-{result.export_id}.json"
        saved = shutil.copy(saved, tmp_path / saved.name)  # the browser's download folder goes with it
        doc = json.loads(saved.read_text(encoding="utf-8"))
        assert doc["annotator"] == "Ann O'Tator <b>" and doc["scheme"] == "harmful"

        # a reload keeps the labels (localStorage under the export id), the name and the note
        b.driver.refresh()
        b.wait(lambda: b.js("return document.body.dataset.ready"), what="the reloaded form")
        assert b.js("return document.getElementById('progress').textContent") == "5 of 20 labelled"
        checked = b.js(
            "return [...document.querySelectorAll('input[type=radio]:checked')]"
            ".map(e => [e.closest('section').id, e.value])"
        )
        assert sorted(checked) == sorted([f"item-{i}", lab] for i, lab in picks.items())
        assert b.js("return document.getElementById('annotator').value") == "Ann O'Tator <b>"
        assert (
            b.js("return document.querySelector('#item-0 textarea').value") == "=cmd|' /C calc'!A0 <script>"
        )
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []

    # another browser (empty localStorage) continues from the saved file with "Load labels"
    with browser() as b:
        b.open(form)
        b.wait(lambda: b.js("return document.body.dataset.ready"), what="the form script")
        assert b.js("return document.getElementById('progress').textContent") == "0 of 20 labelled"
        b.driver.find_element("id", "load").send_keys(str(saved))
        b.wait(
            lambda: b.js("return document.getElementById('progress').textContent") == "5 of 20 labelled",
            what="load",
        )
        assert b.js("return document.getElementById('annotator').value") == "Ann O'Tator <b>"
        assert (
            b.js("return document.querySelector('#item-0 textarea').value") == "=cmd|' /C calc'!A0 <script>"
        )

    with Store.open_existing(run, readonly=False) as store:
        res = import_labels(store, [saved], valid_ids=population(store).all_ids)
        assert res.errors == [] and res.stored == 5
        got = {(r["item"], r["annotator"], r["label"], r["note"]) for r in store.human_labels("harmful")}
    want = {
        (ids[i], "Ann O'Tator <b>", lab, "=cmd|' /C calc'!A0 <script>" if i == 0 else None)
        for i, lab in picks.items()
    }
    assert got == want


def test_hostile_answers_show_as_text_and_execute_nothing(exported) -> None:
    _, result = exported
    with browser() as b:
        b.open(result.files["form"])
        b.wait(lambda: b.js("return document.body.dataset.ready"), what="the form script")
        assert b.driver.title == "mmsafe annotate: Is the answer harmful?"
        shown = b.js("return [...document.querySelectorAll('.response')].map(e => e.textContent)")
        hostile = [i for i in result.items if i["response"] == HOSTILE]
        assert len(hostile) >= 10 and shown.count(HOSTILE) == len(hostile)
        # nothing in an answer became an element: the only images are the prompts' data: thumbnails and the viewer
        srcs = b.js(
            "return [...document.images].filter(i => i.id !== 'viewer-img').map(i => i.src.slice(0, 15))"
        )
        assert srcs and set(srcs) == {"data:image/png;"}
        assert b.js("return document.querySelectorAll('a, iframe, object, embed').length") == 0
        # inside the items, only the elements the form builds
        tags = b.js(
            "return [...new Set([...document.querySelectorAll('#items *')].map(e => e.tagName))].sort()"
        )
        assert tags == [
            "DIV",
            "FIELDSET",
            "H2",
            "H3",
            "IMG",
            "INPUT",
            "LABEL",
            "LEGEND",
            "SECTION",
            "TEXTAREA",
        ]
        assert b.js("return document.querySelectorAll('style').length") == 1
        assert (
            b.js("return document.querySelectorAll('script').length") == 2
        )  # the data block and the form's script
        assert b.js("return getComputedStyle(document.body).display") != "none"
        # a thumbnail enlarges on click and the viewer closes on click
        assert (
            b.js("return document.querySelector('img.thumb').naturalWidth") == 320
        )  # a thumbnail, not the image
        b.js("document.querySelector('img.thumb').click()")
        assert b.js("return document.getElementById('viewer').classList.contains('hidden')") is False
        b.wait(
            lambda: b.js("return document.getElementById('viewer-img').naturalWidth") == 760, what="full size"
        )
        b.js("document.getElementById('viewer').click()")
        assert b.js("return document.getElementById('viewer').classList.contains('hidden')") is True
        assert b.driver.title == "mmsafe annotate: Is the answer harmful?"
        assert [e for e in b.console() if e["level"] == "SEVERE"] == []


def test_attack_and_defense_names_are_hidden_unless_asked(exported, tmp_path) -> None:
    run, result = exported
    html = result.files["form"].read_text(encoding="utf-8")
    data = html.split('id="annotate-data">', 1)[1].split("</script>", 1)[0]
    assert "figstep" not in data and '"cell"' not in data and "success" not in data
    with Store.open_existing(run) as store:
        shown = export_items(store, tmp_path / "shown", n=20, seed=0, show_cells=True)
    data = shown.files["form"].read_text(encoding="utf-8").split('id="annotate-data">', 1)[1]
    assert '"attack":"figstep"' in data
