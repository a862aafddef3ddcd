"""Shared pieces of the metric families: the :class:`Estimate` result, an index bootstrap and the
percentile they read their intervals from. Imports no other metrics module.

Private to :mod:`mmsafe.metrics`; :class:`Estimate` is re-exported from the package.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Estimate", "bootstrap_indices", "check_bootstrap_args", "percentile"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval.

    ``n`` is the number of items the estimate was computed from and ``method`` names how the
    interval was obtained (for example ``"percentile bootstrap, 2000 resamples, seed 0"``), so a
    reader of a report can tell a Wilson interval from a bootstrap one.
    """

    value: float
    lo: float
    hi: float
    n: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_vals: list[float], q: float) -> float:
    """The ``q`` quantile of ``sorted_vals`` (ascending), interpolating linearly between order statistics."""
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError("n_resamples must be ≥ 1")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")


def bootstrap_indices(
    strata: Sequence[Sequence[int]],
    stat: Callable[[list[int]], float | None],
    *,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> tuple[float, float, int]:
    """Percentile bootstrap of ``stat`` over item indices, resampling each stratum separately.

    Each resample draws ``len(s)`` indices with replacement from every stratum ``s`` (one stratum =
    ordinary bootstrap; several = stratified bootstrap, which keeps each group's size fixed) and
    passes their concatenation to ``stat``. Resamples where ``stat`` returns ``None`` (the statistic
    is undefined there, e.g. a class vanished) are dropped. Returns ``(lo, hi, n_used)``; raises
    ``ValueError`` when no resample gives a defined statistic. Deterministic for a given ``seed``
    (a private :class:`random.Random`; global state untouched); percentiles interpolate linearly
    between order statistics, as :func:`~mmsafe.metrics.bootstrap_interval` does.
    """
    check_bootstrap_args(n_resamples, confidence)
    rng = random.Random(seed)
    values: list[float] = []
    for _ in range(n_resamples):
        idx: list[int] = []
        for s in strata:
            m = len(s)
            idx.extend(s[rng.randrange(m)] for _ in range(m))
        v = stat(idx)
        if v is not None and not math.isnan(v):
            values.append(v)
    if not values:
        raise ValueError("the statistic is undefined in every bootstrap resample")
    values.sort()
    alpha = (1 - confidence) / 2
    return percentile(values, alpha), percentile(values, 1 - alpha), len(values)


def bootstrap_method(n_resamples: int, seed: int, n_used: int, *, stratified: bool = False) -> str:
    kind = "stratified percentile bootstrap" if stratified else "percentile bootstrap"
    dropped = n_resamples - n_used
    note = f", {dropped} undefined resamples dropped" if dropped else ""
    return f"{kind}, {n_resamples} resamples, seed {seed}{note}"
