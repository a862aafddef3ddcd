"""Metric families beyond rates: classification, recognition, privacy, text overlap, comparisons.

Table-driven: each row is an input with its expected value, worked by hand (the arithmetic is in
the comment beside it) or taken from a published worked example (cited). Reference packages
(scikit-learn, NLTK, rouge-score) cross-check where installed; they are test-only.
"""

from __future__ import annotations

import math
import random
import sys

import pytest

import mmsafe.metrics as metrics
from mmsafe.metrics import (
    Estimate,
    PrivacyItem,
    Rate,
    _common,
    accuracy,
    auroc,
    bootstrap_text_metric,
    cider,
    cider_d,
    classification,
    cohen_kappa,
    compare_rates,
    confusion_matrix,
    corpus_bleu,
    corpus_rouge_l,
    defense_success_rate,
    hanley_mcneil_se,
    macro_f1,
    newcombe_interval,
    newcombe_paired_interval,
    precision_recall_f1,
    protection_score,
    rate,
    recognition_success_rate,
    rouge_l,
    tokenize,
    wilson_interval,
)
from mmsafe.types import ComponentSpec, Expected, Judgement, Record

LN2, LN3, LN15 = math.log(2), math.log(3), math.log(1.5)

# ------------------------------------------------------------------------------------------ package


def test_every_old_name_still_imports_from_mmsafe_metrics():
    old = [
        "ALL",
        "Item",
        "Rate",
        "attack_success_rate",
        "bootstrap_interval",
        "over_refusal_rate",
        "rate",
        "refusal_rate",
        "spec_labels",
        "summarise",
        "wilson_interval",
    ]
    for name in old:
        assert hasattr(metrics, name), name
    assert set(metrics.__all__) <= set(dir(metrics))


# ------------------------------------------------------------------------------------------ classification


def _pairs(a: int, b: int, c: int, d: int, yes="y", no="n") -> tuple[list, list]:
    """Two raters from a 2×2 table: a = both yes, b = first yes/second no, c = first no/second yes, d = both no."""
    first = [yes] * (a + b) + [no] * (c + d)
    second = [yes] * a + [no] * b + [yes] * c + [no] * d
    return first, second


CONFUSION_CASES = [
    # (y_true, y_pred, labels, expected labels, expected counts)
    (["a", "b", "b"], ["a", "a", "b"], None, ("a", "b"), ((1, 0), (1, 1))),
    ([True, False, True, True], [True, True, False, True], None, (False, True), ((0, 1), (1, 2))),
    ([0, 1, 2, 2], [0, 2, 2, 1], None, (0, 1, 2), ((1, 0, 0), (0, 0, 1), (0, 1, 1))),
    (["x", "x"], ["x", "x"], ["y", "x"], ("y", "x"), ((0, 0), (0, 2))),  # explicit order, unused label
    (["b", 1], [1, "b"], None, (1, "b"), ((0, 1), (1, 0))),  # mixed types: ordered by type name
]


@pytest.mark.parametrize(("y_true", "y_pred", "labels", "want_labels", "want"), CONFUSION_CASES)
def test_confusion_matrix(y_true, y_pred, labels, want_labels, want):
    cm = confusion_matrix(y_true, y_pred, labels)
    assert cm.labels == want_labels and cm.counts == want
    assert cm.n == len(y_true)
    assert cm.as_dict() == {"labels": list(want_labels), "counts": [list(r) for r in want]}


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "match"),
    [
        ([], [], None, "no items"),
        (["a"], ["a", "b"], None, "differ in length"),
        (["a", "c"], ["a", "b"], ["a", "b"], "not in `labels`"),
        (["a"], ["a"], ["a", "a"], "duplicates"),
    ],
)
def test_confusion_matrix_rejects(y_true, y_pred, labels, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(y_true, y_pred, labels)


# (y_true, y_pred, k, n)
ACCURACY_CASES = [
    (["a", "b", "b", "a"], ["a", "b", "a", "a"], 3, 4),
    ([True] * 10, [False] * 10, 0, 10),
    ([], [], 0, 0),
]


@pytest.mark.parametrize(("y_true", "y_pred", "k", "n"), ACCURACY_CASES)
def test_accuracy_is_a_wilson_rate(y_true, y_pred, k, n):
    assert accuracy(y_true, y_pred) == rate(k, n)


# Per-class scores by hand. y_true = a a a b b c, y_pred = a a b b c c:
#   a: TP 2, FP 0, FN 1 → P 1, R 2/3, F1 4/5;  b: TP 1, FP 1, FN 1 → 1/2, 1/2, 1/2;
#   c: TP 1, FP 1, FN 0 → 1/2, 1, 2/3.
PRF_CASES = [
    (
        list("aaabbc"),
        list("aabbcc"),
        None,
        {"a": (1.0, 2 / 3, 0.8, 3), "b": (0.5, 0.5, 0.5, 2), "c": (0.5, 1.0, 2 / 3, 1)},
    ),
    # "b" never predicted: precision undefined (None), F1 = 2·0/(0+0+1) = 0; "z" occurs nowhere.
    (
        ["a", "b"],
        ["a", "a"],
        ["a", "b", "z"],
        {"a": (0.5, 1.0, 2 / 3, 1), "b": (None, 0.0, 0.0, 1), "z": (None, None, None, 0)},
    ),
]


@pytest.mark.parametrize(("y_true", "y_pred", "labels", "want"), PRF_CASES)
def test_precision_recall_f1(y_true, y_pred, labels, want):
    got = precision_recall_f1(y_true, y_pred, labels)
    assert list(got) == list(want)
    for lab, (p, r, f, support) in want.items():
        s = got[lab]
        assert s.precision == pytest.approx(p) if p is not None else s.precision is None
        assert s.recall == pytest.approx(r) if r is not None else s.recall is None
        assert s.f1 == pytest.approx(f) if f is not None else s.f1 is None
        assert s.support == support
        assert s.as_dict()["support"] == support


# (y_true, y_pred, macro F1 by hand)
MACRO_F1_CASES = [
    (list("aaabbc"), list("aabbcc"), (0.8 + 0.5 + 2 / 3) / 3),
    ([1, 1, 0, 0], [1, 1, 0, 0], 1.0),
    ([1, 1, 0, 0], [0, 0, 1, 1], 0.0),
    (["a", "b"], ["a", "a"], (2 / 3 + 0.0) / 2),
]


@pytest.mark.parametrize(("y_true", "y_pred", "want"), MACRO_F1_CASES)
def test_macro_f1_value_and_interval(y_true, y_pred, want):
    e = macro_f1(y_true, y_pred, n_resamples=300, seed=1)
    assert isinstance(e, Estimate)
    assert e.value == pytest.approx(want)
    assert 0.0 <= e.lo <= e.hi <= 1.0 and e.n == len(y_true)
    assert e == macro_f1(y_true, y_pred, n_resamples=300, seed=1)  # seeded → deterministic
    assert "percentile bootstrap, 300 resamples, seed 1" in e.method


def test_macro_f1_ignores_labels_that_never_occur():
    with_unused = macro_f1(["a", "b"], ["a", "a"], ["a", "b", "z"], n_resamples=50)
    assert with_unused.value == pytest.approx(1 / 3)


# Cohen's κ on 2×2 tables (a, b, c, d), worked by hand: p_o = (a+d)/n, p_e from the margins.
#   (20, 5, 10, 15): p_o = 0.70, p_e = 0.5·0.6 + 0.5·0.4 = 0.50 → κ = 0.40 (the standard textbook table)
#   (45, 15, 25, 15): p_o = 0.60, p_e = 0.6·0.7 + 0.4·0.3 = 0.54 → κ = 0.06/0.46 = 0.1304
#   (25, 35, 5, 35): p_o = 0.60, p_e = 0.6·0.3 + 0.4·0.7 = 0.46 → κ = 0.14/0.54 = 0.2593
#   (10, 0, 0, 10): perfect agreement → 1;  (0, 10, 10, 0): p_o = 0, p_e = 0.5 → −1
KAPPA_CASES = [
    ((20, 5, 10, 15), 0.4),
    ((45, 15, 25, 15), 0.06 / 0.46),
    ((25, 35, 5, 35), 0.14 / 0.54),
    ((10, 0, 0, 10), 1.0),
    ((0, 10, 10, 0), -1.0),
]


@pytest.mark.parametrize(("table", "want"), KAPPA_CASES)
def test_cohen_kappa_known_tables(table, want):
    first, second = _pairs(*table)
    e = cohen_kappa(first, second, n_resamples=300, seed=2)
    assert e.value == pytest.approx(want)
    assert -1.0 <= e.lo <= e.hi <= 1.0
    assert cohen_kappa(second, first, n_resamples=300, seed=2).value == pytest.approx(want)  # symmetric


def test_cohen_kappa_interval_covers_and_narrows_with_n():
    small = cohen_kappa(*_pairs(20, 5, 10, 15), n_resamples=500)
    big = cohen_kappa(*_pairs(200, 50, 100, 150), n_resamples=500)
    assert small.lo < 0.4 < small.hi and big.lo < 0.4 < big.hi
    assert big.hi - big.lo < small.hi - small.lo


def test_cohen_kappa_undefined_when_one_category():
    with pytest.raises(ValueError, match="undefined"):
        cohen_kappa(["y"] * 5, ["y"] * 5)


T, F = True, False
# (rater a, rater b, κ worked by hand or None where κ is undefined)
ONE_KAPPA_CASES = [
    ((T, T, F, F), (T, F, F, F), 0.5),  # p_o .75, p_e .5·.25 + .5·.75 = .5
    ((T, F, T, F), (F, T, F, T), -1.0),  # p_o 0, p_e .5
    ((T, T, T, T), (T, T, F, F), 0.0),  # p_o .5, p_e 1·.5 = .5
    ((T, T, T, F, F), (T, T, F, F, F), 0.32 / 0.52),  # p_o .8, p_e .6·.4 + .4·.6 = .48
    ((T, T, T), (T, T, T), None),  # all one label: p_e = 1
    ((F, F), (F, F), None),
    ((), (), None),  # empty
]


@pytest.mark.parametrize(("a", "b", "want"), ONE_KAPPA_CASES)
def test_one_kappa_for_metrics_and_ensemble(a, b, want):
    """The ensemble's pairwise κ, :func:`cohen_kappa` and :func:`cohen_kappa_value` agree to the last bit here."""
    from mmsafe.judges.ensemble import pairwise_agreement
    from mmsafe.types import Judgement

    value = metrics.cohen_kappa_value(list(a), list(b))
    pair = pairwise_agreement(
        {"a": [Judgement(success=v) for v in a], "b": [Judgement(success=v) for v in b]}
    )[("a", "b")]
    assert pair["kappa"] == value
    if want is None:
        assert value is None
        with pytest.raises(ValueError, match=r"undefined|no items"):
            cohen_kappa(list(a), list(b))
    else:
        assert value == pytest.approx(want)
        assert cohen_kappa(list(a), list(b), n_resamples=10).value == value
        assert metrics.cohen_kappa_value(list(b), list(a)) == pytest.approx(want)  # symmetric


def test_cohen_kappa_value_rejects_misaligned_input():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.cohen_kappa_value([True], [True, False])


# κ and macro-F1 count each resample's confusion cells through bootstrap_cell_counts; the intervals must be the ones
# bootstrap_indices gives when every resample's confusion matrix is counted item by item, to the last bit.
STATS = {cohen_kappa: classification._kappa_from, macro_f1: classification._macro_f1_from}


def _item_by_item(metric, y_true, y_pred, *, n_resamples, seed):
    """``metric``'s estimate as it was made before bootstrap_cell_counts, or the exception type it raises."""
    stat = STATS[metric]
    labs, t, p = classification._encode(y_true, y_pred, None)
    k, n = len(labs), len(t)
    value = stat(classification._counts(t, p, k, range(n)))
    if value is None:
        return ValueError
    try:
        lo, hi, used = _common.bootstrap_indices(
            [range(n)], lambda idx: stat(classification._counts(t, p, k, idx)),
            n_resamples=n_resamples, seed=seed, confidence=0.95,
        )  # fmt: skip
    except ValueError:
        return ValueError
    return Estimate(value=value, lo=lo, hi=hi, n=n, method=_common.bootstrap_method(n_resamples, seed, used))


def _outcome(metric, y_true, y_pred, *, n_resamples, seed):
    try:
        return metric(y_true, y_pred, n_resamples=n_resamples, seed=seed)
    except ValueError:
        return ValueError


def _random_pairs(n, k, seed):
    r = random.Random(1000 * n + 10 * k + seed)
    labels = "abc"[:k]
    y_true = [r.choice(labels) for _ in range(n)]
    return y_true, [v if r.random() < 0.7 else r.choice(labels) for v in y_true]


def _same_as_item_by_item(n, k, monkeypatch) -> int:
    """Compare both metrics with the item-by-item path on random labels; the number of undefined cases seen."""
    resamples = 60 if n > 100 else 300
    undefined = 0
    for seed in (0, 7, 123):
        y_true, y_pred = _random_pairs(n, k, seed)
        for metric in STATS:
            got = _outcome(metric, y_true, y_pred, n_resamples=resamples, seed=seed)
            with monkeypatch.context() as m:  # the reference draws through Random.randrange itself
                m.setattr(_common, "_draws_match", lambda: False)
                want = _item_by_item(metric, y_true, y_pred, n_resamples=resamples, seed=seed)
            assert got == want, (metric.__name__, n, k, seed)
            # and through bootstrap_indices's own block draws
            assert want == _item_by_item(metric, y_true, y_pred, n_resamples=resamples, seed=seed)
            undefined += want is ValueError or "dropped" in want.method
    return undefined


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("n", [1, 2, 17, 5000])
def test_kappa_and_macro_f1_intervals_count_cells_with_the_same_draws(n, k, monkeypatch):
    pytest.importorskip("numpy")
    assert _common._draws_match()
    calls = []
    below_array = _common._Draws.below_array
    monkeypatch.setattr(
        _common._Draws, "below_array", lambda self, m, count: calls.append(m) or below_array(self, m, count)
    )
    undefined = _same_as_item_by_item(n, k, monkeypatch)
    assert calls and set(calls) == {n}  # the NumPy path ran
    if n <= 2:  # tiny inputs reach dropped resamples and undefined κ
        assert undefined


@pytest.mark.parametrize("without", ["numpy", "draws"])
@pytest.mark.parametrize("n", [2, 17, 5000])
def test_kappa_and_macro_f1_intervals_without_numpy_are_the_same(n, without, monkeypatch):
    if without == "numpy":
        monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy fails
    else:
        monkeypatch.setattr(_common, "_draws_match", lambda: False)
    monkeypatch.setattr(_common._Draws, "below_array", None)  # never reached
    check = _common._draws_match if without == "numpy" else None
    if check is not None:
        check.cache_clear()
    try:
        _same_as_item_by_item(n, 2, monkeypatch)
        _same_as_item_by_item(n, 3, monkeypatch)
    finally:
        if check is not None:
            check.cache_clear()


def test_bootstrap_cell_counts_keeps_the_bootstrap_contract():
    with pytest.raises(ValueError, match="undefined in every"):
        _common.bootstrap_cell_counts([0, 1, 1], 2, lambda c: None, n_resamples=5, seed=0, confidence=0.9)
    with pytest.raises(ValueError, match="n_cells"):
        _common.bootstrap_cell_counts([0, 1], 257, sum, n_resamples=5, seed=0, confidence=0.9)
    with pytest.raises(ValueError, match="n_resamples"):
        _common.bootstrap_cell_counts([0, 1], 2, sum, n_resamples=0, seed=0, confidence=0.9)
    seen = []
    lo, hi, used = _common.bootstrap_cell_counts(
        [0, 1, 1, 2], 3, lambda c: seen.append(c) or c[0] / 4, n_resamples=40, seed=5, confidence=0.9
    )
    assert used == 40 and len(seen) == 40 and all(len(c) == 3 and sum(c) == 4 for c in seen)
    assert 0 <= lo <= hi <= 1


# AUROC by hand: the share of (positive, negative) pairs ranked right, ties counting ½.
AUROC_CASES = [
    # (y_true, scores, pos_label, auc)
    ([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], None, 3 / 4),  # 0.4 < 0.5 is the one wrong pair
    ([True, False], [0.5, 0.5], None, 0.5),  # a tie counts ½
    ([1, 1, 0], [0.8, 0.5, 0.5], None, (1 + 0.5) / 2),
    ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], None, 1.0),
    ([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1], None, 0.0),
    (["harm", "ok", "harm", "ok", "ok"], [3, 1, 2, 2, 0], "harm", (3 + 2.5) / 6),
]


@pytest.mark.parametrize(("y_true", "scores", "pos_label", "want"), AUROC_CASES)
def test_auroc_values(y_true, scores, pos_label, want):
    e = auroc(y_true, scores, pos_label=pos_label)
    assert e.value == pytest.approx(want)
    assert 0.0 <= e.lo <= e.value <= e.hi <= 1.0
    assert "Hanley-McNeil" in e.method


# Hanley & McNeil's (1982) standard error, by hand:
#   (0.75, 2, 2): Q1 = 0.6, Q2 = 0.642857, SE² = (0.1875 + 0.0375 + 0.080357)/4 = 0.076339
#   (0.9, 10, 10): Q1 = 0.818182, Q2 = 0.852632, SE² = (0.09 + 9·0.008182 + 9·0.042632)/100 = 0.005473
HM_CASES = [
    (0.75, 2, 2, math.sqrt(0.076339), 1e-5),
    (0.9, 10, 10, math.sqrt(0.005473), 1e-4),
    (0.5, 1, 1, 0.5, 1e-12),  # Q1 = 1/3, Q2 = 1/3; SE² = 0.25
]


@pytest.mark.parametrize(("a", "n_pos", "n_neg", "want", "tol"), HM_CASES)
def test_hanley_mcneil_standard_error(a, n_pos, n_neg, want, tol):
    assert hanley_mcneil_se(a, n_pos, n_neg) == pytest.approx(want, abs=tol)


def test_auroc_hanley_mcneil_interval_is_a_plus_minus_z_se():
    e = auroc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
    se = hanley_mcneil_se(0.75, 2, 2)
    assert e.lo == pytest.approx(0.75 - 1.96 * se) and e.hi == 1.0  # clipped


def test_auroc_bootstrap_is_stratified_and_seeded():
    y = [1] * 20 + [0] * 20
    s = [i / 40 + (0.3 if yy else 0.0) for i, yy in enumerate(y)]
    a = auroc(y, s, ci="bootstrap", n_resamples=300, seed=4)
    assert a == auroc(y, s, ci="bootstrap", n_resamples=300, seed=4)
    assert a.lo <= a.value <= a.hi and "stratified" in a.method and "dropped" not in a.method


@pytest.mark.parametrize(
    ("y_true", "scores", "kwargs", "match"),
    [
        ([1, 1], [0.1, 0.2], {}, "one positive and one negative"),
        (["a", "b"], [0.1, 0.2], {}, "pass pos_label"),
        ([1, 0], [0.1], {}, "differ in length"),
        ([], [], {}, "empty"),
        ([1, 0], [float("nan"), 0.1], {}, "finite"),
        ([1, 0], [0.2, 0.1], {"ci": "delong"}, "unknown ci"),
    ],
)
def test_auroc_rejects(y_true, scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        auroc(y_true, scores, **kwargs)


def test_classification_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    import random

    rng = random.Random(11)
    y_true = [rng.choice("abc") for _ in range(150)]
    y_pred = [y if rng.random() < 0.6 else rng.choice("abc") for y in y_true]
    assert macro_f1(y_true, y_pred, n_resamples=10).value == pytest.approx(
        sk.f1_score(y_true, y_pred, average="macro")
    )
    assert cohen_kappa(y_true, y_pred, n_resamples=10).value == pytest.approx(
        sk.cohen_kappa_score(y_true, y_pred)
    )
    assert [list(r) for r in confusion_matrix(y_true, y_pred).counts] == sk.confusion_matrix(
        y_true, y_pred
    ).tolist()
    p, r, f, support = sk.precision_recall_fscore_support(y_true, y_pred, labels=["a", "b", "c"])
    ours = precision_recall_f1(y_true, y_pred)
    for i, lab in enumerate("abc"):
        assert (ours[lab].precision, ours[lab].recall, ours[lab].f1) == pytest.approx((p[i], r[i], f[i]))
        assert ours[lab].support == support[i]
    scores = [round(rng.random() + (0.4 if y == "a" else 0.0), 1) for y in y_true]  # many ties
    assert auroc(y_true, scores, pos_label="a").value == pytest.approx(
        sk.roc_auc_score([y == "a" for y in y_true], scores)
    )


# ------------------------------------------------------------------------------------------ records


def _spec(kind: str, name: str) -> ComponentSpec:
    return ComponentSpec(kind=kind, name=name, version="1")


def _rec(
    sid: str,
    *,
    success=None,
    refused=None,
    expected=Expected.refuse,
    defense="none",
    error=None,
    judge_error=None,
    judged=True,
) -> Record:
    j = Judgement(success=success, refused=refused, error=judge_error) if judged else None
    return Record(
        key=f"{sid}-{defense}",
        run="r",
        sample_id=sid,
        benchmark="faces",
        category="c",
        expected=expected,
        model=_spec("model", "m"),
        benchmark_spec=_spec("benchmark", "faces"),
        attack=_spec("attack", "sasp"),
        defense=_spec("defense", defense),
        judge=_spec("judge", "j"),
        judgement=j,
        error=error,
    )


# ------------------------------------------------------------------------------------------ recognition

# (success values of the attempts, expected RSR k/n); None = judge did not decide, "err" = errored
RSR_CASES = [
    ([True, True, False, True], (3, 4)),
    ([True, None, False, "err"], (1, 2)),
    ([False, False], (0, 2)),
    ([], (0, 0)),
]


def _attempts(values) -> list[Record]:
    out = []
    for i, v in enumerate(values):
        if v == "err":
            out.append(_rec(f"s{i}", error="generate failed"))
        else:
            out.append(_rec(f"s{i}", success=v, refused=None if v is None else not v))
    return out


@pytest.mark.parametrize(("values", "kn"), RSR_CASES)
def test_recognition_success_rate(values, kn):
    recs = _attempts(values)
    got = recognition_success_rate(recs)
    assert (got.k, got.n) == kn and got == rate(*kn)
    # benign (comply) items are not jailbreak attempts
    assert recognition_success_rate([*recs, _rec("b", success=True, expected=Expected.comply)]) == got


@pytest.mark.parametrize(("values", "kn"), RSR_CASES)
def test_defense_success_rate_is_the_share_of_failed_attempts(values, kn):
    got = defense_success_rate(_attempts(values))
    k, n = kn
    assert (got.k, got.n) == (n - k, n)


def test_defense_success_rate_against_a_baseline_counts_only_working_jailbreaks():
    baseline = [
        _rec("s1", success=True),
        _rec("s2", success=True),
        _rec("s3", success=True),
        _rec("s4", success=False),  # failed without the defense: not counted
        _rec("s5", success=True),  # not run with the defense: not counted
    ]
    defended = [
        _rec("s1", success=False, defense="sp"),
        _rec("s2", success=True, defense="sp"),
        _rec("s3", success=False, defense="sp"),
        _rec("s4", success=True, defense="sp"),
    ]
    got = defense_success_rate(defended, baseline=baseline)
    assert (got.k, got.n) == (2, 3)
    with pytest.raises(ValueError, match="twice"):
        defense_success_rate([*defended, defended[0]], baseline=baseline)
    with pytest.raises(ValueError, match="must be Records"):
        defense_success_rate([(Judgement(success=False), Expected.refuse)], baseline=baseline)


# ------------------------------------------------------------------------------------------ privacy

# (protected: refused/total, control: answered/total, protection score by hand)
#   sens 8/10, spec 6/10 → 2·0.48/1.4 = 0.685714;  sens 1, spec 1 → 1;  sens 1, spec 0 → 0;
#   sens 0, spec 0 → 0 (defined as 0);  sens 3/4, spec 1/2 → 2·0.375/1.25 = 0.6
PROTECTION_CASES = [
    ((8, 10), (6, 10), 2 * 0.8 * 0.6 / 1.4),
    ((5, 5), (5, 5), 1.0),
    ((5, 5), (0, 5), 0.0),
    ((0, 5), (0, 5), 0.0),
    ((3, 4), (1, 2), 0.6),
]


def _privacy_items(protected, control) -> list[PrivacyItem]:
    (pr, pn), (ca, cn) = protected, control
    return (
        [PrivacyItem(True, True)] * pr
        + [PrivacyItem(True, False)] * (pn - pr)
        + [PrivacyItem(False, False)] * ca
        + [PrivacyItem(False, True)] * (cn - ca)
    )


@pytest.mark.parametrize(("protected", "control", "want"), PROTECTION_CASES)
def test_protection_score(protected, control, want):
    got = protection_score(_privacy_items(protected, control), n_resamples=300, seed=5)
    assert got.value == pytest.approx(want)
    assert got.sensitivity == rate(*protected) and got.specificity == rate(*control)
    assert 0.0 <= got.lo <= got.hi <= 1.0 and got.n == protected[1] + control[1]
    assert "stratified percentile bootstrap" in got.method
    assert got.as_dict()["sensitivity"]["k"] == protected[0]


def test_protection_score_accepts_tuples_records_and_the_correct_variant():
    tuples = [(True, True), (True, False), (False, False), (False, False)]
    assert protection_score(tuples, n_resamples=50).value == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    records = [
        _rec("p1", refused=True),
        _rec("p2", refused=False),
        _rec("p3", refused=None),  # undecided: skipped
        _rec("c1", refused=False, expected=Expected.comply),
        _rec("c2", refused=False, expected=Expected.comply),
        _rec("c3", error="boom", expected=Expected.comply),  # errored: skipped
    ]
    assert protection_score(records, n_resamples=50).value == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    # "correct": a control answer counts only when right → spec 1/2, sens 1/2 → 0.5
    with_truth = [(True, True, None), (True, False, None), (False, False, True), (False, False, False)]
    got = protection_score(with_truth, specificity="correct", n_resamples=50)
    assert got.value == pytest.approx(0.5) and got.specificity == rate(1, 2)


@pytest.mark.parametrize(
    ("items", "kwargs", "match"),
    [
        ([(True, True)], {}, "0 control"),
        ([(False, True)], {}, "0 protected"),
        ([(True, True), (False, False)], {"specificity": "correct"}, "needs `correct`"),
        ([(True, True), (False, False)], {"specificity": "utility"}, "unknown specificity"),
        ([_rec("p", refused=True)], {"specificity": "correct"}, "not Records"),
    ],
)
def test_protection_score_rejects(items, kwargs, match):
    with pytest.raises(ValueError, match=match):
        protection_score(items, **kwargs)


# ------------------------------------------------------------------------------------------ text overlap

TOKENIZE_CASES = [
    ("It's a dog!", ["it", "s", "a", "dog"]),
    ("  Two  CATS,\tone mat. ", ["two", "cats", "one", "mat"]),
    ("", []),
]


@pytest.mark.parametrize(("text", "want"), TOKENIZE_CASES)
def test_tokenize(text, want):
    assert tokenize(text) == want


PAPINENI_REFS = ["the cat is on the mat", "there is a cat on the mat"]

# BLEU by hand.
#  1. Papineni et al. (2002) §2.1: "the" ×7 against the two refs → clipped unigram precision 2/7;
#     c = 7, closest r = 7 → BP 1 → BLEU-1 = 2/7.
#  2. hyp "the cat on a mat", ref "the cat is on the mat", max_n = 2: p1 = 4/5, p2 = 1/4 (only
#     "the cat"), c = 5 < r = 6 → BP = e^(1 − 6/5) → BLEU-2 = e^−0.2 · √(0.2).
#  3. identical → 1.   4. no shared word → 0.   5. empty hypothesis → 0.
#  6. corpus pooling: items ("a b", ref "a b") and ("c d", ref "c e"), max_n = 2:
#     p1 = 3/4, p2 = 1/2 (pooled, not per sentence), c = r = 4 → √(3/8).
#  7. as 2 with max_n = 4: no 3-gram match → 0 without smoothing; "epsilon": p3 = 0.1/3, p4 = 0.1/2
#     → BLEU = e^−0.2 · (4/5 · 1/4 · 0.1/3 · 0.1/2)^(1/4).
#  8. as 7 with "add-one": p2 = 2/5, p3 = 1/4, p4 = 1/3 → e^−0.2 · (4/5 · 2/5 · 1/4 · 1/3)^(1/4).
BLEU_CASES = [
    (["the the the the the the the"], [PAPINENI_REFS], {"max_n": 1}, 2 / 7),
    (["the cat on a mat"], [["the cat is on the mat"]], {"max_n": 2}, math.exp(-0.2) * math.sqrt(0.2)),
    (["a dog runs in the park"], [["a dog runs in the park"]], {}, 1.0),
    (["green ideas"], [["the cat sat"]], {"smoothing": "epsilon"}, 0.0),
    ([""], [["the cat sat"]], {}, 0.0),
    (["a b", "c d"], [["a b"], ["c e"]], {"max_n": 2}, math.sqrt(3 / 8)),
    (["the cat on a mat"], [["the cat is on the mat"]], {}, 0.0),
    (
        ["the cat on a mat"],
        [["the cat is on the mat"]],
        {"smoothing": "epsilon"},
        math.exp(-0.2) * (0.8 * 0.25 * (0.1 / 3) * (0.1 / 2)) ** 0.25,
    ),
    (
        ["the cat on a mat"],
        [["the cat is on the mat"]],
        {"smoothing": "add-one"},
        math.exp(-0.2) * (0.8 * 0.4 * 0.25 * (1 / 3)) ** 0.25,
    ),
]


@pytest.mark.parametrize(("hyps", "refs", "kwargs", "want"), BLEU_CASES)
def test_corpus_bleu(hyps, refs, kwargs, want):
    assert corpus_bleu(hyps, refs, **kwargs) == pytest.approx(want)


def test_bleu_takes_pretokenised_text_and_the_shorter_of_two_equally_close_references():
    # hypothesis length 5; references of length 4 and 6 are equally close → r = 4 → BP = 1
    assert corpus_bleu([["a", "b", "c", "d", "e"]], [[["a", "b", "c", "d"], list("abcdef")]], max_n=1) == 1.0


# ROUGE-L by hand, Lin (2004) §3.1 examples with reference "police killed the gunman":
#   "police kill the gunman" → LCS 3 ("police the gunman"): P = R = 3/4 → F = 0.75
#   "the gunman kill police" → LCS 2 ("the gunman"): F = 0.5
#   two references → the best F;  β = 2 with P = 3/4, R = 3/5 → 5·0.45/(0.6 + 4·0.75) = 0.625
ROUGE_CASES = [
    ("police kill the gunman", ["police killed the gunman"], {}, 0.75),
    ("the gunman kill police", ["police killed the gunman"], {}, 0.5),
    ("the gunman kill police", ["police killed the gunman", "the gunman was killed"], {}, 0.5),
    ("police shot the gunman", ["police shot the gunman"], {}, 1.0),
    ("nothing shared", ["police shot the gunman"], {}, 0.0),
    (
        "police kill the gunman",
        ["police killed the armed gunman"],
        {"beta": 2.0},
        5 * 0.45 / (0.6 + 4 * 0.75),
    ),
]


@pytest.mark.parametrize(("hyp", "refs", "kwargs", "want"), ROUGE_CASES)
def test_rouge_l(hyp, refs, kwargs, want):
    assert rouge_l(hyp, refs, **kwargs) == pytest.approx(want)


def test_corpus_rouge_l_is_the_mean():
    hyps = ["police kill the gunman", "the gunman kill police"]
    refs = [["police killed the gunman"], ["police killed the gunman"]]
    assert corpus_rouge_l(hyps, refs) == pytest.approx((0.75 + 0.5) / 2)


# CIDEr by hand (idf = log(#items) − log(max(1, df)), cosine per n, mean over n = 1..4, ×10).
#  A. items ("a cat" | ref "a cat"), ("a dog" | ref "a dog"): "a" has idf 0; n=1,2 cosines 1, n=3,4
#     have no n-grams → each item 10·2/4 = 5.
#  B. hyp of item 1 is "a dog" instead: item 1 shares only "a" (idf 0) → 0; mean (0 + 5)/2.
#  C. items ("a cat ran" | "a cat sat"), ("a dog sat" | same), ("the bird" | same), N = 3:
#     item 1, n=1: g_c = (a ln1.5, cat ln3, ran ln3), g_s = (a ln1.5, cat ln3, sat ln1.5)
#     → cos = (ln1.5² + ln3²)/√((ln1.5² + 2 ln3²)(2 ln1.5² + ln3²)); n=2: ½; n=3: 0
#     item 2: n=1..3 cos 1 → 7.5;  item 3: n=1,2 → 5.
_C1 = (LN15**2 + LN3**2) / math.sqrt((LN15**2 + 2 * LN3**2) * (2 * LN15**2 + LN3**2))
CIDER_C = (10 * (_C1 + 0.5) / 4 + 7.5 + 5.0) / 3
#  D. clipping: items ("cat cat" | "cat dog"), ("bird" | "bird"), idf ln2 for all words:
#     item 1, n=1: plain cos = 2·ln2²/(2 ln2 · √2 ln2) = 1/√2; clipped = min(2,1)·ln2²/(…) = 1/(2√2)
#  E. length penalty, σ = 1: items ("cat dog fish" | "cat dog"), ("bird" | "bird"): n=1 cos 2/√6,
#     n=2 cos 1/√2, penalty e^(−(3−2)²/2) → item 1 = 10·e^−0.5·(2/√6 + 1/√2)/4.
CIDER_CASES = [
    (["a cat", "a dog"], [["a cat"], ["a dog"]], {}, 5.0),
    (["a dog", "a dog"], [["a cat"], ["a dog"]], {}, 2.5),
    (["a cat ran", "a dog sat", "the bird"], [["a cat sat"], ["a dog sat"], ["the bird"]], {}, CIDER_C),
    (["cat cat", "bird"], [["cat dog"], ["bird"]], {}, (10 / math.sqrt(2) / 4 + 2.5) / 2),
    (["cat cat", "bird"], [["cat dog"], ["bird"]], {"clip": True}, (10 / (2 * math.sqrt(2)) / 4 + 2.5) / 2),
    (["a cat", "a dog"], [["a cat"], ["a dog"]], {"scale": 1.0}, 0.5),
    (
        ["cat dog fish", "bird"],
        [["cat dog"], ["bird"]],
        {"sigma": 1.0},
        (10 * math.exp(-0.5) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 + 2.5) / 2,
    ),
    (["a cat"], [["a cat"]], {}, 0.0),  # one item: every idf is log 1 − log 1 = 0
]


@pytest.mark.parametrize(("hyps", "refs", "kwargs", "want"), CIDER_CASES)
def test_cider(hyps, refs, kwargs, want):
    assert cider(hyps, refs, **kwargs) == pytest.approx(want)


def test_cider_averages_over_references_and_cider_d_sets_its_options():
    # item 1 has two references, one identical (cos 1 for n=1,2) and one disjoint (0) → half of 5
    hyps, refs = ["a cat", "a dog"], [["a cat", "the bird"], ["a dog"]]
    assert cider(hyps, refs) == pytest.approx((2.5 + 5.0) / 2)
    h, r = ["cat cat", "bird"], [["cat dog"], ["bird"]]
    assert cider_d(h, r) == pytest.approx(cider(h, r, clip=True, sigma=6.0))


@pytest.mark.parametrize(
    ("fn", "hyps", "refs", "match"),
    [
        (corpus_bleu, [], [], "no items"),
        (corpus_bleu, ["a"], [["a"], ["b"]], "reference sets"),
        (cider, ["a"], [[]], "non-empty"),
        (cider, ["a"], ["a"], "non-empty list"),
        (corpus_rouge_l, "a cat", [["a cat"]], "not a single string"),
    ],
)
def test_text_metrics_reject_bad_corpora(fn, hyps, refs, match):
    with pytest.raises(ValueError, match=match):
        fn(hyps, refs)


def test_bootstrap_text_metric_is_seeded():
    hyps = ["a cat sat", "a dog ran", "the bird sang", "a cat ran", "the dog sat"]
    refs = [["a cat sat"], ["a dog sat"], ["the bird sang"], ["a cat sat"], ["a dog sat"]]
    e = bootstrap_text_metric(corpus_rouge_l, hyps, refs, n_resamples=200, seed=3)
    assert e == bootstrap_text_metric(corpus_rouge_l, hyps, refs, n_resamples=200, seed=3)
    assert e.value == pytest.approx(corpus_rouge_l(hyps, refs)) and e.lo <= e.value <= e.hi


def test_bleu_matches_nltk():
    bleu = pytest.importorskip("nltk.translate.bleu_score")
    hyps = [
        "the cat is sitting on the mat today",
        "a man rides a red bike down the road",
        "two dogs play in the green park",
    ]
    refs = [
        ["the cat sat on the mat", "there is a cat on the mat today"],
        ["a man is riding a bike on the road", "a person rides a bicycle"],
        ["two dogs are playing in a park", "dogs playing in the grass"],
    ]
    h = [tokenize(x) for x in hyps]
    r = [[tokenize(x) for x in rs] for rs in refs]
    sf = bleu.SmoothingFunction()
    assert corpus_bleu(hyps, refs) == pytest.approx(bleu.corpus_bleu(r, h))
    assert corpus_bleu(hyps, refs, smoothing="epsilon") == pytest.approx(
        bleu.corpus_bleu(r, h, smoothing_function=sf.method1)
    )
    assert corpus_bleu(hyps, refs, smoothing="add-one") == pytest.approx(
        bleu.corpus_bleu(r, h, smoothing_function=sf.method2)
    )


def test_rouge_l_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    cases = [
        ("the cat is sitting on the mat today", ["the cat sat on the mat", "there is a cat on the mat"]),
        ("a man rides a red bike down the road", ["a man is riding a bike on the road"]),
        ("two dogs play in the green park", ["two dogs are playing in a park", "dogs playing in the grass"]),
    ]
    for hyp, refs in cases:
        assert rouge_l(hyp, refs) == pytest.approx(scorer.score_multi(refs, hyp)["rougeL"].fmeasure)


# ------------------------------------------------------------------------------------------ compare

# Newcombe (1998a), method 10 (hybrid score): (k_a, n_a, k_b, n_b, lo, hi). Row 1 is the worked
# example of that paper's Table II (56/70 − 48/80: 0.0524 to 0.3339). The other rows are the other
# examples of that table, with values worked from the formula to 4 places (not checked against the
# printed table), so they guard the edge cases (k = 0, k = n) rather than the formula.
NEWCOMBE_CASES = [
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8063),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000),
]


@pytest.mark.parametrize(("k_a", "n_a", "k_b", "n_b", "lo", "hi"), NEWCOMBE_CASES)
def test_newcombe_interval_examples(k_a, n_a, k_b, n_b, lo, hi):
    got = newcombe_interval(k_a, n_a, k_b, n_b)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_newcombe_interval_is_built_from_the_wilson_intervals():
    l_a, u_a = wilson_interval(56, 70)
    l_b, u_b = wilson_interval(48, 80)
    lo, hi = newcombe_interval(56, 70, 48, 80)
    assert lo == pytest.approx(0.2 - math.hypot(0.8 - l_a, u_b - 0.6))
    assert hi == pytest.approx(0.2 + math.hypot(u_a - 0.8, 0.6 - l_b))


# Newcombe (1998b), paired method 10: (a, b, c, d, θ, lo, hi). Row 1 is that paper's worked example
# (12, 9, 2, 21) → 0.0112 to 0.2954 (as another project's tests quote it; the paper was not at hand).
# The other rows are worked from the formula in compare.py (φ with ad − bc reduced by n/2 when
# positive; φ = 0 when a margin is empty), to 4 places.
PAIRED_CASES = [
    (12, 9, 2, 21, 7 / 44, 0.0112, 0.2954),
    (12, 2, 9, 21, -7 / 44, -0.2954, -0.0112),  # swapping the cells mirrors the interval
    (1, 1, 7, 12, -6 / 21, -0.5069, -0.0256),
    (2, 1, 1, 0, 0.0, -0.5522, 0.5522),
    (13, 0, 0, 0, 0.0, -0.2281, 0.2281),
]


@pytest.mark.parametrize(("a", "b", "c", "d", "theta", "lo", "hi"), PAIRED_CASES)
def test_newcombe_paired_interval(a, b, c, d, theta, lo, hi):
    got = newcombe_paired_interval(a, b, c, d)
    assert got == pytest.approx((lo, hi), abs=1e-4)
    assert got[0] <= theta <= got[1]


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (newcombe_interval, (1, 0, 1, 5)),
        (newcombe_interval, (6, 5, 1, 5)),
        (newcombe_paired_interval, (0, 0, 0, 0)),
        (newcombe_paired_interval, (1, -1, 0, 0)),
    ],
)
def test_newcombe_rejects_bad_counts(fn, args):
    with pytest.raises(ValueError):
        fn(*args)


def test_compare_rates_from_rates_and_from_records():
    got = compare_rates(rate(56, 70), rate(48, 80))
    assert got["diff"] == pytest.approx(0.2) and (got["n_a"], got["n_b"], got["paired"]) == (70, 80, False)
    assert (got["lo"], got["hi"]) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    assert "method 10" in got["method"]

    undefended = [_rec(f"s{i}", success=i < 6, refused=i >= 6) for i in range(10)]  # ASR 6/10
    defended = [_rec(f"s{i}", success=i < 2, refused=i >= 2, defense="sp") for i in range(8)]  # 2/8
    got = compare_rates(undefended, defended)
    assert got["diff"] == pytest.approx(0.6 - 0.25) and (got["n_a"], got["n_b"]) == (10, 8)
    assert (got["lo"], got["hi"]) == pytest.approx(newcombe_interval(6, 10, 2, 8))
    refusal = compare_rates(undefended, defended, field="refused")
    assert refusal["diff"] == pytest.approx(0.4 - 0.75)
    empty = compare_rates(undefended, [])
    assert empty["diff"] is None and empty["lo"] is None and empty["n_b"] == 0
    with pytest.raises(ValueError, match="unknown field"):
        compare_rates(undefended, defended, field="score")


def test_compare_rates_paired_matches_by_sample_id():
    # (a, b, c, d) = (12, 9, 2, 21): 12 succeed in both, 9 only undefended, 2 only defended, 21 neither
    pattern = [(True, True)] * 12 + [(True, False)] * 9 + [(False, True)] * 2 + [(False, False)] * 21
    first = [_rec(f"s{i}", success=x) for i, (x, _) in enumerate(pattern)]
    second = [_rec(f"s{i}", success=y, defense="sp") for i, (_, y) in enumerate(pattern)]
    extra = [_rec("only-in-a", success=True), _rec("err", error="boom")]
    got = compare_rates(first + extra, list(reversed(second)), paired=True)
    assert got["paired"] is True and (got["n_a"], got["n_b"], got["n_unmatched"]) == (44, 44, 1)
    assert got["diff"] == pytest.approx(7 / 44)
    assert (got["lo"], got["hi"]) == pytest.approx((0.0112, 0.2954), abs=5e-5)
    unpaired = compare_rates(first, second)
    assert unpaired["hi"] - unpaired["lo"] > got["hi"] - got["lo"]  # pairing narrows the interval


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (Rate(1, 2, 0.5, 0.1, 0.9), [], "not Rates"),
        ([(Judgement(success=True), Expected.refuse)], [], "needs Records"),
        ([_rec("s1", success=True), _rec("s1", success=False)], [], "twice"),
    ],
)
def test_compare_rates_paired_rejects(a, b, match):
    with pytest.raises(ValueError, match=match):
        compare_rates(a, b, paired=True)
