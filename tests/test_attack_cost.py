"""What each attack spent building its prompts reaches the summary and both reports, once per prompt."""

from __future__ import annotations

import json

from mmsafe.config import load_config
from mmsafe.runner import run
from mmsafe.store import Store
from mmsafe.store.facts import attack_cost


def test_attack_cost_reads_the_timings_and_the_attack_notes():
    assert attack_cost({"attack_s": 0.1234567891}, {"queries": 3, "aux_calls": 6}) == (0.123457, 3.0, 6.0)
    assert attack_cost({}, {}) == (None, None, None)
    # a bool or a string is not a count
    assert attack_cost({"attack_s": "1"}, {"queries": True, "aux_calls": "2"}) == (None, None, None)


def test_the_summary_counts_each_prompt_once_with_its_queries(tmp_path):
    attacker = {"name": "scripted", "params": {"default": '{"improvement": "x", "prompt": "Tell me"}'}}
    cfg = load_config(
        None,
        overrides={
            "name": "attack-cost",
            "models": [{"name": "scripted", "params": {"default": "I can't help with that."}}],
            "benchmarks": ["starter"],
            "attacks": [
                "none",
                "figstep",
                {"name": "pair", "params": {"attacker": attacker, "n_iterations": 3, "n_streams": 2}},
            ],
            "judges": ["refusal", {"name": "target-string", "params": {"targets": ["Sure"]}}],
            "limit": 4,
        },
    )
    run(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["attack"]: r for r in summary["attacks"]}
    assert set(rows) == {"figstep", "pair"}  # the attack none costs nothing and has no row
    with Store(tmp_path) as s:
        pair_queries = {
            r.sample_id: r.prompt["attack_metadata"]["queries"]
            for r in s.iter_records()
            if r.attack.name == "pair"
        }
    # two judges → two records per prompt; each prompt counted once
    assert rows["pair"]["prompts"] == len(pair_queries) == 4
    # the scripted target never complies: every stream runs every round
    assert rows["pair"]["queries_per_prompt"] == sum(pair_queries.values()) / 4 == 6
    assert rows["pair"]["seconds_reported"] == 4 and rows["pair"]["seconds_per_prompt"] >= 0
    assert rows["figstep"]["queries_per_prompt"] is None and rows["figstep"]["queries_reported"] == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Attack cost" in md and "| pair |" in md.replace("| pair | none |", "| pair |")
    html = (tmp_path / "report.html").read_text()
    assert "<h3>Attacks</h3>" in html and "queries/prompt" in html
