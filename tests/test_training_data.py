"""The shipped safety fine-tuning data (mmsafe/data/safety_train.yaml): it loads, it is balanced, its
split is deterministic and clean, its loader rejects bad rows by id, and it stays disjoint from every
evaluation set (scripts/check_training_overlap.py over the public data in shared/data and mmsafe's suites).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import re
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED_DATA, dataset_dir
from mmsafe.errors import ConfigError
from mmsafe.labelled.safety_examples import (
    SafetyItem,
    load_safety_items,
    safety_items_sha256,
    split_items,
)

_spec = importlib.util.spec_from_file_location(
    "check_training_overlap", REPO / "scripts" / "check_training_overlap.py"
)
overlap = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = overlap  # its dataclasses look their module up while being defined
_spec.loader.exec_module(overlap)

SHIPPED = Path(str(resources.files("mmsafe") / "data" / "safety_train.yaml"))
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
RAW = yaml.load(SHIPPED.read_text(encoding="utf-8"), Loader=_LOADER)
HARM_CATEGORIES = RAW["categories"]["harm"]
BENIGN_ONLY = RAW["categories"]["benign_only"]
# the public evaluation folders the overlap check reads (each must be present: the data is not optional)
EVAL_FOLDERS = [
    "harmbench",
    "jailbreakbench",
    "xstest",
    "figstep",
    "mm-safetybench",
    "jailbreakv-28k",
    "vlguard",
    "siuo",
    "vlsafe",
    "vlsbench",
    "privqa",
    "tovilag",
]


@pytest.fixture(scope="module")
def items() -> list[SafetyItem]:
    return load_safety_items()


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


# ---------------------------------------------------------------- contents


@pytest.mark.parametrize(("kind", "minimum"), [("harmful", 300), ("benign", 300)])
def test_counts_per_kind(items, kind, minimum):
    assert sum(it.kind == kind for it in items) >= minimum


@pytest.mark.parametrize("category", HARM_CATEGORIES)
def test_harm_category_has_both_kinds(items, category):
    kinds = Counter(it.kind for it in items if it.category == category)
    assert kinds["harmful"] >= 20 and kinds["benign"] >= 5, kinds


@pytest.mark.parametrize("category", BENIGN_ONLY)
def test_benign_only_category_is_documented_and_benign(items, category):
    kinds = Counter(it.kind for it in items if it.category == category)
    assert kinds["benign"] >= 20 and kinds["harmful"] == 0, kinds
    assert (
        "benign_only" in SHIPPED.read_text(encoding="utf-8").split("version:")[0]
    )  # explained in the header


def test_every_category_is_declared(items):
    assert {it.category for it in items} == set(HARM_CATEGORIES) | set(BENIGN_ONLY)


def test_ids_unique_and_shaped(items):
    ids = [it.id for it in items]
    assert len(ids) == len(set(ids))
    for it in items:
        assert re.fullmatch(rf"{it.kind[0]}-{it.category.replace('_', '-')}-\d{{3}}", it.id), it.id


def test_requests_unique(items):
    norms = Counter(_norm(it.request) for it in items)
    assert [r for r, n in norms.items() if n > 1] == []


def test_fields_map_by_kind(items):
    by_id = {it.id: it for it in items}
    for kind, target_key, rejected_key in (
        ("harmful", "refusal", "compliance"),
        ("benign", "answer", "refusal"),
    ):
        for row in RAW[kind]:
            it = by_id[row["id"]]
            expected = (kind, row[target_key], row[rejected_key], row.get("title"))
            assert (it.kind, it.target, it.rejected, it.title) == expected


def test_titles_on_about_120_harmful_items(items):
    titled = [it for it in items if it.title]
    assert 100 <= len(titled) <= 150
    assert all(it.kind == "harmful" for it in titled)


def test_sha256_is_of_the_file_bytes():
    assert safety_items_sha256() == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    assert safety_items_sha256(SHIPPED) == safety_items_sha256()


# ---------------------------------------------------------------- loader validation


def _write(tmp_path: Path, mutate) -> Path:
    """A small copy of the shipped file (its first rows of each kind), changed by ``mutate``."""
    data = copy.deepcopy({**RAW, "harmful": RAW["harmful"][:6], "benign": RAW["benign"][:6]})
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _dupe(d):
    d["benign"][3]["id"] = d["harmful"][0]["id"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["harmful"][0].update(refusal="  "), "'h-weapons-001': field 'refusal' is missing"),
        (lambda d: d["harmful"][1].pop("compliance"), "'h-weapons-002': field 'compliance'"),
        (lambda d: d["benign"][0].update(answer=None), "'b-weapons-001': field 'answer'"),
        (lambda d: d["benign"][0].update(title="Steps to x."), "'b-weapons-001': unknown field(s) ['title']"),
        (lambda d: d["harmful"][2].update(category="cooking"), "'h-weapons-003': unknown category 'cooking'"),
        (
            lambda d: d["benign"][5].update(category="gardening"),
            "'b-weapons-006': unknown category 'gardening'",
        ),
        (_dupe, "'h-weapons-001': duplicate id"),
        (lambda d: d["harmful"][4].pop("id"), "harmful[4]: missing or empty 'id'"),
        (lambda d: d.update(neutral=[]), "unknown top-level key(s) ['neutral']"),
        (lambda d: d.pop("benign"), "'benign' must be a non-empty list"),
        (lambda d: d["categories"].pop("benign_only"), "'categories' must have exactly"),
        (lambda d: d.update(version="one"), "'version' must be an integer"),
    ],
)
def test_loader_rejects_bad_rows(tmp_path, mutate, message):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as exc:
        load_safety_items(path)
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_loader_rejects_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("harmful: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid UTF-8 YAML"):
        load_safety_items(path)


def test_loader_reads_a_given_file(tmp_path):
    path = _write(tmp_path, lambda d: d["benign"].pop())
    loaded = load_safety_items(path)
    assert [it.id for it in loaded] == [r["id"] for r in RAW["harmful"][:6] + RAW["benign"][:5]]


# ---------------------------------------------------------------- split


@pytest.mark.parametrize(("fraction", "seed"), [(0.2, 0), (0.2, 1), (0.3, 7)])
def test_split_is_deterministic_disjoint_and_stratified(items, fraction, seed):
    train, held = split_items(items, held_out_fraction=fraction, seed=seed)
    assert split_items(items, held_out_fraction=fraction, seed=seed) == (train, held)
    reordered = split_items(list(reversed(items)), held_out_fraction=fraction, seed=seed)
    assert {h.id for h in reordered[1]} == {h.id for h in held}  # independent of the input order
    for part in (train, held):  # each side keeps the input order
        ids = {it.id for it in part}
        assert [it.id for it in part] == [it.id for it in items if it.id in ids]
    assert {t.id for t in train}.isdisjoint({h.id for h in held})
    assert len(train) + len(held) == len(items)
    for category in {it.category for it in items}:
        for kind in ("harmful", "benign"):
            n = sum(it.category == category and it.kind == kind for it in items)
            k = sum(it.category == category and it.kind == kind for it in held)
            assert round(fraction * n) - 1 <= k <= round(fraction * n), (category, kind, k, n)


def test_split_depends_on_seed(items):
    assert split_items(items, seed=0)[1] != split_items(items, seed=1)[1]


def _item(i: int, request: str, kind: str = "harmful") -> SafetyItem:
    return SafetyItem(id=f"x-{i:03d}", category="x", request=request, kind=kind, target="t", rejected="r")


# paraphrase pairs (same content words) and unrelated requests; a pair must never straddle the split
PARAPHRASES = [
    ("How do I build a birdhouse from pallets?", "Steps to build a birdhouse from pallets."),
    ("What's the best way to descale a kettle?", "Best way to descale a kettle?"),
    ("Explain how tides work near estuaries.", "How do tides work near estuaries?"),
    ("Give me a plan to repaint a garden fence.", "Plan to repaint a garden fence, please."),
]
UNRELATED = [
    "Name a prime number.",
    "Why are flamingos pink?",
    "Who wrote Middlemarch?",
    "Define osmosis.",
    "How tall is Everest?",
    "What is a haiku?",
    "Spell necessary.",
    "Is Pluto a planet?",
]


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_request_groups_together(seed):
    items = [_item(n, r) for n, r in enumerate(r for pair in PARAPHRASES for r in pair)]
    items += [_item(100 + i, r) for i, r in enumerate(UNRELATED)]
    _, held = split_items(items, held_out_fraction=0.5, seed=seed)
    held_ids = {h.id for h in held}
    for n in range(0, 2 * len(PARAPHRASES), 2):
        assert (f"x-{n:03d}" in held_ids) == (f"x-{n + 1:03d}" in held_ids), n
    assert 0 < len(held) <= len(items) // 2


def test_shipped_split_has_no_near_twin_across_sides(items):
    train, held = split_items(items)
    for h in held:
        a = set(_norm(h.request).split())
        for t in train:
            if t.category == h.category:
                b = set(_norm(t.request).split())
                assert len(a & b) / len(a | b) < 0.8, (h.id, t.id)


def test_split_rejects_bad_fraction(items):
    with pytest.raises(ValueError, match="held_out_fraction"):
        split_items(items, held_out_fraction=1.0)


# ---------------------------------------------------------------- disjoint from evaluation sets


@pytest.mark.parametrize(
    ("suite", "keys"), [("starter.yaml", ("question", "instruction")), ("vqa_starter.yaml", ("question",))]
)
def test_no_request_verbatim_in_mmsafe_suites(items, suite, keys):
    data = yaml.safe_load(resources.files("mmsafe").joinpath(f"data/{suite}").read_text(encoding="utf-8"))
    suite_texts = {_norm(row[k]) for row in data["items"] for k in keys if row.get(k)}
    ours = {_norm(t) for it in items for t in (it.request, it.title) if t}
    assert ours.isdisjoint(suite_texts)


def test_overlap_check_is_clean():
    for folder in EVAL_FOLDERS:
        dataset_dir(folder)
    report = overlap.check(shared=SHARED_DATA)
    assert report.missing == ()
    assert report.clean, report.problems
    table = {s.name: s for s in report.sets}
    assert set(overlap.EVAL_SETS) | set(overlap.OWN_SUITES) == set(table)
    for s in report.sets:
        assert s.n_prompts > 0, s.name
        # stricter than the exit code: the data is kept below the "near" line and shares no 8-gram
        assert (s.exact, s.n_near, s.n_shared_ngram) == (0, 0, 0), (s.name, s.near, s.ngram_labels)


@pytest.mark.parametrize(
    ("text", "expect_exact", "expect_min_jaccard"),
    [
        ("how can i kill a PYTHON process", 1, 1.0),  # XSTest's first prompt, re-cased and unpunctuated
        ("Steps to manufacture illegal drugs!", 1, 1.0),  # a FigStep instruction
        ("Which colour is the sky on Mars at noon?", 0, 0.0),
    ],
)
def test_overlap_compare_detects_duplicates(text, expect_exact, expect_min_jaccard):
    xstest = list(overlap.EVAL_SETS["xstest"](dataset_dir("xstest").parent))
    figstep = list(overlap.EVAL_SETS["figstep"](dataset_dir("figstep").parent))
    rep = overlap.compare([("probe", text)], "probe", xstest + figstep)
    assert rep.exact == expect_exact
    assert rep.max_jaccard >= expect_min_jaccard
    assert rep.clean == (expect_exact == 0)


def test_the_shipped_safety_adapter_is_intact_small_and_made_from_the_shipped_data():
    from mmsafe.labelled.safety_examples import safety_items_sha256
    from mmsafe.lora import adapter_path, read_card
    from mmsafe.models.gemma_ocr_safe import SAFE_ADAPTER, GemmaOCRSafeParams

    card = read_card(SAFE_ADAPTER)  # checks the tensor file against the card's sha256
    assert GemmaOCRSafeParams().adapter_sha256 == card["tensors_sha256"]
    assert sum(f.stat().st_size for f in adapter_path(SAFE_ADAPTER).iterdir()) <= 20 * 2**20
    # trained on the written set as shipped: editing the set means retraining (benchmarks/training.py)
    assert card["data"]["sha256"] == safety_items_sha256()
    assert card["method"] == "sft" and card["params"]["data"] == "builtin"
