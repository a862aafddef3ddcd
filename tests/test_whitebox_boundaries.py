"""The white-box code keeps to public surfaces: ``TeacherForced`` builds on ``WhiteBoxView`` and the
PGD engine's parts on each other's public methods, so none of them reads a private attribute
(``obj._x``, ``getattr(obj, "_x")``) of an object other than itself. Checked on the source (AST)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmsafe"

CHECKED = [
    "models/_whitebox.py",
    "attacks/adversarial/engine.py",
    "attacks/adversarial/threat_model.py",
    "attacks/adversarial/step_rule.py",
    "attacks/adversarial/checkpoint.py",
]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def foreign_private_reads(source: str) -> list[str]:
    """``line: expression`` for every private attribute read on anything but ``self`` / ``cls``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


@pytest.mark.parametrize("path", CHECKED)
def test_no_private_attribute_of_another_object_is_read(path: str) -> None:
    assert foreign_private_reads((SRC / path).read_text(encoding="utf-8")) == []


def test_the_scan_finds_what_it_looks_for() -> None:
    """The old TeacherForced read ``model._family``, ``self.model._model.config``, …: each form is caught."""
    source = (
        "class T:\n"
        "    def f(self, model):\n"
        "        a = model._family\n"
        "        b = self.model._model.config\n"
        "        c = getattr(model, '_settings')\n"
        "        return self._own, self.__class__, cls_ok(self._x), type(self).__name__\n"
    )
    assert foreign_private_reads(source) == [
        "3: model._family",
        "4: self.model._model",
        "5: getattr(model, '_settings')",
    ]
