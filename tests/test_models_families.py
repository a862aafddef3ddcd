"""Every supported MLLM family through the one HF backend, on tiny random models built offline.

Each family is a real transformers architecture (LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Idefics3,
SmolVLM, PaliGemma, BLIP-2, InstructBLIP) with random weights, its own processor and prompt format;
the tests check batched generation and the white-box surface that attacks and defenses rely on.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from mmsafe.models.families import FAMILIES, Generic, family_for
from mmsafe.types import Generation, Image, Message, Prompt

pytest.importorskip("torch")
pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")

import torch  # noqa: E402

from mmsafe.models.hf import HFModel  # noqa: E402
from mmsafe.models.tiny import (  # noqa: E402
    TINY_FAMILIES,
    TinyModel,
    ensure_tiny_family,
)

MAX_NEW = 6
TARGET = "Sure, here is"


def _image(color: str, size: tuple[int, int] = (40, 30)) -> Image:
    return Image.from_pil(PIL.new("RGB", size, color), source=f"{color}.png")


def _noise(seed: int, size: tuple[int, int] = (40, 30)) -> Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.from_pil(PIL.fromarray(arr), source=f"noise{seed}.png")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mmsafe-families")


@pytest.fixture(scope="module")
def loaded() -> dict[str, TinyModel]:
    """Tiny models loaded so far in this module, by family (each is built and loaded once)."""
    return {}


@pytest.fixture(params=TINY_FAMILIES)
def model(request: pytest.FixtureRequest, cache_root: Path, loaded: dict[str, TinyModel]) -> TinyModel:
    family = request.param
    if family not in loaded:
        m = TinyModel(family=family, cache_dir=str(cache_root), generation={"max_new_tokens": MAX_NEW})
        m.load()
        loaded[family] = m
    return loaded[family]


def _prompts(model: TinyModel) -> list[Prompt]:
    """Images of different sizes; a system turn where real; two images where the family takes them."""
    first = Message.user("What is in this image?", [_noise(1)])
    prompts = [
        Prompt(
            messages=(Message.system("Be careful."), first)
            if "system_prompt" in model.capabilities
            else (first,)
        ),
        Prompt(
            messages=(Message.user("Describe the picture in detail, step by step.", [_noise(2, (64, 20))]),)
        ),
    ]
    if model._family.multi_image:
        prompts.append(Prompt(messages=(Message.user("Compare the two.", [_noise(3, (17, 90)), _noise(4)]),)))
    return prompts


def test_import_is_light() -> None:
    code = (
        "import sys, mmsafe.models.families, mmsafe.models.tiny, mmsafe.models.hf;"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_family_lookup() -> None:
    assert family_for(["Qwen2_5_VLForConditionalGeneration"], "qwen2_5_vl").name == "qwen2_vl"
    assert family_for([], "smolvlm").name == "idefics3"
    assert family_for(["InstructBlipForConditionalGeneration"], None).name == "blip2"
    assert family_for(["SomethingNew"], "something_new") is Generic
    assert {f.name for f in FAMILIES} == {"llava", "llava_next", "qwen2_vl", "idefics3", "paligemma", "blip2"}
    no_system = {f.name for f in FAMILIES if "system_prompt" not in f.capabilities()}
    assert no_system == {"paligemma", "blip2"}


def test_capabilities_are_known_before_load(cache_root: Path) -> None:
    path = ensure_tiny_family("paligemma", cache_root)
    assert HFModel(path=str(path)).capabilities == frozenset(
        {"images", "batched", "gradients", "hidden_states"}
    )
    assert "system_prompt" in TinyModel(family="qwen2_vl").capabilities


def test_max_memory_needs_a_device_map() -> None:
    with pytest.raises(ValueError, match="device_map"):
        HFModel(path="x", max_memory={"0": "10GiB"})
    spec = HFModel(path="x", device_map="auto", max_memory={"0": "10GiB", "cpu": "30GiB"}).spec
    assert spec.runtime["max_memory"] == {"0": "10GiB", "cpu": "30GiB"}  # where weights sit, not what runs
    assert spec.key == HFModel(path="x", device_map="auto").spec.key


def test_batched_generation_matches_one_at_a_time(model: TinyModel) -> None:
    prompts = _prompts(model)
    batched = model.generate(prompts, seeds=[0] * len(prompts))
    assert all(isinstance(g, Generation) for g in batched), batched
    assert all(g.metadata["batch_size"] == len(prompts) for g in batched)
    alone = [model.generate([p], seeds=[0])[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in alone]
    assert [g.usage for g in batched] == [g.usage for g in alone]
    assert all(isinstance(g.text, str) and g.usage.completion_tokens for g in batched)


def test_prompts_a_family_cannot_take_fail_alone(model: TinyModel) -> None:
    ok = _prompts(model)[0]
    if model._family.multi_image:  # text-only prompts where the family has them
        odd = Prompt(messages=(Message.user("No image here, just text."),))
    else:  # BLIP-2 / InstructBLIP: exactly one image
        odd = Prompt(messages=(Message.user("Two images.", [_noise(5), _noise(6)]),))
    out = model.generate([ok, odd, ok], seeds=[0, 0, 0])
    assert isinstance(out[0], Generation) and out[0].text == out[2].text
    if model._family.multi_image and model._family.name != "blip2":
        assert isinstance(out[1], Generation)
    else:
        assert isinstance(out[1], ValueError) and "exactly one image" in str(out[1])


def test_to_pixels_is_the_model_view_in_unit_range(model: TinyModel) -> None:
    px = model.to_pixels(_noise(7, (50, 37)))
    assert px.dim() == 3 and px.shape[0] == 3 and px.dtype == torch.float32
    assert 0.0 <= float(px.min()) and float(px.max()) <= 1.0 and float(px.std()) > 0.05
    # the re-layout of pixels is the processor's: same loss as the processor on the same image
    prompt = _prompts(model)[0]
    pixels = [model.to_pixels(i) for i in prompt.images]
    with torch.no_grad():
        via_pixels = float(model.target_loss(prompt, TARGET, pixels=pixels))
        via_processor = float(model.target_loss(prompt, TARGET))
    # LLaVA-NeXT rebuilds its overview square with torch's bicubic instead of PIL's
    assert via_pixels == pytest.approx(via_processor, abs=1e-2 if model.family == "llava_next" else 1e-4)


def test_target_loss_is_differentiable_in_pixel_space(model: TinyModel) -> None:
    prompt = _prompts(model)[-1]  # two images where the family takes them
    pixels = [model.to_pixels(i).clone().requires_grad_(True) for i in prompt.images]
    loss = model.target_loss(prompt, TARGET, pixels=pixels)
    assert loss.dim() == 0 and math.isfinite(float(loss))
    assert float(loss) > 0
    loss.backward()
    for p in pixels:
        assert p.grad is not None and p.grad.shape == p.shape
        assert (
            float(p.grad.abs().sum()) > 0
        )  # BLIP-2 family: tiny (~1e-8) through a random Q-Former, not zero
    # a different target gives a different loss (the target really is scored)
    with torch.no_grad():
        other = model.target_loss(prompt, "I cannot help with that.", pixels=[p.detach() for p in pixels])
    assert float(other) != pytest.approx(float(loss))


def test_hidden_states_and_decoder_layers(model: TinyModel) -> None:
    prompt = _prompts(model)[0]
    layers = model.decoder_layers()
    hidden = model._model.config.get_text_config().hidden_size
    states = model.hidden_states(prompt, layers=[0, -1])
    assert set(states) == {0, -1}
    seq = states[0].shape[0]
    assert all(tuple(v.shape) == (seq, hidden) for v in states.values())
    assert not torch.equal(states[0], states[-1]) or len(layers) == 1

    calls = []
    handle = layers[len(layers) // 2].register_forward_hook(lambda *_: calls.append(1))
    try:
        model.generate([prompt], seeds=[0])
    finally:
        handle.remove()
    assert calls, "a forward hook on a decoder layer must fire during generate"


def test_paligemma_target_tokens_are_causal_suffix(cache_root: Path, loaded: dict[str, TinyModel]) -> None:
    """PaliGemma's prefix (token_type 0) attends both ways; target tokens must be suffix (1), or
    each target position would see the tokens it is asked to predict."""
    model = loaded.get("paligemma") or TinyModel(family="paligemma", cache_dir=str(cache_root))
    model.load()
    prompt = Prompt(messages=(Message.user("caption en", [_noise(8)]),))
    tok = model._processor.tokenizer
    enc = model._whitebox_encoding(prompt, None)
    start = enc["input_ids"].shape[1]
    ids = tok("a red square", add_special_tokens=False, return_tensors="pt")["input_ids"]
    keep = start + 1  # the prompt plus the first target token

    def first_logits(type_id: int, upto: int | None) -> torch.Tensor:
        full = dict(enc)
        full["input_ids"] = torch.cat([enc["input_ids"], ids], 1)
        full["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(ids)], 1)
        full["token_type_ids"] = torch.cat([enc["token_type_ids"], torch.full_like(ids, type_id)], 1)
        if upto is not None:
            for k in ("input_ids", "attention_mask", "token_type_ids"):
                full[k] = full[k][:, :upto]
        with torch.no_grad():
            return model._model(**full, use_cache=False).logits[0, start - 1 : start + 1]

    assert torch.allclose(first_logits(1, None), first_logits(1, keep + 1), atol=1e-5)  # causal: no leak
    assert not torch.allclose(first_logits(0, None), first_logits(0, keep + 1), atol=1e-5)  # prefix: leaks
    with torch.no_grad():
        assert math.isfinite(float(model.target_loss(prompt, "a red square")))


def _reference_loss(model: TinyModel, prompt: Prompt, target: str) -> float:
    """Mean target cross-entropy from one unpadded forward with every logit (no batching tricks)."""
    enc = model._whitebox_encoding(prompt, None)
    ids = model._processor.tokenizer(target, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    if model._family.encoder_decoder:
        logits = model._model(**enc, labels=ids, use_cache=False).logits[0, :n]
    else:
        start = enc["input_ids"].shape[1]
        enc["input_ids"] = torch.cat([enc["input_ids"], ids], dim=1)
        for key, fill in model._family.sequence_fill.items():
            if key in enc and enc[key].dim() == 2 and enc[key].shape[1] == start:
                enc[key] = torch.cat([enc[key], torch.full_like(ids, fill, dtype=enc[key].dtype)], dim=1)
        logits = model._model(**enc, use_cache=False).logits[0, start - 1 : start - 1 + n]
    return float(torch.nn.functional.cross_entropy(logits.float(), ids[0]))


def test_batched_teacher_forced_matches_one_unpadded_forward_each(model: TinyModel) -> None:
    """Left-padded batch + last-logits-only gives each example's own loss, prompts and targets of
    different lengths mixed, and gradients reach every example's pixels."""
    prompts = _prompts(model)[:2]
    targets = ["Sure, here is", "I cannot help with that request, sorry."]
    if model._family.batch_key(prompts[0].images) != model._family.batch_key(prompts[1].images):
        prompts = [prompts[0], prompts[0]]
    with torch.no_grad():
        want = [_reference_loss(model, p, t) for p, t in zip(prompts, targets, strict=True)]
    objective = model.teacher_forced(prompts, targets)
    pixels = [[model.to_pixels(i).requires_grad_(True) for i in p.images] for p in prompts]
    got = objective(pixels)
    tol = 1e-2 if model.family == "llava_next" else 2e-3
    assert [float(x) for x in got] == pytest.approx(want, abs=tol)
    got.sum().backward()
    assert all(float(px.grad.abs().sum()) > 0 for row in pixels for px in row)
    # weighted segments: weight 0 on the first segment scores only the second
    seg = model.teacher_forced([prompts[0]], [[("Sure, here is", 0.0), (" the answer", 1.0)]])
    whole = model.teacher_forced([prompts[0]], ["Sure, here is the answer"])
    with torch.no_grad():
        assert float(seg()[0]) != pytest.approx(float(whole()[0]))


#: families whose layout is a plain causal prefix (the shared-prefix path applies)
SHARED_PREFIX = {"llava", "llava_next", "idefics3", "smolvlm"}


def test_universal_batch_shares_the_image_prefix_with_the_same_losses_and_gradients(model: TinyModel) -> None:
    """One image, several texts (a universal attack): the prefix is run once and its cache shared;
    losses and pixel gradients equal the plain left-padded batch (distinct pixel tensors)."""
    img = _noise(11)
    texts = ["What is in this image?", "Describe it.", "What should I do next, step by step?"]
    targets = ["Sure, here is", "Of course. Here are the detailed steps.", "No"]
    objective = model.teacher_forced([Prompt(messages=(Message.user(t, [img]),)) for t in texts], targets)
    assert (objective._shared is not None) == (model.family in SHARED_PREFIX)
    x = model.to_pixels(img).requires_grad_(True)
    shared = objective([[x]] * 3)
    (g_shared,) = torch.autograd.grad(shared.sum(), x)
    plain = objective([[x.clone()] for _ in range(3)])
    (g_plain,) = torch.autograd.grad(plain.sum(), x)
    assert [float(v) for v in shared] == pytest.approx([float(v) for v in plain], abs=1e-4)
    assert float((g_shared - g_plain).abs().max()) <= 1e-4 * float(g_plain.abs().max()) + 1e-12
