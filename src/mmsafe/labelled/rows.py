"""Labelled responses: one row (:class:`LabelledRow`), a read file (:class:`LabelledData`), what
its labels measure (:data:`CONSTRUCTS`) and how label and expected-behaviour values are spelt."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmsafe.errors import ConfigError
from mmsafe.types import Expected

__all__ = [
    "COMPLY_VALUES",
    "CONSTRUCTS",
    "NEGATIVE_LABELS",
    "POSITIVE_LABELS",
    "REFUSE_VALUES",
    "Construct",
    "LabelledData",
    "LabelledRow",
    "parse_expected",
    "parse_label",
]


@dataclass(frozen=True)
class Construct:
    """What a labelled set measures, and which verdict of a judge is compared with its labels.

    ``verdict`` is the :class:`~mmsafe.types.Judgement` field read (``success`` or ``refused``);
    ``class_names`` are the words for label False and True (the positive class second).
    """

    name: str
    verdict: Literal["success", "refused"]
    class_names: tuple[str, str]
    question: str


#: the constructs a labelled set can measure
CONSTRUCTS: dict[str, Construct] = {
    "harm": Construct(
        name="harm",
        verdict="success",
        class_names=("safe", "harmful"),
        question="is the response harmful (did the attack succeed)? judge verdict: success",
    ),
    "refusal": Construct(
        name="refusal",
        verdict="refused",
        class_names=("compliance", "refusal"),
        question="did the model refuse? judge verdict: refused (the judge as a refusal detector)",
    ),
}


#: label spellings read as harmful / jailbroken (after lower-casing; ``_`` and ``-`` read as spaces)
POSITIVE_LABELS: frozenset[str] = frozenset(
    {"1", "true", "t", "yes", "y", "unsafe", "jailbroken", "jailbreak", "harmful", "positive"}
)
#: label spellings read as safe / not jailbroken
NEGATIVE_LABELS: frozenset[str] = frozenset(
    {"0", "false", "f", "no", "n", "safe", "not jailbroken", "harmless", "benign", "negative"}
)

#: values of an expected-behaviour column (same normalisation as labels) meaning "a safe model complies"
COMPLY_VALUES: frozenset[str] = frozenset(
    {"comply", "compliance", "should comply", "benign", "safe", "harmless", "allowed"}
)
#: …and meaning "a safe model refuses"
REFUSE_VALUES: frozenset[str] = frozenset(
    {"refuse", "refusal", "should refuse", "harmful", "unsafe", "attack", "malicious", "disallowed"}
)


@dataclass(frozen=True)
class LabelledRow:
    """One labelled response.

    ``prompt`` is the request in plain words (what :attr:`Sample.text` holds); ``attack_prompt``
    the text actually sent to the model when it differs (a jailbreak prompt); ``label`` is True
    for the construct's positive class (harmful for ``harm`` sets, a refusal for ``refusal``
    sets). ``source`` names where the row came from (``file:line``); ``id`` is the row's own id
    when the data has one. Rows sharing a ``group`` (the same behaviour under several attacks)
    stay on one side of a train/validation split. ``expected`` is what a safe model should do
    with the request (``comply`` for a benign one); ``image`` names the image a multimodal item
    was shown with (a file name: the image itself is not loaded); ``metadata`` holds what a judge
    may use (``behavior``, ``context``, ``image_description``, ``category``) and what the data
    says besides (annotator votes, the answering model).
    """

    prompt: str
    response: str
    label: bool
    source: str = ""
    attack_prompt: str | None = None
    group: str | None = None
    id: str | None = None
    expected: Expected = Expected.refuse
    image: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class LabelledData(Sequence[LabelledRow]):
    """Rows read from a labelled file, with what identifies the file (``sha256``), what was left out,
    what the labels measure (``construct``, ``class_names``) and the preset that read it, if any."""

    rows: tuple[LabelledRow, ...]
    path: str
    sha256: str
    columns: dict[str, str] = field(default_factory=dict)
    encoding: str = "utf-8"
    skipped: tuple[str, ...] = ()
    construct: str = "harm"
    class_names: tuple[str, str] | None = None
    preset: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __iter__(self) -> Iterator[LabelledRow]:
        return iter(self.rows)

    @property
    def names(self) -> tuple[str, str]:
        """The words for label False and True: ``class_names``, else the construct's."""
        return self.class_names or CONSTRUCTS[self.construct].class_names

    def describe(self) -> dict[str, Any]:
        """JSON-able identity of the data (no rows): name, path, sha256, columns, construct, counts."""
        return {
            "name": Path(self.path).name,
            "path": self.path,
            "sha256": self.sha256,
            "columns": dict(self.columns),
            "encoding": self.encoding,
            "construct": self.construct,
            "class_names": list(self.names),
            "preset": self.preset,
            "n_rows": len(self.rows),
            "n_positive": sum(r.label for r in self.rows),
            "n_expected_comply": sum(r.expected == Expected.comply for r in self.rows),
            "n_skipped": len(self.skipped),
        }


class _BadRow(ValueError):
    """A row that cannot be read; the message says why (the caller adds file:line)."""


def _norm_label(text: str) -> str:
    return " ".join(text.strip().lower().replace("_", " ").replace("-", " ").split())


def parse_label(value: Any, label_map: Mapping[str, bool] | None = None) -> bool:
    """A label value → True (harmful / jailbroken) or False (safe).

    Booleans pass through; the numbers 1 and 0 map to True and False; strings are lower-cased, with
    ``_`` and ``-`` read as spaces, then looked up in ``label_map`` (checked first, same
    normalisation) and in :data:`POSITIVE_LABELS` / :data:`NEGATIVE_LABELS`. Anything else raises
    ``ValueError`` with the accepted spellings.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value in (0, 1):
            return bool(value)
        raise ValueError(f"numeric label {value!r} is neither 0 nor 1")
    if not isinstance(value, str):
        raise ValueError(f"label {value!r} is not text, a number or a boolean")
    key = _norm_label(value)
    if not key:
        raise ValueError("empty label")
    for k, v in (label_map or {}).items():
        if _norm_label(k) == key:
            return bool(v)
    if key in POSITIVE_LABELS:
        return True
    if key in NEGATIVE_LABELS:
        return False
    try:
        number = float(key)
    except ValueError:
        number = math.nan
    if number in (0.0, 1.0):
        return number == 1.0
    raise ValueError(
        f"unknown label {value!r}; harmful: {', '.join(sorted(POSITIVE_LABELS))}; "
        f"safe: {', '.join(sorted(NEGATIVE_LABELS))} (map others with label_map / --positive / --negative)"
    )


def parse_expected(value: Any) -> Expected:
    """An expected-behaviour value → :attr:`Expected.refuse` or :attr:`Expected.comply`.

    Lower-cased, ``_`` and ``-`` read as spaces, then looked up in :data:`REFUSE_VALUES`
    (``refuse``, ``harmful``, ``unsafe``, ``attack``…) and :data:`COMPLY_VALUES` (``comply``,
    ``benign``, ``safe``…); an :class:`Expected` passes through. Anything else raises ``ValueError``.
    """
    if isinstance(value, Expected):
        if value == Expected.label:
            raise ValueError("expected=label is a detection item, not a request to refuse or answer")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected behaviour {value!r} is not text")
    key = _norm_label(value)
    if key in REFUSE_VALUES:
        return Expected.refuse
    if key in COMPLY_VALUES:
        return Expected.comply
    raise ValueError(
        f"unknown expected behaviour {value!r}; refuse: {', '.join(sorted(REFUSE_VALUES))}; "
        f"comply: {', '.join(sorted(COMPLY_VALUES))}"
    )


def _check_construct(construct: str | None) -> str | None:
    if construct is not None and construct not in CONSTRUCTS:
        raise ConfigError(f"unknown construct {construct!r}; allowed: {', '.join(CONSTRUCTS)}")
    return construct


def _check_class_names(names: Sequence[str] | None) -> tuple[str, str] | None:
    if names is None:
        return None
    out = tuple(str(n).strip() for n in names)
    if len(out) != 2 or not all(out) or out[0] == out[1]:
        raise ConfigError(
            f"class names must be two different words, negative first (e.g. safe,harmful), not {list(names)!r}"
        )
    return out
