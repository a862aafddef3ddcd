"""The report's "strongest attack per defense": each defense's number under the attack that got through most often,
static and adaptive apart (a defense is as strong as its number under its strongest known attack)."""

from __future__ import annotations

import json

from mmsafe.config import load_config
from mmsafe.report import is_adaptive
from mmsafe.runner import run
from test_attack_adaptive import ATTACKER, GUARD, TARGET

SURE = {"name": "target-string", "params": {"targets": ["Sure"]}}


def _pair(adaptive: bool) -> dict:
    return {
        "name": "pair",
        "params": {"attacker": ATTACKER, "judge": SURE, "n_iterations": 2, "adaptive": adaptive},
    }


def test_how_an_attack_sees_the_defense():
    from mmsafe.report import adaptive_how

    assert adaptive_how({"through": {"name": "purify", "params": {}}, "evade": {"name": "cider"}}) == (
        "through purify, evade cider"
    )
    assert adaptive_how({"adaptive": True}) == "defense in the loop"
    assert adaptive_how({"adaptive": False, "through": None}) is None


def test_which_params_make_an_attack_adaptive():
    assert not is_adaptive({})
    assert not is_adaptive({"adaptive": False, "through": None, "evade": None})
    assert is_adaptive({"adaptive": True})
    assert is_adaptive({"through": {"name": "purify", "params": {}}})
    assert is_adaptive({"evade": {"name": "cider", "params": {}}})


def test_each_defense_gets_its_strongest_static_and_adaptive_attack(tmp_path):
    cfg = load_config(
        None,
        overrides={
            "name": "strongest",
            "models": [TARGET],
            "benchmarks": ["starter"],
            "attacks": ["none", _pair(False), _pair(True)],
            "defenses": ["none", GUARD],
            "judges": [SURE],
            "limit": 3,
        },
    )
    run(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["defense"]: r for r in summary["strongest"]}
    assert set(rows) == {"none", "output-guard"}
    bare, guarded = rows["none"], rows["output-guard"]
    assert bare["attacks"] == guarded["attacks"] == 3 and bare["adaptive_attacks"] == 1
    n = bare["strongest"]["rate"]["n"]
    assert n >= 1
    # undefended: both searches find the prompt the target complies with; no attack gets nothing
    assert bare["strongest"]["rate"]["k"] == n and bare["strongest"]["attack"].startswith("pair")
    assert bare["strongest_adaptive"]["adaptive"] is True and bare["strongest_adaptive"]["rate"]["k"] == n
    assert bare["strongest_adaptive"]["how"] == "defense in the loop" and bare["strongest_static"]["how"] is None
    assert bare["strongest_static"]["adaptive"] is False and bare["strongest_static"]["rate"]["k"] == n
    # the guard blocks every "Sure": nothing gets through, static or adaptive
    for key in ("strongest", "strongest_static", "strongest_adaptive"):
        assert guarded[key]["rate"]["k"] == 0, guarded
    assert guarded["rate_name"] == bare["rate_name"]
    report = (tmp_path / "report.md").read_text()
    assert "## Strongest attack per defense" in report
    html = (tmp_path / "report.html").read_text()
    assert "Strongest attack per defense" in html
