"""The layer order of the package: no module imports a later pipeline stage, and the report reads
only the store (issue 16).

The rule, from the package's actual imports:

- **Stages, in order**: ``config`` → ``datasets`` → ``models`` → ``attacks`` → ``defenses`` →
  ``judges`` → ``judge_eval`` → ``training`` → ``report`` → ``runner``. A module may import its
  own stage, an earlier stage and the shared homes, never a later stage.
  Models come before attacks and defenses although a sample meets the model after them: attacks
  and defenses *receive* a model (an adversarial source, PAIR's attacker, a wrapped target) and
  models import none of them. ``judge_eval`` runs judges over labelled data; ``training`` trains
  with attacks, defenses and judges; the report renders a store; the runner drives every stage and
  ends a run by writing the report, so it comes last (the report never imports it).
- **Protocols of received sub-components**: a component that holds a sub-component of a later
  stage (PAIR's judge, an output guard's judge; the call helper's model) may import that stage's
  protocol, ``mmsafe.<stage>.base``, and nothing else of it (:data:`RECEIVES`). A stage's own
  ``base`` module may not: the protocols stay independent of each other.
- **Shared homes** (:data:`SHARED`: types, errors, registry, paths, rendering, metrics, the call
  helper, limits, labelled data, OCR, the run store, the version) are importable from anywhere
  and import only each other. The store is one of them: it imports only types and errors, and
  every stage that caches answers binds to it.
- **The report reads only the store**: ``mmsafe.report`` imports only :data:`REPORT_READS` —
  no cache root, no runner, no model, no judge evaluation cache.
- **Entry points** (``mmsafe``'s ``__init__``, ``api``, ``cli``, ``__main__``) may import anything.

Every import is read with :mod:`ast`: module level, inside functions, and under
``if TYPE_CHECKING:`` (a type-only import is still a dependency of the design). Known violations,
owned by other changes, are listed in :data:`KNOWN` with the reason each is there: shrink it as
they are fixed; a listed import that is gone fails too, so the list cannot go stale.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmsafe"

STAGES = (
    "config",
    "datasets",
    "models",
    "attacks",
    "defenses",
    "judges",
    "judge_eval",
    "training",
    "report",
    "runner",
)
SHARED = frozenset(
    {
        "types",
        "errors",
        "registry",
        "paths",
        "render",
        "metrics",
        "aio",
        "limits",
        "labelled",
        "judge_eval_presets",  # the old name of mmsafe.labelled.presets, re-exported
        "ocr",
        "store",
        "lora",  # LoRA adapters: trainers save them, model backends load them
        "plugin_meta",  # typed capabilities and paper metadata every plugin class declares
        "papers",  # papers cited by more than one plugin
        "components",  # declared sub-components: the base classes create, load, cache and close them
        "llama_guard",  # the Llama Guard prompt format, read by the guard judge and the guard-input defense
        "embeddings",  # the MiniLM sentence embedder (learned judge, AdaShield, JailGuard, harm model)
        "retrieval",  # TF-IDF / embedding nearest-neighbour indexes
        "untrusted",  # quoting attacker-controlled text into a model's prompt  # typed capabilities and paper metadata every plugin class declares
        "__version__",
    }
)
ENTRY = frozenset({"", "api", "cli", "__main__"})
#: stage (or shared home) → later stages whose protocol (``mmsafe.<stage>.base``) it may import
#: shared home → the stage modules it is built on (the plugin framework creates sub-components from
#: their configs and puts every sub-model behind the response cache, a model wrapper)
SHARED_BUILDS_ON: dict[str, frozenset[str]] = {
    "components": frozenset({"mmsafe.config", "mmsafe.models.base", "mmsafe.models.cached"}),
}
RECEIVES: dict[str, frozenset[str]] = {
    "attacks": frozenset({"judges"}),  # PAIR scores its attempts with a judge
    "defenses": frozenset({"judges"}),  # output guard, OCR filter: a judge inside a defense
    "aio": frozenset({"models"}),  # the call helper drives any ModelBackend
}
REPORT_READS = frozenset(
    {"types", "errors", "registry", "metrics", "store", "judges", "report", "__version__"}
)

#: (importer, imported) → why it is still here. Remove an entry when its import goes.
KNOWN: dict[tuple[str, str], str] = {
}


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. "mmsafe.judges.llm"
    imported: str  # module name, e.g. "mmsafe.models.base"
    line: int = 0
    type_only: bool = False


def _module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, name: str, root: Path = SRC) -> str:
    """``from module import name``: the module imported (``name`` itself when it is a submodule)."""
    if module == "mmsafe" and name == "__version__":
        return "mmsafe.__version__"
    sub = root.parent.joinpath(*f"{module}.{name}".split("."))
    if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
        return f"{module}.{name}"
    return module


def scan(root: Path = SRC) -> list[Import]:
    """Every ``mmsafe`` import of every module under ``root``: module level, in functions, type-only."""
    out = []
    for path in sorted(root.rglob("*.py")):
        name = _module_name(path, root)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    mod = ".".join([*base, mod] if mod else base)
                targets = [_resolve(mod, a.name, root) for a in node.names]
            else:
                continue
            for t in targets:
                if t == "mmsafe" or t.startswith("mmsafe."):
                    out.append(Import(name, t, node.lineno, id(node) in type_only))
    return out


def group(module: str) -> str:
    """The stage or shared home of ``module`` (``mmsafe.judges.llm`` → ``judges``; the package → ``""``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def check(imports: list[Import]) -> list[tuple[Import, str]]:
    """Each import that breaks the layer rule (see the module docstring), with why."""
    bad = []
    for imp in imports:
        src, dst = group(imp.importer), group(imp.imported)
        if src == dst or src in ENTRY:
            continue
        if src == "report":
            if dst not in REPORT_READS:
                bad.append((imp, f"the report reads only the store; it imports {dst!r}"))
            continue
        if dst in SHARED:
            continue
        if dst in ENTRY:
            bad.append((imp, "imports an entry point"))
            continue
        if dst not in STAGES:
            bad.append((imp, f"{dst!r} is neither a stage nor a shared home: add it to the rule"))
            continue
        protocol = imp.imported == f"mmsafe.{dst}.base"
        own_base = imp.importer == f"mmsafe.{src}.base"
        if protocol and not own_base and dst in RECEIVES.get(src, ()):
            continue
        if src in SHARED and imp.imported in SHARED_BUILDS_ON.get(src, ()):
            continue
        if src in SHARED:
            bad.append((imp, f"shared home {src!r} imports stage {dst!r}"))
        elif src not in STAGES:
            bad.append((imp, f"{src!r} is neither a stage nor a shared home: add it to the rule"))
        elif STAGES.index(dst) > STAGES.index(src):
            bad.append((imp, f"stage {src!r} imports the later stage {dst!r}"))
    return bad


def test_no_module_imports_a_later_stage():
    found = check(scan())
    new = sorted(
        {
            f"{i.importer}:{i.line} imports {i.imported}{' (type-only)' * i.type_only}: {why}"
            for i, why in found
            if (i.importer, i.imported) not in KNOWN
        }
    )
    assert not new, "layer violations:\n" + "\n".join(new)
    stale = set(KNOWN) - {(i.importer, i.imported) for i, _ in found}
    assert not stale, f"fixed, remove from KNOWN: {sorted(stale)}"


def test_the_report_reads_only_the_store():
    """Nothing under mmsafe.report imports the cache root, the runner (its answer cache), a model,
    a dataset, an attack, a defense or the judge-eval cache; and it does import the store."""
    report = [i for i in scan() if group(i.importer) == "report"]
    reached = {group(i.imported) for i in report}
    assert "store" in reached
    assert not reached & {"paths", "runner", "models", "datasets", "attacks", "defenses", "judge_eval", "aio"}


# --------------------------------------------------------------------------------------------------
# the checker itself, on synthetic import graphs: a rule that flags nothing would pass for ever
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("importer", "imported", "type_only", "why"),
    [
        (
            "mmsafe.models.hf",
            "mmsafe.attacks.base",
            False,
            "stage 'models' imports the later stage 'attacks'",
        ),
        (
            "mmsafe.judges.llm",
            "mmsafe.runner.run",
            False,
            "stage 'judges' imports the later stage 'runner'",
        ),
        (
            "mmsafe.datasets.x",
            "mmsafe.models.base",
            True,
            "stage 'datasets' imports the later stage 'models'",
        ),
        ("mmsafe.report", "mmsafe.paths", False, "the report reads only the store; it imports 'paths'"),
        (
            "mmsafe.report.tally",
            "mmsafe.runner.run",
            False,
            "the report reads only the store; it imports 'runner'",
        ),
        (
            "mmsafe.report",
            "mmsafe.judge_eval",
            False,
            "the report reads only the store; it imports 'judge_eval'",
        ),
        ("mmsafe.metrics.rates", "mmsafe.judges.base", False, "shared home 'metrics' imports stage 'judges'"),
        ("mmsafe.store.sqlite", "mmsafe.runner", False, "shared home 'store' imports stage 'runner'"),
        (
            "mmsafe.defenses.base",
            "mmsafe.judges.base",
            False,
            "stage 'defenses' imports the later stage 'judges'",
        ),
        (
            "mmsafe.defenses.x",
            "mmsafe.judges.llm",
            False,
            "stage 'defenses' imports the later stage 'judges'",
        ),
        ("mmsafe.models.x", "mmsafe.judges.base", False, "stage 'models' imports the later stage 'judges'"),
        ("mmsafe.runner.run", "mmsafe.cli.main", False, "imports an entry point"),
        (
            "mmsafe.judges.x",
            "mmsafe.newstage.y",
            False,
            "'newstage' is neither a stage nor a shared home: add it to the rule",
        ),
    ],
)
def test_the_checker_flags_each_kind_of_violation(importer, imported, type_only, why):
    assert check([Import(importer, imported, 1, type_only)]) == [
        (Import(importer, imported, 1, type_only), why)
    ]


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("mmsafe.attacks.text.pair", "mmsafe.models.base"),  # an earlier stage
        ("mmsafe.runner.run", "mmsafe.report"),  # the runner ends a run with the report
        ("mmsafe.defenses.output_guard", "mmsafe.judges.base"),  # the protocol of a received judge
        ("mmsafe.attacks.text.pair", "mmsafe.judges.base"),
        ("mmsafe.aio", "mmsafe.models.base"),
        ("mmsafe.models.hf", "mmsafe.paths"),  # shared homes, from anywhere
        ("mmsafe.judges.base", "mmsafe.store.sqlite"),
        ("mmsafe.report", "mmsafe.store.sqlite"),
        ("mmsafe.report", "mmsafe.judges.ensemble"),
        ("mmsafe.cli.main", "mmsafe.runner"),  # entry points, anything
        ("mmsafe", "mmsafe.api"),
        ("mmsafe.training.base", "mmsafe.__version__"),
    ],
)
def test_the_checker_allows_what_the_rule_allows(importer, imported):
    assert check([Import(importer, imported)]) == []


def test_a_new_violation_in_a_copy_of_the_package_fails(tmp_path):
    """The whole path (scan → check → KNOWN): a copy of the package with one added back-edge."""
    import shutil

    copy = tmp_path / "mmsafe"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    f = copy / "models" / "scripted.py"
    f.write_text(
        f.read_text(encoding="utf-8") + "\n\ndef _late():\n    from mmsafe.judges.llm import LLMJudge\n"
    )
    rows = [(i.importer, i.imported) for i, _ in check(scan(copy)) if (i.importer, i.imported) not in KNOWN]
    assert rows == [("mmsafe.models.scripted", "mmsafe.judges.llm")]
    assert not [i for i, _ in check(scan()) if (i.importer, i.imported) not in KNOWN]
