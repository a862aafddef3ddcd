"""The Hugging Face backend on a tiny random LLaVA built offline (same classes as llava-1.5)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mmsafe.models._hf_util import (
    RANDOM_WEIGHTS_MARKER,
    answer_continuation,
    choose_model_class,
    split_at_eos,
    to_conversation,
)
from mmsafe.registry import Registry
from mmsafe.types import Generation, Image, Message, Prompt

pytest.importorskip("torch")
pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")

from mmsafe.models.hf import HFModel  # noqa: E402
from mmsafe.models.tiny_llava import TinyLlava, build_tiny_llava, ensure_tiny_llava  # noqa: E402

MAX_NEW = 12


def _image(color: str, size: tuple[int, int] = (40, 30)) -> Image:
    return Image.from_pil(PIL.new("RGB", size, color), source=f"{color}.png")


def _prompts() -> list[Prompt]:
    """Three prompts with images (different sizes and text lengths) and one text-only prompt."""
    return [
        Prompt(messages=(Message.user("What is in this image?", [_image("red")]),)),
        Prompt(
            messages=(
                Message.user("Describe the picture in detail, step by step.", [_image("green", (64, 20))]),
            )
        ),
        Prompt(
            messages=(Message.system("Be careful."), Message.user("Read it.", [_image("blue", (17, 90))]))
        ),
        Prompt(messages=(Message.user("Tell me about foxes, with no image at all."),)),
    ]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmsafe-cache")


@pytest.fixture(scope="module")
def tiny(cache_root: Path) -> TinyLlava:
    model = TinyLlava(cache_dir=str(cache_root), batch_size=8, generation={"max_new_tokens": MAX_NEW})
    model.load()
    return model


def test_import_is_light() -> None:
    code = "import sys, mmsafe.models.hf, mmsafe.models.tiny_llava; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spec_round_trips_through_the_registry() -> None:
    reg = Registry(entry_points=False)
    for model in (
        TinyLlava(batch_size=4, generation={"max_new_tokens": 5, "temperature": 0.7}),
        HFModel(path="llava-hf/llava-1.5-7b-hf", dtype="bfloat16", device="cuda:1", system_prompt="hi"),
    ):
        spec = model.spec
        again = reg.create("model", spec.name, {**spec.params, **spec.runtime})
        assert type(again) is type(model)
        assert again.spec == spec
        assert again.spec.key == spec.key
    assert TinyLlava().spec.params["cache_dir"] is None  # no machine-specific path in the default spec


def test_every_white_box_backend_implements_the_whole_protocol() -> None:
    """Attacks call ``greedy_answers`` (their success test) on any WhiteBoxModel: each registered
    white-box backend defines it, and the protocol declares it with the other white-box methods."""
    from mmsafe.models.base import WhiteBoxModel

    assert "greedy_answers" in vars(WhiteBoxModel)
    registry = Registry(entry_points=False)
    white_box = [
        cls
        for name in registry.names("model")
        if isinstance(cls := registry.get("model", name), type) and issubclass(cls, WhiteBoxModel)
    ]
    assert {"hf", "hf-text"} <= {cls.name for cls in white_box}
    for cls in white_box:
        assert cls.greedy_answers is not WhiteBoxModel.greedy_answers, cls.name


def test_params_are_strict() -> None:
    with pytest.raises(ValidationError):
        HFModel(path="x", devise="cpu")
    with pytest.raises(ValidationError):
        HFModel(path="x", device="gpu")
    with pytest.raises(ValidationError):
        TinyLlava(path="x")
    assert HFModel.summary().startswith("Local Hugging Face")
    assert TinyLlava.capabilities == frozenset(
        {"images", "system_prompt", "batched", "gradients", "hidden_states", "prefill"}
    )


def test_batch_with_images_and_text_only(tiny: TinyLlava) -> None:
    prompts = _prompts()
    out = tiny.generate(prompts, seeds=[0] * len(prompts))
    assert len(out) == len(prompts)
    for gen in out:
        assert isinstance(gen, Generation), gen
        assert gen.finish_reason in {"stop", "length"}
        assert gen.usage.completion_tokens is not None and 0 < gen.usage.completion_tokens <= MAX_NEW
        assert gen.finish_reason == "stop" or gen.usage.completion_tokens == MAX_NEW
        assert gen.latency_s is not None and gen.latency_s > 0
        assert gen.metadata["batch_size"] == len(prompts)
    # 16 image tokens (32 px / 8 px patches) make the image prompts longer than the text alone
    assert all(out[i].usage.prompt_tokens > 16 for i in range(3))
    assert not any("<image>" in g.text for g in out)  # special tokens are skipped


def test_greedy_is_deterministic_and_batching_does_not_change_answers(tiny: TinyLlava) -> None:
    prompts = _prompts()
    first = tiny.generate(prompts, seeds=[0, 1, 2, 3])
    second = tiny.generate(prompts, seeds=[9, 9, 9, 9])  # seeds do not matter when greedy
    alone = [tiny.generate([p], seeds=[0])[0] for p in prompts]
    texts = [g.text for g in first]
    assert texts == [g.text for g in second]
    assert texts == [g.text for g in alone]  # left padding + attention mask: exact match in fp32
    assert [g.usage for g in first] == [g.usage for g in alone]
    assert len(set(texts)) > 1  # the answers depend on the prompt


def test_a_broken_image_fails_only_its_slot(tiny: TinyLlava) -> None:
    prompts = _prompts()
    broken = Prompt(messages=(Message.user("What is this?", [Image.from_bytes(b"not an image")]),))
    batch = [prompts[0], broken, prompts[3]]
    out = tiny.generate(batch, seeds=[0, 0, 0])
    assert isinstance(out[1], ValueError) and "cannot decode image" in str(out[1])
    reference = tiny.generate([prompts[0], prompts[3]], seeds=[0, 0])
    assert [out[0].text, out[2].text] == [g.text for g in reference]


def test_an_item_the_processor_rejects_fails_alone(tiny: TinyLlava) -> None:
    # A literal "<image>" in user text without an image: the processor refuses the batch, and
    # the backend retries one by one so only the offending prompt fails.
    prompts = _prompts()
    bad = Prompt(messages=(Message.user("say <image> now"),))
    out = tiny.generate([prompts[0], bad, prompts[1]], seeds=[0, 0, 0])
    assert isinstance(out[1], Exception)
    assert isinstance(out[0], Generation) and isinstance(out[2], Generation)
    assert out[0].text == tiny.generate([prompts[0]], seeds=[0])[0].text


def test_sampling_is_seeded_per_item(cache_root: Path) -> None:
    model = TinyLlava(cache_dir=str(cache_root), generation={"max_new_tokens": MAX_NEW, "temperature": 1.0})
    prompts = _prompts()
    a = model.generate(prompts, seeds=[1, 2, 3, 4])
    b = model.generate(list(reversed(prompts)), seeds=[4, 3, 2, 1])
    c = model.generate(prompts, seeds=[5, 6, 7, 8])
    assert [g.text for g in a] == [g.text for g in reversed(b)]  # neighbours and order do not matter
    assert [g.text for g in a] != [g.text for g in c]


def test_stop_strings_cut_the_answer(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    base = {
        "path": str(ensure_tiny_llava(cache_root)),
        "device": "cpu",
        "generation": {"max_new_tokens": MAX_NEW},
    }
    prompt = _prompts()[0]
    (free,) = HFModel(base).generate([prompt], seeds=[0])
    assert len(free.text) > 2 and free.usage.completion_tokens == MAX_NEW
    stop = free.text[1:3]  # a string the greedy answer is known to contain

    built: list[object] = []
    real = transformers.StopStringCriteria

    def counting(*args: object, **kwargs: object) -> object:
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(transformers, "StopStringCriteria", counting)
    model = HFModel({**base, "stop_strings": (stop,)})
    answers = [model.generate([prompt], seeds=[0])[0] for _ in range(2)]
    for cut in answers:
        assert cut.text == free.text[: free.text.find(stop)] and cut.finish_reason == "stop"
        assert cut.usage.completion_tokens < MAX_NEW  # decoding stopped there, not only the text
    assert len(built) == 1  # one criterion for the loaded model, reused by the second call


def test_random_weights_flag_and_marker(tiny: TinyLlava, cache_root: Path) -> None:
    assert TinyLlava.random_weights is True
    assert tiny.random_weights is True
    path = ensure_tiny_llava(cache_root)
    assert (path / RANDOM_WEIGHTS_MARKER).is_file()
    assert HFModel(path="somewhere").random_weights is False


def test_generic_auto_class_loads_the_same_model(tiny: TinyLlava, cache_root: Path) -> None:
    path = str(ensure_tiny_llava(cache_root))
    prompts = _prompts()[:2]
    expected = [g.text for g in tiny.generate(prompts, seeds=[0, 0])]
    for model_class in ("auto", "image-text-to-text"):
        model = HFModel(
            path=path, model_class=model_class, device="cpu", generation={"max_new_tokens": MAX_NEW}
        )
        model.load()
        assert model.random_weights is True
        assert type(model._model).__name__ == "LlavaForConditionalGeneration"
        assert [g.text for g in model.generate(prompts, seeds=[0, 0])] == expected


def test_cache_is_reused_and_build_is_deterministic(cache_root: Path, tmp_path: Path) -> None:
    path = ensure_tiny_llava(cache_root)
    weights = path / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (path / RANDOM_WEIGHTS_MARKER).stat().st_mtime_ns)
    assert ensure_tiny_llava(cache_root) == path
    assert (weights.stat().st_mtime_ns, (path / RANDOM_WEIGHTS_MARKER).stat().st_mtime_ns) == before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folders left

    fresh = build_tiny_llava(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (
            hashlib.sha256((fresh / name).read_bytes()).digest()
            == hashlib.sha256((path / name).read_bytes()).digest()
        ), name
    other_seed = build_tiny_llava(tmp_path / "seed1", seed=1)
    assert (other_seed / "model.safetensors").read_bytes() != weights.read_bytes()


def test_prompt_to_conversation() -> None:
    img = _image("red")
    prompt = Prompt(messages=(Message.user("hello", [img, img]),))
    conversation, images = to_conversation(prompt, system_prompt="sys")
    assert conversation == [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hello"}],
        },
    ]
    assert [i.size for i in images] == [(40, 30), (40, 30)]
    own = Prompt(messages=(Message.system("mine"), Message.user("x")))
    assert to_conversation(own, system_prompt="sys")[0][0]["content"][0]["text"] == "mine"


def test_helpers() -> None:
    assert split_at_eos([5, 6, 2, 0, 0], frozenset({2})) == ([5, 6], True)
    assert split_at_eos([5, 6, 7], frozenset({2})) == ([5, 6, 7], False)
    assert choose_model_class(["LlavaForConditionalGeneration"], "llava") == "llava"
    assert choose_model_class(["Qwen2VLForConditionalGeneration"], "qwen2_vl") == "image-text-to-text"


def test_answer_continuation_is_what_follows_the_generation_prompt() -> None:
    prompt = "<s>User: hi\nAssistant:"
    full = prompt + " Hello there.<end_of_turn>\n</s>\n"
    assert answer_continuation(prompt, full) == " Hello there.<end_of_turn>\n</s>\n"
    assert answer_continuation(prompt, full, eos="</s>") == " Hello there.<end_of_turn>\n</s>"  # nothing after EOS
    # a backend that cuts answers at a stop string learns to write that string where the turn ends
    assert answer_continuation(prompt, prompt + " Hello there.\n", stop_strings=["\nUser:"]) == " Hello there.\nUser:"
    with pytest.raises(ValueError, match="prefix"):
        answer_continuation(prompt, "<s>User: hi\nBot: Hello")
