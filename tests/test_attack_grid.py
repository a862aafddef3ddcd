"""Every registered attack runs in a grid against the tiny model and the default model, and its
records carry the attack's resolved parameters."""

from __future__ import annotations

import pytest

from mmsafe.config import load_config
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.store import Store

REG = Registry(entry_points=False)
ATTACKS = [n for n in REG.names("attack") if "gradients" not in REG.get("attack", n).requires]
#: each attack's own smallest params (``example_params``: pair's scripted attacker, compose's parts)
PARAMS = {n: dict(REG.get("attack", n).example_params) for n in ATTACKS}
#: white-box attacks, a few steps each (the tiny LLaVA gives gradients)
WHITE_BOX = [n for n in REG.names("attack") if "gradients" in REG.get("attack", n).requires]
WHITE_BOX_PARAMS = {"steps": 3, "check_every": 1}
WHITE_BOX_EXTRA = {
    "adv-target": {"target": "Sure"},
    "adv-tool": {"answer_tokens": 4},
    # their helper LLM (attacker / reviser) is required: the scripted stand-in from example_params
    "bap": {k: v for k, v in REG.get("attack", "bap").example_params.items() if k != "steps"},
    "jps": {k: v for k, v in REG.get("attack", "jps").example_params.items() if k != "steps"},
}


def _grid(tmp_path, model, names=ATTACKS, params=PARAMS):
    attacks = [{"name": n, "params": params.get(n, {})} for n in names if n in REG.names("attack")]
    cfg = load_config(
        None,
        overrides={
            "name": "attack-grid",
            "models": [model],
            "benchmarks": ["starter"],
            "attacks": attacks,
            "judges": ["refusal"],
            "limit": 2,
        },
    )
    res = run(cfg, tmp_path, registry=REG, progress=False)
    with Store(tmp_path) as s:
        recs = list(s.iter_records())
    return res, recs, attacks


def _check(res, recs, attacks):
    assert len(recs) == 2 * len(attacks)
    by_attack = {r.attack.name: r for r in recs}
    assert set(by_attack) == {a["name"] for a in attacks}
    for a in attacks:
        spec = REG.create("attack", a["name"], a["params"]).spec
        assert by_attack[a["name"]].attack.params == spec.params
    failed = [(r.attack.name, r.error) for r in recs if r.error]
    assert not failed, failed


def test_every_attack_against_tiny_model(tmp_path):
    _check(*_grid(tmp_path, {"name": "tiny-llava"}))


def test_every_white_box_attack_runs_in_a_grid_on_the_tiny_model(tmp_path):
    assert {"adv-target", "adv-universal", "adv-caption", "adv-tool", "adv-embed", "adv-cropa"} <= set(WHITE_BOX)
    params = {n: {**WHITE_BOX_PARAMS, **WHITE_BOX_EXTRA.get(n, {})} for n in WHITE_BOX}
    res, recs, attacks = _grid(tmp_path, {"name": "tiny-llava"}, WHITE_BOX, params)
    _check(res, recs, attacks)
    for r in recs:
        meta = r.prompt["attack_metadata"]
        assert meta["adversarial"] == r.attack.name and meta["steps"] <= 3, meta
        assert meta["linf"] <= r.attack.params["eps"] + 1e-6 or r.attack.params["norm"] != "linf"


@pytest.mark.slow
def test_every_attack_against_default_model(tmp_path):
    _check(*_grid(tmp_path, {"name": "gemma-ocr", "params": {"generation": {"max_new_tokens": 8}}}))
