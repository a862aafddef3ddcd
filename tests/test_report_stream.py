"""The report reads the store as a stream of slim records: the same numbers as the full records gave,
whatever order the records were written in."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmsafe.config import load_config
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
    """The summary without what differs between runs: its timestamp, wall times and the data file's path."""
    out = {k: v for k, v in summary.items() if k != "generated"}
    out["defenses"] = [{**d, "seconds_per_item": None} for d in summary["defenses"]]  # wall time
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
