"""Contract tests over every registered plugin, and the registry's third-party entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mmsafe.errors import ConfigError
from mmsafe.registry import KINDS, Component, Registry

REG = Registry(entry_points=False)
ALL = [(k, n) for k in KINDS for n in REG.names(k)]
#: the smallest valid params of components that have required ones (nothing is loaded or read)
REQUIRED = {
    ("model", "hf"): {"path": "org/some-vlm"},
    ("model", "hf-text"): {"path": "org/some-lm"},
    ("model", "openai"): {"base_url": "http://127.0.0.1:9/v1"},
    ("benchmark", "jsonl"): {"file": "items.jsonl"},
    ("attack", "pair"): {"attacker": "scripted"},
    ("judge", "llm"): {"judge_model": "scripted"},
    ("judge", "reference"): {"preset": "jbb-llama3", "judge_model": "scripted"},
    ("judge", "guard"): {"judge_model": "scripted"},
    ("trainer", "sft"): {"model": "scripted"},
    ("trainer", "dpo"): {"model": "scripted"},
    ("trainer", "dress"): {"model": "scripted"},
    ("trainer", "protector-detoxifier"): {"model": "scripted"},
    ("trainer", "sft-vision"): {"model": "scripted"},
    ("judge", "ensemble"): {"judges": ["refusal"]},
    ("judge", "learned"): {"weights": "judge.json"},
    ("defense", "output-guard"): {"judge": "refusal"},
    ("defense", "mllm-protector"): {"detector": "refusal"},
    ("defense", "guard-input"): {"guard": "scripted"},
    ("defense", "stack"): {"defenses": ["system-prompt", "purify"]},
}


@pytest.mark.parametrize(("kind", "name"), ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_plugin_contract(kind, name):
    cls = REG.get(kind, name)
    assert issubclass(cls, Component)
    assert cls.kind == kind and cls.name == name
    doc = (cls.__doc__ or "").strip()
    assert doc and len(doc.splitlines()[0]) <= 120, "first docstring line is the one-line description"
    assert cls.Params.model_config.get("extra") == "forbid", "params must reject unknown keys"
    # defaults validate (components that need a path get one), and the spec round-trips
    comp = REG.create(kind, name, REQUIRED.get((kind, name), {}))
    spec = comp.spec
    again = REG.create(kind, name, {**spec.params, **spec.runtime})
    assert again.spec == spec and again.spec.key == spec.key
    with pytest.raises(ConfigError, match="no_such_param"):
        REG.create(kind, name, {**REQUIRED.get((kind, name), {}), "no_such_param": 1})


def test_unknown_name_lists_allowed():
    with pytest.raises(ConfigError) as e:
        REG.get("attack", "figsetp", where="attacks[0]")
    assert "attacks[0]" in str(e.value) and "figstep" in str(e.value)


def test_import_and_list_do_not_import_torch():
    code = textwrap.dedent(
        """
        import sys, mmsafe, mmsafe.cli.main
        from mmsafe.registry import Registry, KINDS
        r = Registry()
        for k in KINDS:
            for n, summary in r.describe(k):
                assert not summary.startswith("(cannot load"), (k, n, summary)
        heavy = [m for m in ("torch", "transformers", "pytesseract") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    pkg = tmp_path / "mmsafe_demo_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            '''
            from typing import ClassVar
            from mmsafe.attacks.base import Attack
            from mmsafe.types import Message, Prompt

            class Shout(Attack):
                """Upper-cases the request (a demo third-party attack)."""
                name: ClassVar[str] = "shout"

                def apply(self, sample, *, seed, target=None):
                    return Prompt(messages=(Message.user(sample.text.upper()),))
            '''
        )
    )
    dist = tmp_path / "mmsafe_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmsafe-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mmsafe.attacks]\nshout = mmsafe_demo_plugin:Shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    assert "shout" in reg.names("attack")
    assert reg.create("attack", "shout").summary().startswith("Upper-cases")
