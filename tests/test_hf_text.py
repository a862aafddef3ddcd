"""HFTextModel on a tiny random causal LM (Llama architecture, built from a config): no conversion needed."""

from __future__ import annotations

import io
import json
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmsafe.models import hf_text
from mmsafe.models.base import GenerationParams
from mmsafe.models.hf_text import HFTextModel, _cut_at_stop, format_image_text
from mmsafe.ocr import tesseract_available
from mmsafe.types import Image, Message, Prompt

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A 4-layer random LlamaForCausalLM with the tiny LLaVA's trained BPE tokenizer, saved to disk."""
    import torch
    import transformers

    from mmsafe.models.tiny_llava import ensure_tiny_llava

    root = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(ensure_tiny_llava(root / "cache"))
    tokenizer.chat_template = None  # the tests pass params.chat_template (and check the error without)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    path = root / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _model(path: str, **params) -> HFTextModel:
    base = {"path": path, "chat_template": TEMPLATE, "generation": GenerationParams(max_new_tokens=8)}
    m = HFTextModel({**base, **params})
    m.load()
    return m


def _png(text: str = "", size: tuple[int, int] = (64, 32)) -> Image:
    from PIL import Image as PILImage

    return Image.from_pil(PILImage.new("RGB", size, "white"), source=text or "blank")


PROMPTS = [
    Prompt(messages=(Message.user("Describe the picture in detail."),)),
    Prompt(messages=(Message.system("Be careful."), Message.user("Step 1: read the image."))),
    Prompt(messages=(Message.user("yes"),)),
]


def test_batched_greedy_equals_one_at_a_time(tiny_lm):
    m = _model(tiny_lm, batch_size=8)
    batched = m.generate(PROMPTS, seeds=[0, 1, 2])
    single = [m.generate([p], seeds=[s])[0] for s, p in enumerate(PROMPTS)]
    assert all(not isinstance(g, Exception) for g in batched)
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.usage.prompt_tokens for g in batched] == [g.usage.prompt_tokens for g in single]
    assert batched[0].metadata["batch_size"] == 3
    assert all(g.usage.completion_tokens <= 8 for g in batched)


def test_greedy_answers_are_the_greedy_generations(tiny_lm):
    """hf-text is a WhiteBoxModel: it answers the attacks' success test like its own greedy generate."""
    m = _model(tiny_lm, batch_size=2)
    want = [g.text for g in m.generate(PROMPTS, seeds=[0, 1, 2])]
    assert m.greedy_answers(PROMPTS, max_new_tokens=8) == want
    short = m.greedy_answers(PROMPTS, max_new_tokens=3)
    assert all(w.startswith(s) and len(s) < len(w) for s, w in zip(short, want, strict=True))


def test_sampling_depends_only_on_seed(tiny_lm):
    m = _model(tiny_lm, generation=GenerationParams(max_new_tokens=8, temperature=1.0))
    a = m.generate(PROMPTS, seeds=[5, 6, 7])
    b = m.generate(PROMPTS[::-1], seeds=[7, 6, 5])
    assert [g.text for g in a] == [g.text for g in b[::-1]]


def test_bos_is_not_doubled(tiny_lm):
    m = _model(tiny_lm)
    text, _ = m.render(PROMPTS[0])
    assert text.startswith("<s>") and text.endswith("<|assistant|>\n")
    ids = m._token_ids(text)
    assert ids[0] == m._tokenizer.bos_token_id and ids[1] != m._tokenizer.bos_token_id


def test_reject_mode_fails_only_the_image_item(tiny_lm):
    m = _model(tiny_lm)
    assert "images" not in m.capabilities and "gradients" not in m.capabilities
    with_image = Prompt(messages=(Message.user("What is shown?", images=[_png()]),))
    out = m.generate([PROMPTS[0], with_image, PROMPTS[2]], seeds=[0, 0, 0])
    assert isinstance(out[1], ValueError) and "image_input='reject'" in str(out[1])
    assert not isinstance(out[0], Exception) and not isinstance(out[2], Exception)


def test_a_prompt_over_the_context_fails_alone_and_its_batch_mates_are_answered(tiny_lm):
    from mmsafe.limits import ContextTooLong

    m = _model(tiny_lm, batch_size=8)
    assert m._context_limit() == 512  # the config's max_position_embeddings
    long = Prompt(messages=(Message.user("word " * 600),))
    out = m.generate([PROMPTS[0], long, PROMPTS[2]], seeds=[0, 1, 2])
    assert isinstance(out[1], ContextTooLong)
    assert re.fullmatch(
        r"prompt is [\d,]+ tokens \+ 8 new \(generation\.max_new_tokens\), more than the model's "
        r"512-position context",
        str(out[1]),
    )
    alone = [m.generate([p], seeds=[s])[0] for s, p in ((0, PROMPTS[0]), (2, PROMPTS[2]))]
    assert [g.text for g in (out[0], out[2])] == [g.text for g in alone]
    assert out[0].metadata["batch_size"] == 2  # the batch ran without the long one


def test_the_context_check_counts_the_answer_budget_exactly(tiny_lm):
    from mmsafe.limits import ContextTooLong

    n = _model(tiny_lm).generate([PROMPTS[0]], seeds=[0])[0].usage.prompt_tokens
    fits = _model(tiny_lm, generation=GenerationParams(max_new_tokens=512 - n))
    assert not isinstance(fits.generate([PROMPTS[0]], seeds=[0])[0], Exception)
    over = _model(tiny_lm, generation=GenerationParams(max_new_tokens=513 - n))
    assert isinstance(over.generate([PROMPTS[0]], seeds=[0])[0], ContextTooLong)


def test_a_prompt_over_the_context_is_one_errored_record_in_a_run(tiny_lm, tmp_path):
    from mmsafe.config import load_config
    from mmsafe.runner import run
    from mmsafe.store import Store

    data = tmp_path / "items.jsonl"
    rows = [
        {"id": "short", "text": "Say yes."},
        {"id": "long", "text": "word " * 600},
        {"id": "tail", "text": "Hi"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    params = {"path": tiny_lm, "chat_template": TEMPLATE, "generation": {"max_new_tokens": 8}}
    cfg = load_config(
        None,
        overrides={
            "models": [{"name": "hf-text", "params": params}],
            "benchmarks": [{"name": "jsonl", "params": {"file": str(data)}}],
            "attacks": ["none"],
            "judges": ["refusal"],
        },
    )
    res = run(cfg, tmp_path / "out", progress=False)
    assert res.written == 3 and res.errors == 1
    with Store(tmp_path / "out") as store:
        recs = {r.sample_id: r for r in store.iter_records()}
    assert recs["long"].error_stage == "generate"
    assert recs["long"].error.startswith("ContextTooLong: prompt is ")
    assert recs["long"].error.endswith("more than the model's 512-position context")
    assert recs["short"].error is None and recs["tail"].error is None


def test_context_limit_reads_the_text_config_then_the_tokenizer():
    from types import SimpleNamespace

    from mmsafe.models._hf_util import context_limit

    class Config:
        def __init__(self, **kw):
            self.text = SimpleNamespace(**kw)

        def get_text_config(self):
            return self.text

    model = SimpleNamespace(config=Config(max_position_embeddings=4096))
    assert context_limit(model, SimpleNamespace(model_max_length=10**30)) == 4096
    assert context_limit(SimpleNamespace(config=Config(n_positions=1024)), None) == 1024
    unknown = SimpleNamespace(config=Config())
    assert context_limit(unknown, SimpleNamespace(model_max_length=2048)) == 2048
    assert (
        context_limit(unknown, SimpleNamespace(model_max_length=int(1e30))) is None
    )  # transformers' "unknown"


def test_ocr_text_enters_the_turn_and_is_read_once(tiny_lm, monkeypatch):
    calls = []

    def fake_ocr(image, *, lang="eng", config="", timeout=0):
        calls.append(image.size)
        return "  HELLO\n\nWORLD  \n"

    monkeypatch.setattr("mmsafe.ocr.ocr_image", fake_ocr)
    monkeypatch.setattr("mmsafe.ocr.tesseract_available", lambda: True)
    m = _model(tiny_lm, image_input="ocr")
    assert "images" in m.capabilities
    img = _png()
    p = Prompt(messages=(Message.user("Answer the question below.", images=[img, img]),))
    text, read = m.render(p)
    assert (
        "[Text in image 1]: HELLO\nWORLD\n[Text in image 2]: HELLO\nWORLD\nAnswer the question below." in text
    )
    (g,) = m.generate([p], seeds=[0])
    assert g.metadata["image_text"] == [read[0], read[1]]
    assert len(calls) == 1  # one distinct image, read once for this loaded model


def test_ocr_broken_image_fails_only_its_item(tiny_lm, monkeypatch):
    monkeypatch.setattr("mmsafe.ocr.ocr_image", lambda image, **_: "TEXT")
    monkeypatch.setattr("mmsafe.ocr.tesseract_available", lambda: True)
    m = _model(tiny_lm, image_input="ocr")
    broken = Image.from_bytes(b"not an image", source="broken.png")
    bad = Prompt(messages=(Message.user("Read it.", images=[broken]),))
    good = Prompt(messages=(Message.user("Read it.", images=[_png()]),))
    out = m.generate([good, bad, PROMPTS[0]], seeds=[0, 0, 0])
    assert isinstance(out[1], ValueError) and "broken.png" in str(out[1])
    assert not isinstance(out[0], Exception) and not isinstance(out[2], Exception)


@pytest.mark.skipif(not tesseract_available(), reason="tesseract not installed")
def test_real_tesseract_reads_a_rendered_line(tiny_lm):
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    img = PILImage.new("RGB", (420, 80), "white")
    ImageDraw.Draw(img).text((10, 15), "OPEN THE DOOR", fill="black", font=ImageFont.load_default(size=40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    m = _model(tiny_lm, image_input="ocr")
    text, read = m.render(
        Prompt(messages=(Message.user("Do it.", images=[Image.from_bytes(buf.getvalue())]),))
    )
    assert "OPEN THE DOOR" in read[0] and "[Text in image 1]: OPEN THE DOOR" in text


def test_ocr_mode_without_tesseract_names_the_extra(tiny_lm, monkeypatch):
    from mmsafe.errors import MissingDependency

    monkeypatch.setattr("mmsafe.ocr.tesseract_available", lambda: False)
    m = HFTextModel({"path": tiny_lm, "chat_template": TEMPLATE, "image_input": "ocr"})
    with pytest.raises(MissingDependency, match=r"mmsafe\[ocr\]"):
        m.load()


def test_stop_strings_cut_the_answer(tiny_lm):
    m = _model(tiny_lm, generation=GenerationParams(max_new_tokens=12))
    (free,) = m.generate([PROMPTS[0]], seeds=[0])
    assert len(free.text) > 2
    stop = free.text[1:3]  # a string the greedy answer is known to contain
    m2 = _model(tiny_lm, generation=GenerationParams(max_new_tokens=12), stop_strings=(stop,))
    (cut,) = m2.generate([PROMPTS[0]], seeds=[0])
    assert cut.text == free.text[: free.text.find(stop)] and cut.finish_reason == "stop"


def test_hidden_states_and_decoder_layers(tiny_lm):
    m = _model(tiny_lm)
    layers = m.decoder_layers()
    assert len(layers) == 4
    hs = m.hidden_states(PROMPTS[0], layers=[0, -1])
    n = len(m._token_ids(m.render(PROMPTS[0])[0]))
    assert set(hs) == {0, -1} and tuple(hs[0].shape) == (n, 64) and tuple(hs[-1].shape) == (n, 64)
    assert not hs[0].requires_grad
    with pytest.raises(ValueError, match="OCR"):
        m.hidden_states(PROMPTS[0], layers=[0], pixels=[object()])


def test_missing_chat_template_is_a_config_error(tiny_lm):
    from mmsafe.errors import ConfigError

    m = HFTextModel({"path": tiny_lm})
    with pytest.raises(ConfigError, match="chat template"):
        m.load()


def test_helpers():
    assert format_image_text(2, " a \n\n b ") == "[Text in image 2]: a\nb"
    assert format_image_text(1, "  \n") == f"[Text in image 1]: {hf_text.NO_TEXT}"
    assert _cut_at_stop("abc\nUser: x\nUser:", ["\nUser:"]) == ("abc", True)
    assert _cut_at_stop("abc", ["zz", ""]) == ("abc", False)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, mmsafe.models.hf_text, mmsafe.models.gemma_ocr, mmsafe.models.gemma_ocr_safe, "
    code += "mmsafe.models.gemma_llava; "
    code += "print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_logit_lens_of_the_last_layer_is_the_next_token_logits(tiny_lm):
    import torch

    m = _model(tiny_lm)
    hs = m.hidden_states(PROMPTS[0], layers=[-1])[-1]
    enc = m._pad([m._token_ids(m.render(PROMPTS[0])[0])])
    with torch.no_grad():
        logits = m._model(**enc).logits[0, -1].float()
    assert torch.allclose(m.logit_lens(hs[-1]), logits, atol=1e-4)
    assert tuple(m.logit_lens(hs).shape) == (hs.shape[0], logits.shape[0])  # every position at once
