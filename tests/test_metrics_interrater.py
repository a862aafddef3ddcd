"""Agreement among several annotators: Fleiss' κ, Krippendorff's nominal α, the per-item majority.

Expected values are worked by hand in the test (the arithmetic is in the comment beside them) or
come from a published worked example (cited).
"""

from __future__ import annotations

import pytest

import mmsafe.metrics as metrics
from mmsafe.metrics import Estimate, fleiss_kappa, krippendorff_alpha, majority

# Fleiss (1971)'s worked example as reproduced in textbooks: 10 items, 14 raters, 5 categories;
# row i holds n_ij, how many raters put item i in category j.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def _expand(table: list[list[int]]) -> list[list[int]]:
    return [[j for j, c in enumerate(row) for _ in range(c)] for row in table]


def test_exported_from_the_package() -> None:
    for name in ("fleiss_kappa", "krippendorff_alpha", "majority"):
        assert name in metrics.__all__


def test_fleiss_worked_example() -> None:
    m, n_items = 14, 10
    # P_i = (Σ_j n_ij² − m) / (m(m−1)); P_e = Σ_j p_j² with p_j = column total / (N·m)
    p_bar = sum((sum(v * v for v in row) - m) / (m * (m - 1)) for row in FLEISS_TABLE) / n_items
    cols = [sum(row[j] for row in FLEISS_TABLE) for j in range(5)]  # 20, 28, 39, 21, 32
    assert cols == [20, 28, 39, 21, 32]
    p_e = sum((c / 140) ** 2 for c in cols)
    expected = (p_bar - p_e) / (1 - p_e)
    assert p_bar == pytest.approx(0.378, abs=5e-4)
    assert p_e == pytest.approx(0.213, abs=5e-4)
    est = fleiss_kappa(_expand(FLEISS_TABLE))
    assert isinstance(est, Estimate)
    assert est.value == pytest.approx(expected)
    assert est.value == pytest.approx(0.210, abs=5e-4)  # the published value
    assert est.n == 10
    assert est.lo <= est.value <= est.hi
    assert "bootstrap" in est.method


def test_fleiss_bootstrap_is_seeded() -> None:
    r = _expand(FLEISS_TABLE)
    assert fleiss_kappa(r, seed=3) == fleiss_kappa(r, seed=3)
    assert fleiss_kappa(r, seed=3).lo != fleiss_kappa(r, seed=4).lo


def test_fleiss_two_raters_is_scotts_pi() -> None:
    a = ["x", "x", "y", "y", "z", "x", "y", "x"]
    b = ["x", "y", "y", "y", "z", "x", "x", "x"]
    # Scott's π = (p_o − p_e)/(1 − p_e): p_o = 6/8, p_e from the 16 ratings pooled over both raters
    pooled = a + b
    p_o = sum(u == v for u, v in zip(a, b, strict=True)) / len(a)
    assert p_o == 6 / 8
    p_e = sum((pooled.count(c) / len(pooled)) ** 2 for c in set(pooled))
    assert p_e == pytest.approx((8 / 16) ** 2 + (6 / 16) ** 2 + (2 / 16) ** 2)  # x 8, y 6, z 2
    pi = (p_o - p_e) / (1 - p_e)
    assert fleiss_kappa(list(zip(a, b, strict=True))).value == pytest.approx(pi)


def test_perfect_agreement_is_one() -> None:
    r = [["a", "a", "a"], ["b", "b", "b"], ["c", "c", "c"]]
    assert fleiss_kappa(r).value == pytest.approx(1.0)
    assert krippendorff_alpha(r).value == pytest.approx(1.0)
    assert krippendorff_alpha([["a", "a", None], ["b", None, "b"]]).value == pytest.approx(1.0)


def test_symmetric_under_relabelling() -> None:
    r = _expand(FLEISS_TABLE)
    names = ["safe", "unsafe", "refusal", "partial", "other"]
    relabelled = [[names[(x + 2) % 5] for x in item] for item in r]
    assert fleiss_kappa(relabelled).value == pytest.approx(fleiss_kappa(r).value)
    with_missing = [[x if k % 3 else None for k, x in enumerate(item)] for item in r]
    relabelled_missing = [[None if x is None else names[(x + 2) % 5] for x in item] for item in with_missing]
    assert krippendorff_alpha(relabelled_missing).value == pytest.approx(
        krippendorff_alpha(with_missing).value
    )


def test_krippendorff_small_example_by_hand() -> None:
    r = [["a", "a", None], ["a", "b", "b"], ["b", None, None], ["a", "a"]]
    # item 1 (m=2): o_aa += 2·1/1 = 2
    # item 2 (m=3): o_ab += 1·2/2 = 1, o_ba += 1, o_bb += 2·1/2 = 1
    # item 3: one rating, dropped
    # item 4 (m=2): o_aa += 2
    # o_aa = 4, o_ab = o_ba = 1, o_bb = 1 → n_a = 5, n_b = 2, n = 7
    # D_o = (1 + 1)/7 = 2/7; D_e = 2·5·2 / (7·6) = 10/21; α = 1 − (2/7)/(10/21) = 1 − 0.6 = 0.4
    est = krippendorff_alpha(r)
    assert est.value == pytest.approx(0.4)
    assert est.n == 3


def test_krippendorff_published_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers, 12 units,
    # nominal α = 0.743 (unit 12 has one value and is dropped).
    n = None
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3]
    c = [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n]
    d = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]
    est = krippendorff_alpha(list(zip(a, b, c, d, strict=True)))
    assert est.value == pytest.approx(0.743, abs=5e-4)
    assert est.n == 11
    assert est.lo <= est.value <= est.hi


def test_krippendorff_without_missing_relates_to_fleiss() -> None:
    # With complete data (N items, m ratings each, n = N·m values): D_o = 1 − P̄ and
    # D_e = n/(n − 1)·(1 − P_e), so α = 1 − (1 − P̄)(n − 1) / (n(1 − P_e)) with Fleiss' P̄ and P_e.
    m, n_items = 14, 10
    n = m * n_items
    p_bar = sum((sum(v * v for v in row) - m) / (m * (m - 1)) for row in FLEISS_TABLE) / n_items
    cols = [sum(row[j] for row in FLEISS_TABLE) for j in range(5)]
    p_e = sum((c / n) ** 2 for c in cols)
    expected = 1 - (1 - p_bar) * (n - 1) / (n * (1 - p_e))
    assert krippendorff_alpha(_expand(FLEISS_TABLE)).value == pytest.approx(expected)


def test_majority() -> None:
    r = [["a", "a", "b"], ["a", "b"], [None, "b", None], [None, None], ["a", "b", "b", None, "c"]]
    assert majority(r) == ["a", None, "b", None, "b"]
    assert majority([]) == []


@pytest.mark.parametrize(
    ("ratings", "match"),
    [
        ([], "no items"),
        ("ab", "sequence of items"),
        (["ab", "cd"], "item 0 must be a sequence"),
        ([["a", "b"], ["a", "b", "c"]], "item 1 has 3 ratings"),
        ([["a", None], ["a", "b"]], "missing rating"),
        ([["a"], ["b"]], "at least 2 ratings"),
        ([["a", "a"], ["a", "a"]], "undefined"),
    ],
)
def test_fleiss_errors(ratings: list[list[str | None]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fleiss_kappa(ratings)


@pytest.mark.parametrize(
    ("ratings", "match"),
    [
        ([], "no items"),
        ([["a", None], [None, "b"]], "no item has at least 2 ratings"),
        ([["a", "a", None], ["a", "a"]], "undefined"),
        ([["a", "b"], 3], "item 1 must be a sequence"),
    ],
)
def test_krippendorff_errors(ratings: list[list[str | None]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        krippendorff_alpha(ratings)


def test_bad_bootstrap_args() -> None:
    with pytest.raises(ValueError, match="n_resamples"):
        fleiss_kappa(_expand(FLEISS_TABLE), n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        krippendorff_alpha(_expand(FLEISS_TABLE), confidence=1.0)
