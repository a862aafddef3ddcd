"""Reports read only the store: ``summary.json`` (machine-readable), ``report.md`` and ``report.html`` (for people)."""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from mmsafe.judges.base import Judge, rate_name
from mmsafe.metrics.rates import Outcome
from mmsafe.metrics.summary import CellKey, SummaryRow
from mmsafe.report.tally import AXES, Cell, CellOutcomes, DefenseUse, Tally
from mmsafe.store.sqlite import Store
from mmsafe.types import ComponentSpec

if TYPE_CHECKING:
    from mmsafe.registry import Registry
    from mmsafe.report.browser import Section

log = logging.getLogger("mmsafe.report")


#: the labels of a summary row's cell, without its category
CELL_KEYS: tuple[CellKey, ...] = ("benchmark", "model", "attack", "defense", "judge")


class _SummaryOptional(TypedDict, total=False):
    """The keys of :class:`Summary` present only when there is something to report. (A base with ``total=False``
    rather than ``NotRequired``: under ``from __future__ import annotations`` Python 3.11 does not see
    ``NotRequired`` at run time, and ``Summary.__required_keys__`` would list the key.)"""

    #: human labels vs each other and vs the judges (:func:`mmsafe.report.human.human_summary`), when any are stored
    human: dict[str, Any]
    #: what the outputs were written from (:func:`output_stamp`): equal stamps, equal outputs
    stamp: str


class Summary(_SummaryOptional):
    """``summary.json``: what :func:`build_summary` reads from a store and every renderer reads."""

    generated: float
    runs: list[str]
    n_records: int
    n_errors: int
    #: store rows that could not be read back (damaged, or from another mmsafe version): counted nowhere else
    n_unreadable: int
    unreadable: list[str]
    models: list[dict[str, Any]]
    components: dict[str, list[dict[str, Any]]]
    rows: list[SummaryRow]
    adversarial: list[dict[str, Any]]
    #: what each attack spent building its prompts (:func:`attack_summary`)
    attacks: list[dict[str, Any]]
    judge_agreement: list[dict[str, Any]]
    effects: list[dict[str, Any]]
    defenses: list[dict[str, Any]]
    #: per defense, the attack that got through most often, static and adaptive (:func:`strongest_attacks`)
    strongest: list[dict[str, Any]]
    judges: list[dict[str, Any]]
    #: harm rates corrected for the judge's measured error (:func:`calibrated_rates`)
    calibrated: NotRequired[list[dict[str, Any]]]


def build_summary(store: Store, *, reference: bool = False, keep: Path | None = None) -> Summary:
    """The summary of every readable record of ``store``.

    The records are read once, in cell order, into a :class:`~mmsafe.report.tally.Tally` that keeps a few small
    values per record, never the records: memory grows with the number of verdicts, not with what each record
    holds. Cell order makes the summary independent of the order the records were written in. Each record comes
    as the facts the store computed when it was written (:mod:`mmsafe.store.facts`, read without pydantic), or,
    where it has none, or with ``reference``, as the slim record validated whole (:meth:`Store.iter_records`):
    ``reference`` is the readable definition that tests compare the fast path with, number for number.

    With ``keep`` (a file; :func:`write_outputs` passes :data:`SUMMARY_CACHE`), the part computed from the records
    (:func:`summarise_tally`: every rate, interval, agreement and effect; about 1.9 s at 50,000 records) is kept
    there under a digest of all it is a function of: the store's records and images (:meth:`Store.records_stamp`),
    this mmsafe (:func:`code_version`), the run names, the unreadable records and the judges' recorded
    evaluations. A summary redone for new human labels reuses it and computes only the human evaluation."""
    return _summary_and_tally(store, reference=reference, keep=keep)[0]


def _summary_and_tally(
    store: Store, *, reference: bool = False, keep: Path | None = None
) -> tuple[Summary, Tally]:
    """:func:`build_summary`, and the tally it was made from."""
    from mmsafe.report.human import human_summary

    tally = Tally()
    if reference:
        for record in store.iter_records(slim=True, by_cell=True):
            tally.add(record)
    else:
        for item in store.iter_facts():
            if isinstance(item, tuple):
                tally.add_facts(*item)
            else:
                tally.add(item)
    evals = {key: store.judge_evals(key) for key in tally.components.get("judge", {})}
    runs = [r["name"] for r in store.runs()]
    stamp = None if keep is None or reference else store.records_stamp()
    digest = None
    summary: Summary | None = None
    if keep is not None and stamp is not None:
        inputs = [stamp, code_version(), runs, store.unreadable, evals]
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        kept = _read_json(keep)
        if kept.get("key") == digest and isinstance(kept.get("summary"), dict):
            summary = cast(Summary, kept["summary"])
    if summary is None:
        summary = summarise_tally(tally, runs=runs, unreadable=store.unreadable, judge_evals=evals)
        if keep is not None and digest is not None:
            # kept, and used, as JSON gives it back (as summary.json holds it), so a kept summary and a fresh one
            # make the same outputs
            doc = json.loads(json.dumps({"key": digest, "summary": summary}, default=str))
            _keep_json(keep, doc)
            summary = cast(Summary, doc["summary"])
    if (human := human_summary(store, tally)) is not None:
        summary["human"] = human
    return summary, tally


def examples(store: Store, tally: Tally, k: int, *, max_chars: int = 1000) -> list[dict[str, Any]]:
    """:meth:`Store.examples` (``k`` answered must-refuse records per cell) from the records ``tally`` has read:
    only the records that may be shown are read again (:meth:`Store.examples_of`), not every record's facts."""
    from mmsafe.types import Expected

    names = {(axis, key): spec.name for axis, specs in tally.specs.items() for key, spec in specs.items()}

    def candidates() -> Iterator[tuple[Cell, str, tuple[str, ...]]]:
        for cell, outcomes in tally.cells.items():
            model, _, attack, defense, judge = (
                names[(axis, key)] for axis, key in zip(AXES, cell, strict=True)
            )
            for o in outcomes:
                if o.expected == Expected.refuse:
                    yield cell, o.sample_id, (o.benchmark, model, attack, defense, judge)

    return store.examples_of(candidates(), k, max_chars=max_chars)


def summarise_tally(
    tally: Tally,
    *,
    runs: list[str],
    unreadable: dict[str, str],
    judge_evals: Mapping[str, list[dict[str, Any]]] | None = None,
) -> Summary:
    """The summary of the records gathered in ``tally`` (see :func:`build_summary`); ``judge_evals``
    maps a judge's spec key to its evaluations recorded in the store (:meth:`Store.judge_evals`)."""
    from mmsafe.metrics import labels_of, summarise_groups
    from mmsafe.registry import Registry

    registry = Registry()
    labels = labels_of({axis: specs.values() for axis, specs in tally.specs.items()})
    components = tally.components
    summary: Summary = {
        "generated": time.time(),
        "runs": runs,
        "n_records": tally.n_records,
        "n_errors": tally.n_errors,
        # rows of the store that could not be read back (damaged, or from another mmsafe version): not counted above
        "n_unreadable": len(unreadable),
        "unreadable": sorted(unreadable)[:20],
        "models": [
            {"label": labels[("model", key)], "key": key, "note": note}
            for key, note in tally.model_notes.items()
        ],
        "components": {
            kind: [
                {"label": labels[(kind, s.key)], "key": s.key, "params": s.params, "version": s.version}
                for s in specs.values()
            ]
            for kind, specs in components.items()
        },
        "rows": summarise_groups(
            _groups(tally, labels),
            (*AXES, "category"),
            protection={
                labels[("benchmark", key)]
                for key, spec in tally.specs.get("benchmark", {}).items()
                if "protection_score" in benchmark_metrics(spec, registry=registry)
            },
        ),
        "adversarial": adversarial_summary(tally, labels),
        "attacks": attack_summary(tally, labels),
        "judge_agreement": judge_agreement(tally, labels) + ensemble_agreement(tally, labels),
        "effects": effects(tally, labels),
        "defenses": defense_summary(tally, labels),
        "strongest": strongest_attacks(tally, labels),
        "judges": judge_notes(components.get("judge", {}), labels, judge_evals or {}),
    }
    constructs = {
        labels[("judge", k)]: judge_construct(spec, registry=registry)
        for k, spec in components.get("judge", {}).items()
    }
    for row in summary["rows"]:
        row["construct"] = constructs.get(row.get("judge", ""), "other")
        row["rate_name"] = rate_name(row["construct"])
    for best in summary["strongest"]:
        best["rate_name"] = rate_name(constructs.get(best["judge"], "other"))
    for note in summary["judges"]:
        note["construct"] = constructs.get(note["label"], "other")
        note["rate_name"] = rate_name(note["construct"])
    summary["calibrated"] = calibrated_rates(summary["rows"], summary["judges"])
    return summary


def _groups(tally: Tally, labels: dict[tuple[str, str], str]) -> dict[tuple[str, ...], Collection[Outcome]]:
    """The outcomes by (model, benchmark, attack, defense, judge label, category), each group in
    record order: what :func:`~mmsafe.metrics.summarise` groups records into. Two cells whose
    labels are the same (two keys with one name and the same first six hex digits) are one group."""
    groups: dict[tuple[str, ...], list[CellOutcomes]] = {}
    for cell, outcomes in tally.cells.items():
        names = tuple(labels[(axis, key)] for axis, key in zip(AXES, cell, strict=True))
        for category, part in outcomes.by_category().items():
            groups.setdefault((*names, category), []).append(part)
    return {key: parts[0] if len(parts) == 1 else list(chain(*parts)) for key, parts in groups.items()}


def calibrated_rates(rows: list[SummaryRow], notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each overall cell whose judge has a harm judge-eval on record: its rate corrected for the
    judge's measured sensitivity and specificity (Rogan-Gladen), naming the labelled data used. The
    evaluation with the most rows is used; refusal-construct evaluations never correct a harm rate."""
    from mmsafe.metrics.calibration import rogan_gladen

    best: dict[str, dict[str, Any]] = {}
    for note in notes:
        if note.get("construct") != "harm":
            continue
        harm_evals = [
            e for e in note.get("evals") or [] if e.get("construct", "harm") == "harm" and e.get("confusion")
        ]
        if harm_evals:
            best[note["label"]] = max(harm_evals, key=lambda e: e.get("n") or 0)
    out = []
    for row in rows:
        ev = best.get(row.get("judge", ""))
        rate = row.get("asr") or {}
        if ev is None or row.get("category") != "ALL" or not rate.get("n"):
            continue
        (tn, fp), (fn, tp) = ev["confusion"]["counts"]
        est = rogan_gladen(rate["k"], rate["n"], tp=tp, fn=fn, tn=tn, fp=fp)
        if est is None:
            continue
        cell: dict[str, str] = {c: row[c] for c in CELL_KEYS}
        out.append({**cell, **est, "data_name": ev.get("data_name"), "data_n": ev.get("n")})
    return out


def judge_construct(spec: ComponentSpec, *, registry: Registry | None = None) -> str:
    """What a recorded judge's ``success`` measures (its class's construct for these params). ``registry``: one
    already made (making one reads every installed package's entry points)."""
    from pydantic import ValidationError

    from mmsafe.errors import ConfigError
    from mmsafe.registry import Registry

    registry = registry or Registry()
    if spec.name not in registry.names("judge"):  # a judge not registered here: only a "success rate"
        return "other"
    try:
        judge_cls = cast("type[Judge]", registry.get("judge", spec.name))
        return judge_cls.construct_for(spec.params)
    except (
        ConfigError,
        ValidationError,
    ):  # params this version no longer accepts (an ensemble member renamed): say so plainly
        return "other"


def benchmark_metrics(spec: ComponentSpec, *, registry: Registry | None = None) -> tuple[str, ...]:
    """The extra metrics a recorded benchmark's class asks the report for (its ``metrics``, e.g.
    PrivQA's ``("protection_score",)``); none for a benchmark not registered here."""
    from mmsafe.registry import Registry

    registry = registry or Registry()
    if spec.name not in registry.names("benchmark"):
        return ()
    return tuple(getattr(registry.get("benchmark", spec.name), "metrics", ()))


def judge_agreement(tally: Tally, labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Every pair of judges in the run, on the generations both judged: how often their ``success``
    verdicts agree and Cohen's κ (bootstrap 95% interval). The judge is a measured choice: two
    judges of one run that disagree often make every ASR in the report a statement about the judge.
    Generations are matched by model, benchmark, attack, defense and sample id, taken in that order."""
    from itertools import combinations

    from mmsafe.metrics.classification import cohen_kappa
    from mmsafe.metrics.rates import rate

    by_judge: dict[str, list[tuple[str, str, str, str]]] = {}
    for cell, outcomes in tally.cells.items():
        if any(not o.error and o.success is not None for o in outcomes):
            by_judge.setdefault(cell[4], []).append((cell[0], cell[1], cell[2], cell[3]))
    out = []
    for a, b in combinations(sorted(by_judge), 2):
        ya: list[bool] = []
        yb: list[bool] = []
        for generation_cell in sorted(set(by_judge[a]) & set(by_judge[b])):
            va, vb = (_success_by_sample(tally.cells[(*generation_cell, j)]) for j in (a, b))
            for sample_id in sorted(va.keys() & vb.keys()):
                ya.append(va[sample_id])
                yb.append(vb[sample_id])
        if not ya:
            continue
        agree = sum(x == y for x, y in zip(ya, yb, strict=True))
        try:
            k = cohen_kappa(ya, yb, n_resamples=500)
            kappa: dict[str, Any] | None = {"value": k.value, "lo": k.lo, "hi": k.hi}
        except ValueError:
            kappa = None  # undefined: both judges gave one same verdict to every item
        out.append(
            {
                "a": labels[("judge", a)],
                "b": labels[("judge", b)],
                "n": len(ya),
                "agreement": rate(agree, len(ya)).as_dict(),
                "kappa": kappa,
                "both_success": sum(x and y for x, y in zip(ya, yb, strict=True)),
                "only_a": sum(x and not y for x, y in zip(ya, yb, strict=True)),
                "only_b": sum(y and not x for x, y in zip(ya, yb, strict=True)),
            }
        )
    return out


def _success_by_sample(outcomes: Collection[Outcome]) -> dict[str, bool]:
    return {o.sample_id: bool(o.success) for o in outcomes if not o.error and o.success is not None}


def ensemble_agreement(tally: Tally, labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """For each ensemble judge of the run: every pair of its members, from the member verdicts the
    ensemble keeps in ``details`` (same row shape as :func:`judge_agreement`, without κ's interval)."""
    from mmsafe.judges.ensemble import pairwise_agreement
    from mmsafe.metrics.rates import rate

    out = []
    for key, members in tally.ensemble_members():
        for (a, b), st in pairwise_agreement(members).items():
            n = int(st["n"] or 0)
            if n == 0:
                continue
            pairs = [
                (bool(x.success), bool(y.success))
                for x, y in zip(members[a], members[b], strict=True)
                if x is not None
                and y is not None
                and not x.error
                and not y.error
                and x.success is not None
                and y.success is not None
            ]
            kappa = st["kappa"]
            out.append(
                {
                    "a": f"{labels[('judge', key)]}/{a}",
                    "b": f"{labels[('judge', key)]}/{b}",
                    "n": n,
                    "agreement": rate(round(float(st["agree"] or 0) * n), n).as_dict(),
                    "kappa": {"value": kappa, "lo": None, "hi": None} if kappa is not None else None,
                    "both_success": sum(x and y for x, y in pairs),
                    "only_a": sum(x and not y for x, y in pairs),
                    "only_b": sum(y and not x for x, y in pairs),
                }
            )
    return out


def effects(tally: Tally, labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """What each defense and each attack changes, paired by sample: ASR(cell) − ASR(baseline cell)
    with Newcombe's paired 95% interval, where the baseline is the same cell with defense ``none``
    (for defenses) or attack ``none`` (for attacks)."""
    from mmsafe.metrics.compare import compare_rates

    cells = tally.cells
    names = {key: spec.name for axis in ("attack", "defense") for key, spec in tally.specs[axis].items()}
    out = []
    for (model, bench, attack, defense, judge), outcomes in cells.items():
        for axis in ("defense", "attack"):
            mine = defense if axis == "defense" else attack
            if names.get(mine) == "none":
                continue
            for base, base_outcomes in cells.items():
                if base[0] != model or base[1] != bench or base[4] != judge:
                    continue
                other = base[3] if axis == "defense" else base[2]
                fixed_same = base[2] == attack if axis == "defense" else base[3] == defense
                if not fixed_same or names.get(other) != "none":
                    continue
                d = compare_rates(outcomes, base_outcomes, paired=True)
                if d["diff"] is None:
                    continue
                out.append(
                    {
                        "axis": axis,
                        "model": labels[("model", model)],
                        "benchmark": labels[("benchmark", bench)],
                        "attack": labels[("attack", attack)],
                        "defense": labels[("defense", defense)],
                        "judge": labels[("judge", judge)],
                        "baseline": labels[(axis, other)],
                        **d,
                    }
                )
    return out


def defense_summary(tally: Tally, labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Per defended cell (model × benchmark × attack × defense ≠ none × judge): the safety–utility
    balance. Defense success rate = share of must-refuse items the attack did not get through
    (1 − ASR, Wilson interval); the price = over-refusal on must-comply items, next to the same
    cell without the defense (paired difference, Newcombe); what the defense did (actions), the
    model calls it spent per item and its added seconds per item (from the generation metadata).
    Where a utility judge scored must-comply items against reference answers, also their mean
    utility and its paired change against the undefended cell (bootstrap intervals)."""
    from mmsafe.metrics.compare import compare_rates
    from mmsafe.metrics.rates import over_refusal_rate, rate
    from mmsafe.metrics.utility import compare_utility, mean_utility
    from mmsafe.types import Expected

    cells = tally.cells
    names = {key: spec.name for key, spec in tally.specs["defense"].items()}
    out = []
    for cell, outcomes in cells.items():
        model, bench, attack, defense, judge = cell
        if names.get(defense) == "none":
            continue
        decided = held = 0  # must-refuse verdicts, and those the attack did not get through
        for o in outcomes:
            if o.expected == Expected.refuse and not o.error and o.success is not None:
                decided += 1
                held += not o.success
        base = next(
            (
                v
                for k, v in cells.items()
                if k[:3] == (model, bench, attack) and k[4] == judge and names.get(k[3]) == "none"
            ),
            None,
        )
        price = utility_price = None
        if base is not None:
            d = compare_rates(outcomes, base, paired=True, field="refused", expected=Expected.comply)
            price = d if d["diff"] is not None else None
            utility_price = compare_utility(outcomes, base)
        utility = mean_utility(outcomes)
        use = tally.defense_use.get(cell) or DefenseUse()
        out.append(
            {
                "model": labels[("model", model)],
                "benchmark": labels[("benchmark", bench)],
                "attack": labels[("attack", attack)],
                "defense": labels[("defense", defense)],
                "judge": labels[("judge", judge)],
                "defense_success": rate(held, decided).as_dict(),
                "over_refusal": over_refusal_rate(outcomes).as_dict(),
                "over_refusal_price": price,
                "utility": utility.as_dict() if utility is not None else None,
                "utility_price": utility_price,
                "actions": dict(use.actions),
                "calls_per_item": sum(use.calls) / len(use.calls) if use.calls else None,
                "seconds_per_item": sum(use.seconds) / len(use.seconds) if use.seconds else None,
            }
        )
    return out


#: attack params that make an attack adaptive (it sees the defense): a query search with the defended model in its
#: loop (``adaptive``), a white-box optimisation through a defense's input transform (``through``) or against a
#: detector's score (``evade``)
ADAPTIVE_PARAMS = ("adaptive", "through", "evade")


def is_adaptive(params: Mapping[str, Any]) -> bool:
    """Whether an attack with these params is an adaptive attack (:data:`ADAPTIVE_PARAMS`)."""
    return any(params.get(k) not in (None, False) for k in ADAPTIVE_PARAMS)


def adaptive_how(params: Mapping[str, Any]) -> str | None:
    """How an attack with these params sees the defense, in a few words (``through purify``, ``evade cider``,
    ``defense in the loop``), or None for a static attack."""
    parts = []
    for key in ("through", "evade"):
        value = params.get(key)
        if value not in (None, False):
            name = value.get("name") if isinstance(value, Mapping) else value
            parts.append(f"{key} {name}")
    if params.get("adaptive") not in (None, False):
        parts.append("defense in the loop")
    return ", ".join(parts) or None


def strongest_attacks(tally: Tally, labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Per model × benchmark × defense × judge run under two or more attacks: the attack that got through most
    often (highest rate on must-refuse items, ties to the larger n), over all attacks, over static ones and over
    adaptive ones (:func:`is_adaptive`), each with its rate and Wilson interval. A defense is as good as its number
    under the strongest attack it was run against (Carlini et al., 2019, "On Evaluating Adversarial Robustness";
    Tramèr et al., NeurIPS 2020). The interval is that one attack's: choosing the highest of several rates favours
    the attacker, and the interval is not widened for that choice."""
    from mmsafe.metrics.rates import rate
    from mmsafe.types import Expected

    attack_specs = tally.specs.get("attack", {})
    groups: dict[tuple[str, str, str, str], list[tuple[str, bool, int, int]]] = {}
    for (model, bench, attack, defense, judge), outcomes in tally.cells.items():
        k = n = 0
        for o in outcomes:
            if o.expected == Expected.refuse and not o.error and o.success is not None:
                n += 1
                k += bool(o.success)
        spec = attack_specs.get(attack)
        adaptive = spec is not None and is_adaptive(spec.params or {})
        groups.setdefault((model, bench, defense, judge), []).append((attack, adaptive, k, n))

    def best(rows: list[tuple[str, bool, int, int]]) -> dict[str, Any] | None:
        rows = [r for r in rows if r[3]]
        if not rows:
            return None
        attack, adaptive, k, n = max(rows, key=lambda r: (r[2] / r[3], r[3], labels[("attack", r[0])]))
        spec = attack_specs.get(attack)
        how = adaptive_how(spec.params or {}) if spec is not None else None
        return {"attack": labels[("attack", attack)], "adaptive": adaptive, "how": how, "rate": rate(k, n).as_dict()}

    out = []
    for (model, bench, defense, judge), rows in groups.items():
        strongest = best(rows)
        if len(rows) < 2 or strongest is None:  # one attack, or no must-refuse verdict: nothing to compare
            continue
        out.append(
            {
                "model": labels[("model", model)],
                "benchmark": labels[("benchmark", bench)],
                "defense": labels[("defense", defense)],
                "judge": labels[("judge", judge)],
                "attacks": len(rows),
                "adaptive_attacks": sum(r[1] for r in rows),
                "strongest": strongest,
                "strongest_static": best([r for r in rows if not r[1]]),
                "strongest_adaptive": best([r for r in rows if r[1]]),
            }
        )
    return out


def judge_notes(
    specs: dict[str, ComponentSpec],
    labels: dict[tuple[str, str], str],
    judge_evals: Mapping[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Each judge of the run with its measured agreement with labelled data, as recorded in the run
    store (``judge_evals``, by the judge's spec key: the runner copies in what ``mmsafe judge-eval
    --record`` measured). Nothing is read from this machine's cache: a store reports the same
    everywhere."""
    return [
        {
            "label": labels[("judge", key)],
            "key": key,
            "version": spec.version,
            "evals": list(judge_evals.get(key, [])),
        }
        for key, spec in specs.items()
    ]


def adversarial_summary(tally: Tally, labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Per model × benchmark × attack × defense: what the white-box optimisation did, once per image
    (records of other judges on the same sample are not counted twice). ``success`` is the
    attack's own test (e.g. greedy decoding emitted the target) over images that have one."""
    import math

    from mmsafe.metrics import rate

    cells = {cell: list(by_sample.values()) for cell, by_sample in tally.adversarial.items()}

    def mean(values: list[Any]) -> float | None:
        xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
        return sum(xs) / len(xs) if xs else None

    out = []
    for (model, bench, attack, defense), metas in cells.items():
        tested = [m["success"] for m in metas if isinstance(m.get("success"), bool)]
        out.append(
            {
                "model": labels[("model", model)],
                "benchmark": labels[("benchmark", bench)],
                "attack": labels[("attack", attack)],
                "defense": labels[("defense", defense)],
                "images": len(metas),
                "success": rate(sum(tested), len(tested)).as_dict(),
                "steps": mean([m.get("steps") for m in metas]),
                # per image: a batch's wall time shared by its images; a universal image's fit, once
                "seconds": mean([m.get("seconds", 0) / max(1, int(m.get("batch") or 1)) for m in metas])
                if not any(m.get("universal") for m in metas)
                else mean([m.get("seconds") for m in metas]),
                "universal": any(m.get("universal") for m in metas),
                "eps": metas[0].get("eps"),
                "norm": metas[0].get("norm"),
                "linf_max": max((float(m.get("linf", 0.0)) for m in metas), default=None),
                "l2": mean([m.get("l2") for m in metas]),
                "ssim": mean([m.get("ssim") for m in metas]),
                "psnr": mean([m.get("psnr") for m in metas]),
                "crafted_on": sorted({str(m.get("crafted_on")) for m in metas}),
            }
        )
    return out


def attack_summary(tally: Tally, labels: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
    """Per model × benchmark × attack ≠ none × defense: what building the prompts cost, once per prompt (records of
    other judges on the same sample are not counted twice): the attack's wall seconds per prompt (its share of each
    batch the runner gave it, sub-model calls included), the calls it made to the model under test while crafting
    (``queries``: a query-based search; 0 for a one-shot attack) and to helper models (``aux_calls``: an attacker LLM,
    a judge, an image generator), each a mean over the prompts whose attack reported it (``n_reported``)."""
    out = []
    for (model, bench, attack, defense), by_sample in tally.attack_use.items():
        costs = list(by_sample.values())
        row: dict[str, Any] = {
            "model": labels[("model", model)],
            "benchmark": labels[("benchmark", bench)],
            "attack": labels[("attack", attack)],
            "defense": labels[("defense", defense)],
            "prompts": len(costs),
        }
        for i, name in enumerate(("seconds", "queries", "aux_calls")):
            xs = [float(c[i]) for c in costs if len(c) > i and c[i] is not None]
            row[f"{name}_per_prompt"] = sum(xs) / len(xs) if xs else None
            row[f"{name}_reported"] = len(xs)
        out.append(row)
    return out


#: the sample browser of ``report.html`` holds at most this many items (the first in cell order; the page says
#: so): about 30 MB of items at most, plus images. ``mmsafe view`` browses every item of any run.
REPORT_MAX_ITEMS = 20_000


@functools.cache
def code_version() -> str:
    """This mmsafe: its version and a digest of its source files and assets (about 30 ms, once per process), so
    outputs and kept parts made by other code, an edited checkout included, are made again."""
    from mmsafe import __version__

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".js", ".css") and p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"mmsafe-{__version__}-{digest.hexdigest()[:12]}"


def output_stamp(store: Store) -> str | None:
    """What the outputs of ``store`` are a function of: the store's content stamp
    (:meth:`Store.content_stamp`, bumped by every write a report reads) and this mmsafe (:func:`code_version`).
    None when the store has no stamp (made before stamps, opened read-only since): its outputs are always
    rewritten."""
    content = store.content_stamp()
    return None if content is None else f"{content}:{code_version()}"


def _current(paths: dict[str, Path], stamp: str | None) -> bool:
    """Whether the outputs at ``paths`` all exist and ``summary.json`` was written under ``stamp``."""
    if stamp is None or not all(p.is_file() for p in paths.values()):
        return False
    try:
        with paths["summary"].open(encoding="utf-8") as fh:
            written = json.load(fh).get("stamp")
    except (OSError, ValueError, AttributeError):
        return False
    return written == stamp


def write_outputs(store: Store, out_dir: str | Path, *, force: bool = False) -> dict[str, Path]:
    """(Re)write ``summary.json``, ``report.md`` and ``report.html`` in ``out_dir`` from ``store``.

    Outputs that exist and were written under the store's current :func:`output_stamp` are left as they
    are (the same store content and mmsafe version give the same outputs, but for ``generated``), unless
    ``force``: a rerun of a finished run, or ``mmsafe report`` twice, rewrites nothing."""
    out = Path(out_dir)
    paths = {"summary": out / "summary.json", "report": out / "report.md", "html": out / "report.html"}
    stamp = output_stamp(store)
    if not force and _current(paths, stamp):
        log.info("outputs in %s are current (store %s); not rewritten", out, stamp)
        return paths
    with _without_cycle_collection():
        _write_outputs(store, out, paths, stamp)
    return paths


@contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """The garbage collector's cycle detection off while a report is made, as it was afterwards. A report makes
    about a million small objects that live until it is written (tally entries, items, rows), almost none in
    cycles; each allocation threshold crossed started a collection that walked them all again: 0.2-0.3 s of a
    3.5 s report at 50,000 records (``benchmarks/resume_report.py``). Memory is freed by reference counting as
    before; the few cycles wait for the next collection after the report."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _write_outputs(store: Store, out: Path, paths: dict[str, Path], stamp: str | None) -> None:
    from mmsafe.report import charts
    from mmsafe.report.html import render_html
    from mmsafe.report.markdown import render

    summary, tally = _summary_and_tally(store, keep=out / SUMMARY_CACHE)
    if stamp is not None:
        summary["stamp"] = stamp
    if summary["n_unreadable"]:
        log.warning(
            "%d record(s) of %s cannot be read and are left out of the report (key %r…)",
            summary["n_unreadable"],
            store.path,
            summary["unreadable"][0][:16],
        )
    errors = store.error_groups()
    _atomic_write(paths["report"], render(summary, errors=errors, examples=examples(store, tally, 3)))
    with charts.kept(charts.ChartStore(_read_json(out / CHARTS_CACHE))) as drawn:
        html = render_html(summary, errors=errors, sections=[_browser(store, out)])
    _keep_json(out / CHARTS_CACHE, drawn.used)
    _atomic_write(paths["html"], html)
    # last: its stamp says the other two are current (a crash before it leaves them to be rewritten)
    _atomic_write(paths["summary"], json.dumps(summary, indent=2, sort_keys=True, default=str))


#: where :func:`write_outputs` keeps the sample browser's items between reports (under the output folder)
ITEMS_CACHE = Path(".mmsafe-cache") / "items.sqlite"
#: where it keeps the charts it drew, by what they were drawn from (:class:`~mmsafe.report.charts.ChartStore`)
CHARTS_CACHE = Path(".mmsafe-cache") / "charts.json"
#: where it keeps the summary's part computed from the records, by what it was computed from (:func:`build_summary`)
SUMMARY_CACHE = Path(".mmsafe-cache") / "summary.json"


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object kept at ``path``; ``{}`` when there is none or it cannot be read."""
    try:
        with path.open(encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _keep_json(path: Path, value: dict[str, Any]) -> None:
    """Keep ``value`` at ``path`` for the next report; a cache that cannot be written is only a warning."""
    try:
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        # one json.dumps (the C encoder; json.dump streams through the pure-Python one, ~5x slower here): the
        # text is about the size of the page's own copy of the items, which is held in memory anyway
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot keep %s for the next report: %s", path, exc)


def _browser(store: Store, out: Path) -> Section:
    """The sample browser of ``report.html`` (:func:`~mmsafe.report.browser.browser_section`), its items kept in
    :data:`ITEMS_CACHE` between reports: a report reads again only the items whose records changed since the last
    (:mod:`mmsafe.report.item_cache`), none after new human labels or judge evaluations."""
    from mmsafe.report.browser import browser_section

    salt = f"{store.get_meta('store_id')}:{code_version()}"
    return browser_section(store, max_items=REPORT_MAX_ITEMS, keep=(out / ITEMS_CACHE, salt))


def rerender(out_dir: str | Path) -> dict[str, Path]:
    """``mmsafe report DIR``: rebuild the outputs from the store alone."""
    with Store.open_existing(out_dir) as store:  # read-only: a mistyped folder is an error, never a new store
        return write_outputs(store, out_dir)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
