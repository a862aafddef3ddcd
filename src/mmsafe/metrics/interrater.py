"""Agreement among several annotators: Fleiss' κ, Krippendorff's α (nominal, ordinal, interval) and the
per-item majority.

Human evaluation has more than two annotators label each item; these functions say how far they
agree with one another (beyond chance) and give the majority label a judge can be compared with.

Input shape shared by the module: ``ratings`` holds one sequence per item, the labels its raters
gave (hashable: ``str``, ``bool`` or ``int``); ``None`` stands for a rater who did not rate the item
where missing ratings are allowed. A ``str`` item is rejected (it would read as one label per
character). Every function is pure; bootstrap intervals resample items with a private, seeded
:class:`random.Random` and are deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence

from mmsafe.metrics._common import Estimate, bootstrap_indices, bootstrap_method, check_bootstrap_args

__all__ = ["fleiss_kappa", "krippendorff_alpha", "majority"]

Label = Hashable


def _items(
    ratings: Sequence[Sequence[Label | None]], name: str, *, allow_empty: bool = False
) -> list[list[Label | None]]:
    if isinstance(ratings, str):
        raise ValueError(f"{name}: ratings must be a sequence of items, got a str")
    out: list[list[Label | None]] = []
    for i, item in enumerate(ratings):
        if isinstance(item, str) or not isinstance(item, Sequence):
            raise ValueError(f"{name}: item {i} must be a sequence of labels, got {type(item).__name__}")
        out.append(list(item))
    if not out and not allow_empty:
        raise ValueError(f"{name}: no items")
    return out


def _fleiss_from(counts: list[Counter[Label]], idx: Sequence[int], m: int) -> float | None:
    """Fleiss' κ of the items ``idx`` (each with ``m`` ratings, counted per label); None if P_e = 1."""
    n_items = len(idx)
    agree = 0.0
    totals: Counter[Label] = Counter()
    for i in idx:
        c = counts[i]
        agree += (sum(v * v for v in c.values()) - m) / (m * (m - 1))
        totals.update(c)
    p_bar = agree / n_items
    p_e = sum((v / (n_items * m)) ** 2 for v in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1 - p_e)


def fleiss_kappa(
    ratings: Sequence[Sequence[Label]],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Fleiss' κ for ``m ≥ 2`` raters per item and nominal labels, with a bootstrap interval.

    Definition (Fleiss 1971, "Measuring nominal scale agreement among many raters", Psychological
    Bulletin 76(5):378–382): with N items, m ratings per item and n_ij the number of ratings of
    item i in category j, P_i = (Σ_j n_ij² − m) / (m(m − 1)), P̄ = mean of P_i,
    p_j = Σ_i n_ij / (N·m) and P_e = Σ_j p_j²; κ = (P̄ − P_e) / (1 − P_e). The raters need not be
    the same people from item to item, only as many. With m = 2 it equals Scott's π.

    Every item must carry the same number m ≥ 2 of ratings and no ``None`` (use
    :func:`krippendorff_alpha` for missing ratings); otherwise ``ValueError``. Raises
    ``ValueError`` when κ is undefined (P_e = 1: every rating is one same category). Interval:
    percentile bootstrap over items, dropping resamples where κ is undefined (the count dropped
    is named in ``method``).
    """
    items = _items(ratings, "fleiss_kappa")
    check_bootstrap_args(n_resamples, confidence)
    m = len(items[0])
    for i, item in enumerate(items):
        if len(item) != m:
            raise ValueError(
                f"fleiss_kappa: item {i} has {len(item)} ratings, item 0 has {m}; every item needs as many"
            )
        if any(x is None for x in item):
            raise ValueError(
                f"fleiss_kappa: item {i} has a missing rating (None); use krippendorff_alpha for those"
            )
    if m < 2:
        raise ValueError(f"fleiss_kappa needs at least 2 ratings per item, got {m}")
    counts = [Counter(item) for item in items]
    n = len(items)
    value = _fleiss_from(counts, range(n), m)
    if value is None:
        raise ValueError("Fleiss' kappa is undefined: every rating of every item is one same category")
    lo, hi, used = bootstrap_indices(
        [range(n)],
        lambda idx: _fleiss_from(counts, idx, m),
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )
    return Estimate(value=value, lo=lo, hi=hi, n=n, method=bootstrap_method(n_resamples, seed, used))


def _delta2(metric: str, n_c: Counter[Label]) -> Callable[[Label, Label], float]:
    """Krippendorff's squared difference δ²(c, k) for ``metric``, given the value counts ``n_c``.

    nominal: 0 if c = k else 1; interval: (c − k)²; ordinal: (Σ_{g from c to k} n_g − (n_c + n_k)/2)², the
    values ranked by their order (numbers, or labels that sort)."""
    if metric == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if metric == "interval":
        return lambda c, k: (float(c) - float(k)) ** 2  # type: ignore[arg-type]
    order = sorted(n_c)  # type: ignore[type-var]
    cum = [0.0]
    for v in order:
        cum.append(cum[-1] + n_c[v])
    rank = {v: i for i, v in enumerate(order)}

    def ordinal(c: Label, k: Label) -> float:
        i, j = sorted((rank[c], rank[k]))
        return (cum[j + 1] - cum[i] - (n_c[c] + n_c[k]) / 2) ** 2

    return ordinal


def _alpha_from(
    coincidences: list[dict[tuple[Label, Label], float]], idx: Sequence[int], metric: str = "nominal"
) -> float | None:
    """α from the items' coincidence contributions; None when D_e = 0 (one value only)."""
    o: Counter[tuple[Label, Label]] = Counter()
    for i in idx:
        o.update(coincidences[i])
    n_c: Counter[Label] = Counter()
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    d = _delta2(metric, n_c)
    disagree = sum(v * d(c, k) for (c, k), v in o.items() if c != k)
    expected = sum(n_c[c] * n_c[k] * d(c, k) for c in n_c for k in n_c if c != k)
    if expected <= 0:
        return None
    return 1.0 - (n - 1) * disagree / expected


METRICS = ("nominal", "ordinal", "interval")


def krippendorff_alpha(
    ratings: Sequence[Sequence[Label | None]],
    *,
    metric: str = "nominal",
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """Krippendorff's α (nominal by default; ``metric`` "ordinal" or "interval" for rating scales such as
    1–5), missing ratings allowed, with a bootstrap interval.

    Definition (Krippendorff 2011, "Computing Krippendorff's alpha-reliability", Annenberg School
    for Communication, University of Pennsylvania; nominal metric): an item u with m_u ≥ 2 ratings
    adds n_uc·(n_uk − [c = k]) / (m_u − 1) to the coincidence o_ck of every pair of values (c, k),
    where n_uc counts its ratings of value c; items with fewer than 2 ratings are dropped (they
    cannot be paired). With n_c = Σ_k o_ck and n = Σ_c n_c, D_o = Σ_{c≠k} o_ck / n,
    D_e = Σ_{c≠k} n_c·n_k / (n(n − 1)) and α = 1 − D_o / D_e. The ordinal and interval forms weight each
    pair (c, k) in D_o and D_e by Krippendorff's δ²(c, k) (ordinal: (Σ_{g=c..k} n_g − (n_c + n_k)/2)²;
    interval: (c − k)²); the nominal δ² is 1 for every c ≠ k. Ordinal labels must sort (numbers, or
    strings that sort in the scale's order); interval labels must be numbers.

    ``None`` in an item is a rater who did not rate it. ``n`` of the result counts the pairable
    items. Raises ``ValueError`` when no item has 2 ratings or α is undefined (D_e = 0: one single
    value in all pairable ratings). Interval: percentile bootstrap over pairable items, dropping
    resamples where α is undefined (this is not Krippendorff's own bootstrap, which resamples
    pairs of values).
    """
    items = _items(ratings, "krippendorff_alpha")
    check_bootstrap_args(n_resamples, confidence)
    if metric not in METRICS:
        raise ValueError(f"krippendorff_alpha: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    coincidences: list[dict[tuple[Label, Label], float]] = []
    for item in items:
        values = Counter(x for x in item if x is not None)
        m_u = sum(values.values())
        if m_u < 2:
            continue
        coincidences.append(
            {
                (c, k): n_c * (n_k - (c == k)) / (m_u - 1)
                for c, n_c in values.items()
                for k, n_k in values.items()
            }
        )
    n = len(coincidences)
    if n == 0:
        raise ValueError("krippendorff_alpha: no item has at least 2 ratings")
    value = _alpha_from(coincidences, range(n), metric)
    if value is None:
        raise ValueError("Krippendorff's alpha is undefined: every pairable rating is one same value")
    lo, hi, used = bootstrap_indices(
        [range(n)],
        lambda idx: _alpha_from(coincidences, idx, metric),
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
    )
    return Estimate(value=value, lo=lo, hi=hi, n=n, method=bootstrap_method(n_resamples, seed, used))


def majority(ratings: Sequence[Sequence[Label | None]]) -> list[Label | None]:
    """Per item, the label most of its raters gave; ``None`` on a tie for the top or with no ratings.

    ``None`` ratings (missing) are ignored. The annotators' majority is what each judge's agreement
    is measured against in human evaluation.
    """
    out: list[Label | None] = []
    for item in _items(ratings, "majority", allow_empty=True):
        top = Counter(x for x in item if x is not None).most_common(2)
        if not top or (len(top) == 2 and top[0][1] == top[1][1]):
            out.append(None)
        else:
            out.append(top[0][0])
    return out
