"""Differences between two cells (ASR with vs without a defense, model A vs B) with an interval.

Two proportions p_a = k_a/n_a and p_b = k_b/n_b; the difference reported is p_a − p_b.

- Independent samples (two different sets of items): Newcombe's hybrid score interval, method 10
  of R. G. Newcombe, "Interval estimation for the difference between independent proportions:
  comparison of eleven methods", Statistics in Medicine 17:873–890 (1998). It combines the two
  Wilson intervals (l_a, u_a) and (l_b, u_b):
  L = d − √((p_a − l_a)² + (u_b − p_b)²),  U = d + √((u_a − p_a)² + (p_b − l_b)²).
  Worked example from that paper: 56/70 − 48/80 = 0.2000, 95% interval 0.0524 to 0.3339.
- Paired samples (the same items in both cells, matched by sample id): method 10 of
  R. G. Newcombe, "Improved confidence intervals for the difference between binomial proportions
  based on paired data", Statistics in Medicine 17:2635–2650 (1998). With a = both succeed,
  b = only A, c = only B, d = neither (n pairs), θ = (b − c)/n, Wilson intervals for (a+b)/n and
  (a+c)/n, and the correlation φ = (ad − bc)/√((a+b)(c+d)(a+c)(b+d)) — where ad − bc is replaced
  by max(ad − bc − n/2, 0) when positive, and φ = 0 when a margin is empty:
  L = θ − √(dl_a² − 2φ·dl_a·du_b + du_b²),  U = θ + √(du_a² − 2φ·du_a·dl_b + dl_b²),
  with dl_a = p_a − l_a, du_a = u_a − p_a, dl_b = p_b − l_b, du_b = u_b − p_b. Pairing removes the
  between-item variation, so the interval is narrower than the independent one when the two
  cells agree on most items. Worked example (a, b, c, d) = (12, 9, 2, 21): θ = 0.1591, 95%
  interval 0.0112 to 0.2954.

Both are pure functions of counts; no resampling, so no seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from mmsafe.metrics.rates import Item, Outcome, Rate, _as_outcome, _verdicts, wilson_interval
from mmsafe.types import Expected, Record

__all__ = ["compare_rates", "newcombe_interval", "newcombe_paired_interval"]


def newcombe_interval(k_a: int, n_a: int, k_b: int, n_b: int, *, z: float = 1.96) -> tuple[float, float]:
    """Newcombe's (1998) method-10 interval for p_a − p_b from independent samples (see module doc).

    Raises ``ValueError`` when either n is 0 or a k is outside [0, n].
    """
    l_a, u_a = wilson_interval(k_a, n_a, z)
    l_b, u_b = wilson_interval(k_b, n_b, z)
    p_a, p_b = k_a / n_a, k_b / n_b
    d = p_a - p_b
    lo = d - math.sqrt((p_a - l_a) ** 2 + (u_b - p_b) ** 2)
    hi = d + math.sqrt((u_a - p_a) ** 2 + (p_b - l_b) ** 2)
    return max(-1.0, lo), min(1.0, hi)


def newcombe_paired_interval(a: int, b: int, c: int, d: int, *, z: float = 1.96) -> tuple[float, float]:
    """Newcombe's (1998) method-10 interval for a paired difference θ = (b − c)/n (see module doc).

    ``a`` pairs succeed in both cells, ``b`` only in the first, ``c`` only in the second, ``d`` in
    neither. Raises ``ValueError`` when there is no pair or a count is negative.
    """
    if min(a, b, c, d) < 0:
        raise ValueError(f"counts must be ≥ 0; got a={a}, b={b}, c={c}, d={d}")
    n = a + b + c + d
    if n == 0:
        raise ValueError("no pairs")
    p_a, p_b = (a + b) / n, (a + c) / n
    l_a, u_a = wilson_interval(a + b, n, z)
    l_b, u_b = wilson_interval(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    num: float = a * d - b * c
    if num > 0:
        num = max(num - n / 2, 0.0)
    phi = num / math.sqrt(denom) if denom else 0.0
    dl_a, du_a, dl_b, du_b = p_a - l_a, u_a - p_a, p_b - l_b, u_b - p_b
    theta = p_a - p_b
    lo = theta - math.sqrt(max(dl_a**2 - 2 * phi * dl_a * du_b + du_b**2, 0.0))
    hi = theta + math.sqrt(max(du_a**2 - 2 * phi * du_a * dl_b + dl_b**2, 0.0))
    return max(-1.0, lo), min(1.0, hi)


Field = Literal["success", "refused"]


def _value(o: Outcome, field: Field) -> bool | None:
    return o.success if field == "success" else o.refused


def _outcomes(items: Iterable[Item], field: Field, expected: Expected) -> list[bool]:
    out: list[bool] = []
    for o in _verdicts(items):
        v = _value(o, field)
        if o.expected == expected and v is not None:
            out.append(bool(v))
    return out


def _by_sample(records: Iterable[Item], field: Field, expected: Expected, name: str) -> dict[Any, bool]:
    out: dict[Any, bool] = {}
    seen: set[tuple[str, str]] = set()
    for r in records:
        if not isinstance(r, (Record, Outcome)):
            raise ValueError(
                f"paired comparison needs Records (or their Outcomes) in {name} "
                "(pairs are matched by sample id)"
            )
        o = r if isinstance(r, Outcome) else _as_outcome(r)
        key = (o.benchmark, o.sample_id)
        if key in seen:
            raise ValueError(f"sample {key} occurs twice in {name}: pass one cell's records")
        seen.add(key)
        v = o.success if field == "success" else o.refused
        if not o.error and o.expected == expected and v is not None:  # as _outcomes takes it, inline
            out[key] = bool(v)
    return out


def compare_rates(
    a: Rate | Sequence[Item],
    b: Rate | Sequence[Item],
    *,
    paired: bool = False,
    field: Field = "success",
    expected: Expected | str = Expected.refuse,
    z: float = 1.96,
) -> dict[str, Any]:
    """Difference of two rates, a − b, with a 95% (by ``z``) Newcombe interval.

    ``a`` and ``b`` are :class:`~mmsafe.metrics.Rate` objects or lists of items (Records, their
    :class:`~mmsafe.metrics.Outcome` objects or ``(judgement, expected)`` pairs). From items, the
    rate is the share of ``expected`` items (default ``refuse``) whose ``judgement.<field>`` is
    True, over those where it is not None and the item is not errored — with the defaults that is
    the attack success rate of :func:`~mmsafe.metrics.attack_success_rate`; ``field="refused"``
    gives the refusal rate.

    ``paired=False``: independent samples, Newcombe's hybrid score interval (method 10, 1998a).
    ``paired=True``: ``a`` and ``b`` must be Records (or Outcomes); they are matched by ``(benchmark,
    sample_id)``, each sample at most once per list (``ValueError`` otherwise), samples present in
    only one list are dropped (counted in ``n_unmatched``), and the interval is Newcombe's paired
    method 10 (1998b). Rates carry no sample ids, so ``paired=True`` with a Rate raises.

    Returns ``{"diff", "lo", "hi", "n_a", "n_b", "paired", "method"}`` (plus ``"n_unmatched"``
    when paired; then ``n_a == n_b`` = the number of pairs). When either side has no item,
    ``diff``, ``lo`` and ``hi`` are None.
    """
    if field not in ("success", "refused"):
        raise ValueError(f"unknown field {field!r}: use 'success' or 'refused'")
    exp = Expected(expected)
    if paired:
        if isinstance(a, Rate) or isinstance(b, Rate):
            raise ValueError("paired=True needs the records of both cells, not Rates")
        oa, ob = _by_sample(a, field, exp, "a"), _by_sample(b, field, exp, "b")
        keys = oa.keys() & ob.keys()
        n_unmatched = len(oa) + len(ob) - 2 * len(keys)
        both = only_a = only_b = neither = 0
        for key in keys:
            x, y = oa[key], ob[key]
            if x and y:
                both += 1
            elif x:
                only_a += 1
            elif y:
                only_b += 1
            else:
                neither += 1
        n = len(keys)
        out: dict[str, Any] = {
            "diff": None,
            "lo": None,
            "hi": None,
            "n_a": n,
            "n_b": n,
            "paired": True,
            "method": f"Newcombe paired method 10, z={z}",
            "n_unmatched": n_unmatched,
        }
        if n:
            lo, hi = newcombe_paired_interval(both, only_a, only_b, neither, z=z)
            out.update(diff=(only_a - only_b) / n, lo=lo, hi=hi)
        return out

    def counts_of(x: Rate | Sequence[Item]) -> tuple[int, int]:
        if isinstance(x, Rate):
            return x.k, x.n
        outcomes = _outcomes(x, field, exp)
        return sum(outcomes), len(outcomes)

    (k_a, n_a), (k_b, n_b) = counts_of(a), counts_of(b)
    out = {
        "diff": None,
        "lo": None,
        "hi": None,
        "n_a": n_a,
        "n_b": n_b,
        "paired": False,
        "method": f"Newcombe hybrid score (method 10), z={z}",
    }
    if n_a and n_b:
        lo, hi = newcombe_interval(k_a, n_a, k_b, n_b, z=z)
        out.update(diff=k_a / n_a - k_b / n_b, lo=lo, hi=hi)
    return out
