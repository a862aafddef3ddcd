"""Every registered defense runs in a grid against every black-box attack, on the tiny model and
(slow) on the default model, and every record says what the defense did."""

from __future__ import annotations

import os

import pytest

from mmsafe.config import load_config
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.store import Store

REG = Registry(entry_points=False)
ATTACK_PARAMS = {
    "pair": {
        "attacker": {"name": "scripted", "params": {"default": '{"improvement": "x", "prompt": "Tell me"}'}},
        "n_iterations": 2,
    },
    "compose": {"image": "figstep", "text": ["prefix-injection"]},
}
BLACK_BOX = [n for n in REG.names("attack") if "gradients" not in REG.get("attack", n).requires]
#: defenses whose defaults need something only a config can give (the detectors are rule judges)
DEFENSE_PARAMS = {
    "output-guard": {"judge": {"name": "target-string", "params": {"preset": "instructions"}}},
    "mllm-protector": {"detector": {"name": "target-string", "params": {"preset": "instructions"}}},
    "jailguard": {"n_variants": 2},  # the mechanism, at a quarter of the default cost
    "guard-input": {
        "guard": {"name": "scripted", "params": {"rules": {"bomb": "unsafe\nS9"}, "default": "safe"}}
    },
    # an input filter, a defense prompt and an output guard in one cell
    "stack": {
        "defenses": [
            "ocr-filter",
            "system-prompt",
            {
                "name": "output-guard",
                "params": {"judge": {"name": "target-string", "params": {"preset": "instructions"}}},
            },
        ]
    },
}


def _defenses(model_caps: frozenset[str]) -> list[dict]:
    out = []
    for n in REG.names("defense"):
        if set(REG.get("defense", n).requires) <= model_caps:
            out.append({"name": n, "params": DEFENSE_PARAMS.get(n, {})})
    return out


#: one black-box attack per family, for the (slow) default-model grid in CI: every attack × every
#: defense on gemma-ocr takes minutes; the tiny-model grid keeps the full product, and
#: MMSAFE_FULL_GRID=1 runs the full product on the default model too
REPRESENTATIVE = ["none", "text-only", "figstep", "mmsb-typo", "visual-injection", "prefix-injection", "pair"]


def _grid(tmp_path, model: dict, limit: int, attacks: list[str] = BLACK_BOX):
    caps = REG.create("model", model["name"], model.get("params", {})).capabilities
    defenses = _defenses(frozenset(caps))
    cfg = load_config(
        None,
        overrides={
            "name": "defense-grid",
            "models": [model],
            "benchmarks": ["starter"],
            "attacks": [{"name": n, "params": ATTACK_PARAMS.get(n, {})} for n in attacks],
            "defenses": defenses,
            "judges": ["refusal"],
            "limit": limit,
        },
    )
    run(cfg, tmp_path, registry=REG, progress=False)
    with Store(tmp_path) as s:
        recs = list(s.iter_records())
    assert len(recs) == limit * len(attacks) * len(defenses)
    failed = [(r.defense.name, r.attack.name, r.error) for r in recs if r.error]
    assert not failed, failed[:5]
    for r in recs:
        info = (r.generation or {}).get("metadata", {}).get("defense")
        if r.defense.name == "none":
            assert info is None
        else:
            assert info and info["name"] == r.defense.name and info["action"] and info["calls"] >= 0, (
                r.defense.name
            )
    return {d["name"] for d in defenses}


def test_every_defense_against_every_black_box_attack_on_the_tiny_model(tmp_path):
    names = _grid(tmp_path, {"name": "tiny-llava"}, limit=1)
    assert {"none", "system-prompt", "inferaligner"} <= names


@pytest.mark.slow
def test_every_defense_against_each_attack_family_on_the_default_model(tmp_path):
    assert set(REPRESENTATIVE) <= set(BLACK_BOX)
    _grid(
        tmp_path,
        {"name": "gemma-ocr", "params": {"generation": {"max_new_tokens": 8}}},
        limit=1,
        attacks=BLACK_BOX if os.environ.get("MMSAFE_FULL_GRID") == "1" else REPRESENTATIVE,
    )
