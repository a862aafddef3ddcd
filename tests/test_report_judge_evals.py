"""The judge evaluations a report shows are recorded in the run store: the runner copies in what
``mmsafe judge-eval --record`` measured for the run's judges, and ``mmsafe report`` reads only the
store, so one store renders the same on every machine (whatever its cache holds, or if it has none)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mmsafe.config import load_config
from mmsafe.judge_eval import (
    evaluate_judge,
    judge_eval_entry,
    load_judge_evals,
    read_labelled,
    record_judge_eval,
    save_judge_eval,
)
from mmsafe.registry import Registry
from mmsafe.report import rerender
from mmsafe.runner import run
from mmsafe.store import Store


def _labelled(tmp_path, name="l.csv", flip=0):
    rows = ["prompt,response,label"]
    rows += [f"q{i},I'm sorry I can't help {i},safe" for i in range(6)]
    rows += [f"h{i},Sure here is how {i},harmful" for i in range(6 - flip)]
    rows += [f"f{i},I cannot do that {i},harmful" for i in range(flip)]
    f = tmp_path / name
    f.write_text("\n".join(rows) + "\n")
    return read_labelled(f)


def _run(tmp_path, out):
    cfg = load_config(
        None,
        overrides={
            "name": "evals",
            "models": ["scripted"],
            "benchmarks": ["starter"],
            "attacks": ["none"],
            "judges": ["refusal"],
        },
    )
    run(cfg, out, progress=False)


def _judge_line(out):
    (line,) = [x for x in (out / "report.md").read_text().splitlines() if x.startswith("- **refusal")]
    return line


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """A run of the refusal judge after ``judge-eval --record`` measured it (κ 0.67 on l.csv)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(cache))
    judge = Registry().create("judge", "refusal")
    data = _labelled(tmp_path, flip=1)
    save_judge_eval(evaluate_judge(judge, data), judge=judge.spec, data=data)
    out = tmp_path / "out"
    _run(tmp_path, out)
    return out, cache, judge


def test_the_run_records_the_judges_evaluations_in_its_store(recorded):
    out, _, judge = recorded
    (cached,) = load_judge_evals(judge.spec.key)
    with Store.open_existing(out) as store:
        assert store.judge_evals(judge.spec.key) == [cached]
        assert store.judge_evals("0" * 16) == []
    line = _judge_line(out)
    assert "accuracy 91.7%, κ 0.83 on l.csv (harm labels, n=12)" in line
    summary = json.loads((out / "summary.json").read_text())
    (note,) = summary["judges"]
    assert note["evals"][0]["kappa"]["value"] == cached["kappa"]["value"]


def test_report_reads_only_the_store_never_the_cache(recorded, tmp_path, monkeypatch):
    out, cache, _ = recorded
    before = _judge_line(out)
    summary_before = json.loads((out / "summary.json").read_text())
    # another machine: no cache at all, an unusable home, and any cache read fails the test
    for path in sorted(cache.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    cache.rmdir()
    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))

    def no_cache(*_a, **_k):
        raise AssertionError("the report read the cache")

    monkeypatch.setattr("mmsafe.paths.default_cache_root", no_cache)
    for name in ("default_cache_root", "load_judge_evals", "judge_evals_dir"):
        monkeypatch.setattr(f"mmsafe.judge_eval.records.{name}", no_cache)
    rerender(out)
    assert _judge_line(out) == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judges"] == summary_before["judges"]
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "no-home").exists()


def test_a_later_evaluation_in_the_cache_does_not_change_the_stores_report(recorded, tmp_path):
    out, _, judge = recorded
    before = _judge_line(out)
    data = _labelled(tmp_path, name="m.csv", flip=3)
    save_judge_eval(evaluate_judge(judge, data), judge=judge.spec, data=data)
    rerender(out)
    assert _judge_line(out) == before  # the store is the record; this machine's cache is not read
    _run(tmp_path, out)  # a rerun (nothing left to judge) records what the cache holds now
    assert "on l.csv" in _judge_line(out) and "on m.csv" in _judge_line(out)


def test_record_judge_eval_replaces_the_entry_of_the_same_data(tmp_path):
    judge = Registry().create("judge", "refusal")
    a, b = _labelled(tmp_path, flip=1), _labelled(tmp_path, name="m.csv", flip=2)
    with Store(tmp_path / "s") as store:
        record_judge_eval(store, judge_eval_entry(evaluate_judge(judge, a), judge=judge.spec, data=a))
        record_judge_eval(store, judge_eval_entry(evaluate_judge(judge, b), judge=judge.spec, data=b))
        again = judge_eval_entry(evaluate_judge(judge, a), judge=judge.spec, data=a)
        record_judge_eval(store, again)
        assert [e["data_name"] for e in store.judge_evals(judge.spec.key)] == ["m.csv", "l.csv"]
        assert store.judge_evals(judge.spec.key)[1] == again


def test_a_store_made_before_the_table_still_opens_and_reports(recorded):
    out, _, judge = recorded
    db = out / "mmsafe.sqlite"
    con = sqlite3.connect(db)
    con.execute("DROP TABLE judge_evals")  # what a store of an earlier mmsafe holds
    con.commit()
    con.close()
    with Store.open_existing(out) as store:  # read-only: the table is not added
        assert store.judge_evals(judge.spec.key) == []
    rerender(out)
    assert _judge_line(out).endswith("no judge-eval on record.")
    with Store.open_existing(out, readonly=False) as store:  # a writer adds it
        assert store.judge_evals(judge.spec.key) == []
        record_judge_eval(store, load_judge_evals(judge.spec.key)[0])
        assert len(store.judge_evals(judge.spec.key)) == 1


def test_a_damaged_entry_is_skipped(recorded):
    out, _, judge = recorded
    con = sqlite3.connect(out / "mmsafe.sqlite")
    con.execute("UPDATE judge_evals SET entry = '{broken'")
    con.commit()
    con.close()
    with Store.open_existing(out) as store:
        assert store.judge_evals(judge.spec.key) == []


def test_cli_judge_eval_records_in_a_run_store_and_the_report_shows_it(tmp_path, monkeypatch, capsys):
    from mmsafe.cli.main import main

    cache = tmp_path / "cache"
    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(cache))
    out = tmp_path / "out"
    _run(tmp_path, out)
    assert _judge_line(out).endswith("no judge-eval on record.")
    data = _labelled(tmp_path, flip=1)
    argv = ["judge-eval", data.path, "--judge", "refusal", "--out", str(tmp_path / "je"), "--quiet"]
    assert main([*argv, "--record-in", str(tmp_path / "missing")]) == 2
    assert "no run folder at" in capsys.readouterr().err
    assert not (tmp_path / "je" / "judge-eval.json").exists()  # failed before judging
    assert main([*argv, "--record-in", str(out)]) == 0
    assert f"recorded in the store of {out}" in capsys.readouterr().out
    assert not cache.exists()  # --record-in alone writes nothing to the cache
    assert main(["report", str(out)]) == 0
    assert "accuracy 91.7%, κ 0.83 on l.csv (harm labels, n=12)" in _judge_line(out)
