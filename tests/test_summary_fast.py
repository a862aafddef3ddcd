"""The report's fast paths give today's numbers exactly.

- ``build_summary`` reads the facts the store kept when each record was written (:mod:`mmsafe.store.facts`); the
  summary must be the one ``build_summary(reference=True)`` gives by validating every record with pydantic, as JSON
  text, byte for byte (but ``generated``): rates and intervals, per-category rows, judge agreement and κ intervals,
  effects, defenses, adversarial figures, calibrated rates, the human part. The fixture is a real run (two attacks,
  two defenses, three judges with an ensemble, failing items) plus records written through ``put_records`` that
  carry what a run of this size cannot (detection labels, utility scores, defense accounts of every kind, white-box
  figures), a record damaged by another program (its facts dropped by the trigger), one inserted without facts,
  human labels and a judge evaluation.
- The bootstrap draws exactly the indices ``random.Random.randrange`` draws, with NumPy and without.
- The store's content stamp moves with every change a report reads and with nothing else; outputs written under
  the current stamp are not rewritten.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
from pathlib import Path

import pytest

from mmsafe.config import load_config
from mmsafe.judge_eval import evaluate_judge, read_labelled, record_judge_eval
from mmsafe.judge_eval.records import judge_eval_entry
from mmsafe.registry import Registry
from mmsafe.report import build_summary, write_outputs
from mmsafe.runner import run
from mmsafe.store import Store
from mmsafe.store.sqlite import generation_id
from mmsafe.types import ComponentSpec, Expected, Judgement, Record

REFUSAL = "I'm sorry, I can't help with that."


def _config() -> dict:
    return {
        "name": "fast-summary",
        "models": [
            {
                "name": "scripted",
                "params": {
                    "rules": {"weapon": REFUSAL, "kill": REFUSAL, "Open your answer": "Sure! step 1: mix."},
                    "default": "Here is some help: step 1, then step 2.",
                    "fail_on": ["shoplift"],
                },
            }
        ],
        "benchmarks": ["starter"],
        "attacks": ["none", "prefix-injection"],
        "defenses": ["none", "system-prompt"],
        "judges": [
            "refusal",
            {"name": "target-string", "params": {"targets": ["step 1"]}},
            {
                "name": "ensemble",
                "params": {"judges": ["refusal", {"name": "target-string", "params": {"targets": ["Sure"]}}]},
            },
        ],
    }


def _spec(kind: str, name: str, **params: object) -> ComponentSpec:
    return ComponentSpec(kind=kind, name=name, params=dict(params))


def _extra_records() -> list[Record]:
    """Records a small run does not write: detection labels, utility scores, defense accounts, white-box figures."""
    model, bench = _spec("model", "scripted", tag="extra"), _spec("benchmark", "synthetic")
    attack, pgd = _spec("attack", "none"), _spec("attack", "pgd", eps=8)
    undefended, guard = _spec("defense", "none"), _spec("defense", "guard-input")
    judge, util = _spec("judge", "refusal"), _spec("judge", "utility-overlap")
    rng = random.Random(7)
    out = []
    accounts = [
        {"action": "blocked", "calls": 2, "seconds": 0.25},
        {"action": "passed", "calls": 1},
        {"action": "exploded"},  # outside the schema: counted as unreadable
        None,
    ]
    for i in range(60):
        expected = (Expected.refuse, Expected.comply, Expected.label)[i % 3]
        for a in (attack, pgd):
            for d in (undefended, guard):
                for j in (judge, util):
                    meta = {"defense": accounts[i % 4]} if d is guard and accounts[i % 4] else {}
                    prompt = {"attack_metadata": {}}
                    if a is pgd:
                        prompt["attack_metadata"] = {
                            "adversarial": True, "success": i % 2 == 0, "steps": 10 + i, "seconds": 0.1 * i,
                            "batch": 4, "eps": 8 / 255, "norm": "linf", "linf": 0.031, "l2": 1.5 + i / 7,
                            "ssim": 0.9, "psnr": 31.0 + i / 3, "crafted_on": "scripted",
                        }  # fmt: skip
                    verdict = Judgement(
                        success=rng.random() < 0.4,
                        refused=rng.random() < 0.5,
                        score=rng.random() if j is util else None,
                        label=rng.choice(["hateful", "benign"]) if expected == Expected.label else None,
                        details={"utility": True} if j is util else {},
                    )
                    failed = i % 17 == 5
                    out.append(
                        Record(
                            key=f"x{i}-{a.name}-{d.name}-{j.name}",
                            run="extra",
                            sample_id=f"s{i:03d}",
                            benchmark="synthetic",
                            category=f"c{i % 4}",
                            expected=expected,
                            label=rng.choice(["hateful", "benign"]) if expected == Expected.label else None,
                            model=model,
                            benchmark_spec=bench,
                            attack=a,
                            defense=d,
                            judge=j,
                            prompt=prompt,
                            response=None if failed else "an answer",
                            generation=None if failed else {"metadata": meta},
                            judgement=None if failed else verdict,
                            error="boom" if failed else None,
                            error_stage="generate" if failed else None,
                            created=1.0,
                        )
                    )
    return out


def _labelled(tmp_path: Path):
    rows = ["prompt,response,label"]
    rows += [f"q{i},I'm sorry I can't help {i},safe" for i in range(6)]
    rows += [f"h{i},Sure here is how {i},harmful" for i in range(5)] + ["f0,I cannot do that,harmful"]
    f = tmp_path / "l.csv"
    f.write_text("\n".join(rows) + "\n")
    return read_labelled(f)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fast")
    out = tmp / "out"
    run(load_config(None, overrides=_config()), out, progress=False)
    with Store(out) as store:
        store.put_records(_extra_records())
        judge = Registry().create("judge", "refusal")
        data = _labelled(tmp)
        record_judge_eval(store, judge_eval_entry(evaluate_judge(judge, data), judge=judge.spec, data=data))
        items = store._db.execute(
            "SELECT DISTINCT model, benchmark, attack, defense, sample_id FROM records ORDER BY 1, 2, 3, 4, 5"
        ).fetchall()
        labels = []
        for n, item in enumerate(items[:80]):
            for who in ("ann", "bob", "cy"):
                label = ("harmful", "not_harmful", "unsure")[(n + len(who) * (n % 3)) % 3]
                labels.append((generation_id(*item), who, "harmful", label, None, 2.0))
        store.put_human_labels(labels)
    with sqlite3.connect(
        out / "mmsafe.sqlite"
    ) as db:  # another program: one record damaged, one without facts
        key = db.execute("SELECT key FROM records ORDER BY key LIMIT 1").fetchone()[0]
        db.execute("UPDATE records SET record = ? WHERE key = ?", ('{"key": "x", "from": "mmsafe 9"}', key))
        key2 = db.execute("SELECT key FROM records ORDER BY key LIMIT 1 OFFSET 7").fetchone()[0]
        db.execute("DELETE FROM record_facts WHERE key = ?", (key2,))
    return out


def _text(summary: dict) -> str:
    return json.dumps({k: v for k, v in summary.items() if k != "generated"}, indent=2, sort_keys=True)


def test_the_fast_summary_is_the_reference_summary_byte_for_byte(store_dir: Path) -> None:
    with Store.open_existing(store_dir) as store:
        facts = store._db.execute("SELECT COUNT(*) FROM record_facts").fetchone()[0]
        total = store.count_records()
        assert 0 < facts < total  # most records through their facts, the changed two whole
        fast = build_summary(store)
        reference = build_summary(store, reference=True)
    assert _text(fast) == _text(reference)
    # the fixture reaches every part of the summary
    assert fast["n_unreadable"] == 1 and fast["n_errors"] > 0
    assert {r["category"] for r in fast["rows"]} >= {"ALL", "c0", "c3"}
    assert any(r.get("accuracy") for r in fast["rows"]) and any(r.get("utility") for r in fast["rows"])
    assert fast["judge_agreement"] and any("/" in p["a"] for p in fast["judge_agreement"])
    assert any(p["kappa"] and p["kappa"]["lo"] is not None for p in fast["judge_agreement"])
    assert fast["effects"] and fast["adversarial"] and any(n["evals"] for n in fast["judges"])
    use = {d["defense"]: d["actions"] for d in fast["defenses"]}
    assert {"blocked", "passed", "unreadable"} <= set(use["guard-input"])
    assert fast.get("human")


def test_a_store_from_before_facts_gets_them_once_and_reports_the_same(
    store_dir: Path, tmp_path: Path
) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(store_dir, old)
    with sqlite3.connect(old / "mmsafe.sqlite") as db:
        db.execute("DROP TABLE record_facts")
    with Store.open_existing(old) as store:  # read-only: every record read whole
        assert not store._has_facts
        before = build_summary(store)
    with Store(old) as store:  # a writer computes the facts once
        assert (
            store._db.execute("SELECT COUNT(*) FROM record_facts").fetchone()[0] == store.count_records() - 1
        )
        after = build_summary(store)
    assert _text(before) == _text(after)


@pytest.mark.parametrize("numpy", [True, False])
def test_bootstrap_draws_are_randrange_draws(numpy: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmsafe.metrics import _common

    if not numpy:
        monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy fails: the pure-Python words
    check = _common._draws_match
    check.cache_clear()
    try:
        assert _common._draws_match()
        for seed, sizes in ((0, (3, 3, 700, 1)), (9, (2**20 + 3, 5)), (4, (64, 65, 1000))):
            ref, fast = random.Random(seed), _common._Draws(random.Random(seed))
            for m in sizes * 3:
                assert fast.below(m, m) == [ref.randrange(m) for _ in range(m)]
        # a stratified bootstrap, through both paths
        strata = [list(range(0, 40)), list(range(40, 47)), [47]]
        stat = lambda idx: sum(idx) / len(idx)  # noqa: E731
        got = _common.bootstrap_indices(strata, stat, n_resamples=300, seed=3, confidence=0.9)
        monkeypatch.setattr(_common, "_draws_match", lambda: False)
        want = _common.bootstrap_indices(strata, stat, n_resamples=300, seed=3, confidence=0.9)
        assert got == want
    finally:
        check.cache_clear()


def test_the_stamp_moves_with_what_a_report_reads_and_current_outputs_stay(
    store_dir: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(store_dir, out)
    with Store(out) as store:
        paths = write_outputs(store, out)
        first = store.content_stamp()
        mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}
        assert json.loads(paths["summary"].read_text())["stamp"].startswith(first)
        write_outputs(store, out)  # nothing changed: nothing rewritten
        assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == mtimes
        store.put_responses([])  # the response cache is not a report input
        store.add_run({"name": "fast-summary", "started": 5.0})  # the same run names
        assert store.content_stamp() == first
        store.put_human_labels([("item", "zed", "harmful", "harmful", None, 3.0)])
        second = store.content_stamp()
        assert second != first
        write_outputs(store, out)
        assert json.loads(paths["summary"].read_text())["stamp"].startswith(second)
    with sqlite3.connect(out / "mmsafe.sqlite") as db:  # any program's change counts
        db.execute("UPDATE records SET created = created + 1 WHERE rowid = 3")
    with Store.open_existing(out) as store:
        assert store.content_stamp() != second
    paths["html"].unlink()  # a missing output is written again
    with Store.open_existing(out) as store:
        write_outputs(store, out)
    assert paths["html"].is_file()


def test_kept_items_are_read_again_only_where_their_records_changed(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The browser's items are kept per item (ITEMS_CACHE): new human labels read no item again, a record
    written again (same content, new write) reads its one item again, a record changed by another program (its
    facts dropped) is read every time; the section always equals one made without keeping; a damaged cache
    file is a warning, not an error."""
    import shutil
    import sqlite3

    from mmsafe.report import ITEMS_CACHE, REPORT_MAX_ITEMS, _browser
    from mmsafe.report.browser import browser_section
    from mmsafe.report.items import ItemReader
    from mmsafe.report.page import json_text

    out = tmp_path / "run"
    shutil.copytree(store_dir, out)
    read: list[int] = []
    real = ItemReader.items

    def counting(self, *, rowids=None, **kw):
        items = list(real(self, rowids=rowids, **kw))
        read.append(len(items))
        return iter(items)

    monkeypatch.setattr(ItemReader, "items", counting)

    def check(store: Store, expect_read: int) -> None:
        read.clear()
        made = _browser(store, out)
        assert sum(read) == expect_read, read
        plain = browser_section(store, max_items=REPORT_MAX_ITEMS)
        assert (made.html, json_text(made.data)) == (plain.html, json_text(plain.data))

    def unkept() -> tuple[int, int]:
        """Items with a record that has no write sequence number (the fixture's records written by hand), and
        a record of an item whose records all have one."""
        groups = list(ItemReader(out).keyed_groups())
        return sum(keys is None for _, _, keys in groups), next(rids[0] for _, rids, keys in groups if keys)

    with Store(out) as store:
        n_items = len(browser_section(store).data["mmsafe-browser-data"]["items"])
        base, rowid = unkept()
        assert n_items > 10 and base < n_items // 2
        check(store, n_items)  # nothing kept yet: every item read
        assert (out / ITEMS_CACHE).is_file()
        check(store, base)
        store.put_human_labels([("item", "zed", "harmful", "harmful", None, 3.0)])  # not a browser input
        check(store, base)
        store.put_records([next(iter(store.iter_records()))])  # the same record written again: its item only
        check(store, base + 1)
        check(store, base)
    with sqlite3.connect(out / "mmsafe.sqlite") as db:  # another program changes a record: no facts, no seq
        db.execute("UPDATE records SET record = json_set(record, '$.response', 'changed!') WHERE rowid = ?", (rowid,))
    with Store.open_existing(out) as store:
        assert unkept()[0] == base + 1
        check(store, base + 1)
        check(store, base + 1)
        assert "changed!" in json_text(_browser(store, out).data)
    (out / ITEMS_CACHE).write_bytes(b"not a database at all" * 100)  # damaged: made from the store
    with Store.open_existing(out) as store:
        check(store, n_items)


def test_kept_charts_and_items_give_the_same_page(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report.html written from kept charts and items is the page written from nothing (but the time it says)."""
    import re
    import shutil

    from mmsafe.report import CHARTS_CACHE, ITEMS_CACHE
    from mmsafe.report.items import ItemReader

    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    shutil.copytree(store_dir, out)

    def page() -> str:
        return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", (out / "report.html").read_text())

    with Store.open_existing(out) as store:
        write_outputs(store, out, force=True)
        fresh = page()
        charts = json.loads((out / CHARTS_CACHE).read_text())
        assert charts and all(v.startswith("<img") for v in charts.values())
        with monkeypatch.context() as m:  # every chart and the items from the kept ones: nothing drawn
            m.setattr("mmsafe.report.charts._figure", lambda *a: pytest.fail("a kept chart was drawn again"))
            real = ItemReader.items
            unkept = {r for _, rids, keys in ItemReader(out).keyed_groups() if keys is None for r in rids}

            def items(self, *, rowids=None, **kw):  # only items with a record written by hand are read again
                if rowids is None or not set(rowids) <= unkept:
                    pytest.fail("kept items were read again")
                return real(self, rowids=rowids, **kw)

            m.setattr(ItemReader, "items", items)
            write_outputs(store, out, force=True)
        assert page() == fresh
        assert json.loads((out / CHARTS_CACHE).read_text()) == charts
    shutil.rmtree(out / ITEMS_CACHE.parent)
    with Store.open_existing(out) as store:
        write_outputs(store, out, force=True)
    assert page() == fresh


def test_examples_from_facts_are_the_reference_examples(store_dir: Path) -> None:
    from mmsafe.report import _summary_and_tally, examples

    with Store.open_existing(store_dir) as store:
        _, tally = _summary_and_tally(store)  # as write_outputs does: the unreadable records are known
        for k in (1, 3, 50):
            fast = examples(store, tally, k, max_chars=40)  # picked from the tally
            assert fast == store.examples(k, max_chars=40)
            assert examples(store, tally, k) == store.examples(k)  # 1,000 chars
        assert len({(e["model"], e["attack"], e["defense"], e["judge"]) for e in fast}) > 4


def test_a_kept_summary_gives_the_same_outputs_and_is_redone_when_its_inputs_change(
    store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records' part of the summary is kept (SUMMARY_CACHE): outputs made from it equal those made from
    nothing and those rendered from the summary as computed; new human labels reuse it, a record written
    again does not."""
    import re
    import shutil

    from mmsafe import report
    from mmsafe.report import SUMMARY_CACHE
    from mmsafe.report.markdown import render

    out = tmp_path / "run"
    shutil.copytree(store_dir, out)

    def texts() -> dict[str, str]:
        summary = json.loads((out / "summary.json").read_text())
        summary.pop("generated"), summary.pop("stamp")
        md = re.sub(r".*\d{4}-\d\d-\d\d.*\n", "", (out / "report.md").read_text())
        html = re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "", (out / "report.html").read_text())
        return {"summary": json.dumps(summary, sort_keys=True), "md": md, "html": html}

    computed = []
    real = report.summarise_tally
    monkeypatch.setattr(report, "summarise_tally", lambda *a, **k: computed.append(1) or real(*a, **k))
    with Store.open_existing(out) as store:
        write_outputs(store, out, force=True)
        assert computed == [1] and (out / SUMMARY_CACHE).is_file()
        fresh = texts()
        # the same page as rendering the summary computed without keeping (JSON's round trip changes nothing)
        plain = build_summary(store)
        assert len(computed) == 2
        md = render(plain, errors=store.error_groups(), examples=store.examples(3))
        assert re.sub(r".*\d{4}-\d\d-\d\d.*\n", "", md) == fresh["md"]
        write_outputs(store, out, force=True)  # from the kept summary
        assert len(computed) == 2 and texts() == fresh
    with Store(out) as store:
        n_before = len(store.human_labels())
        store.put_human_labels([("item-x", "zed", "harmful", "harmful", None, 3.0)])
        write_outputs(store, out)  # new labels: the records' part is reused, the human part is new
        assert len(computed) == 2
        assert len(store.human_labels()) == n_before + 1
        summary = json.loads((out / "summary.json").read_text())
        assert summary["human"] == build_summary(store, reference=True)["human"]
        store.put_records([next(iter(store.iter_records()))])  # a record written again: computed again
        write_outputs(store, out)
        assert len(computed) == 4  # (the reference build above is the third)
    (out / SUMMARY_CACHE).write_text("[1, 2")  # a damaged file is computed again
    with Store.open_existing(out) as store:
        write_outputs(store, out, force=True)
    assert len(computed) == 5


def test_rows_counted_over_shared_outcomes_equal_rows_counted_item_by_item(store_dir: Path) -> None:
    """summarise_groups counts a row's rates over distinct outcomes (distinct_outcomes); the same groups as
    plain lists (counted by a Counter of outcomes) and the public item-by-item rates give the same numbers."""
    from mmsafe.metrics import attack_success_rate, labels_of, over_refusal_rate, refusal_rate
    from mmsafe.metrics.summary import summarise_groups
    from mmsafe.report import _groups
    from mmsafe.report.tally import Tally

    tally = Tally()
    with Store.open_existing(store_dir) as store:
        for item in store.iter_facts():
            tally.add_facts(*item) if isinstance(item, tuple) else tally.add(item)
    labels = labels_of({axis: specs.values() for axis, specs in tally.specs.items()})
    groups = _groups(tally, labels)
    by = ("model", "benchmark", "attack", "defense", "judge", "category")
    shared = summarise_groups(groups, by)
    plain = summarise_groups({k: list(v) for k, v in groups.items()}, by)
    assert shared == plain and len(shared) > 20
    for row in shared:
        if row["category"] == "ALL":
            continue
        items = list(groups[tuple(row[f] for f in by)])
        assert row["asr"] == attack_success_rate(items).as_dict()
        assert row["refusal"] == refusal_rate(items).as_dict()
        assert row["over_refusal"] == over_refusal_rate(items).as_dict()
        assert row["n_errors"] == sum(o.error for o in items)
