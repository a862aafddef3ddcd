"""The report reads the store as a stream of slim records: the same numbers as the full records gave,
whatever order the records were written in."""

from __future__ import annotations

import json
from pathlib import Path

from mmsafe.config import load_config
from mmsafe.runner import run

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
