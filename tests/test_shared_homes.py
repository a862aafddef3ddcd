"""Shared services live in shared homes, not inside one plugin's file (issue 16).

Each check reads the import statements of ``src/mmsafe`` (module level and inside functions) with
:mod:`ast`, so an import that would reach into a plugin file fails here before it is merged.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mmsafe"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every ``from module import name`` and ``(module, None)`` for ``import module``."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, mod] if mod else base)
            out.extend((mod, a.name) for a in node.names)
    return out


def _importers(module: str, names: set[str] | None = None) -> list[str]:
    """Modules of ``src/mmsafe`` that import ``module`` (or, with ``names``, one of those names from it)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for mod, name in _imports(path):
            if mod == module and (names is None or name in names):
                found.append(_module_name(path))
                break
    return found


def test_the_cache_root_is_not_taken_from_the_tiny_test_model():
    """Only the tiny test-model family imports the tiny model module; the cache root and the
    build-once helper come from :mod:`mmsafe.paths` and :mod:`mmsafe.models._build`."""
    assert set(_importers("mmsafe.models.tiny_llava")) <= {"mmsafe.models.tiny"}
    for module in ("mmsafe.models.gemma", "mmsafe.models.gemma_llava", "mmsafe.attacks.adversarial.base"):
        assert module in _importers("mmsafe.paths", {"default_cache_root"}), module


def test_every_cache_lives_under_the_one_cache_root(tmp_path, monkeypatch):
    from mmsafe.attacks.adversarial.base import cache_dir
    from mmsafe.judge_eval import judge_evals_dir
    from mmsafe.paths import default_cache_root

    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    assert cache_dir() == tmp_path / "c" / "adversarial"
    assert judge_evals_dir() == tmp_path / "c" / "judge-evals"
    monkeypatch.delenv("MMSAFE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "mmsafe"


def test_the_import_scan_sees_function_level_imports():
    """The scanner itself: a check that reads no import would pass for ever."""
    f = SRC / "models" / "tiny.py"
    assert ("mmsafe.models.tiny_llava", "ensure_tiny_llava") in _imports(f)  # imported inside a function
    assert "mmsafe.models.tiny" in _importers("mmsafe.models.tiny_llava")


def test_fonts_and_the_rephraser_come_from_the_render_home():
    """Fonts and the question → statement rephraser live in :mod:`mmsafe.render`; no module takes
    them from the FigStep attack's file, which no longer defines them."""
    import mmsafe.attacks.typographic.figstep as figstep

    moved = {"find_font", "load_font", "_load_font", "rephrase_as_statement", "REFERENCE_FONT_PATHS"}
    assert _importers("mmsafe.attacks.typographic.figstep", moved) == []
    for name in ("find_font", "rephrase_as_statement"):
        assert getattr(figstep, name).__module__.startswith("mmsafe.render."), name
    assert not hasattr(figstep, "REFERENCE_FONT_PATHS") and not hasattr(figstep, "_load_font")
    users = set(_importers("mmsafe.render.fonts")) | set(_importers("mmsafe.render.rephrase"))
    assert {
        "mmsafe.attacks.text.text_only",
        "mmsafe.attacks.typographic.figstep",
        "mmsafe.attacks.typographic.visual_injection",
        "mmsafe.datasets.vqa_starter",
    } <= users


def test_the_metrics_modules_import_in_one_direction():
    """No import cycle in :mod:`mmsafe.metrics`: _common at the bottom, summary at the top, and no
    module reaches back up (an import inside a function counts too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / "metrics").glob("*.py")):
        if path.name != "__init__.py":
            deps = {m for m, _ in _imports(path) if m.startswith("mmsafe.metrics.")}
            graph[_module_name(path)] = deps
    assert graph["mmsafe.metrics._common"] == set()
    assert not any("mmsafe.metrics.summary" in deps for deps in graph.values())
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_labelled_data_and_agreement_live_in_shared_homes():
    """The labelled-data readers (rows, files, presets) live in :mod:`mmsafe.labelled` and the
    agreement numbers in :mod:`mmsafe.metrics.agreement`; :mod:`mmsafe.judge_eval` re-exports the
    same objects, and neither home imports a judge, the judge-eval package or the runner."""
    import mmsafe.judge_eval as judge_eval
    import mmsafe.judge_eval_presets as old_presets
    from mmsafe.labelled import LabelledData, LabelledRow, read_labelled
    from mmsafe.labelled.presets import PRESETS
    from mmsafe.metrics.agreement import LABEL_NAMES, agreement

    assert judge_eval.read_labelled is read_labelled and judge_eval.LabelledRow is LabelledRow
    assert judge_eval.LabelledData is LabelledData and judge_eval.agreement is agreement
    assert judge_eval.LABEL_NAMES is LABEL_NAMES and old_presets.PRESETS is PRESETS
    for path in [*sorted((SRC / "labelled").glob("*.py")), SRC / "metrics" / "agreement.py"]:
        for mod, _ in _imports(path):
            assert not mod.startswith(("mmsafe.judges", "mmsafe.judge_eval", "mmsafe.runner")), (path, mod)
