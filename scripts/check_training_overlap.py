"""Checks that mmsafe's shipped safety-training prompts stay apart from every evaluation prompt.

    python scripts/check_training_overlap.py             # the table; exit 1 if not clean
    python scripts/check_training_overlap.py --near      # also list each training text with Jaccard >= 0.6
    python scripts/check_training_overlap.py --shared-data /path/to/shared/data

Every training text of ``src/mmsafe/data/safety_train.yaml`` (each ``request``, and each harmful item's
``title``, since that is what a typographic attack typesets) is compared with the prompts of the public
evaluation sets in ``shared/data`` (``$MMSAFE_SHARED_DATA``, else ``../shared/data`` beside the checkout)
and with mmsafe's own suites (``starter.yaml``, ``vqa_starter.yaml``). Texts are normalised (lower case,
punctuation dropped, whitespace collapsed) and compared as token sets (Jaccard) and as token 8-grams.

Per evaluation set the table gives: exact duplicates, the largest token-Jaccard, how many training texts
reach Jaccard >= 0.6, and how many share an 8-gram with the set. The check fails (exit 1) on any exact
duplicate or any Jaccard >= 0.8; the data is kept below 0.6 and free of shared 8-grams by rewriting.
An evaluation set whose files are absent is listed as missing (and fails the check: the data is not optional).
Used by tests/test_training_data.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN_FILE = REPO / "src" / "mmsafe" / "data" / "safety_train.yaml"
DEFAULT_SHARED = Path(os.environ.get("MMSAFE_SHARED_DATA", REPO.parent / "shared" / "data"))

NEAR = 0.6  # reported, and rewritten away in the shipped data
FAIL = 0.8  # fails the check
NGRAM = 8

_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalise(text: str) -> str:
    """Lower case, every run of non-alphanumerics (punctuation, apostrophes, spaces) as one space."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def _ngrams(tokens: list[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


# ---------------------------------------------------------------- evaluation sets


def _csv_column(path: Path, *columns: str) -> Iterator[str]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for row in csv.DictReader(fh):
            for col in columns:
                if row.get(col):
                    yield row[col]


def _jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _harmbench(root: Path, name: str) -> Iterator[str]:
    yield from _csv_column(root / "harmbench" / "behavior_datasets" / name, "Behavior")


def _mm_safetybench(root: Path) -> Iterator[str]:
    for path in sorted((root / "mm-safetybench" / "processed_questions").glob("*.json")):
        for rec in json.loads(path.read_text(encoding="utf-8")).values():
            for key in ("Question", "Changed Question", "Rephrased Question", "Rephrased Question(SD)"):
                if rec.get(key):
                    yield rec[key]


def _jailbreakv(root: Path) -> Iterator[str]:
    base = root / "jailbreakv-28k" / "data" / "JailBreakV_28K"
    yield from _csv_column(base / "mini_JailBreakV_28K.csv", "redteam_query")
    yield from _csv_column(base / "RedTeam_2K.csv", "question")


def _vlguard(root: Path) -> Iterator[str]:
    for rec in json.loads((root / "vlguard" / "data" / "test.json").read_text(encoding="utf-8")):
        for pair in rec["instr-resp"]:
            for key in ("instruction", "safe_instruction", "unsafe_instruction"):
                if pair.get(key):
                    yield pair[key]


def _privqa(root: Path) -> Iterator[str]:
    files = sorted((root / "privqa").glob("*/*.jsonl"))
    if not files:
        raise FileNotFoundError(root / "privqa")
    for path in files:
        for rec in _jsonl(path):
            yield rec["question"]


def _tovilag(root: Path) -> Iterator[str]:
    files = sorted((root / "tovilag" / "dataset" / "ToViLaG").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(root / "tovilag")
    for path in files:
        for rec in _jsonl(path):
            yield rec["query"]


def _suite(path: Path, *keys: str) -> Iterator[str]:
    for item in yaml.safe_load(path.read_text(encoding="utf-8"))["items"]:
        for key in keys:
            if item.get(key):
                yield item[key]


#: name -> reader(shared data root) of that evaluation set's prompts
EVAL_SETS: dict[str, Callable[[Path], Iterable[str]]] = {
    "harmbench-text": lambda r: _harmbench(r, "harmbench_behaviors_text_all.csv"),
    "harmbench-multimodal": lambda r: _harmbench(r, "harmbench_behaviors_multimodal_all.csv"),
    "advbench": lambda r: _harmbench(r, "extra_behavior_datasets/advbench_behaviors.csv"),
    "harmbench-adv-training": lambda r: _harmbench(r, "extra_behavior_datasets/adv_training_behaviors.csv"),
    "tdc2023": lambda r: _harmbench(r, "extra_behavior_datasets/tdc2023_test_phase_behaviors.csv"),
    "jbb-harmful": lambda r: _csv_column(r / "jailbreakbench" / "harmful-behaviors.csv", "Goal"),
    "jbb-benign": lambda r: _csv_column(r / "jailbreakbench" / "benign-behaviors.csv", "Goal"),
    "xstest": lambda r: _csv_column(r / "xstest" / "xstest_prompts.csv", "prompt"),
    "figstep": lambda r: _csv_column(r / "figstep" / "question" / "safebench.csv", "question", "instruction"),
    "mm-safetybench": _mm_safetybench,
    "jailbreakv-28k": _jailbreakv,
    "vlguard": _vlguard,
    "siuo": lambda r: (
        rec["question"]
        for rec in json.loads((r / "siuo" / "data" / "siuo_gen.json").read_text(encoding="utf-8"))
    ),
    "vlsafe": lambda r: (
        rec["query"]
        for rec in _jsonl(
            r / "vlsafe" / "cirteo_Oh-Defense" / "data" / "VLSafe" / "harmlessness_examine.jsonl"
        )
    ),
    "vlsbench": lambda r: (
        rec["instruction"]
        for rec in json.loads((r / "vlsbench" / "data" / "data.json").read_text(encoding="utf-8"))
    ),
    "privqa": _privqa,
    "tovilag": _tovilag,
}

#: mmsafe's own evaluation suites (package data), compared like the public sets
OWN_SUITES: dict[str, Callable[[], Iterable[str]]] = {
    "mmsafe-starter": lambda: _suite(
        REPO / "src" / "mmsafe" / "data" / "starter.yaml", "question", "instruction"
    ),
    "mmsafe-vqa-starter": lambda: _suite(REPO / "src" / "mmsafe" / "data" / "vqa_starter.yaml", "question"),
}


def load_eval_sets(shared: Path = DEFAULT_SHARED) -> tuple[dict[str, list[str]], list[str]]:
    """``({set name: its prompts}, [names of sets whose files are missing])``."""
    found: dict[str, list[str]] = {}
    missing: list[str] = []
    readers: dict[str, Callable[[], Iterable[str]]] = {
        n: (lambda f=f: f(shared)) for n, f in EVAL_SETS.items()
    }
    for name, read in {**readers, **OWN_SUITES}.items():
        try:
            found[name] = [t for t in read() if t.strip()]
        except FileNotFoundError:
            missing.append(name)
    return found, missing


def training_texts(path: Path = TRAIN_FILE) -> list[tuple[str, str]]:
    """``(label, text)`` for every request and title of the training file (label ``<id>`` or ``<id>:title``).

    Read through mmsafe's own loader, so a malformed file fails here with the loader's message.
    """
    from mmsafe.labelled.safety_examples import load_safety_items

    out: list[tuple[str, str]] = []
    for item in load_safety_items(path):
        out.append((item.id, item.request))
        if item.title:
            out.append((f"{item.id}:title", item.title))
    return out


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Near:
    """A training text close to an evaluation prompt."""

    label: str
    text: str
    eval_text: str
    jaccard: float


@dataclass(frozen=True)
class SetReport:
    """How close the training texts come to one evaluation set."""

    name: str
    n_prompts: int
    exact: int
    max_jaccard: float
    n_near: int
    n_shared_ngram: int
    near: tuple[Near, ...] = ()
    ngram_labels: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return self.exact == 0 and self.max_jaccard < FAIL


@dataclass(frozen=True)
class OverlapReport:
    """The per-set reports; ``clean`` when no set has an exact duplicate or a Jaccard >= 0.8."""

    sets: tuple[SetReport, ...]
    missing: tuple[str, ...] = ()
    n_texts: int = 0
    problems: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.missing and all(s.clean for s in self.sets)


def compare(train: list[tuple[str, str]], name: str, prompts: list[str]) -> SetReport:
    """Exact duplicates, token-Jaccard and shared 8-grams of ``train`` against one set of ``prompts``."""
    import numpy as np

    eval_tokens = [normalise(p).split() for p in prompts]
    eval_norm = {" ".join(t) for t in eval_tokens}
    eval_sets = [set(t) for t in eval_tokens]
    eval_sizes = np.array([len(s) for s in eval_sets], dtype=np.int64)
    postings: dict[str, list[int]] = {}
    for i, toks in enumerate(eval_sets):
        for tok in toks:
            postings.setdefault(tok, []).append(i)
    index = {tok: np.array(ids, dtype=np.int64) for tok, ids in postings.items()}
    eval_grams: set[tuple[str, ...]] = set()
    for toks in eval_tokens:
        eval_grams |= _ngrams(toks)

    exact = 0
    best = 0.0
    near: list[Near] = []
    ngram_labels: list[str] = []
    for label, text in train:
        toks = normalise(text).split()
        if " ".join(toks) in eval_norm:
            exact += 1
        if _ngrams(toks) & eval_grams:
            ngram_labels.append(label)
        hits = [index[t] for t in set(toks) if t in index]
        if not hits:
            continue
        inter = np.bincount(np.concatenate(hits), minlength=len(eval_sets))
        jac = inter / (len(set(toks)) + eval_sizes - inter)
        j = int(np.argmax(jac))
        score = float(jac[j])
        best = max(best, score)
        if score >= NEAR:
            near.append(Near(label, text, prompts[j], round(score, 3)))
    return SetReport(
        name=name,
        n_prompts=len(prompts),
        exact=exact,
        max_jaccard=round(best, 3),
        n_near=len(near),
        n_shared_ngram=len(ngram_labels),
        near=tuple(sorted(near, key=lambda n: -n.jaccard)),
        ngram_labels=tuple(ngram_labels),
    )


def check(*, train_file: Path = TRAIN_FILE, shared: Path = DEFAULT_SHARED) -> OverlapReport:
    """Compares the training file with every evaluation set; see :class:`OverlapReport`."""
    train = training_texts(train_file)
    sets, missing = load_eval_sets(shared)
    reports = tuple(compare(train, name, prompts) for name, prompts in sets.items())
    problems = [f"{s.name}: {s.exact} exact duplicate(s)" for s in reports if s.exact]
    problems += [f"{s.name}: Jaccard {s.max_jaccard} >= {FAIL}" for s in reports if s.max_jaccard >= FAIL]
    problems += [f"{name}: evaluation files not found under {shared}" for name in missing]
    return OverlapReport(sets=reports, missing=tuple(missing), n_texts=len(train), problems=tuple(problems))


def format_table(report: OverlapReport) -> str:
    """The report as a fixed-width table (one row per evaluation set)."""
    head = f"{'eval set':<24}{'prompts':>8}{'exact':>7}{'max J':>8}{'J>=0.6':>8}{'8-gram':>8}"
    lines = [head, "-" * len(head)]
    for s in report.sets:
        lines.append(
            f"{s.name:<24}{s.n_prompts:>8}{s.exact:>7}{s.max_jaccard:>8.3f}{s.n_near:>8}{s.n_shared_ngram:>8}"
        )
    lines += [f"{name:<24}{'missing':>8}" for name in report.missing]
    lines.append(
        f"{report.n_texts} training texts (requests + titles); {'clean' if report.clean else 'NOT clean'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-file", type=Path, default=TRAIN_FILE)
    ap.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED)
    ap.add_argument(
        "--near", action="store_true", help="list training texts with Jaccard >= 0.6 or a shared 8-gram"
    )
    args = ap.parse_args(argv)
    report = check(train_file=args.train_file, shared=args.shared_data)
    print(format_table(report))
    if args.near:
        for s in report.sets:
            for n in s.near:
                print(f"[{s.name}] J={n.jaccard:.3f} {n.label}: {n.text!r}\n    ~ {n.eval_text!r}")
            for label in s.ngram_labels:
                print(f"[{s.name}] shared 8-gram: {label}")
    for p in report.problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
