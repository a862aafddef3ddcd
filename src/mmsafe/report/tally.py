"""One pass over a store's records, keeping only what the report's numbers read.

:class:`Tally` takes the records one at a time (:meth:`Store.iter_records` with ``by_cell=True``, or their facts:
:meth:`Store.iter_facts`) and keeps, per grid cell, each record's :class:`~mmsafe.metrics.Outcome` (verdict bits,
the sample's id, category and labels, a utility score) as two pointers: its sample id, a text shared by every
record of the sample, and the rest, a tuple shared by every outcome with the same values (:class:`CellOutcomes`).
Beyond that it keeps what a few tables need: the defense's actions and costs per defended cell, the white-box
attack's figures once per image, an ensemble's member verdicts; component specs once each. So the report's memory
grows by a few tens of bytes per record and a sample id per sample, never by a record (prompt metadata, generation
metadata, judge details: kilobytes each).

Everything is kept in the order the records came in, so the numbers computed from a tally are those
computed from the list of records it was given (bootstrap resamples and float sums see their
inputs in the same order).
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from mmsafe.metrics.rates import Outcome
from mmsafe.store.facts import ADVERSARIAL_FIELDS, RecordFacts, record_facts
from mmsafe.types import ComponentSpec, Judgement, Record

__all__ = ["ADVERSARIAL_FIELDS", "AXES", "Cell", "CellOutcomes", "DefenseUse", "Tally"]

#: The grid's component axes, as the report names them.
AXES = ("model", "benchmark", "attack", "defense", "judge")
_ATTRS = ("model", "benchmark_spec", "attack", "defense", "judge")

#: A grid cell: the spec keys of its model, benchmark, attack, defense and judge.
Cell = tuple[str, str, str, str, str]

#: An :class:`Outcome` without its sample id, one shared tuple per distinct value.
_Rest = tuple[Any, ...]
_new = tuple.__new__


class CellOutcomes(Sequence[Outcome]):
    """The outcomes of one cell (or group), kept as two lists: their sample ids, and the rest of
    each outcome as a tuple shared by every outcome with the same values (a verdict and a category
    recur; only the sample id is new): two pointers per record. Outcomes are made as they are read."""

    __slots__ = ("_ids", "_rests")

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._rests: list[_Rest] = []

    def append(self, sample_id: str, rest: _Rest) -> None:
        self._ids.append(sample_id)
        self._rests.append(rest)

    def by_category(self) -> dict[str, CellOutcomes]:
        """The outcomes split by category, each part in this order."""
        out: dict[str, CellOutcomes] = {}
        for sample_id, rest in zip(self._ids, self._rests, strict=True):
            out.setdefault(rest[1], CellOutcomes()).append(sample_id, rest)
        return out

    def __len__(self) -> int:
        return len(self._ids)

    def sample_ids(self) -> list[str]:
        """The outcomes' sample ids, in order (the list itself: do not change it)."""
        return self._ids

    def distinct_outcomes(self) -> Counter[Outcome]:
        """How many outcomes are each outcome, sample id blank (see
        :func:`mmsafe.metrics.summary.distinct_outcomes`): the shared tuples counted, none made per record."""
        return Counter({_new(Outcome, (r[0], "", *r[1:])): c for r, c in Counter(self._rests).items()})

    def __iter__(self) -> Iterator[Outcome]:
        # tuple.__new__ on the whole tuple: two thirds of the time of Outcome(*fields), for the same namedtuple
        for sample_id, rest in zip(self._ids, self._rests, strict=True):
            yield _new(Outcome, (rest[0], sample_id, *rest[1:]))

    @overload
    def __getitem__(self, i: int) -> Outcome: ...
    @overload
    def __getitem__(self, i: slice) -> list[Outcome]: ...
    def __getitem__(self, i: int | slice) -> Outcome | list[Outcome]:
        if isinstance(i, slice):
            return [Outcome(r[0], s, *r[1:]) for s, r in zip(self._ids[i], self._rests[i], strict=True)]
        rest = self._rests[i]
        return Outcome(rest[0], self._ids[i], *rest[1:])


@dataclass
class DefenseUse:
    """What a defense did in one cell, from its records' ``generation.metadata["defense"]``: how
    often each action, and per item that has the note, the model calls and seconds it spent."""

    actions: dict[str, int] = field(default_factory=dict)
    calls: array[float] = field(default_factory=lambda: array("d"))
    seconds: array[float] = field(default_factory=lambda: array("d"))
    last_sample: str | None = None  # the sample counted last: each sample once


@dataclass
class _Members:
    """An ensemble judge's member verdicts: member names in the order first seen, and per record
    one entry per name known then (None: no verdict, or an errored or undecided one)."""

    names: list[str] = field(default_factory=list)
    rows: list[tuple[bool | None, ...]] = field(default_factory=list)


class Tally:
    """What :func:`~mmsafe.report.build_summary` reads of every record, gathered with :meth:`add`.

    Records must come grouped by cell, each cell's in sample-id order
    (``Store.iter_records(by_cell=True)``); the tables list cells in the order first seen.
    """

    def __init__(self) -> None:
        self.n_records = 0
        self.n_errors = 0  # failed records and failed verdicts
        #: axis → spec key → spec (the first of its records)
        self.specs: dict[str, dict[str, ComponentSpec]] = {axis: {} for axis in AXES}
        #: spec kind → spec key → spec, kinds and keys in the order first seen
        self.components: dict[str, dict[str, ComponentSpec]] = {}
        #: model spec key → the note of its first record ("random weights")
        self.model_notes: dict[str, str | None] = {}
        self.cells: dict[Cell, CellOutcomes] = {}
        self.defense_use: dict[Cell, DefenseUse] = {}
        #: (model, benchmark, attack, defense) → sample id → the white-box attack's figures for it
        self.adversarial: dict[tuple[str, str, str, str], dict[str, dict[str, Any]]] = {}
        #: (model, benchmark, attack, defense) → sample id → ``(seconds, queries, aux_calls)`` the attack spent on it
        self.attack_use: dict[tuple[str, str, str, str], dict[str, tuple[Any, ...]]] = {}
        self._ensembles: dict[str, _Members] = {}
        self._strings: dict[str, str] = {}
        self._rests: dict[_Rest, _Rest] = {}
        self._keys: dict[int, tuple[ComponentSpec, str]] = {}

    def _key(self, spec: ComponentSpec) -> str:
        """``spec.key`` (a hash of the spec), computed once per spec object: the store's slim
        records share one object per spec."""
        hit = self._keys.get(id(spec))
        if hit is None or hit[0] is not spec:
            if len(self._keys) >= 4096:  # records that do not share their specs: keep no cache of them
                self._keys.clear()
            hit = self._keys[id(spec)] = (spec, spec.key)
        return hit[1]

    def add(self, record: Record) -> None:
        """Count one record: its specs and :func:`~mmsafe.store.facts.record_facts`."""
        specs = [getattr(record, attr) for attr in _ATTRS]
        self.add_facts([self._key(spec) for spec in specs], specs, record_facts(record, self._strings))

    def add_facts(self, keys: Sequence[str], specs: Sequence[ComponentSpec], facts: RecordFacts) -> None:
        """Count one record given as the spec keys and specs of its model, benchmark, attack, defense and judge,
        and its facts (from :func:`~mmsafe.store.facts.record_facts`, or read back from the store)."""
        self.n_records += 1
        if facts.errored:
            self.n_errors += 1
        cell: Cell = (keys[0], keys[1], keys[2], keys[3], keys[4])
        if cell not in self.cells:  # a cell's records come together: its specs are counted with its first
            for axis, key, spec in zip(AXES, keys, specs, strict=True):
                self.specs[axis].setdefault(key, spec)
                self.components.setdefault(spec.kind, {}).setdefault(key, spec)
            self.model_notes.setdefault(cell[0], facts.model_note)
        o = facts.outcome
        rest = (o[0], *o[2:])
        self.cells.setdefault(cell, CellOutcomes()).append(o.sample_id, self._rests.setdefault(rest, rest))
        if facts.defense:  # a defense other than none
            self._add_defense_use(cell, o.sample_id, facts.defense)
        if facts.adversarial is not None:  # once per image: the first judge's record of the sample
            self.adversarial.setdefault((cell[0], cell[1], cell[2], cell[3]), {}).setdefault(
                o.sample_id, facts.adversarial
            )
        if facts.attack:  # once per prompt: the first judge's record of the sample
            self.attack_use.setdefault((cell[0], cell[1], cell[2], cell[3]), {}).setdefault(
                o.sample_id, facts.attack
            )
        if facts.members is not None:
            self._add_members(cell[4], facts.members)

    def _add_defense_use(self, cell: Cell, sample_id: str, account: tuple[Any, ...]) -> None:
        use = self.defense_use.setdefault(cell, DefenseUse())
        if use.last_sample == sample_id:  # once per sample (a cell's records come in sample-id order)
            return
        use.last_sample = sample_id
        if account == ("unreadable",):  # a record written outside the schema (by hand, or by an old plugin)
            use.actions["unreadable"] = use.actions.get("unreadable", 0) + 1
            return
        if account != (None,):
            action, calls, seconds = account
            use.actions[action] = use.actions.get(action, 0) + 1
            use.calls.append(calls)
            use.seconds.append(seconds)

    def _add_members(self, judge_key: str, members: tuple[tuple[str, bool | None], ...]) -> None:
        ens = self._ensembles.setdefault(judge_key, _Members())
        verdicts: dict[str, bool | None] = {}
        for name, verdict in members:
            if name not in ens.names:
                ens.names.append(name)
            verdicts[name] = verdict
        ens.rows.append(tuple(verdicts.get(n) for n in ens.names))

    def ensemble_members(self) -> Iterator[tuple[str, dict[str, list[Judgement | None]]]]:
        """Per ensemble judge (spec key, in the order first seen): its members' verdicts aligned by
        record, as :func:`~mmsafe.judges.ensemble.member_judgements` gives them, reduced to what
        agreement reads (``success``; None for no verdict, an errored or an undecided one)."""
        yes, no = Judgement(success=True), Judgement(success=False)
        for key, ens in self._ensembles.items():
            columns: dict[str, list[Judgement | None]] = {n: [] for n in ens.names}
            for row in ens.rows:
                for i, name in enumerate(ens.names):
                    v = row[i] if i < len(row) else None
                    columns[name].append(None if v is None else yes if v else no)
            yield key, columns
