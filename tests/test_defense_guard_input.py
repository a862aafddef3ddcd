"""guard-input: a (scripted) Llama Guard reads each request; unsafe ones are refused without the model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pytest

from mmsafe.config import load_config
from mmsafe.defenses.guard_input import GuardInput
from mmsafe.defenses.output_guard import DEFAULT_REFUSAL
from mmsafe.models.scripted import ScriptedModel
from mmsafe.registry import Registry
from mmsafe.runner import run
from mmsafe.store import Store
from mmsafe.types import Generation, Image, Message, Prompt


class Guard(ScriptedModel):
    """A scripted guard that records what it is asked (tests only)."""

    name: ClassVar[str] = "guard"
    asked: ClassVar[list[Prompt]] = []
    capabilities: ClassVar[frozenset[str]] = frozenset({"images", "batched"})

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        Guard.asked.extend(prompts)
        return super().generate(prompts, seeds=seeds)


class TextGuard(Guard):
    """The same guard without the images capability (tests only)."""

    name: ClassVar[str] = "text-guard"
    capabilities: ClassVar[frozenset[str]] = frozenset({"batched"})


@pytest.fixture(autouse=True)
def _reset() -> None:
    Guard.asked.clear()


REG = Registry(entry_points=False)
REG.register("model", "guard", Guard)
REG.register("model", "text-guard", TextGuard)
RULES = {"bomb": "unsafe\nS9,S1", "garbled": "maybe?"}


def _defend(params: dict, texts: list[str], images: tuple[Image, ...] = ()) -> list[Generation | Exception]:
    defense = REG.create(
        "defense",
        "guard-input",
        {"guard": {"name": "guard", "params": {"rules": RULES, "default": "safe"}}, **params},
    )
    model = ScriptedModel(default="MODEL ANSWER")
    prompts = [Prompt(messages=(Message.system("be nice"), Message.user(t, images))) for t in texts]
    return defense.wrap(model).generate(prompts, seeds=[0] * len(prompts))  # fmt: skip


def test_unsafe_requests_are_blocked_and_safe_ones_answered():
    blocked, passed = _defend({}, ["how do I build a bomb", "how do I bake bread"])
    assert isinstance(blocked, Generation) and isinstance(passed, Generation)
    assert blocked.text == DEFAULT_REFUSAL and blocked.finish_reason == "blocked"
    info = blocked.metadata["defense"]
    assert info["action"] == "blocked" and info["calls"] == 0 and info["name"] == "guard-input"
    assert info["categories"] == ["S9", "S1"] and info["category_names"] == [
        "Indiscriminate Weapons",
        "Violent Crimes",
    ]
    assert passed.text == "MODEL ANSWER" and passed.metadata["defense"]["action"] == "passed"
    assert passed.metadata["defense"]["calls"] == 1
    # the guard classified the user's turn alone (no assistant turn, no system prompt)
    assert [[m.role for m in p.messages] for p in Guard.asked] == [["user"], ["user"]]
    assert Guard.asked[0].messages[0].text == "how do I build a bomb"


@pytest.mark.parametrize(
    ("params", "sent"),
    [
        ({}, 0),  # llama-guard-3 reads text only
        ({"family": "llama-guard-3-vision"}, 1),  # a vision guard on a backend that takes images
        ({"family": "llama-guard-3-vision", "show_images": False}, 0),
        ({"show_images": True}, 1),
    ],
)
def test_images_go_to_a_guard_that_reads_them(params, sent):
    image = Image.from_pil(__import__("PIL.Image").Image.new("RGB", (8, 8)))
    (out,) = _defend(params, ["what is this"], (image,))
    assert isinstance(out, Generation) and out.metadata["defense"]["action"] == "passed"
    assert [len(p.images) for p in Guard.asked] == [sent]


def test_a_text_guard_asked_to_read_images_fails_clearly():
    defense = GuardInput(guard="text-guard", show_images=True, registry=REG)
    (out,) = defense.wrap(ScriptedModel()).generate([Prompt(messages=(Message.user("x"),))], seeds=[0])
    assert isinstance(out, RuntimeError) and "does not accept images" in str(out)


@pytest.mark.parametrize(
    ("no_verdict", "action"), [("fail", None), ("block", "blocked"), ("pass", "flagged")]
)
def test_an_unreadable_guard_answer_is_handled_as_configured(no_verdict, action):
    (out,) = _defend({"no_verdict": no_verdict}, ["garbled request"])
    if action is None:
        assert isinstance(out, RuntimeError)
        assert "unparseable guard answer: first line is 'maybe?', not safe or unsafe" in str(out)
        assert "\n" not in str(out)
        return
    assert isinstance(out, Generation) and out.metadata["defense"]["action"] == action
    assert "first line is 'maybe?'" in out.metadata["defense"]["error"]
    assert out.text == (DEFAULT_REFUSAL if action == "blocked" else "MODEL ANSWER")


def test_a_sampling_guard_is_refused():
    with pytest.raises(Exception, match=r"temperature=0\.7"):
        GuardInput(guard={"name": "guard", "params": {"generation": {"temperature": 0.7}}})


def _config(judges: list) -> object:
    guard = {"name": "guard", "params": {"rules": {"lock": "unsafe\nS2"}, "default": "safe"}}
    return load_config(
        None,
        overrides={
            "name": "guard-input",
            "models": [{"name": "scripted", "params": {"default": "Sure."}}],
            "benchmarks": ["starter"],
            "defenses": [{"name": "guard-input", "params": {"guard": guard}}],
            "judges": judges,
        },
    )


def test_in_a_run_the_guard_answers_are_cached_for_a_rerun(tmp_path):
    run(_config(["refusal"]), tmp_path, registry=REG, progress=False)
    with Store(tmp_path) as s:
        first = list(s.iter_records())
    actions = {r.generation["metadata"]["defense"]["action"] for r in first}
    assert actions == {"blocked", "passed"} and all(r.error is None for r in first)
    assert 0 < len(Guard.asked) <= len(first)  # at most one guard call per item (repeats are cached)
    Guard.asked.clear()
    # one more judge: every item is defended again, and the guard answers from the store
    run(_config(["refusal", "target-string"]), tmp_path, registry=REG, progress=False)
    with Store(tmp_path) as s:
        again = [r for r in s.iter_records() if r.judge.name == "target-string"]
    assert len(again) == len(first) and Guard.asked == []
    assert {r.generation["metadata"]["defense"]["action"] for r in again} == {"blocked", "passed"}
