"""Correcting a judge's rate for the judge's own measured errors (Rogan & Gladen, Am. J. Epidemiol. 1978).

A judge with sensitivity Se (share of truly positive answers it calls positive) and specificity Sp (share
of truly negative answers it calls negative) observes a rate p = Se·π + (1 − Sp)·(1 − π) when the true
rate is π, so π = (p + Sp − 1) / (Se + Sp − 1), clipped to [0, 1]. Se and Sp come from ``mmsafe
judge-eval`` (the judge against labelled answers); the estimate is only as good as the assumption that the
judge errs on this run's answers as it did on that labelled data.

The interval is a seeded parametric bootstrap over the three binomial counts (the run's k/n, the
judge-eval's TP/(TP+FN) and TN/(TN+FP)), percentile 2.5–97.5 %, each resample clipped the same way (counts above 50 drawn from the normal
approximation to the binomial).
"""

from __future__ import annotations

import math
import random
from typing import Any

__all__ = ["rogan_gladen"]


def _estimate(p: float, se: float, sp: float) -> float | None:
    youden = se + sp - 1.0
    if youden <= 0:
        return None
    return min(1.0, max(0.0, (p + sp - 1.0) / youden))


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """One Binomial(n, p) draw: exact for small n, the normal approximation (rounded, clipped) above 50."""
    if n <= 50:
        return sum(1 for _ in range(n) if rng.random() < p)
    draw = rng.gauss(n * p, math.sqrt(n * p * (1.0 - p)))
    return min(n, max(0, round(draw)))


def rogan_gladen(
    k: int,
    n: int,
    *,
    tp: int,
    fn: int,
    tn: int,
    fp: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any] | None:
    """The corrected rate of ``k`` positives in ``n`` verdicts, given the judge's confusion counts.

    Returns None when it cannot be computed: no verdicts, no labelled positives or negatives, or a judge
    no better than chance (Se + Sp ≤ 1). Keys: ``value``, ``lo``, ``hi``, ``observed``,
    ``sensitivity``, ``specificity``, ``n``, ``method``.
    """
    if n <= 0 or tp + fn <= 0 or tn + fp <= 0:
        return None
    p, se, sp = k / n, tp / (tp + fn), tn / (tn + fp)
    value = _estimate(p, se, sp)
    if value is None:
        return None
    rng = random.Random(seed)
    draws = []
    for _ in range(n_boot):
        est = _estimate(
            _binomial(rng, n, p) / n, _binomial(rng, tp + fn, se) / (tp + fn), _binomial(rng, tn + fp, sp) / (tn + fp)
        )
        if est is not None:
            draws.append(est)
    draws.sort()
    tail = (1.0 - level) / 2
    lo = draws[int(tail * (len(draws) - 1))] if draws else None
    hi = draws[int((1 - tail) * (len(draws) - 1))] if draws else None
    return {
        "value": value,
        "lo": lo,
        "hi": hi,
        "observed": p,
        "sensitivity": se,
        "specificity": sp,
        "n": n,
        "method": f"Rogan-Gladen, parametric bootstrap ({len(draws)} of {n_boot} resamples defined)",
    }
