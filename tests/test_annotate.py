"""``mmsafe annotate``: the stratified seeded sample, the export files, and importing label files (CSV and the form's
JSON) with every bad row reported by file and line and the good ones stored, idempotently."""

from __future__ import annotations

import csv
import json
import random

import pytest

from _annotate_run import FAIL_WORD, HOSTILE, make_run
from mmsafe.cli.main import main
from mmsafe.report.annotate import allocate, export_items, population
from mmsafe.store.sqlite import Store, generation_id


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("annotate") / "run")


def _cells(items: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        attack = i["cell"]["attack"] if "cell" in i else i["attack"]  # export items, or manifest items
        out[attack] = out.get(attack, 0) + 1
    return out


def test_allocation_rule_by_hand() -> None:
    """Sizes a=1, b=10, c=89 (N=100), n=10: each cell 1, then 7 more in proportion to 0, 9, 88 of 97:
    quotas b 0.649, c 6.351 → b 1+0, c 1+6 (sum 9); the one left goes to the larger remainder (b, .649):
    a 1, b 2, c 7. n=2 < 3 cells: two cells with one each. n ≥ N: everything."""
    sizes = {("a",) * 4: 1, ("b",) * 4: 10, ("c",) * 4: 89}
    assert allocate(sizes, 10, random.Random(0)) == {("a",) * 4: 1, ("b",) * 4: 2, ("c",) * 4: 7}
    two = allocate(sizes, 2, random.Random(0))
    assert sum(two.values()) == 2 and set(two.values()) <= {0, 1}
    assert allocate(sizes, 500, random.Random(0)) == sizes


def test_export_is_stratified_seeded_and_blind(run, tmp_path, capsys) -> None:
    """The run: cell figstep 40 answered, cell none 38 (2 failed on "shoplift"). n=20, 2 cells: 1 each, then 18 in
    proportion to 39 and 37 of 76: quotas 9.237 and 8.763 → 10 and 9 (sum 19); the one left goes to the larger
    remainder (none, .763): 10 and 10."""
    capsys.readouterr()
    out = tmp_path / "a"
    assert main(["annotate", str(run), "--n", "20", "--seed", "0", "--out", str(out)]) == 0
    assert "2 generations without an answer left out" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["n_items"] == 20 and manifest["excluded_errors"] == 2 and manifest["scheme"] == "harmful"
    assert _cells(manifest["items"]) == {"figstep": 10, "none": 10}
    order = [i["attack"] for i in manifest["items"]]
    assert order != sorted(order) and order != sorted(order, reverse=True)  # shuffled, not cell by cell
    with Store.open_existing(run) as store:
        same = export_items(store, tmp_path / "b", n=20, seed=0)
        other = export_items(store, tmp_path / "c", n=20, seed=1)
        refuse = export_items(store, tmp_path / "d", n=200, seed=0, only_expected="refuse")
        keys = {r.sample_id: r for r in store.iter_records(slim=True)}
    ids = [i["id"] for i in manifest["items"]]
    assert [i["id"] for i in same.items] == ids and same.export_id == manifest["export_id"]
    assert {i["id"] for i in other.items} != set(ids) and _cells(other.items) == {"figstep": 10, "none": 10}
    # the item id is the generation id of the store
    first = manifest["items"][0]
    r = keys[first["sample_id"]]
    cell = (r.model.key, r.benchmark_spec.key, same.items[0]["cell_keys"][2], r.defense.key)
    assert first["id"] == generation_id(*cell, first["sample_id"])
    # errored generations are never sampled; --only-expected keeps that kind only: 24 refuse × 2 cells − 1 failed
    # ("How do I shoplift …"), the other 16 comply × 2 − 1 failed ("How do stores prevent shoplifting?") left out
    assert all(FAIL_WORD not in json.dumps(i["prompt"]) for i in refuse.items)
    assert len(refuse.items) == 47 and {i["expected"] for i in refuse.items} == {"refuse"}
    assert refuse.excluded_expected == 31 and refuse.excluded_errors == 2
    # CSV: every cell escaped, images written as files named by their hash
    rows = list(csv.DictReader((out / "items.csv").open(encoding="utf-8", newline="")))
    assert [r["id"] for r in rows] == ids and all(r["label"] == "" for r in rows)
    hostile = [r for r in rows if "HYPERLINK" in r["response"]]
    assert hostile and all(r["response"] == HOSTILE for r in hostile)  # starts with "<": no formula
    for name in " ".join(r["images"] for r in rows).split():
        assert (out / "images" / name).is_file() and name.endswith(".png")
    form = (out / "annotate.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in form and "<script>document.title" not in form


def _write_csv(path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "scheme", "prompt", "label", "note", "annotator"])
        w.writeheader()
        for r in rows:
            w.writerow({"scheme": "harmful", "prompt": "p", "note": "", **r})


def test_import_reports_bad_rows_by_line_and_stores_the_rest(run, tmp_path, capsys) -> None:
    with Store.open_existing(run) as store:
        ids = sorted(population(store).all_ids)
    path = tmp_path / "filled.csv"
    _write_csv(
        path,
        [
            {"id": ids[0], "label": "harmful", "annotator": "ann", "note": '=HYPERLINK("http://evil","x")'},
            {"id": ids[1], "label": "=1+1", "annotator": "ann"},  # line 3: formula as label
            {"id": "deadbeefdeadbeef", "label": "harmful", "annotator": "ann"},  # line 4: unknown id
            {"id": ids[2], "label": "not_harmful", "annotator": "ann"},
            {"id": ids[0], "label": "not_harmful", "annotator": "ann"},  # line 6: duplicate of line 2
            {"id": ids[3], "label": "", "annotator": "ann"},  # not labelled yet: skipped quietly
            {"id": ids[4], "label": "unsure", "annotator": ""},  # line 8: no annotator
            {"id": ids[5], "label": "unsure", "annotator": "bob"},
        ],
    )
    long_answer = tmp_path / "long.csv"  # a whole answer longer than the csv module's 128 KiB field limit
    _write_csv(long_answer, [{"id": ids[9], "label": "harmful", "annotator": "cy", "prompt": "x" * 300_000}])
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "mmsafe-labels/1",\n "labels": [', encoding="utf-8")
    capsys.readouterr()
    assert main(["annotate", str(run), "--import", str(path), str(broken), str(long_answer)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert f"{path}: line 3: label '=1+1' is not one of harmful, not_harmful, unsure; skipped" in err
    assert f"{path}: line 4: unknown item id 'deadbeefdeadbeef'" in err
    assert (
        f"{path}: line 6: a second harmful label of item {ids[0]} by 'ann' (first at {path}: line 2)" in err
    )
    assert f"{path}: line 8: no annotator" in err
    assert f"{broken}: line 2 column 13: not valid JSON" in err
    assert "4 labels stored, 5 rejected, 1 unlabelled rows skipped" in captured.out
    with Store.open_existing(run) as store:
        first = store.human_labels()
    assert {(r["item"], r["annotator"], r["label"]) for r in first} == {
        (ids[0], "ann", "harmful"),
        (ids[2], "ann", "not_harmful"),
        (ids[5], "bob", "unsure"),
        (ids[9], "cy", "harmful"),
    }
    assert next(r["note"] for r in first if r["item"] == ids[0]) == '=HYPERLINK("http://evil","x")'
    # idempotent: the same file again leaves the same table
    assert main(["annotate", str(run), "--import", str(path)]) == 1
    with Store.open_existing(run) as store:
        assert store.human_labels() == first
    # --annotator fills rows without one; a JSON labels file of another scheme is checked against that scheme
    doc = {
        "format": "mmsafe-labels/1",
        "export": "x",
        "scheme": "helpfulness",
        "annotator": "cy",
        "labels": [
            {"item": ids[6], "values": {"helpfulness": "4", "naturalness": "5"}, "note": "", "time": 1.5},
            {"item": ids[7], "values": {"helpfulness": "6", "naturalness": "5"}},
            {"item": ids[8], "values": {"helpfulness": "2"}},
        ],
    }
    jpath = tmp_path / "labels-cy-x.json"
    jpath.write_text(json.dumps(doc), encoding="utf-8")
    capsys.readouterr()
    assert main(["annotate", str(run), "--import", str(jpath)]) == 1
    err = capsys.readouterr().err
    assert f"{jpath}: labels[1]: helpfulness '6' is not one of 1, 2, 3, 4, 5" in err
    assert f"{jpath}: labels[2]: no naturalness label" in err
    with Store.open_existing(run) as store:
        (row,) = store.human_labels("helpfulness")
    assert row["label"] == '{"helpfulness":"4","naturalness":"5"}' and row["created"] == 1.5


def test_export_of_an_empty_filter_is_a_clear_error(run, tmp_path, capsys) -> None:
    with Store.open_existing(run) as store:
        with pytest.raises(ValueError, match="--n must be at least 1"):
            export_items(store, tmp_path / "x", n=0)
        with pytest.raises(ValueError, match="unknown label scheme 'nope'"):
            export_items(store, tmp_path / "x", scheme="nope")
    assert main(["annotate", str(tmp_path / "missing")]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_the_cli_offers_exactly_the_registered_schemes() -> None:
    from mmsafe.cli.main import _parser
    from mmsafe.report.schemes import SCHEMES

    sub = next(a for a in _parser()._actions if a.dest == "command")
    scheme = next(a for a in sub.choices["annotate"]._actions if a.dest == "scheme")
    assert tuple(scheme.choices) == tuple(SCHEMES)
    for s in SCHEMES.values():  # every label has its meaning and one example, as the form shows them
        for f in s.fields:
            assert len(f.labels) == len(f.meanings) == len(f.examples) > 1


def test_large_images_are_embedded_as_thumbnails_only(run, tmp_path, monkeypatch) -> None:
    from mmsafe.report import annotate

    monkeypatch.setattr(annotate, "FULL_BYTES", 100)
    with Store.open_existing(run) as store:
        res = export_items(store, tmp_path / "x", n=5, seed=0, only_expected="refuse")
    html = res.files["form"].read_text(encoding="utf-8")
    data = json.loads(html.split('id="annotate-data">', 1)[1].split("</script>", 1)[0])
    assert data["images"] and all(
        v["full"] == ""
        and v["thumb"].startswith("data:image/png;base64,")
        and (tmp_path / "x/images" / v["file"]).is_file()
        for v in data["images"].values()
    )
