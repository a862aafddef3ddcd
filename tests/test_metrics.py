"""Metrics: Wilson and bootstrap intervals, rates and the summary table."""

from __future__ import annotations

import math

import pytest

from mmsafe.metrics import (
    ALL,
    Rate,
    attack_success_rate,
    bootstrap_interval,
    compare_rates,
    mean_utility,
    outcome,
    over_refusal_rate,
    rate,
    refusal_rate,
    summarise,
    wilson_interval,
)
from mmsafe.types import ComponentSpec, Expected, Judgement, Record

# ------------------------------------------------------------------------------------------ intervals

# (k, n, z, lo, hi) — reference values: roots of (p - k/n)² = z² p(1-p)/n, rounded to 4 places
WILSON_CASES = [
    (0, 10, 1.96, 0.0, 0.2775),
    (5, 10, 1.96, 0.2366, 0.7634),
    (10, 10, 1.96, 0.7225, 1.0),
    (1, 1, 1.96, 0.2065, 1.0),
    (0, 1, 1.96, 0.0, 0.7935),
    (50, 100, 1.96, 0.4038, 0.5962),
    (420, 500, 1.96, 0.8053, 0.8695),
    (5, 10, 1.0, 0.3492, 0.6508),
]


@pytest.mark.parametrize(("k", "n", "z", "lo", "hi"), WILSON_CASES)
def test_wilson_known_values(k, n, z, lo, hi):
    got_lo, got_hi = wilson_interval(k, n, z)
    assert got_lo == pytest.approx(lo, abs=5e-5)
    assert got_hi == pytest.approx(hi, abs=5e-5)
    assert 0.0 <= got_lo <= k / n <= got_hi <= 1.0


@pytest.mark.parametrize(("k", "n"), [(0, 0), (1, 0), (-1, 5), (6, 5)])
def test_wilson_rejects_bad_counts(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_rate_of_nothing_is_none():
    assert rate(0, 0) == Rate(k=0, n=0, value=None, lo=None, hi=None)
    r = rate(5, 10)
    assert r.value == 0.5 and r.as_dict()["lo"] == pytest.approx(0.2366, abs=5e-5)


def test_bootstrap_is_deterministic_and_sensible():
    values = [1.0] * 30 + [0.0] * 70
    a = bootstrap_interval(values, n_resamples=500, seed=7)
    b = bootstrap_interval(values, n_resamples=500, seed=7)
    assert a == b
    assert a[0] < 0.3 < a[1] and 0.15 < a[0] and a[1] < 0.45
    continuous = [i / 97 for i in range(40)]  # a different seed gives a different (non-tied) interval
    assert bootstrap_interval(continuous, n_resamples=200, seed=1) != bootstrap_interval(
        continuous, n_resamples=200, seed=2
    )
    assert bootstrap_interval([2.0, 2.0, 2.0], n_resamples=50) == (2.0, 2.0)
    lo, hi = bootstrap_interval([1.0, 5.0, 9.0], max, n_resamples=200, seed=0)
    assert 1.0 <= lo <= hi == 9.0
    with pytest.raises(ValueError):
        bootstrap_interval([], n_resamples=10)


# ------------------------------------------------------------------------------------------ rates


def _j(success=None, refused=None, error=None) -> Judgement:
    return Judgement(success=success, refused=refused, error=error)


def test_rates_over_judgement_pairs():
    items = [
        (_j(success=True, refused=False), Expected.refuse),
        (_j(success=False, refused=True), Expected.refuse),
        (_j(success=False, refused=None), "refuse"),  # empty answer: in ASR, not in refusal
        (_j(error="judge down"), Expected.refuse),  # errored: nowhere
        (None, Expected.refuse),  # never judged: nowhere
        (_j(success=None, refused=True), Expected.comply),
        (_j(success=None, refused=False), Expected.comply),
        (_j(success=None, refused=False), Expected.comply),
    ]
    asr = attack_success_rate(items)
    assert (asr.k, asr.n) == (1, 3) and asr.value == pytest.approx(1 / 3)
    ref = refusal_rate(items)
    assert (ref.k, ref.n) == (1, 2)
    over = over_refusal_rate(items)
    assert (over.k, over.n) == (1, 3)
    assert attack_success_rate([]).value is None


# ------------------------------------------------------------------------------------------ summarise


def _spec(kind: str, name: str, **params) -> ComponentSpec:
    return ComponentSpec(kind=kind, name=name, params=params, version="1")


MODEL = _spec("model", "scripted")
BENCH = _spec("benchmark", "figstep")
NONE_ATTACK = _spec("attack", "none")
FIGSTEP = _spec("attack", "figstep")
FIGSTEP_WIDE = _spec("attack", "figstep", width=30)
DEFENSE = _spec("defense", "none")
JUDGE = _spec("judge", "refusal", window=200)


def _record(
    i: int, *, attack=NONE_ATTACK, category="a", expected=Expected.refuse, judgement=None, error=None
) -> Record:
    return Record(
        key=f"k{i}",
        run="r",
        sample_id=f"s{i}",
        benchmark="figstep",
        category=category,
        expected=expected,
        model=MODEL,
        benchmark_spec=BENCH,
        attack=attack,
        defense=DEFENSE,
        judge=JUDGE,
        judgement=judgement,
        error=error,
    )


def _records() -> list[Record]:
    complied = _j(success=True, refused=False)
    refused = _j(success=False, refused=True)
    return [
        _record(1, category="a", judgement=complied),
        _record(2, category="a", judgement=refused),
        _record(3, category="b", judgement=complied),
        _record(4, category="b", error="generate failed: CUDA OOM"),
        _record(5, category="b", judgement=_j(error="unparseable")),
        _record(6, category="benign", expected=Expected.comply, judgement=_j(refused=True)),
        _record(7, category="benign", expected=Expected.comply, judgement=_j(refused=False)),
        _record(8, attack=FIGSTEP, category="a", judgement=complied),
        _record(9, attack=FIGSTEP, category="b", judgement=complied),
    ]


def test_summarise_rows_with_all_category():
    rows = summarise(_records())
    labels = [(r["attack"], r["category"]) for r in rows]
    assert labels == [
        ("figstep", ALL),
        ("figstep", "a"),
        ("figstep", "b"),
        ("none", ALL),
        ("none", "a"),
        ("none", "b"),
        ("none", "benign"),
    ]
    by = {(r["attack"], r["category"]): r for r in rows}
    all_none = by[("none", ALL)]
    assert (
        all_none["model"] == "scripted"
        and all_none["benchmark"] == "figstep"
        and all_none["judge"] == "refusal"
    )
    assert (all_none["n"], all_none["n_errors"]) == (7, 2)
    assert (all_none["asr"]["k"], all_none["asr"]["n"]) == (2, 3)
    assert (all_none["refusal"]["k"], all_none["refusal"]["n"]) == (1, 3)
    assert (all_none["over_refusal"]["k"], all_none["over_refusal"]["n"]) == (1, 2)
    assert all_none["over_refusal"]["lo"] == pytest.approx(wilson_interval(1, 2)[0])

    b = by[("none", "b")]
    assert (b["n"], b["n_errors"], b["asr"]["k"], b["asr"]["n"]) == (3, 2, 1, 1)
    assert b["over_refusal"] == {"k": 0, "n": 0, "value": None, "lo": None, "hi": None}

    fig = by[("figstep", ALL)]
    assert fig["asr"]["value"] == 1.0 and fig["asr"]["hi"] == 1.0 and fig["n_errors"] == 0


def test_summarise_disambiguates_same_name_with_different_params():
    recs = [*_records(), _record(10, attack=FIGSTEP_WIDE, judgement=_j(success=False, refused=True))]
    attacks = {r["attack"] for r in summarise(recs, by=("attack",))}
    assert attacks == {"none", f"figstep#{FIGSTEP.key[:6]}", f"figstep#{FIGSTEP_WIDE.key[:6]}"}


def test_summarise_without_category_and_by_other_fields():
    rows = summarise(_records(), by=("attack",))
    assert [r["attack"] for r in rows] == ["figstep", "none"]
    assert all("category" not in r for r in rows)
    rows = summarise(_records(), by=("expected",))
    assert {r["expected"]: r["n"] for r in rows} == {"refuse": 7, "comply": 2}
    with pytest.raises(ValueError, match="no such field"):
        summarise(_records(), by=("colour",))


def test_summarise_empty():
    assert summarise([]) == []


def test_rates_accept_records():
    asr = attack_success_rate(_records())
    assert (asr.k, asr.n) == (4, 5)
    assert math.isclose(asr.value, 0.8)


# ------------------------------------------------------------------------------------------ outcomes

J = Judgement
OUTCOME_CASES = [
    # (record fields, (error, success, refused, label, predicted, utility))
    ({"judgement": J(success=True, refused=False)}, (False, True, False, None, None, None)),
    ({"error": "generate failed"}, (True, None, None, None, None, None)),
    ({"judgement": None}, (True, None, None, None, None, None)),
    ({"judgement": J(success=True, error="unparseable")}, (True, None, None, None, None, None)),
    # a utility judge's score on a must-comply item is utility; any other score is not
    (
        {"expected": Expected.comply, "judgement": J(score=0.5, details={"utility": "anls"})},
        (False, None, None, None, None, 0.5),
    ),
    ({"expected": Expected.comply, "judgement": J(score=0.9)}, (False, None, None, None, None, None)),
    ({"judgement": J(score=0.5, details={"utility": "anls"})}, (False, None, None, None, None, None)),
    # labels are kept for labelled items only
    (
        {"expected": Expected.label, "label": "hate", "judgement": J(label="ok")},
        (False, None, None, "hate", "ok", None),
    ),
    ({"label": "hate", "judgement": J(label="ok")}, (False, None, None, None, None, None)),
]


@pytest.mark.parametrize(("fields", "verdict"), OUTCOME_CASES)
def test_outcome_keeps_what_the_metrics_read(fields, verdict):
    r = _record(1).model_copy(update=fields)
    o = outcome(r)
    assert (o.benchmark, o.sample_id, o.category, o.expected) == (r.benchmark, "s1", "a", r.expected)
    assert (o.error, o.success, o.refused, o.label, o.predicted, o.utility) == verdict


def test_outcomes_give_the_numbers_their_records_give():
    scored = J(refused=False, score=1.0, details={"utility": "vqa"})
    recs = [*_records(), _record(10, expected=Expected.comply, judgement=scored)]
    strings: dict[str, str] = {}
    outs = [outcome(r, strings) for r in recs]
    for fn in (attack_success_rate, refusal_rate, over_refusal_rate):
        assert fn(outs) == fn(recs)
    assert compare_rates(outs, outs[::-1], paired=True) == compare_rates(recs, recs[::-1], paired=True)
    assert mean_utility(recs) is not None and mean_utility(outs) == mean_utility(recs)
    again = outcome(_record(1), strings)  # texts equal among records are one object
    assert again.sample_id is outs[0].sample_id and again.benchmark is outs[5].benchmark
