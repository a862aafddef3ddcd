"""The typed defense account (``Generation.metadata["defense"]``): one schema for the defenses that
write it and the report that reads it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mmsafe.defenses.base import Defense, mark
from mmsafe.models.scripted import ScriptedModel
from mmsafe.report.tally import Tally
from mmsafe.store.facts import defense_account
from mmsafe.types import DefenseAccount, Generation, Message, Prompt


def _p(text: str) -> Prompt:
    return Prompt(messages=(Message.user(text),))


class _HandWritten(Defense):
    """A defense that writes its account by hand (as a plugin written before ``mark`` might)."""

    name = "hand-written"

    def defend(self, prompts: Sequence[Prompt], seeds: Sequence[int], model) -> list[Generation | Exception]:
        out: list[Generation | Exception] = []
        for g in model.generate(prompts, seeds=seeds):
            assert isinstance(g, Generation)
            bad = "exploded" if "boom" in g.text else "passed"
            out.append(
                g.model_copy(update={"metadata": {**g.metadata, "defense": {"action": bad, "calls": 1}}})
            )
        return out


def test_mark_writes_an_account_the_schema_reads_back_with_its_details():
    gen = mark(Generation(text="no"), "blocked", calls=0, categories=["S9"])
    account = DefenseAccount.of(gen.metadata)
    assert account is not None and account.action == "blocked" and account.calls == 0
    assert account.model_extra == {"categories": ["S9"]}
    assert gen.metadata["defense"] == {"categories": ["S9"], "action": "blocked", "calls": 0}
    assert DefenseAccount.of(Generation(text="x").metadata) is None
    with pytest.raises(ValueError, match="unknown defense action 'exploded'"):
        mark(Generation(text="no"), "exploded")


def test_the_defended_model_adds_name_and_seconds_and_fails_only_an_item_with_a_bad_account():
    model = ScriptedModel(rules={"boom": "boom"}, default="fine")
    ok, bad = _HandWritten().wrap(model).generate([_p("hello"), _p("boom")], seeds=[0, 0])
    assert isinstance(ok, Generation)
    account = DefenseAccount.of(ok.metadata)
    assert account is not None and account.name == "hand-written" and account.seconds is not None
    assert isinstance(bad, ValueError) and "hand-written" in str(bad) and "exploded" in str(bad)


def _record_dict(defense: object) -> tuple:
    return defense_account({"metadata": {"defense": defense}})


def test_the_report_counts_actions_and_puts_an_unreadable_account_aside():
    tally = Tally()
    cell = ("m", "b", "a", "d", "j")
    tally._add_defense_use(cell, "s1", _record_dict({"action": "blocked", "calls": 2, "seconds": 0.5}))
    tally._add_defense_use(cell, "s2", _record_dict({"action": "exploded"}))
    tally._add_defense_use(cell, "s3", _record_dict({"action": "passed", "calls": 1}))
    use = tally.defense_use[cell]
    assert use.actions == {"blocked": 1, "unreadable": 1, "passed": 1}
    assert list(use.calls) == [2.0, 1.0] and list(use.seconds) == [0.5, 0.0]
