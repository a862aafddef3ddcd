"""What the report's numbers read of one record, computed once as the record is written.

A report used to validate every stored record with pydantic to read a few values of each (its verdict bits, sample
id, category, the defense's account, the white-box figures, an ensemble's member verdicts): about 0.2 ms a record,
20 s at 50,000 records. :func:`record_facts` takes those values from the validated :class:`~mmsafe.types.Record`
when :meth:`~mmsafe.store.sqlite.Store.put_records` writes it, :func:`encode` keeps them as a short JSON array in
the ``record_facts`` table (one row per record key, in the same transaction), and :func:`decode` gives them back to
:class:`~mmsafe.report.tally.Tally` without pydantic. ``Tally.add(record)`` itself goes through
:func:`record_facts`, so there is one definition of what a record contributes, whichever way it is read.

A record whose facts are missing (a store written before the table, a row changed by another program: a trigger
drops its facts) is read and validated whole, as before.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from mmsafe.metrics.rates import Outcome, outcome
from mmsafe.types import DefenseAccount, Expected, Record

__all__ = [
    "ADVERSARIAL_FIELDS",
    "RecordFacts",
    "attack_cost",
    "decode",
    "defense_account",
    "encode",
    "record_facts",
]

#: What the adversarial table reads of a white-box attack's ``attack_metadata``.
ADVERSARIAL_FIELDS = (
    "success",
    "steps",
    "seconds",
    "batch",
    "universal",
    "eps",
    "norm",
    "linf",
    "l2",
    "ssim",
    "psnr",
    "crafted_on",
)

#: the version of the encoding: facts of another version are not read (the record is read whole), and a store
#: opened for writing computes its facts again (:meth:`~mmsafe.store.sqlite.Store.put_records`' table)
FACTS_VERSION = 3


class RecordFacts(NamedTuple):
    """What :class:`~mmsafe.report.tally.Tally` reads of one record."""

    #: the record failed, or its verdict did
    errored: bool
    model_note: str | None
    outcome: Outcome
    #: the defense's account when the defense is not ``none``: ``None`` (no account), ``("unreadable",)``, or
    #: ``(action, calls, seconds)``; ``()`` when the defense is ``none`` (nothing to count)
    defense: tuple[Any, ...]
    #: the white-box attack's figures, when the prompt has them
    adversarial: dict[str, Any] | None
    #: an ensemble judge's member verdicts ``(name, success or None)`` in member order, else None
    members: tuple[tuple[str, bool | None], ...] | None
    #: what the attack spent on this record's prompt, ``(seconds, queries, aux_calls)`` (see :func:`attack_cost`);
    #: ``()`` when the attack is ``none`` or the prompt was not built
    attack: tuple[Any, ...] = ()


def defense_account(generation: dict[str, Any] | None) -> tuple[Any, ...]:
    """What the report counts of a defended record's account (:class:`~mmsafe.types.DefenseAccount` in its
    generation's metadata): ``(action, calls, seconds)``, ``(None,)`` when there is none, ``("unreadable",)``
    when it does not fit the schema."""
    try:
        account = DefenseAccount.of((generation or {}).get("metadata"))
    except ValueError:  # a record written outside the schema (by hand, or by an old plugin)
        return ("unreadable",)
    if account is None:
        return (None,)
    return (account.action, float(account.calls), float(account.seconds or 0.0))


def _count(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def attack_cost(timings: dict[str, Any], attack_metadata: dict[str, Any]) -> tuple[Any, ...]:
    """What an attack spent on one prompt: ``(seconds, queries, aux_calls)`` — its share of the runner's wall
    time for the batch it built (``timings["attack_s"]``), the calls to the model under test it made while crafting
    (``attack_metadata["queries"]``) and the calls to helper models (attacker LLM, judge, image generator:
    ``attack_metadata["aux_calls"]``); each None when the record does not say."""
    seconds = _count(timings.get("attack_s"))
    return (
        None if seconds is None else round(seconds, 6),
        _count(attack_metadata.get("queries")),
        _count(attack_metadata.get("aux_calls")),
    )


def record_facts(r: Record, strings: dict[str, str] | None = None) -> RecordFacts:
    """The facts of ``r`` (``strings`` shares equal texts, as :func:`~mmsafe.metrics.rates.outcome` does)."""
    j = r.judgement
    defense = defense_account(r.generation) if r.defense.name != "none" else ()
    meta = (r.prompt or {}).get("attack_metadata") or {}
    adversarial = {k: meta[k] for k in ADVERSARIAL_FIELDS if k in meta} if "adversarial" in meta else None
    attack = attack_cost(r.timings, meta) if r.attack.name != "none" and r.prompt is not None else ()
    members = None
    if r.judge.name == "ensemble" and not r.error and j is not None:
        # each member's verdict as the ensemble judge stores it in ``details["members"]`` (read here from
        # the stored data, as judges.ensemble.member_judgements does: the store imports no judge)
        stored = j.details.get("members") or {}
        members = tuple(
            (
                name,
                None
                if not isinstance(m, dict) or m.get("error") or m.get("success") is None
                else bool(m["success"]),
            )
            for name, m in stored.items()
        )
    return RecordFacts(
        errored=bool(r.error or (j is not None and j.error)),
        model_note=r.model_note,
        outcome=outcome(r, strings),
        defense=defense,
        adversarial=adversarial,
        members=members,
        attack=attack,
    )


def encode(facts: RecordFacts) -> str:
    """``facts`` as compact JSON (floats round-trip exactly: ``json`` writes their shortest repr). The sample id
    and category are left out: they are the record row's own columns, and without them the facts of records with
    the same verdicts are the same text, decoded once (:func:`decode`)."""
    o = facts.outcome
    return json.dumps(
        [
            FACTS_VERSION,
            facts.errored,
            facts.model_note,
            [o.benchmark, o.expected.value, *o[4:]],
            list(facts.defense),
            facts.adversarial,
            None if facts.members is None else [list(m) for m in facts.members],
            list(facts.attack),
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )


#: what :func:`decode` keeps of a facts text: everything but the sample id and category
_Decoded = tuple[
    bool, str | None, tuple[Any, ...], tuple[Any, ...], dict[str, Any] | None, Any, tuple[Any, ...]
]


def decode(
    text: str, sample_id: str, category: str, strings: dict[str, str], memo: dict[str, _Decoded]
) -> RecordFacts | None:
    """The facts :func:`encode` wrote for the record with ``sample_id`` and ``category`` (its row's columns), texts
    shared through ``strings``; None for another version or damage. ``memo`` keeps decoded texts (equal verdicts
    give equal texts): at most a few thousand, so it does not grow with the store."""
    parts = memo.get(text)
    if parts is None:
        try:
            version, errored, note, o, defense, adversarial, members, attack = json.loads(text)
            bench, expected, *verdict = o
            if version != FACTS_VERSION or len(verdict) != 6:
                return None
            share = strings.setdefault
            error, success, refused, label, predicted, utility = verdict
            head = (share(bench, bench), Expected(expected))
            rest = (
                error,
                success,
                refused,
                None if label is None else share(label, label),
                None if predicted is None else share(predicted, predicted),
                utility,
            )
            members = None if members is None else tuple((str(n), v) for n, v in members)
        except (ValueError, TypeError):
            return None
        if len(memo) >= 4096:
            memo.clear()
        parts = memo[text] = (
            errored,
            note,
            (*head, *rest),
            tuple(defense),
            adversarial,
            members,
            tuple(attack),
        )
    errored, note, o, defense, adversarial, members, attack = parts
    return RecordFacts(
        errored=errored,
        model_note=note,
        outcome=Outcome(
            o[0], strings.setdefault(sample_id, sample_id), strings.setdefault(category, category), *o[1:]
        ),
        defense=defense,
        adversarial=adversarial,
        members=members,
        attack=attack,
    )
