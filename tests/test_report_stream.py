"""The report reads the store as a stream of slim records: the same numbers as the full records gave,
whatever order the records were written in."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmsafe.config import load_config
from mmsafe.metrics import outcome
from mmsafe.runner import run
from mmsafe.store import Store

GOLDEN = Path(__file__).parent / "golden" / "report_summary.json"


def _golden_config(tmp: Path):
    """A fixed run with everything the summary computes: two models (one async), three categories,
    must-refuse and must-comply items with reference answers, two attacks, a defense, three judges,
    failed items."""
    rows = []
    for i in range(24):
        row = {"id": f"q{i:02d}", "text": f"request number {i}", "category": "abc"[i % 3]}
        if i % 6 == 5:
            row |= {"expected": "comply", "answers": ["sure"] if i % 12 == 5 else ["zebra"]}
        rows.append(row)
    data = tmp / "bench.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rules = {"number 3": "I'm sorry, I cannot help with that.", "number 1": "Sure: step 1, step 2."}
    return load_config(
        None,
        overrides={
            "name": "golden",
            "models": [
                {"name": "scripted", "params": {"rules": rules, "batch_size": 5, "fail_on": ["number 22"]}},
                {
                    "name": "scripted",
                    "params": {
                        "rules": {**rules, "number 2": "I can't assist with that."},
                        "async_io": True,
                        "concurrency": 3,
                    },
                },
            ],
            "benchmarks": [{"name": "jsonl", "params": {"file": str(data)}}],
            "attacks": ["none", "prefix-injection"],
            "defenses": ["none", "system-prompt"],
            "judges": [
                "refusal",
                {"name": "target-string", "params": {"targets": ["Sure"]}},
                {"name": "utility", "params": {"metric": "contains"}},
            ],
        },
    )


def _numbers(summary: dict) -> dict:
    """The summary without what differs between runs: its timestamp, the store's stamp (each store has its own
    id), wall times and the data file's path."""
    out = {k: v for k, v in summary.items() if k not in ("generated", "stamp")}
    out["defenses"] = [{**d, "seconds_per_item": None} for d in summary["defenses"]]  # wall time
    out["attacks"] = [{**a, "seconds_per_prompt": None} for a in summary.get("attacks", [])]  # wall time
    out["components"] = {
        kind: [{**s, "key": "-", "params": {}} if kind == "benchmark" else s for s in specs]
        for kind, specs in summary["components"].items()
    }
    return out


def _canonical(x):
    """Lists in a fixed order (the golden file was made when the summary's lists followed write order)."""
    if isinstance(x, dict):
        return {k: _canonical(v) for k, v in x.items()}
    if isinstance(x, list):
        return sorted((_canonical(v) for v in x), key=lambda v: json.dumps(v, sort_keys=True))
    return x


def test_summary_numbers_equal_the_golden_run(tmp_path, monkeypatch):
    """tests/golden/report_summary.json is the summary of this run as the report made it from full
    records (before it read slim ones); every number must be the same."""
    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "cache"))  # no judge-eval of this machine
    run(_golden_config(tmp_path), tmp_path / "out", progress=False)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_records"] == 576 and summary["n_errors"] == 12
    assert _canonical(_numbers(summary)) == json.loads(GOLDEN.read_text())


def _without_clock(text: str) -> str:
    """report.md without the time it was made and the defenses' measured seconds per item."""
    text = re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "generated -", text)
    return re.sub(r"\| \d+\.\d{3} \|", "| - |", text)


def test_the_report_does_not_depend_on_the_order_records_were_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _golden_config(tmp_path)
    run(cfg, tmp_path / "a", progress=False)
    # the same grid (delays are not identity), the async model's answers arriving in another order
    slow_first = {f"number {i}": 0.002 * (24 - i) for i in range(24)}
    models = [cfg.models[0], cfg.models[1].model_copy(update={"params": {**cfg.models[1].params, "delays": slow_first}})]
    run(cfg.model_copy(update={"models": models}), tmp_path / "b", progress=False)

    def written(out: Path) -> list[str]:
        with Store(out) as s:
            return [r.key for r in s.iter_records()]

    assert written(tmp_path / "a") != written(tmp_path / "b")  # the order differs,
    assert sorted(written(tmp_path / "a")) == sorted(written(tmp_path / "b"))  # not the records
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    assert json.dumps(_numbers(a)) == json.dumps(_numbers(b))  # the summary, down to the order of its lists
    ra, rb = (_without_clock((tmp_path / d / "report.md").read_text()) for d in "ab")
    assert ra == rb and "## Example responses" in ra and "scripted failure on" in ra


def test_slim_records_hold_what_the_numbers_read_and_share_their_specs(tmp_path):
    run(_golden_config(tmp_path), tmp_path / "out", progress=False)
    with Store(tmp_path / "out") as s:
        full = {r.key: r for r in s.iter_records()}
        slim = list(s.iter_records(slim=True, by_cell=True))
    assert len(slim) == len(full) == 576
    for r in slim:
        f = full[r.key]
        assert r.response is None and "messages" not in (r.prompt or {})
        assert r.judgement == (f.judgement.model_copy(update={"rationale": ""}) if f.judgement else None)
        assert (r.model, r.attack, r.defense, r.judge, r.benchmark_spec) == (f.model, f.attack, f.defense, f.judge, f.benchmark_spec)
        assert r.generation == f.generation and r.error == f.error and r.expected == f.expected
    assert len({id(r.judge) for r in slim}) == 3 and len({id(r.model) for r in slim}) == 2  # one object per spec
    cells = [(r.model.key, r.benchmark_spec.key, r.attack.key, r.defense.key, r.judge.key, r.sample_id) for r in slim]
    assert cells == sorted(cells)


# --------------------------------------------------------------------------------------------------
# The report keeps a few values per record, not the records
# --------------------------------------------------------------------------------------------------

VARIED = Path(__file__).parent / "golden" / "report_varied_summary.json"
_ATTRS = ("model", "benchmark_spec", "attack", "defense", "judge")  # a record's specs, in cell order


def _varied_records(seed: int, n_samples: int, *, bulk: int = 0) -> list:
    """Records, in no particular order, with every part the summary reads: a model with a note, a
    must-refuse/must-comply benchmark and a labelled one, a white-box attack's figures, a defense's
    actions and costs, a refusal judge, an ensemble (member verdicts) and a judge that scores
    answers (utility) and labels items; failed records, missing and failed verdicts, undecided ones.
    ``bulk`` bytes of judge details and metadata per record: kept by slim records, read by no number."""
    import random
    from itertools import product

    from mmsafe.types import ComponentSpec, Expected, Judgement, Record, stable_hash

    rng = random.Random(seed)

    def spec(kind: str, name: str, **params) -> ComponentSpec:
        return ComponentSpec(kind=kind, name=name, params=params, version="1")

    def maybe() -> bool | None:
        return rng.choice([True, False, None, True, False])

    def verdict(judge: ComponentSpec) -> Judgement | None:
        roll = rng.random()
        if roll < 0.06:
            return None
        if roll < 0.12:
            return Judgement(error="judge failed")
        details: dict = {"bulk": "d" * bulk} if bulk else {}
        score = label = None
        if judge.name == "scorer":
            score = rng.choice([0.0, 1.0, rng.random()])
            details |= {"utility": "contains"} if rng.random() < 0.9 else {}
            label = rng.choice(["hate", "ok", "neutral", None])
        elif judge.name == "ensemble":
            names = rng.sample(["refusal", "target-string", "llm", "llm#2"], rng.randint(1, 4))
            details["members"] = {
                m: {"success": maybe(), "refused": maybe(), "error": "x" if rng.random() < 0.05 else None}
                for m in names
            }
        return Judgement(
            success=maybe(), refused=maybe(), score=score, label=label, details=details, rationale="why"
        )

    def attack_metadata(attack: ComponentSpec) -> dict:
        meta: dict = {"bulk": "m" * bulk} if bulk else {}
        if attack.name == "pgd":
            meta |= {"adversarial": "pgd", "success": rng.choice([True, False, None]), "norm": "linf"}
            meta |= {"steps": rng.randint(1, 100), "batch": rng.randint(1, 4), "crafted_on": rng.choice("ab")}
            meta |= {k: rng.random() for k in ("seconds", "linf", "l2", "ssim", "psnr")} | {"eps": 8 / 255}
        return meta

    def generation_metadata(defense: ComponentSpec) -> dict:
        meta: dict = {"bulk": "g" * bulk} if bulk else {}
        if defense.name != "none" and rng.random() < 0.8:
            action = rng.choice(["blocked", "passed"])
            meta["defense"] = {"action": action, "calls": rng.choice([1, 2, 1.5]), "seconds": rng.random()}
        return meta

    grid = product(
        [spec("model", "scripted", a=2)],
        [spec("benchmark", "jsonl", file="x"), spec("benchmark", "memes", split="t")],
        [spec("attack", "none"), spec("attack", "pgd", eps=8)],
        [spec("defense", "none"), spec("defense", "ocr-filter")],
        [spec("judge", n) for n in ("refusal", "ensemble", "scorer")],
        range(n_samples),
    )
    out = []
    for model, bench, attack, defense, judge, i in grid:
        if rng.random() < 0.05:
            continue  # not run (yet)
        sid = f"s{i:05d}" if i % 7 else f"S-{i}"
        if bench.name == "memes":
            expected = Expected.label
        else:
            expected = rng.choice([Expected.refuse, Expected.refuse, Expected.comply])
        error = "boom" if rng.random() < 0.05 else None
        out.append(
            Record(
                key=stable_hash([model.key, bench.key, sid, attack.key, defense.key, judge.key]),
                run="varied",
                sample_id=sid,
                benchmark=bench.name,
                category=rng.choice(["a", "é"]),
                expected=expected,
                label=rng.choice(["hate", "ok"]) if expected == Expected.label else None,
                model=model,
                benchmark_spec=bench,
                attack=attack,
                defense=defense,
                judge=judge,
                prompt={"attack_metadata": attack_metadata(attack)},
                response=None if error else "Sure, here.",
                generation=None if error else {"metadata": generation_metadata(defense)},
                judgement=None if error else verdict(judge),
                error=error,
                error_stage="generate" if error else None,
                model_note="random weights",
            )
        )
    rng.shuffle(out)
    return out


def _store_of(path: Path, records: list) -> Path:
    with Store(path) as s:
        for i in range(0, len(records), 1000):
            s.put_records(records[i : i + 1000])
        s.add_run({"name": "varied"})
    return path


def test_every_table_equals_the_record_list_report_on_varied_records(tmp_path, monkeypatch):
    """tests/golden/report_varied_summary.json is the summary of these records as the report made it
    from the list of every (slim) record (8e30711, before it kept only outcomes): ensemble
    agreement, the adversarial table, detection accuracy and macro-F1, defense actions and costs
    included. Equal down to the order of every list and the last bit of every float."""
    from mmsafe.report import build_summary

    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "cache"))
    with Store.open_existing(_store_of(tmp_path / "s", _varied_records(0, 6))) as store:
        summary = build_summary(store)
    summary.pop("generated")
    assert json.loads(json.dumps(summary, sort_keys=True, default=str)) == json.loads(VARIED.read_text())
    assert summary["adversarial"] and summary["defenses"][0]["actions"]
    assert any("/" in pair["a"] for pair in summary["judge_agreement"])  # an ensemble's members
    assert any("macro_f1" in row for row in summary["rows"])
    assert any("utility" in row for row in summary["rows"])


def test_the_report_keeps_a_few_values_per_record_not_the_record(tmp_path, monkeypatch):
    """Records carrying 16 KiB each of what the slim read keeps but no number reads (judge details,
    generation and attack metadata): the report's peak Python memory grows by well under 1 KiB per
    extra record (the record list it used to hold grew by more than 16 KiB)."""
    import tracemalloc

    from mmsafe.report import build_summary

    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "cache"))
    peaks, sizes = [], []
    for n in (10, 40):
        records = _varied_records(1, n, bulk=16 * 1024 // 3)
        sizes.append(len(records))
        path = _store_of(tmp_path / f"s{n}", records)
        del records
        with Store.open_existing(path) as store:
            build_summary(store)  # imports and caches on first use: not per record
            tracemalloc.start()
            build_summary(store)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    per_record = (peaks[1] - peaks[0]) / (sizes[1] - sizes[0])
    assert per_record < 1024, f"{per_record:.0f} bytes of peak per extra record"


def test_cells_with_one_label_make_one_group_in_record_order():
    """Two configurations whose labels coincide (same name, same first six hex digits of the key:
    forced here) are one group of rows, their outcomes in record order, as summarise groups them."""
    from mmsafe.metrics import labels_of
    from mmsafe.report import _groups
    from mmsafe.report.tally import AXES, Tally

    tally = Tally()
    records = _varied_records(2, 4)
    order = sorted(records, key=lambda r: (*(getattr(r, a).key for a in _ATTRS), r.sample_id))
    for r in order:
        tally.add(r)
    labels = labels_of({axis: specs.values() for axis, specs in tally.specs.items()})
    labels |= {("defense", key): "d" for key in tally.specs["defense"]}  # both defenses: one label
    groups = _groups(tally, labels)
    expected: dict[tuple, list] = {}
    for r in order:
        key = (*(labels[(a, getattr(r, f).key)] for a, f in zip(AXES, _ATTRS, strict=True)), r.category)
        expected.setdefault(key, []).append(outcome(r))
    assert {k: list(v) for k, v in groups.items()} == expected
    assert any(len({o.sample_id for o in g}) < len(g) for g in expected.values())  # merged cells
