"""Contract tests over every registered plugin, and the registry's third-party entry points."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mmsafe.attacks.base import Attack
from mmsafe.defenses.base import Defense
from mmsafe.errors import ConfigError
from mmsafe.models.base import CAPABILITIES, Capability, ModelBackend
from mmsafe.plugin_meta import Paper
from mmsafe.registry import BUILTINS, KINDS, Component, Registry

REG = Registry(entry_points=False)
ALL = [(k, n) for k in KINDS for n in REG.names(k)]


@pytest.mark.parametrize(("kind", "name"), ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_plugin_contract(kind, name):
    cls = REG.get(kind, name)
    assert issubclass(cls, Component)
    assert cls.kind == kind and cls.name == name
    doc = (cls.__doc__ or "").strip()
    assert doc and len(doc.splitlines()[0]) <= 120, "first docstring line is the one-line description"
    assert cls.Params.model_config.get("extra") == "forbid", "params must reject unknown keys"
    assert cls.paper is None or isinstance(cls.paper, Paper)
    # the plugin's own smallest params validate (components that need a path get one), and the spec round-trips
    example = dict(cls.example_params)
    cls.Params.model_validate(example)
    comp = REG.create(kind, name, example)
    spec = comp.spec
    again = REG.create(kind, name, {**spec.params, **spec.runtime})
    assert again.spec == spec and again.spec.key == spec.key
    with pytest.raises(ConfigError, match="no_such_param"):
        REG.create(kind, name, {**example, "no_such_param": 1})


def test_capabilities_are_typed_and_still_plain_strings():
    seen = set()
    for kind, name in ALL:
        cls = REG.get(kind, name)
        for attr in ("requires", "capabilities"):
            for cap in getattr(cls, attr, frozenset()):
                assert type(cap) is Capability, (kind, name, attr, cap)
                seen.add(cap)
    assert {"images", "gradients", "system_prompt", "hidden_states"} <= seen  # a member equals its string
    assert json.dumps(sorted(REG.get("attack", "adv-target").requires)) == '["gradients", "images"]'
    assert CAPABILITIES == {c.value for c in Capability}


@pytest.mark.parametrize(
    ("base", "attr", "value", "bad"),
    [
        (Attack, "requires", frozenset({"images", "imgaes"}), "'imgaes'"),
        (Defense, "requires", frozenset({"hidden_state"}), "'hidden_state'"),
        (ModelBackend, "capabilities", frozenset({"system-prompt", "batched"}), "'system-prompt'"),
        (Attack, "requires", "images", "not the string 'images'"),
    ],
)
def test_a_capability_typo_fails_when_the_plugin_class_is_defined(base, attr, value, bad):
    with pytest.raises(TypeError) as e:
        type("Typo", (base,), {"__doc__": "A plugin with a typo.", attr: value})
    msg = str(e.value)
    assert f"Typo.{attr}" in msg and bad in msg
    if "not the string" not in bad:
        assert "allowed: async, batched, gradients, hidden_states, images, prefill, system_prompt" in msg


#: built-ins whose module is still named otherwise; the files are owned by work in flight (the tiny
#: models are being merged, the adversarial attacks restructured) and are renamed after it lands
NAME_FILE_EXCEPTIONS: set[tuple[str, str]] = set()


def test_registry_names_match_file_names():
    """A built-in named ``a-b`` lives in a module file ``a_b.py`` (one plugin per file), so a reader finds it."""
    mismatched = set()
    for kind, table in BUILTINS.items():
        for name, target in table.items():
            module = target.partition(":")[0]
            if module.rsplit(".", 1)[-1] != name.replace("-", "_"):
                mismatched.add((kind, name))
    assert mismatched == NAME_FILE_EXCEPTIONS  # equality: a renamed file leaves the list too


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
