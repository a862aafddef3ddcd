"""Classification metrics for detection-style benchmarks and for judging the judges.

Detection benchmarks (GOAT-Bench, hateful memes) ask a model for a label; judge evaluation compares
a judge's verdicts with human labels. Both reduce to two aligned sequences, ``y_true`` and
``y_pred``, of hashable labels (``str``, ``bool`` or ``int``). Every function here is pure and
deterministic: bootstrap intervals use a private, seeded :class:`random.Random`.

Conventions shared by the module:

- ``y_true`` and ``y_pred`` must have the same length, else ``ValueError``;
- empty input raises ``ValueError``, except :func:`accuracy`, which follows :class:`Rate` and
  returns a rate with ``n = 0`` and ``value`` None;
- ``labels=None`` means every label seen in either sequence, in sorted order; an explicit
  ``labels`` must list every label that occurs (``ValueError`` names the missing ones), and may
  list labels that never occur;
- a ratio with a zero denominator (precision of a class never predicted) is ``None``, never 0;
- a statistic that is undefined on the data (κ when both raters use one single category, AUROC
  with only one class present) raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mmsafe.metrics._common import (
    Estimate,
    bootstrap_cell_counts,
    bootstrap_indices,
    bootstrap_method,
    check_bootstrap_args,
)
from mmsafe.metrics.rates import Rate, rate

#: names of a binary judge verdict's two classes, negative first (index 1, ``True``, is the positive
#: class): the default class names of judge agreement and the label names of the learned judge
LABEL_NAMES: tuple[str, str] = ("safe", "jailbroken")

__all__ = [
    "LABEL_NAMES",
    "ClassScores",
    "ConfusionMatrix",
    "accuracy",
    "auroc",
    "cohen_kappa",
    "cohen_kappa_value",
    "confusion_matrix",
    "hanley_mcneil_se",
    "macro_f1",
    "precision_recall_f1",
]

Label = Hashable


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of (true label, predicted label): ``counts[i][j]`` items of ``labels[i]`` predicted as ``labels[j]``."""

    labels: tuple[Label, ...]
    counts: tuple[tuple[int, ...], ...]

    @property
    def n(self) -> int:
        return sum(map(sum, self.counts))

    def count(self, true: Label, pred: Label) -> int:
        """Number of items whose true label is ``true`` and predicted label is ``pred``."""
        return self.counts[self.labels.index(true)][self.labels.index(pred)]

    def as_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "counts": [list(row) for row in self.counts]}


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall and F1 of one class, and its support (number of true items of the class).

    ``precision`` is None when the class is never predicted and ``recall`` is None when it never
    occurs; ``f1`` = 2·TP / (2·TP + FP + FN) is None only when the class occurs in neither sequence.
    """

    precision: float | None
    recall: float | None
    f1: float | None
    support: int

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support}


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _sorted_labels(values: set[Label]) -> tuple[Label, ...]:
    try:
        return tuple(sorted(values))  # type: ignore[type-var]
    except TypeError:  # mixed types (str and int): order by type name, then by text
        return tuple(sorted(values, key=lambda v: (type(v).__name__, str(v))))


def _check_pair(y_true: Sequence[Label], y_pred: Sequence[Label], *, allow_empty: bool = False) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)}")
    if not y_true and not allow_empty:
        raise ValueError("no items: y_true and y_pred are empty")


def _resolve_labels(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None
) -> tuple[Label, ...]:
    seen = set(y_true) | set(y_pred)
    if labels is None:
        return _sorted_labels(seen)
    out = tuple(labels)
    if len(set(out)) != len(out):
        raise ValueError(f"labels has duplicates: {list(out)}")
    missing = seen - set(out)
    if missing:
        raise ValueError(f"labels {_sorted_labels(missing)!r} occur in the data but are not in `labels`")
    return out


def _encode(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None
) -> tuple[tuple[Label, ...], list[int], list[int]]:
    labs = _resolve_labels(y_true, y_pred, labels)
    index = {lab: i for i, lab in enumerate(labs)}
    return labs, [index[v] for v in y_true], [index[v] for v in y_pred]


def _counts(t: Sequence[int], p: Sequence[int], k: int, idx: Sequence[int]) -> list[list[int]]:
    m = [[0] * k for _ in range(k)]
    for i in idx:
        m[t[i]][p[i]] += 1
    return m


def _bootstrap_counts(
    t: Sequence[int],
    p: Sequence[int],
    k: int,
    stat: Callable[[list[list[int]]], float | None],
    *,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> tuple[float, float, int]:
    """Percentile bootstrap over items of ``stat`` of each resample's confusion matrix, ``_counts(t, p, k, idx)``.
    With at most 256 cells, each item's cell is a small integer and :func:`bootstrap_cell_counts` counts a
    resample's cells without a Python step per item: the resamples of :func:`bootstrap_indices`, so its
    interval to the last bit."""
    if k * k > 256:
        return bootstrap_indices(
            [range(len(t))], lambda idx: stat(_counts(t, p, k, idx)),
            n_resamples=n_resamples, seed=seed, confidence=confidence,
        )  # fmt: skip
    return bootstrap_cell_counts(
        [a * k + b for a, b in zip(t, p, strict=True)],
        k * k,
        lambda flat: stat([flat[r * k : (r + 1) * k] for r in range(k)]),
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )


def _per_class(m: list[list[int]]) -> list[tuple[int, int, int]]:
    """(TP, FP, FN) per class from a confusion matrix."""
    k = len(m)
    col = [sum(m[i][j] for i in range(k)) for j in range(k)]
    return [(m[c][c], col[c] - m[c][c], sum(m[c]) - m[c][c]) for c in range(k)]


def _macro_f1_from(m: list[list[int]]) -> float | None:
    f1s = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in _per_class(m) if tp + fp + fn]
    return sum(f1s) / len(f1s) if f1s else None


def _kappa_from(m: list[list[int]]) -> float | None:
    k = len(m)
    n = sum(map(sum, m))
    if n == 0:
        return None
    po = sum(m[i][i] for i in range(k)) / n
    rows = [sum(r) / n for r in m]
    cols = [sum(m[i][j] for i in range(k)) / n for j in range(k)]
    pe = sum(r * c for r, c in zip(rows, cols, strict=True))
    if math.isclose(pe, 1.0):
        return None
    return (po - pe) / (1 - pe)


# --------------------------------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------------------------------


def confusion_matrix(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> ConfusionMatrix:
    """Confusion matrix: rows are true labels, columns predicted labels, both in ``labels`` order.

    Definition: ``C[i][j] = #{items : y_true = labels[i] and y_pred = labels[j]}`` (the layout of
    scikit-learn's ``confusion_matrix``). Raises ``ValueError`` on empty or misaligned input, or when
    an explicit ``labels`` misses a label that occurs.

    >>> confusion_matrix(["a", "b", "b"], ["a", "a", "b"]).counts
    ((1, 0), (1, 1))
    """
    _check_pair(y_true, y_pred)
    labs, t, p = _encode(y_true, y_pred, labels)
    m = _counts(t, p, len(labs), range(len(t)))
    return ConfusionMatrix(labels=labs, counts=tuple(tuple(r) for r in m))


def accuracy(y_true: Sequence[Label], y_pred: Sequence[Label], *, z: float = 1.96) -> Rate:
    """Share of items with ``y_pred == y_true``, with its Wilson score interval.

    Definition: accuracy = (1/n) Σ 1[y_pred_i = y_true_i]; the interval is Wilson's (1927) score
    interval for a binomial proportion, as in :func:`~mmsafe.metrics.rate`. Empty input gives a
    :class:`Rate` with ``n = 0`` and ``value``/``lo``/``hi`` None; misaligned input raises ``ValueError``.
    """
    _check_pair(y_true, y_pred, allow_empty=True)
    k = sum(a == b for a, b in zip(y_true, y_pred, strict=True))
    return rate(k, len(y_true), z=z)


def precision_recall_f1(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> dict[Label, ClassScores]:
    """Per-class precision, recall and F1 (one-vs-rest), keyed by label in ``labels`` order.

    Definitions, for class c with TP, FP, FN counted one-vs-rest: precision = TP / (TP + FP),
    recall = TP / (TP + FN), F1 = 2·TP / (2·TP + FP + FN) — the harmonic mean of precision and
    recall (van Rijsbergen 1979) written so that it stays defined when one of them is 0/0.
    Undefined ratios are ``None`` (see :class:`ClassScores`); scikit-learn reports them as 0.
    """
    _check_pair(y_true, y_pred)
    labs, t, p = _encode(y_true, y_pred, labels)
    m = _counts(t, p, len(labs), range(len(t)))
    out: dict[Label, ClassScores] = {}
    for lab, (tp, fp, fn) in zip(labs, _per_class(m), strict=True):
        out[lab] = ClassScores(
            precision=tp / (tp + fp) if tp + fp else None,
            recall=tp / (tp + fn) if tp + fn else None,
            f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            support=tp + fn,
        )
    return out


def macro_f1(
    y_true: Sequence[Label],
    y_pred: Sequence[Label],
    labels: Sequence[Label] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Macro-averaged F1 with a percentile bootstrap interval.

    Definition: the unweighted mean over classes of the per-class F1 of
    :func:`precision_recall_f1`, taken over the classes that occur in ``y_true`` or ``y_pred``
    (a class listed in ``labels`` that occurs in neither has no F1 and is left out — scikit-learn
    would count it as 0). Interval: percentile bootstrap (Efron & Tibshirani 1993) over items,
    resampling (true, predicted) pairs; in each resample the classes absent from that resample are
    left out the same way. Deterministic for a given ``seed``.
    """
    _check_pair(y_true, y_pred)
    check_bootstrap_args(n_resamples, confidence)
    labs, t, p = _encode(y_true, y_pred, labels)
    k, n = len(labs), len(t)
    value = _macro_f1_from(_counts(t, p, k, range(n)))
    assert value is not None  # n > 0, so some class occurs
    lo, hi, used = _bootstrap_counts(
        t, p, k, _macro_f1_from, n_resamples=n_resamples, seed=seed, confidence=confidence
    )
    return Estimate(value=value, lo=lo, hi=hi, n=n, method=bootstrap_method(n_resamples, seed, used))


def cohen_kappa(
    y_true: Sequence[Label],
    y_pred: Sequence[Label],
    labels: Sequence[Label] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Cohen's κ between two raters (e.g. human labels and a judge), with a bootstrap interval.

    Definition (Cohen 1960): κ = (p_o − p_e) / (1 − p_e), where p_o is the observed share of
    agreement and p_e = Σ_c p_true(c) · p_pred(c) the agreement expected by chance from the two
    raters' marginal label frequencies. Symmetric in its two arguments. Unweighted (all
    disagreements count alike).

    Raises ``ValueError`` when κ is undefined (p_e = 1: both raters put every item in one same
    category). Interval: percentile bootstrap over items, dropping resamples where κ is undefined
    (the count dropped is named in ``method``). Deterministic for a given ``seed``.
    """
    _check_pair(y_true, y_pred)
    check_bootstrap_args(n_resamples, confidence)
    labs, t, p = _encode(y_true, y_pred, labels)
    k, n = len(labs), len(t)
    value = _kappa_from(_counts(t, p, k, range(n)))
    if value is None:
        raise ValueError("Cohen's kappa is undefined: both raters use one single category for every item")
    lo, hi, used = _bootstrap_counts(
        t, p, k, _kappa_from, n_resamples=n_resamples, seed=seed, confidence=confidence
    )
    return Estimate(value=value, lo=lo, hi=hi, n=n, method=bootstrap_method(n_resamples, seed, used))


def cohen_kappa_value(
    y_true: Sequence[Label], y_pred: Sequence[Label], labels: Sequence[Label] | None = None
) -> float | None:
    """Cohen's κ of :func:`cohen_kappa` without its interval; ``None`` where κ is undefined (no items,
    or p_e = 1: both raters put every item in one same category). Misaligned input raises ``ValueError``.

    :func:`cohen_kappa` and judge evaluation come down to it. The ensemble judge's member-vs-member
    κ (:func:`mmsafe.judges.ensemble.pairwise_agreement`) keeps its own two-class form of the same
    definition, p_e = p_a·p_b + (1 − p_a)(1 − p_b): moving it here changes a stored report value in
    its last bit (1 ulp), so it waits for a release that may move golden files.
    """
    _check_pair(y_true, y_pred, allow_empty=True)
    labs, t, p = _encode(y_true, y_pred, labels)
    return _kappa_from(_counts(t, p, len(labs), range(len(t))))


def _midranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``, tied values sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1
        for q in range(i, j + 1):
            ranks[order[q]] = mid
        i = j + 1
    return ranks


def _auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    ranks = _midranks([*pos, *neg])
    n1, n0 = len(pos), len(neg)
    r1 = sum(ranks[:n1])
    return (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUROC by Hanley & McNeil (1982, "The meaning and use of the area under a
    receiver operating characteristic (ROC) curve", Radiology 143:29–36, eq. 2).

    SE² = [A(1−A) + (n₁−1)(Q₁−A²) + (n₀−1)(Q₂−A²)] / (n₁·n₀), with Q₁ = A/(2−A) and
    Q₂ = 2A²/(1+A), n₁ positives and n₀ negatives. Raises ``ValueError`` for A outside [0, 1]
    or an empty class.
    """
    if not 0.0 <= auc <= 1.0:
        raise ValueError(f"auc must be in [0, 1]; got {auc}")
    if n_pos < 1 or n_neg < 1:
        raise ValueError("hanley_mcneil_se needs at least one positive and one negative")
    a = auc
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def auroc(
    y_true: Sequence[Label],
    scores: Sequence[float],
    *,
    pos_label: Label | None = None,
    ci: Literal["hanley-mcneil", "bootstrap"] = "hanley-mcneil",
    z: float = 1.96,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Area under the ROC curve of ``scores`` for the positive class, with a confidence interval.

    Definition: AUROC = P(S⁺ > S⁻) + ½·P(S⁺ = S⁻) for a random positive and a random negative
    item — the Mann–Whitney U statistic divided by n₁·n₀ (Bamber 1975; Hanley & McNeil 1982).
    Computed from ranks: AUROC = (R₁ − n₁(n₁+1)/2) / (n₁·n₀), with R₁ the sum of the positives'
    ranks among all scores and tied scores given their mean rank, so each tied (positive,
    negative) pair counts ½. Higher scores must mean "more positive".

    Positives: ``y_true == pos_label``; with ``pos_label=None`` the labels must be booleans or
    0/1 and ``True``/``1`` is positive. Raises ``ValueError`` when only one class is present, on
    misaligned or empty input, or on a non-finite score.

    Interval, by ``ci``:

    - ``"hanley-mcneil"`` (default): A ± z·SE with Hanley & McNeil's (1982) standard error
      (:func:`hanley_mcneil_se`), clipped to [0, 1]. It assumes exponential-like score distributions and collapses to a single
      point at A = 0 or 1; ``z`` sets its level.
    - ``"bootstrap"``: stratified percentile bootstrap (positives and negatives resampled
      separately, so every resample has both classes); ``confidence``, ``n_resamples`` and
      ``seed`` set it.
    """
    if len(y_true) != len(scores):
        raise ValueError(f"y_true and scores differ in length: {len(y_true)} vs {len(scores)}")
    if not y_true:
        raise ValueError("no items: y_true and scores are empty")
    if pos_label is None:
        if not set(y_true) <= {0, 1}:  # True == 1 and False == 0, so booleans pass too
            raise ValueError("y_true is not boolean or 0/1: pass pos_label to say which label is positive")
        is_pos = [bool(v) for v in y_true]
    else:
        is_pos = [v == pos_label for v in y_true]
    s = [float(x) for x in scores]
    if not all(math.isfinite(x) for x in s):
        raise ValueError("scores must be finite numbers")
    pos = [x for x, yp in zip(s, is_pos, strict=True) if yp]
    neg = [x for x, yp in zip(s, is_pos, strict=True) if not yp]
    if not pos or not neg:
        raise ValueError("AUROC needs at least one positive and one negative item")
    a = _auc(pos, neg)
    n1, n0 = len(pos), len(neg)
    if ci == "hanley-mcneil":
        se = hanley_mcneil_se(a, n1, n0)
        return Estimate(
            value=a,
            lo=max(0.0, a - z * se),
            hi=min(1.0, a + z * se),
            n=n1 + n0,
            method=f"Hanley-McNeil standard error, z={z}",
        )
    if ci == "bootstrap":
        check_bootstrap_args(n_resamples, confidence)
        lo, hi, used = bootstrap_indices(
            [range(n1), range(n1, n1 + n0)],
            lambda idx: _auc([pos[i] for i in idx[:n1]], [neg[i - n1] for i in idx[n1:]]),
            n_resamples=n_resamples,
            seed=seed,
            confidence=confidence,
        )
        method = bootstrap_method(n_resamples, seed, used, stratified=True)
        return Estimate(value=a, lo=lo, hi=hi, n=n1 + n0, method=method)
    raise ValueError(f"unknown ci {ci!r}: use 'hanley-mcneil' or 'bootstrap'")
