"""Agreement of binary predictions with labels: accuracy (Wilson), Cohen's κ (from
:mod:`mmsafe.metrics.classification`), F1 / precision / recall and the confusion matrix — what
judge evaluation and the learned judge report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmsafe.metrics.classification import LABEL_NAMES  # the default class names, negative first

__all__ = ["LABEL_NAMES", "agreement"]



def agreement(
    labels: Sequence[bool],
    predictions: Sequence[bool],
    *,
    z: float = 1.96,
    class_names: Sequence[str] = LABEL_NAMES,
) -> dict[str, Any]:
    """Agreement of binary ``predictions`` with ``labels`` (True = the positive class).

    Keys: ``n``; ``accuracy`` (a :class:`~mmsafe.metrics.Rate` dict: k, n, value and the Wilson
    interval lo–hi); ``kappa`` (Cohen's κ with a seeded bootstrap interval: value, lo, hi, n,
    method; None when undefined — both raters used one single class); ``f1``, ``precision``,
    ``recall`` of the positive class (None when 0/0); ``confusion`` (``labels`` =
    ``class_names``, negative first — default :data:`LABEL_NAMES`; ``counts[i][j]`` = items
    labelled i that the judge called j); ``positive_rate_labels`` / ``positive_rate_judge``;
    ``majority_baseline`` (the accuracy of always answering the labels' majority class).
    """
    from mmsafe.metrics.classification import accuracy, cohen_kappa, confusion_matrix, precision_recall_f1

    y = [bool(v) for v in labels]
    p = [bool(v) for v in predictions]
    if len(y) != len(p):
        raise ValueError(f"labels and predictions differ in length: {len(y)} vs {len(p)}")
    names = list(class_names)
    n = len(y)
    out: dict[str, Any] = {"n": n, "accuracy": accuracy(y, p, z=z).as_dict()}
    if n == 0:
        out.update(kappa=None, f1=None, precision=None, recall=None, positive_rate_labels=None)
        out.update(positive_rate_judge=None, majority_baseline=None)
        out["confusion"] = {"labels": names, "counts": [[0, 0], [0, 0]]}
        return out
    try:
        out["kappa"] = cohen_kappa(y, p, labels=[False, True]).as_dict()
    except ValueError:  # undefined: both raters put every item in one class
        out["kappa"] = None
    scores = precision_recall_f1(y, p, labels=[False, True])[True]
    out.update(f1=scores.f1, precision=scores.precision, recall=scores.recall)
    cm = confusion_matrix(y, p, labels=[False, True])
    out["confusion"] = {"labels": names, "counts": [list(r) for r in cm.counts]}
    pos = sum(y)
    out["positive_rate_labels"] = pos / n
    out["positive_rate_judge"] = sum(p) / n
    out["majority_baseline"] = max(pos, n - pos) / n
    return out
