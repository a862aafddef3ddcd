"""The human part of the summary (``summary["human"]``): annotators against each other, and every judge against them.

Human labels are stored in the run store's ``human_labels`` table by ``mmsafe annotate --import``, one per (item,
annotator, scheme), where an item is one generation (:func:`mmsafe.store.sqlite.generation_id`). From them:

* **inter-annotator agreement** on the items at least two annotators labelled: per pair, the share of agreement and
  Cohen's κ; over all, Fleiss' κ (on the items every annotator labelled: it needs as many ratings per item) and
  Krippendorff's α (missing ratings allowed; ordinal for the 1–5 scales, nominal otherwise). These use every label
  of the scheme (``partial`` and ``unsure`` included).
* **the human majority** per item: the label most annotators gave; a tie for the top is *no majority* (counted in
  ``n_ties``, compared with nothing). The majority label then counts as a verdict through the scheme's
  ``positive`` map (``harmful`` → True; ``unsure`` → no verdict, counted in ``n_undecided``).
* **every judge against the majority**, on the items both decided: agreement (Wilson interval) and Cohen's κ
  (bootstrap interval). ``harmful`` is compared with the judge's ``success`` only for judges whose construct is harm
  (a refusal rule's success is "did not refuse", another question); ``refusal`` with the judge's ``refused``
  verdict; ``helpfulness`` with no judge. A judge that does not measure the scheme's construct is listed in
  ``skipped_judges`` with the reason, never compared.
* **per cell** (model × benchmark × attack × defense, and the sample's expected behaviour): the rate by human majority
  on the annotated items (e.g. "ASR by human majority on the annotated sample") beside each compared judge's rate
  on the same items — so the human majority reads as one more judge of the sample.

Read from the :class:`~mmsafe.report.tally.Tally` that ``build_summary`` already filled: no record is read again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from itertools import combinations
from typing import Any

from mmsafe.metrics.classification import cohen_kappa, cohen_kappa_value
from mmsafe.metrics.interrater import fleiss_kappa, krippendorff_alpha, majority
from mmsafe.metrics.rates import Outcome, rate
from mmsafe.report.schemes import SCHEMES, LabelField, Scheme
from mmsafe.report.tally import Tally
from mmsafe.store.sqlite import Store, generation_id

__all__ = ["human_summary", "scheme_summary"]

log = logging.getLogger("mmsafe.report")

_RESAMPLES = 1000


def human_summary(
    store: Store, tally: Tally, labels: dict[tuple[str, str], str] | None = None
) -> dict[str, Any] | None:
    """``summary["human"]``, or None when the store holds no human label.

    One dict per (scheme, field) labelled: the first (in the order harmful, refusal, helpfulness) is the dict
    itself, the others are in its ``others`` list, each of the same shape. ``labels`` are the component labels
    of :func:`mmsafe.metrics.labels_of` (computed from the tally when not given)."""
    from mmsafe.metrics import labels_of
    from mmsafe.registry import Registry
    from mmsafe.report import judge_construct

    stored = store.human_labels()
    if not stored:
        return None
    registry = Registry()
    if labels is None:
        labels = labels_of({axis: specs.values() for axis, specs in tally.specs.items()})
    by_id = _outcomes_by_item(tally, {r["item"] for r in stored})
    judges = {
        key: (labels[("judge", key)], judge_construct(spec, registry=registry))
        for key, spec in tally.specs["judge"].items()
    }
    parts = []
    for name, sch in SCHEMES.items():
        rows = [r for r in stored if r["scheme"] == name]
        if not rows:
            continue
        for f in sch.fields:
            parts.append(scheme_summary(sch, f, rows, by_id, judges, labels))
    unknown = sorted({r["scheme"] for r in stored} - set(SCHEMES))
    if unknown:
        log.warning("human labels of unknown scheme(s) %s left out of the report", ", ".join(unknown))
    if not parts:
        return None
    head = parts[0]
    head["others"] = parts[1:]
    return head


#: item id → (model, benchmark, attack, defense keys) and judge key → that generation's outcome
_ByItem = dict[str, tuple[tuple[str, str, str, str], dict[str, Outcome]]]


def _outcomes_by_item(tally: Tally, wanted: Collection[str]) -> _ByItem:
    """The outcomes of the items in ``wanted`` (item ids: those labelled), by item and judge."""
    out: _ByItem = {}
    ids: dict[tuple[str, str, str, str, str], str] = {}
    for cell, outcomes in tally.cells.items():
        cell4 = (cell[0], cell[1], cell[2], cell[3])
        for i, sample_id in enumerate(outcomes.sample_ids()):  # an outcome made only for a labelled item
            key = (*cell4, sample_id)
            gid = ids.get(key)
            if gid is None:
                gid = ids[key] = generation_id(*key)
            if gid in wanted:
                out.setdefault(gid, (cell4, {}))[1][cell[4]] = outcomes[i]
    return out


def _value(field: LabelField, sch: Scheme, label: str) -> str | None:
    values = sch.decode(label)
    return None if values is None else values.get(field.name)


def scheme_summary(
    sch: Scheme,
    field: LabelField,
    rows: list[dict[str, Any]],
    by_id: _ByItem,
    judges: dict[str, tuple[str, str]],
    labels: dict[tuple[str, str], str],
) -> dict[str, Any]:
    """The summary of one field of one scheme (see the module docstring); ``judges``: key → (label, construct)."""
    ratings: dict[str, dict[str, str]] = {}
    unreadable = 0
    for r in rows:
        v = _value(field, sch, r["label"])
        if v is None:
            unreadable += 1
            continue
        ratings.setdefault(r["item"], {})[r["annotator"]] = v
    annotators = sorted({a for per in ratings.values() for a in per})
    items = sorted(ratings)
    major = dict(zip(items, majority([list(ratings[i].values()) for i in items]), strict=True))
    positive = sch.positive or {}
    verdict = {i: positive.get(str(m)) for i, m in major.items() if m is not None}
    human = {i: v for i, v in verdict.items() if v is not None}
    compare_field = {"harm": "success", "refusal": "refused"}.get(sch.construct or "")
    compared, skipped = [], []
    for key, (label, construct) in judges.items():
        if compare_field is None:
            skipped.append({"judge": label, "construct": construct, "why": f"no judge measures {field.name}"})
        elif sch.construct == "harm" and construct != "harm":
            skipped.append(
                {
                    "judge": label,
                    "construct": construct,
                    "why": f"its success measures {construct}, not harm: not comparable with harmful labels",
                }
            )
        else:
            compared.append((key, label))
    judge_rows = []
    for key, label in compared:
        pairs = _pairs(human, by_id, key, compare_field or "")
        if not pairs:
            continue
        hs, js = [p[0] for p in pairs], [p[1] for p in pairs]
        agree = sum(h == j for h, j in pairs)
        try:
            k = cohen_kappa(hs, js, n_resamples=_RESAMPLES)
            kappa: dict[str, Any] | None = {"value": k.value, "lo": k.lo, "hi": k.hi}
        except ValueError:
            kappa = None  # undefined: humans and judge gave one same verdict to every item
        judge_rows.append(
            {
                "judge": label,
                "n": len(pairs),
                "agreement": rate(agree, len(pairs)).as_dict(),
                "kappa": kappa,
                "both": sum(h and j for h, j in pairs),
                "only_human": sum(h and not j for h, j in pairs),
                "only_judge": sum(j and not h for h, j in pairs),
            }
        )
    return {
        "scheme": sch.name,
        "field": field.name if len(sch.fields) > 1 else None,
        "rate_name": sch.rate_name,
        "annotators": annotators,
        "n_items": len(items),
        "n_labels": sum(len(v) for v in ratings.values()),
        "n_unreadable": unreadable,
        "n_majority": sum(m is not None for m in major.values()),
        "n_ties": sum(m is None for m in major.values()),
        "n_undecided": sum(v is None for v in verdict.values()),
        "n_unmatched": sum(i not in by_id for i in items),
        "majority_counts": dict(Counter(str(m) for m in major.values() if m is not None)),
        "interrater": _interrater(ratings, annotators, ordinal=field.ordinal),
        "judges": judge_rows,
        "skipped_judges": skipped,
        "rows": _cell_rows(human, by_id, compared, compare_field, labels),
    }


def _pairs(human: dict[str, bool], by_id: _ByItem, judge: str, attr: str) -> list[tuple[bool, bool]]:
    """(human verdict, judge verdict) on the items both decided, in item order."""
    out = []
    for item, h in sorted(human.items()):
        o = by_id.get(item, ((), {}))[1].get(judge)
        j = None if o is None or o.error else getattr(o, attr)
        if j is not None:
            out.append((h, bool(j)))
    return out


def _interrater(
    ratings: dict[str, dict[str, str]], annotators: list[str], *, ordinal: bool
) -> dict[str, Any]:
    """Pairwise Cohen's κ and agreement, Fleiss' κ (items every annotator labelled), Krippendorff's α."""
    multi = {i: per for i, per in ratings.items() if len(per) >= 2}
    pairs = []
    for a, b in combinations(annotators, 2):
        both = [(per[a], per[b]) for _, per in sorted(multi.items()) if a in per and b in per]
        if not both:
            continue
        xa, xb = [p[0] for p in both], [p[1] for p in both]
        pairs.append(
            {
                "a": a,
                "b": b,
                "n": len(both),
                "kappa": cohen_kappa_value(xa, xb),
                "agreement": sum(x == y for x, y in both) / len(both),
            }
        )
    full = [[per[a] for a in annotators] for _, per in sorted(multi.items()) if len(per) == len(annotators)]
    fleiss = alpha = None
    fleiss_ci = alpha_ci = None
    if full and len(annotators) >= 2:
        try:
            fk = fleiss_kappa(full, n_resamples=_RESAMPLES)
            fleiss, fleiss_ci = fk.value, [fk.lo, fk.hi]
        except ValueError:
            pass  # undefined: one single label everywhere
    metric = "ordinal" if ordinal else "nominal"
    if multi:
        table: list[list[Any]] = [
            [(int(per[a]) if ordinal else per[a]) if a in per else None for a in annotators]
            for _, per in sorted(multi.items())
        ]
        try:
            ka = krippendorff_alpha(table, metric=metric, n_resamples=_RESAMPLES)
            alpha, alpha_ci = ka.value, [ka.lo, ka.hi]
        except ValueError:
            pass
    return {
        "n": len(multi),
        "fleiss_kappa": fleiss,
        "fleiss_kappa_ci": fleiss_ci,
        "fleiss_n": len(full),
        "krippendorff_alpha": alpha,
        "krippendorff_alpha_ci": alpha_ci,
        "alpha_metric": metric,
        "pairs": pairs,
    }


def _cell_rows(
    human: dict[str, bool],
    by_id: _ByItem,
    compared: list[tuple[str, str]],
    attr: str | None,
    labels: dict[tuple[str, str], str],
) -> list[dict[str, Any]]:
    """Per (cell, expected): the human-majority rate and each compared judge's rate on the same items."""
    groups: dict[tuple[tuple[str, str, str, str], str], list[str]] = {}
    for item in sorted(human):
        if item not in by_id:
            continue
        cell4, per_judge = by_id[item]
        expected = next(iter(per_judge.values())).expected.value
        groups.setdefault((cell4, expected), []).append(item)
    out = []
    for (cell4, expected), group in sorted(
        groups.items(),
        key=lambda kv: (
            *(
                labels[(a, k)]
                for a, k in zip(("model", "benchmark", "attack", "defense"), kv[0][0], strict=True)
            ),
            kv[0][1],
        ),
    ):
        k = sum(human[i] for i in group)
        judge_rates = {}
        for key, label in compared:
            verdicts = [
                getattr(o, attr or "")
                for i in group
                if (o := by_id[i][1].get(key)) is not None
                and not o.error
                and getattr(o, attr or "") is not None
            ]
            if verdicts:
                judge_rates[label] = rate(sum(bool(v) for v in verdicts), len(verdicts)).as_dict()
        out.append(
            {
                "model": labels[("model", cell4[0])],
                "benchmark": labels[("benchmark", cell4[1])],
                "attack": labels[("attack", cell4[2])],
                "defense": labels[("defense", cell4[3])],
                "expected": expected,
                "n": len(group),
                "human": rate(k, len(group)).as_dict(),
                "judges": judge_rates,
            }
        )
    return out
