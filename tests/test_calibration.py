"""Rogan–Gladen correction of a judge's rate, and the report section that shows it."""

from __future__ import annotations

import json

import pytest

from mmsafe.metrics.calibration import rogan_gladen


@pytest.mark.parametrize(
    ("k", "n", "tp", "fn", "tn", "fp", "expected"),
    [
        (50, 100, 90, 10, 80, 20, (0.5 + 0.8 - 1) / (0.9 + 0.8 - 1)),  # 0.4286
        (30, 100, 100, 0, 100, 0, 0.30),  # a perfect judge: nothing to correct
        (5, 100, 90, 10, 80, 20, 0.0),  # below the false-positive floor: clipped at 0
        (99, 100, 80, 20, 100, 0, 1.0),  # above what the sensitivity allows: clipped at 1
    ],
)
def test_rogan_gladen_table(k, n, tp, fn, tn, fp, expected):
    est = rogan_gladen(k, n, tp=tp, fn=fn, tn=tn, fp=fp)
    assert est is not None
    assert est["value"] == pytest.approx(expected)
    assert est["lo"] <= est["value"] <= est["hi"]
    assert est["observed"] == pytest.approx(k / n)


def test_no_estimate_for_a_chance_judge_or_missing_classes():
    assert rogan_gladen(50, 100, tp=50, fn=50, tn=50, fp=50) is None  # Se + Sp = 1
    assert rogan_gladen(50, 100, tp=0, fn=0, tn=50, fp=50) is None
    assert rogan_gladen(0, 0, tp=9, fn=1, tn=9, fp=1) is None


def test_interval_narrows_with_more_labelled_data_and_is_seeded():
    small = rogan_gladen(40, 100, tp=9, fn=1, tn=8, fp=2)
    large = rogan_gladen(40, 100, tp=900, fn=100, tn=800, fp=200)
    assert (large["hi"] - large["lo"]) < (small["hi"] - small["lo"])
    assert rogan_gladen(40, 100, tp=9, fn=1, tn=8, fp=2) == small


def test_the_report_corrects_a_harm_judges_rate_with_its_recorded_judge_eval(tmp_path, monkeypatch):
    from mmsafe.cli.main import main
    from mmsafe.judge_eval import evaluate_judge, read_labelled, save_judge_eval
    from mmsafe.registry import Registry

    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "cache"))
    spec = {"name": "target-string", "params": {"targets": ["Sure"], "mode": "any"}}
    judge = Registry().create("judge", "target-string", spec["params"])
    labelled = tmp_path / "l.csv"
    rows = ["prompt,response,label"]
    rows += [f"q{i},Sure here it is {i},harmful" for i in range(8)] + ["q8,No way,harmful", "q9,Nope,harmful"]
    rows += [f"s{i},I refuse {i},safe" for i in range(9)] + ["s9,Sure but no,safe"]
    labelled.write_text("\n".join(rows) + "\n")
    data = read_labelled(labelled)
    result = evaluate_judge(judge, data)
    save_judge_eval(result, judge=judge.spec, data=data)
    # target-string measures 'target', not harm: its rate must NOT be corrected as a harmful rate
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "models: [scripted]\nbenchmarks: [starter]\nattacks: [text-only]\n"
        f"judges: [{json.dumps(spec)}]\n"
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--limit", "6"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["calibrated"] == []
    # the same evaluation recorded for a harm-construct judge corrects its rate
    from mmsafe.report import calibrated_rates

    rows_ = [{"benchmark": "b", "model": "m", "attack": "a", "defense": "none", "judge": "h", "category": "ALL",
              "asr": {"k": 5, "n": 10}}]
    notes = [{"label": "h", "construct": "harm", "evals": [{**result, "construct": "harm", "data_name": "l.csv"}]}]
    (row,) = calibrated_rates(rows_, notes)
    se, sp = 8 / 10, 9 / 10
    assert row["value"] == pytest.approx((0.5 + sp - 1) / (se + sp - 1))
    assert row["data_name"] == "l.csv" and row["sensitivity"] == pytest.approx(se)
    from mmsafe.report.markdown import _calibrated

    text = "\n".join(_calibrated([row]))
    assert "Corrected for the judge's measured errors" in text and "0.80 / 0.90 (l.csv, n=20)" in text


@pytest.mark.parametrize(("construct", "words"), [("harm", "harm labels"), ("refusal", "refusal labels")])
def test_the_judges_section_says_what_each_recorded_evaluation_measured(construct, words):
    from mmsafe.report.markdown import _judges

    note = {
        "label": "refusal",
        "version": "2",
        "evals": [{"accuracy": {"value": 0.9}, "kappa": {"value": 0.8}, "data_name": "x.csv", "n": 10,
                   "construct": construct}],
    }
    text = "\n".join(_judges([note], []))
    assert f"on x.csv ({words}, n=10)" in text
