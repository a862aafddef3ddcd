"""Training-time methods (mmsafe train): their effect on held-out prompts, and their artifacts.

A tiny random Llama (4 layers, hidden 64) with a real BPE tokenizer learns, in seconds on a CPU, to
refuse requests built from "harmful" verbs and to answer "benign" ones; the tests measure refusal on
held-out prompts (verb–object pairs never trained on together), never on the training prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsafe.errors import ConfigError
from mmsafe.models.base import GenerationParams
from mmsafe.models.hf_text import HFTextModel
from mmsafe.registry import Registry
from mmsafe.types import Message, Prompt

pytest.importorskip("peft")

from _tiny_training import TEMPLATE, build_tiny, rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, str]:
    """(the tiny random Llama's folder, a JSONL file of training rows)."""
    return build_tiny(tmp_path_factory.mktemp("tiny-train"))


def _base(path: str) -> dict:
    return {"name": "hf-text", "params": {"path": path, "chat_template": TEMPLATE}}


def _refusals(path: str, adapter: str | None) -> tuple[float, float]:
    """(refusal rate on held-out harmful prompts, on held-out benign prompts)."""
    m = HFTextModel(
        {"path": path, "chat_template": TEMPLATE, "adapter": adapter, "generation": GenerationParams(max_new_tokens=6)}
    )
    m.load()
    held = rows(True)
    outs = m.generate([Prompt(messages=(Message.user(r["request"]),)) for r in held], seeds=[0] * len(held))
    m.close()
    refused = [o.text.startswith("I cannot") for o in outs]
    h = [r for r, row in zip(refused, held, strict=True) if row["kind"] == "harmful"]
    b = [r for r, row in zip(refused, held, strict=True) if row["kind"] == "benign"]
    return sum(h) / len(h), sum(b) / len(b)


@pytest.fixture(scope="module")
def sft_adapter(tiny, tmp_path_factory) -> tuple[str, dict]:
    path, data = tiny
    out = tmp_path_factory.mktemp("sft") / "adapter"
    trainer = Registry().create(
        "trainer", "sft",
        {"model": _base(path), "data": data, "epochs": 20, "lr": 3e-3, "lora": {"r": 16, "alpha": 32}, "held_out_fraction": 0.0},
    )
    card = trainer.run(out, log_fn=lambda m: None)
    return str(out), card


def test_sft_teaches_refusal_that_generalises_to_held_out_prompts(tiny, sft_adapter):
    path, _ = tiny
    base_h, base_b = _refusals(path, None)
    h, b = _refusals(path, sft_adapter[0])
    assert base_h == 0.0 and base_b == 0.0
    assert h >= 0.8, f"refusal on held-out harmful prompts only {h:.0%}"
    assert b <= 0.2, f"over-refusal on held-out benign prompts {b:.0%}"
    card = sft_adapter[1]
    assert card["training"]["loss_last"] < card["training"]["loss_first"]
    assert card["data"]["n_train"] == len(rows(False)) and len(card["data"]["sha256"]) == 64


def test_dpo_raises_the_margin_and_refusal_on_held_out_prompts(tiny, tmp_path):
    path, data = tiny
    trainer = Registry().create(
        "trainer", "dpo", {"model": _base(path), "data": data, "epochs": 6, "lr": 3e-3, "lora": {"r": 16, "alpha": 32}}
    )
    card = trainer.run(tmp_path / "dpo", log_fn=lambda m: None)
    after = card["metrics"]["held_out_after"]
    assert after["reward_accuracy"] >= 0.9 and after["mean_margin"] > 0.5
    h, b = _refusals(path, str(tmp_path / "dpo"))
    assert h >= 0.8 and b <= 0.2


def test_encode_keeps_the_whole_prompt_when_only_the_answers_opening_is_trained():
    from mmsafe.training.text import encode, text_prompt

    class Words:  # a backend stand-in: one token per word
        def render_answer(self, prompt, answer):
            return "<bos> " + prompt.messages[0].text, " " + answer

        def _token_ids(self, text):
            return list(range(len(text.split())))

        class tokenizer:
            def __call__(self, text, add_special_tokens=False):
                return {"input_ids": [100 + i for i in range(len(text.split()))]}

        tokenizer = tokenizer()

    request = " ".join(f"w{i}" for i in range(40))
    cut = encode(Words(), text_prompt(request), "a b c d e f g h i j", max_tokens=48)
    assert cut.n_prompt == 38 and cut.n_answer == 10  # the answer may take half: the prompt loses its start
    kept = encode(Words(), text_prompt(request), "a b c d e f g h i j", max_tokens=48, answer_tokens=4)
    assert kept.n_prompt == 41 and kept.n_answer == 4  # the whole prompt, the answer's first 4 tokens


def test_bucketed_batches_see_every_item_once_per_epoch_and_group_similar_lengths():
    import torch

    from mmsafe.training.text import run_steps

    items = [("short", 10)] * 64 + [("long", 100)] * 64
    w = torch.nn.Parameter(torch.zeros(1))
    seen: list[list[tuple[str, int]]] = []

    def loss_fn(batch):
        seen.append(list(batch))
        return (w - 1.0).pow(2).sum()

    run_steps([w], items, loss_fn, epochs=2, batch_size=8, lr=0.1, seed=0, length=lambda it: it[1])
    assert len(seen) == 32 and sum(len(b) for b in seen) == 2 * len(items)
    mixed = sum(len({kind for kind, _ in b}) > 1 for b in seen)
    assert mixed <= 2  # at most one mixed batch per window of 16 batches and epoch


def test_dpo_loss_is_the_papers():
    import math

    import torch

    from mmsafe.training.dpo import dpo_loss

    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert float(margin) == pytest.approx(0.5 * ((-1 + 2) - (-3 + 2)))
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    smoothed, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=1, label_smoothing=0.2)
    assert float(smoothed) == pytest.approx(math.log(2))


def test_the_adapter_round_trips_and_its_hash_is_in_the_spec(tiny, sft_adapter):
    path, _ = tiny
    adapter, card = sft_adapter
    files = sorted(p.name for p in Path(adapter).iterdir())
    assert files == ["adapter.safetensors", "card.json"]
    m = Registry().create("model", "hf-text", {"path": path, "chat_template": TEMPLATE, "adapter": adapter})
    assert m.spec.params["adapter_sha256"] == card["tensors_sha256"]
    m.load()
    assert m.adapter_card["method"] == "sft"
    m.close()


def test_a_corrupt_changed_or_foreign_adapter_is_a_clear_error(tiny, sft_adapter, tmp_path):
    import shutil

    import torch
    import transformers

    path, _ = tiny
    adapter, _ = sft_adapter
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    (bad / "adapter.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="does not match its card"):
        HFTextModel({"path": path, "chat_template": TEMPLATE, "adapter": str(bad)})
    # damaged and re-carded: the tensor file itself cannot be read
    card = json.loads((bad / "card.json").read_text())
    import hashlib

    card["tensors_sha256"] = hashlib.sha256(b"\x00" * 64).hexdigest()
    (bad / "card.json").write_text(json.dumps(card))
    m = HFTextModel({"path": path, "chat_template": TEMPLATE, "adapter": str(bad)})
    with pytest.raises(ConfigError, match="cannot be read"):
        m.load()
    # a model spec pinned to one adapter refuses the file once it changed
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    m = HFTextModel({"path": path, "chat_template": TEMPLATE, "adapter": str(moved)})
    shutil.rmtree(moved)
    shutil.copytree(bad, moved)
    with pytest.raises(ConfigError, match="has changed since"):
        m.load()
    # trained on another base model
    other = tmp_path / "other"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        transformers.LlamaForCausalLM(transformers.AutoConfig.from_pretrained(path)).save_pretrained(other)
    transformers.AutoTokenizer.from_pretrained(path).save_pretrained(other)
    m = HFTextModel({"path": str(other), "chat_template": TEMPLATE, "adapter": adapter})
    with pytest.raises(ConfigError, match="trained on another base model"):
        m.load()
    with pytest.raises(ConfigError, match="no built-in adapter"):
        HFTextModel({"path": path, "chat_template": TEMPLATE, "adapter": "builtin:nope"})


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"n_examples": 10_000}, "needs"),
        ({"safety_ratio": 1.0, "n_examples": 200}, "needs 200 harmful"),
        ({"lora": {"target_modules": ["nonexistent"]}}, "match no layer"),
    ],
)
def test_bad_training_requests_are_clear_errors(tiny, tmp_path, params, match):
    path, data = tiny
    trainer = Registry().create("trainer", "sft", {"model": _base(path), "data": data, **params})
    with pytest.raises(ConfigError, match=match):
        trainer.run(tmp_path / "x", log_fn=lambda m: None)


def test_a_bad_data_row_names_its_line(tiny, tmp_path):
    path, _ = tiny
    data = tmp_path / "d.jsonl"
    data.write_text('{"request": "a", "answer": "b", "kind": "harmful"}\n{"request": "c", "kind": "benign"}\n')
    trainer = Registry().create("trainer", "sft", {"model": _base(path), "data": str(data)})
    with pytest.raises(ConfigError, match=r"d\.jsonl:2"):
        trainer.run(tmp_path / "x", log_fn=lambda m: None)


def test_cli_train_writes_an_adapter(tiny, tmp_path, capsys):
    from mmsafe.cli.main import main

    path, data = tiny
    model = json.dumps(_base(path))
    rc = main(["train", "sft", "--model", model, "--out", str(tmp_path / "a"), "--params", f"{{data: {data}, epochs: 1}}"])
    assert rc == 0
    assert (tmp_path / "a" / "card.json").is_file()
    assert "adapter:" in capsys.readouterr().out
