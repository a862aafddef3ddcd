"""Utility: how well benign items are answered, and what a defense costs in it.

The survey asks for defenses to be judged on both sides of the balance (Liu et al., 2024, "Safety of
Multimodal Large Language Models on Images and Texts"): fewer attack successes *and* little lost
helpfulness. Over-refusal (:func:`~mmsafe.metrics.over_refusal_rate`) counts outright refusals; utility
also sees a defense that answers worse — a purified image the model can no longer read, a rewritten
answer that lost its content. Its per-item scores come from a judge that scores answers against
reference answers (the ``utility`` judge: VQA accuracy, exact / contained answer, ANLS, ROUGE-L),
recorded as ``judgement.score`` with ``judgement.details["utility"]`` naming the metric.

- :func:`utility_scores` — the per-sample scores of a cell (must-comply items, not errored, scored);
- :func:`mean_utility` — their mean with a percentile-bootstrap 95% interval (seeded);
- :func:`compare_utility` — a − b on the samples both cells scored, paired by sample, with a
  bootstrap interval of the mean paired difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mmsafe.metrics._common import Estimate
from mmsafe.metrics.rates import Outcome, bootstrap_interval, outcome
from mmsafe.types import Record

__all__ = ["compare_utility", "mean_utility", "utility_scores"]

N_RESAMPLES = 2000


def _scored(records: Iterable[Record | Outcome]) -> Iterable[tuple[Outcome, float]]:
    """The must-comply records a utility judge scored, with their scores.

    A record counts when it has no error, its judgement has no error, a numeric ``score`` and
    ``details["utility"]`` (so a toxicity score or an LLM judge's harm score is never read as
    utility): :attr:`Outcome.utility <mmsafe.metrics.Outcome>` is that score.
    """
    for r in records:
        o = r if isinstance(r, Outcome) else outcome(r)
        if o.utility is not None:
            yield o, o.utility


def utility_scores(records: Iterable[Record | Outcome]) -> dict[tuple[str, str], float]:
    """``(benchmark, sample_id) → score`` of one cell's scored records (see :func:`_scored`), for
    pairing two cells; a sample seen twice raises ``ValueError`` (the records are not one cell)."""
    out: dict[tuple[str, str], float] = {}
    for o, score in _scored(records):
        key = (o.benchmark, o.sample_id)
        if key in out:
            raise ValueError(f"sample {key[1]!r} occurs twice in one cell")
        out[key] = score
    return out


def mean_utility(
    records: Iterable[Record | Outcome], *, seed: int = 0, confidence: float = 0.95
) -> Estimate | None:
    """Mean utility of the scored must-comply records (any grouping: one cell, or several pooled)
    with a percentile bootstrap interval (``N_RESAMPLES`` resamples, ``seed``); ``None`` when
    nothing was scored."""
    scores = [score for _, score in _scored(records)]
    if not scores:
        return None
    lo, hi = bootstrap_interval(scores, n_resamples=N_RESAMPLES, seed=seed, confidence=confidence)
    return Estimate(
        value=sum(scores) / len(scores),
        lo=lo,
        hi=hi,
        n=len(scores),
        method=f"percentile bootstrap, {N_RESAMPLES} resamples, seed {seed}",
    )


def compare_utility(
    a: Sequence[Record | Outcome], b: Sequence[Record | Outcome], *, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any] | None:
    """Paired difference of mean utility, a − b, over the samples both cells scored.

    Returns ``{"diff", "lo", "hi", "n", "n_unmatched", "method"}`` (the interval: percentile
    bootstrap of the mean of per-sample differences), or ``None`` when no sample is in both.
    """
    sa, sb = utility_scores(a), utility_scores(b)
    keys = sorted(sa.keys() & sb.keys())
    if not keys:
        return None
    diffs = [sa[k] - sb[k] for k in keys]
    lo, hi = bootstrap_interval(diffs, n_resamples=N_RESAMPLES, seed=seed, confidence=confidence)
    return {
        "diff": sum(diffs) / len(diffs),
        "lo": lo,
        "hi": hi,
        "n": len(keys),
        "n_unmatched": len(sa) + len(sb) - 2 * len(keys),
        "method": f"paired percentile bootstrap, {N_RESAMPLES} resamples, seed {seed}",
    }
