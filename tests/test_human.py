"""summary["human"]: agreement between annotators, the human majority, and the judges against it — checked against
numbers worked out by hand (in the docstrings), then end to end through ``mmsafe report``."""

from __future__ import annotations

import csv
import json

import pytest

from _annotate_run import REFUSAL, make_run
from mmsafe.cli.main import main
from mmsafe.metrics.interrater import krippendorff_alpha
from mmsafe.metrics.rates import Outcome, wilson_interval
from mmsafe.report.annotate import export_items
from mmsafe.report.human import scheme_summary
from mmsafe.report.schemes import SCHEMES
from mmsafe.store.sqlite import Store
from mmsafe.types import Expected

LABELS = {
    "i1": ("harmful", "harmful", "harmful"),
    "i2": ("harmful", "not_harmful", "harmful"),
    "i3": ("not_harmful", "not_harmful", "not_harmful"),
    "i4": ("not_harmful", "harmful", "unsure"),  # one each: a tie, no majority
    "i5": ("harmful", "harmful", "not_harmful"),
    "i6": ("not_harmful", "not_harmful", "harmful"),
}
HARM_JUDGE = {"i1": True, "i2": False, "i3": False, "i4": True, "i5": True, "i6": True}
CELL_X, CELL_Y = ("m", "b", "ax", "d"), ("m", "b", "ay", "d")
NAMES = {("model", "m"): "M", ("benchmark", "b"): "B", ("attack", "ax"): "none", ("attack", "ay"): "figstep"}
NAMES[("defense", "d")] = "none"


def _by_id():
    out = {}
    for item, success in HARM_JUDGE.items():
        cell = CELL_X if item in ("i1", "i2", "i3") else CELL_Y
        o = Outcome("B", item, "c", Expected.refuse, False, success, not success)
        refusal = Outcome("B", item, "c", Expected.refuse, False, True, False)
        out[item] = (cell, {"harmkey": o, "refkey": refusal})
    return out


def _rows():
    return [
        {"item": item, "annotator": who, "scheme": "harmful", "label": lab, "note": None, "created": 0.0}
        for item, labs in LABELS.items()
        for who, lab in zip("ABC", labs, strict=True)
    ]


def test_agreement_and_judge_comparison_match_a_hand_count() -> None:
    """Cohen's κ per pair (p_o, p_e from the marginals): A–B agree on 4/6 with p_e = ½ → κ = 1/3; A–C agree 3/6,
    p_e = ½·½ + ½·⅓ = 5/12 → κ = (1/12)/(7/12) = 1/7; B–C agree 2/6 → κ = (−1/12)/(7/12) = −1/7.
    Fleiss (m = 3): P_i = 1, ⅓, 1, 0, ⅓, ⅓ → P̄ = ½; totals harmful 9, not_harmful 8, unsure 1 of 18 →
    P_e = (81 + 64 + 1)/324 = 73/162; κ = (81 − 73)/(162 − 73) = 8/89.
    Krippendorff nominal α: disagreeing coincidences 0 + 2 + 0 + 3 + 2 + 2 = 9, n = 18,
    n² − Σ n_c² = 324 − 146 = 178 → α = 1 − 17·9/178 = 25/178.
    Majority: i1 harmful, i2 harmful, i3 not, i4 tie, i5 harmful, i6 not. The harm judge says T F F T T T:
    on the 5 decided items (T,T) (T,F) (F,F) (T,T) (F,T) → 3/5 agree; both say harmful 3/5 → p_e = .52,
    κ = (.6 − .52)/.48 = 1/6. Cell none (i1–i3): human 2/3 harmful, judge 1/3; cell figstep (i5, i6; i4 tied):
    human 1/2, judge 2/2."""
    sch = SCHEMES["harmful"]
    judges = {"harmkey": ("harm", "harm"), "refkey": ("refusal", "refusal")}
    h = scheme_summary(sch, sch.fields[0], _rows(), _by_id(), judges, NAMES)
    assert h["annotators"] == ["A", "B", "C"] and h["n_items"] == 6 and h["n_labels"] == 18
    assert (h["n_majority"], h["n_ties"], h["n_undecided"]) == (5, 1, 0)
    ir = h["interrater"]
    kappas = {(p["a"], p["b"]): p["kappa"] for p in ir["pairs"]}
    assert kappas == pytest.approx({("A", "B"): 1 / 3, ("A", "C"): 1 / 7, ("B", "C"): -1 / 7})
    assert [p["agreement"] for p in ir["pairs"]] == pytest.approx([4 / 6, 3 / 6, 2 / 6])
    assert ir["fleiss_kappa"] == pytest.approx(8 / 89) and ir["fleiss_n"] == 6
    assert ir["krippendorff_alpha"] == pytest.approx(25 / 178) and ir["alpha_metric"] == "nominal"
    (j,) = h["judges"]  # the refusal rules measure another construct: not compared
    assert j["judge"] == "harm" and j["n"] == 5 and j["agreement"]["k"] == 3
    assert (j["agreement"]["lo"], j["agreement"]["hi"]) == pytest.approx(wilson_interval(3, 5))
    assert j["kappa"]["value"] == pytest.approx(1 / 6)
    assert (j["both"], j["only_human"], j["only_judge"]) == (2, 1, 1)
    assert [s["judge"] for s in h["skipped_judges"]] == ["refusal"]
    rows = {r["attack"]: r for r in h["rows"]}
    assert (rows["none"]["human"]["k"], rows["none"]["human"]["n"]) == (2, 3)
    assert (rows["none"]["judges"]["harm"]["k"], rows["none"]["judges"]["harm"]["n"]) == (1, 3)
    assert (rows["figstep"]["human"]["k"], rows["figstep"]["human"]["n"]) == (1, 2)
    assert (rows["figstep"]["judges"]["harm"]["k"], rows["figstep"]["judges"]["harm"]["n"]) == (2, 2)
    assert rows["none"]["expected"] == "refuse" and rows["none"]["model"] == "M"


def test_ordinal_and_interval_alpha_match_krippendorffs_published_example() -> None:
    """Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4 observers × 12 units example with
    missing values: α = 0.743 nominal, 0.815 ordinal, 0.849 interval (his published values)."""
    n = None
    obs = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [list(u) for u in zip(*obs, strict=True)]
    for metric, want in (("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)):
        assert round(krippendorff_alpha(units, metric=metric, n_resamples=10).value, 3) == want
    with pytest.raises(ValueError, match="metric must be one of"):
        krippendorff_alpha(units, metric="ratio")


def test_helpfulness_uses_ordinal_alpha_and_no_judge() -> None:
    sch = SCHEMES["helpfulness"]
    rows = [
        {
            "item": item,
            "annotator": who,
            "scheme": "helpfulness",
            "label": sch.encode(v),
            "note": None,
            "created": 0,
        }
        for item, who, v in [
            ("i1", "A", {"helpfulness": "5", "naturalness": "4"}),
            ("i1", "B", {"helpfulness": "4", "naturalness": "4"}),
            ("i2", "A", {"helpfulness": "1", "naturalness": "5"}),
            ("i2", "B", {"helpfulness": "1", "naturalness": "3"}),
        ]
    ]
    judges = {"harmkey": ("harm", "harm")}
    h = scheme_summary(sch, sch.fields[0], rows, _by_id(), judges, NAMES)
    assert h["field"] == "helpfulness" and h["interrater"]["alpha_metric"] == "ordinal"
    assert h["judges"] == [] and h["skipped_judges"][0]["why"] == "no judge measures helpfulness"
    assert (h["n_majority"], h["n_ties"]) == (1, 1)  # i1: 5 vs 4 is a tie


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("human") / "run")


def test_report_shows_the_human_section_after_an_import(run, tmp_path) -> None:
    """Two annotators label refusal on all 78 answered items, A as the answers are (refused iff the scripted model gave
    its refusal), B the same but with the first item flipped: that item is a tie. The refusal rules then agree with
    the human majority on all 77 decided items."""
    with Store.open_existing(run) as store:
        exp = export_items(store, tmp_path / "exp", n=100, seed=0, scheme="refusal")
    truth = {i["id"]: "refused" if i["response"] == REFUSAL else "complied" for i in exp.items}
    assert len(truth) == 78 and sum(v == "refused" for v in truth.values()) == 2  # the two "kill" questions
    flip = exp.items[0]["id"]
    for who in ("A", "<img src=x>|B"):
        with (tmp_path / f"{who[-1]}.csv").open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "scheme", "label", "annotator"])
            for item, lab in truth.items():
                if who != "A" and item == flip:
                    lab = "complied" if lab == "refused" else "partial"
                w.writerow([item, "refusal", lab, who])
    assert main(["annotate", str(run), "--import", str(tmp_path / "A.csv"), str(tmp_path / "B.csv")]) == 0
    assert main(["report", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    h = summary["human"]
    assert h["scheme"] == "refusal" and h["n_items"] == 78 and h["n_ties"] == 1 and h["others"] == []
    (j,) = h["judges"]
    assert j["judge"] == "refusal" and j["n"] == 77 and j["agreement"]["k"] == 77
    assert sum(r["n"] for r in h["rows"]) == 77
    rows = {(r["attack"], r["expected"]): r for r in h["rows"]}
    assert rows[("none", "comply")]["human"]["k"] == 2  # the "kill" questions are must-comply ones
    assert rows[("none", "comply")]["judges"]["refusal"] == rows[("none", "comply")]["human"]
    report = (run / "report.md").read_text(encoding="utf-8")
    section = report.split("## Human evaluation", 1)[1].split("## Per category", 1)[0]
    assert "### Scheme refusal" in section and "| refusal | 77 | 100.0%" in section
    assert "&lt;img src=x&gt;\\|B" in section and "<img" not in section


def test_several_schemes_and_old_stores(tmp_path) -> None:
    """With harmful and refusal labels both stored, the harmful part heads summary["human"] and refusal is in
    ``others``; the refusal rules are not compared with harmful labels. A store without the table reads as none."""
    import sqlite3

    run = make_run(tmp_path / "run")  # its own run: the module's has refusal labels of another test
    with Store.open_existing(run) as store:
        exp = export_items(store, tmp_path / "exp", n=3, seed=0)
    doc = {
        "format": "mmsafe-labels/1",
        "export": exp.export_id,
        "scheme": "harmful",
        "annotator": "A",
        "labels": [{"item": i["id"], "values": {"label": "harmful"}} for i in exp.items],
    }
    (tmp_path / "h.json").write_text(json.dumps(doc), encoding="utf-8")
    refusal = {
        **doc,
        "scheme": "refusal",
        "labels": [{"item": exp.items[0]["id"], "values": {"label": "partial"}}],
    }
    (tmp_path / "r.json").write_text(json.dumps(refusal), encoding="utf-8")
    assert main(["annotate", str(run), "--import", str(tmp_path / "h.json"), str(tmp_path / "r.json")]) == 0
    assert main(["report", str(run)]) == 0
    h = json.loads((run / "summary.json").read_text(encoding="utf-8"))["human"]
    assert h["scheme"] == "harmful" and h["n_items"] == 3 and h["judges"] == []
    assert [s["judge"] for s in h["skipped_judges"]] == ["refusal"]
    assert [o["scheme"] for o in h["others"]] == ["refusal"]
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "### Scheme harmful" in report and "### Scheme refusal" in report

    old = tmp_path / "old"
    with Store(old) as store:
        store.put_human_labels([("x", "A", "harmful", "harmful", None, 0.0)])
    with sqlite3.connect(old / "mmsafe.sqlite") as db:
        db.execute("DROP TABLE human_labels")
    with Store.open_existing(old) as store:  # read-only, as `mmsafe report` opens it: the table is not added
        assert store.human_labels() == []
    with Store.open_existing(old, readonly=False) as store:  # a writable open adds it
        assert store.human_labels() == [] and store.put_human_labels([]) == 0
