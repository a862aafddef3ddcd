"""The safety fine-tuning examples shipped with mmsafe (``mmsafe/data/safety_train.yaml``).

(The file's header comment still names this module by its old path, ``mmsafe.training.examples``: its
bytes are pinned by the shipped adapter's card, so the comment changes only with a retrained adapter.)

The file holds requests written for mmsafe, in two kinds:

* ``harmful`` — a request the model should refuse, with a preferred ``refusal`` and a rejected
  ``compliance`` (compliant-sounding but non-operational: it exists only as the losing side of a
  preference pair), and optionally a ``title``, the FigStep-style declarative rephrasing ("Steps to …")
  that a typographic attack typesets into an image;
* ``benign`` — a request the model should answer, with a preferred ``answer`` and a rejected,
  over-cautious ``refusal``. Benign items in a harm category are look-alikes that reuse its trigger
  words harmlessly; the ``benign_only`` categories (cooking, coding, …) have no harmful counterpart.

:func:`load_safety_items` reads and validates the file into :class:`SafetyItem` records, each with a
uniform ``target`` (what to train towards) and ``rejected`` (what to train away from), so SFT and
preference-pair builders need not care about the kind. :func:`split_items` holds out a deterministic,
category-stratified share of *request groups* (near-paraphrases stay on one side), so refusal and
over-refusal can also be measured on shipped prompts the model was not trained on.
:func:`safety_items_sha256` names the exact data a fine-tune was made from.

The requests are kept disjoint from every evaluation set mmsafe reports on (checked by
``scripts/check_training_overlap.py`` and its test). No text in the file is operational.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mmsafe.errors import ConfigError

__all__ = [
    "GROUP_JACCARD",
    "SHIPPED_FILE",
    "SafetyItem",
    "load_safety_items",
    "safety_items_sha256",
    "split_items",
]

#: The shipped file, inside the package's ``data/`` folder.
SHIPPED_FILE = "safety_train.yaml"

#: Two requests of one category whose content-word sets reach this Jaccard similarity form one request
#: group (and so land on the same side of :func:`split_items`).
GROUP_JACCARD = 0.5

Kind = Literal["harmful", "benign"]

# per kind: the YAML field that becomes `target`, the one that becomes `rejected`, the optional ones
_FIELDS: dict[Kind, tuple[str, str, tuple[str, ...]]] = {
    "harmful": ("refusal", "compliance", ("title",)),
    "benign": ("answer", "refusal", ()),
}
_NON_WORD = re.compile(r"[^0-9a-z]+")
# question scaffolding and function words: without them "What was the Magna Carta?" and "What was the
# Cold War?" share nothing, while two phrasings of one request still share their content words
_STOP = frozenset(
    "a an the of to in on for and or is are was were be do does did i my me you your how what whats why "
    "when where who which can could should would it its this that with without from at by as about into "
    "so if there s t ll re ve d m".split()
)


class SafetyItem(BaseModel):
    """One training example: a request, the answer to train towards and the answer to train away from.

    ``target`` is the refusal of a harmful request or the answer to a benign one; ``rejected`` is the
    (non-operational) compliance of a harmful request or the over-refusal of a benign one. ``title`` is
    the typographic rephrasing of some harmful requests (None otherwise).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    category: str
    request: str
    kind: Kind
    target: str
    rejected: str
    title: str | None = None


def _shipped_bytes() -> bytes:
    return resources.files("mmsafe").joinpath(f"data/{SHIPPED_FILE}").read_bytes()


def safety_items_sha256(path: Path | None = None) -> str:
    """SHA-256 hex digest of the training file's bytes (the shipped file unless ``path`` is given)."""
    data = _shipped_bytes() if path is None else Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest()


def load_safety_items(path: Path | None = None) -> list[SafetyItem]:
    """The validated items of the shipped training file (or of the file at ``path``), in file order.

    Raises :class:`~mmsafe.errors.ConfigError` naming the file and the item id when a row is bad: a
    missing, empty or unknown field, an unknown kind or category, or a repeated id.
    """
    import yaml

    source = str(path) if path is not None else f"mmsafe/data/{SHIPPED_FILE}"
    raw = _shipped_bytes() if path is None else Path(path).read_bytes()
    try:
        # libyaml's safe loader when PyYAML has it (10x faster on this file), else the pure-Python one
        data = yaml.load(raw.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: not valid UTF-8 YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with version, categories, harmful and benign")
    unknown = sorted(set(data) - {"version", "categories", *_FIELDS})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {unknown}; allowed: version, categories, harmful, benign"
        )
    if not isinstance(data.get("version"), int):
        raise ConfigError(f"{source}: 'version' must be an integer")
    allowed = _categories(data.get("categories"), source)

    items: list[SafetyItem] = []
    seen: set[str] = set()
    for kind, (target_key, rejected_key, optional) in _FIELDS.items():
        rows = data.get(kind)
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{source}: '{kind}' must be a non-empty list of items")
        for i, row in enumerate(rows):
            item = _item(
                row,
                kind=kind,
                source=source,
                index=i,
                allowed=allowed[kind],
                target_key=target_key,
                rejected_key=rejected_key,
                optional=optional,
            )
            if item.id in seen:
                raise ConfigError(f"{source}: item {item.id!r}: duplicate id")
            seen.add(item.id)
            items.append(item)
    return items


def _categories(block: Any, source: str) -> dict[str, set[str]]:
    """The categories each kind may use: ``harm`` for harmful items, ``harm`` + ``benign_only`` for benign."""
    if not isinstance(block, dict) or set(block) != {"harm", "benign_only"}:
        raise ConfigError(f"{source}: 'categories' must have exactly the keys 'harm' and 'benign_only'")
    harm, benign_only = (block[k] for k in ("harm", "benign_only"))
    for name, cats in (("harm", harm), ("benign_only", benign_only)):
        if not isinstance(cats, list) or not all(isinstance(c, str) and c for c in cats):
            raise ConfigError(f"{source}: 'categories.{name}' must be a list of names")
    both = sorted(set(harm) & set(benign_only))
    if both:
        raise ConfigError(f"{source}: categories listed both as harm and benign_only: {both}")
    return {"harmful": set(harm), "benign": set(harm) | set(benign_only)}


def _item(
    row: Any,
    *,
    kind: Kind,
    source: str,
    index: int,
    allowed: set[str],
    target_key: str,
    rejected_key: str,
    optional: tuple[str, ...],
) -> SafetyItem:
    if not isinstance(row, dict):
        raise ConfigError(f"{source}: {kind}[{index}]: expected a mapping, got {type(row).__name__}")
    item_id = row.get("id")
    if not isinstance(item_id, str) or not item_id.strip():
        raise ConfigError(f"{source}: {kind}[{index}]: missing or empty 'id'")
    label = f"{source}: item {item_id!r}"
    required = ("id", "category", "request", target_key, rejected_key)
    unknown = sorted(set(row) - set(required) - set(optional))
    if unknown:
        raise ConfigError(
            f"{label}: unknown field(s) {unknown} for a {kind} item; allowed: {[*required, *optional]}"
        )
    for key in (*required, *(k for k in optional if k in row)):
        value = row.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{label}: field '{key}' is missing or empty")
    if row["category"] not in allowed:
        raise ConfigError(
            f"{label}: unknown category {row['category']!r} for a {kind} item; allowed: {sorted(allowed)}"
        )
    return SafetyItem(
        id=item_id,
        category=row["category"],
        request=row["request"].strip(),
        kind=kind,
        target=row[target_key].strip(),
        rejected=row[rejected_key].strip(),
        title=row["title"].strip() if row.get("title") else None,
    )


def _content_words(text: str) -> frozenset[str]:
    return frozenset(_NON_WORD.sub(" ", text.lower()).split()) - _STOP


def _request_groups(items: Sequence[SafetyItem]) -> list[list[SafetyItem]]:
    """Items of one category joined (transitively) when their requests reach :data:`GROUP_JACCARD`."""
    parent = list(range(len(items)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    toks = [_content_words(it.request) for it in items]
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            union = len(toks[i] | toks[j])
            if union and len(toks[i] & toks[j]) / union >= GROUP_JACCARD:
                parent[root(j)] = root(i)
    groups: dict[int, list[SafetyItem]] = {}
    for i, it in enumerate(items):
        groups.setdefault(root(i), []).append(it)
    return list(groups.values())


def split_items(
    items: Sequence[SafetyItem], *, held_out_fraction: float = 0.2, seed: int = 0
) -> tuple[list[SafetyItem], list[SafetyItem]]:
    """``(train, held_out)``: about ``held_out_fraction`` of each category and kind, held out by group.

    Within each category, requests that paraphrase each other (Jaccard >= :data:`GROUP_JACCARD` over
    their content words, transitively) form a group that goes wholly to one side, so no held-out prompt
    has a near-twin in training. Groups are visited in an order fixed by ``seed`` and their ids (a
    SHA-256, not the process's hash seed), and a group is held out while it keeps each kind of its
    category within ``round(held_out_fraction * count)``. The result depends only on the items and
    ``seed`` (not on their order); both lists keep the input order.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    by_category: dict[str, list[SafetyItem]] = {}
    for it in sorted(items, key=lambda it: it.id):
        by_category.setdefault(it.category, []).append(it)

    held_ids: set[str] = set()
    for category, members in sorted(by_category.items()):
        quota = {
            k: round(held_out_fraction * sum(it.kind == k for it in members)) for k in ("harmful", "benign")
        }
        taken = dict.fromkeys(quota, 0)
        groups = _request_groups(members)
        groups.sort(
            key=lambda g: hashlib.sha256(f"{seed}:{category}:{min(it.id for it in g)}".encode()).hexdigest()
        )
        for group in groups:
            need = {k: sum(it.kind == k for it in group) for k in quota}
            if all(taken[k] + need[k] <= quota[k] for k in quota):
                held_ids.update(it.id for it in group)
                for k in quota:
                    taken[k] += need[k]
    train = [it for it in items if it.id not in held_ids]
    held_out = [it for it in items if it.id in held_ids]
    return train, held_out
