"""Prefilling: a prompt ending with an assistant turn is continued, not answered anew (hf, hf-text, llamacpp)."""

from __future__ import annotations

import pytest

from mmsafe.models.chat_template import render_chat_template
from mmsafe.models.prefill import prefill_of, render_prefilled, split_prefill
from mmsafe.types import Image, Message, Prompt
from test_hf_text import _model, tiny_lm  # noqa: F401  (the tiny random causal LM fixture)

#: every turn as "<|role|>\ncontent\n"; the generation prompt opens an assistant turn the same way
PLAIN = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
#: Gemma-style: contents trimmed, the model turn named differently from the role
TRIMMING = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
#: an assistant turn that does not begin the way the generation prompt does
ODD = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}[BOT] {{ m['content'] }}\n{% else %}"
    "Q: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
)


def _render(template: str):
    return lambda turns, gen: render_chat_template(template, turns, add_generation_prompt=gen)


def _turns(answer: str | None = "As an AI assistant") -> list[dict]:
    turns = [{"role": "user", "content": "How do I pick a lock?"}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def test_a_final_assistant_turn_is_continued_byte_for_byte():
    text = render_prefilled(_turns(), _render(PLAIN))
    assert text == "<|user|>\nHow do I pick a lock?\n<|assistant|>\nAs an AI assistant"
    # without an assistant turn: the generation prompt, as before
    assert (
        render_prefilled(_turns(None), _render(PLAIN)) == "<|user|>\nHow do I pick a lock?\n<|assistant|>\n"
    )


def test_a_trimming_template_is_cut_after_the_trimmed_text():
    text = render_prefilled(_turns("As an AI assistant, "), _render(TRIMMING))
    assert (
        text
        == "<start_of_turn>user\nHow do I pick a lock?<end_of_turn>\n<start_of_turn>model\nAs an AI assistant,"
    )


def test_a_template_whose_turn_differs_gets_the_text_after_its_generation_prompt():
    assert render_prefilled(_turns(), _render(ODD)) == "Q: How do I pick a lock?\nA:As an AI assistant"


def test_without_a_chat_format_the_text_follows_after_a_space():
    text = render_prefilled(
        _turns(), lambda turns, gen: "Question: " + turns[0]["content"] + " Answer:", chat_template=False
    )
    assert text == "Question: How do I pick a lock? Answer: As an AI assistant"


def test_an_assistant_turn_with_images_is_refused():
    img = Image.from_pil(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (8, 8)), source="x.png")
    with pytest.raises(ValueError, match="text only"):
        split_prefill(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image"}]}]
        )
    with pytest.raises(ValueError, match="text only"):
        prefill_of(
            Prompt(
                messages=(
                    Message.user("q"),
                    Message(role="assistant", content=Message.user("a", (img,)).content),
                )
            )
        )
    assert prefill_of(Prompt(messages=(Message.user("q"),))) is None


def _prefilled(text: str = "As an AI assistant") -> Prompt:
    from mmsafe.types import TextPart

    return Prompt(
        messages=(
            Message.user("Describe the picture."),
            Message(role="assistant", content=(TextPart(text=text),)),
        )
    )


def test_hf_text_continues_the_turn(tiny_lm):  # noqa: F811  (the fixture imported above)
    m = _model(tiny_lm)
    try:
        assert "prefill" in m.capabilities
        plain = Prompt(messages=(Message.user("Describe the picture."),))
        text, _ = m.render(_prefilled())
        head, _ = m.render(plain)
        assert head.endswith("<|assistant|>\n") and text == head + "As an AI assistant"
        a, b = m.generate([plain, _prefilled()], seeds=[0, 0])
        assert not isinstance(a, Exception) and not isinstance(b, Exception)
        assert a.text != b.text  # a different input: the model was not asked anew
    finally:
        m.close()


def test_hf_continues_the_turn_through_the_processor_template(tmp_path):
    from mmsafe.models.tiny_llava import TinyLlava

    m = TinyLlava(cache_dir=str(tmp_path), generation={"max_new_tokens": 6})
    m.load()
    try:
        assert "prefill" in m.capabilities
        img = Image.from_pil(
            __import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32), "white"), source="w.png"
        )
        plain = Prompt(messages=(Message.user("Describe the picture.", (img,)),))
        filled = Prompt(messages=(*plain.messages, _prefilled().messages[-1]))
        head, _ = m._prepare(plain)
        text, _ = m._prepare(filled)
        assert text.startswith(head.rstrip()) and text.endswith("As an AI assistant"), (head, text)
        a, b = m.generate([plain, filled], seeds=[0, 0])
        assert not isinstance(a, Exception) and not isinstance(b, Exception) and a.text != b.text
    finally:
        m.close()


def test_families_that_cannot_continue_an_answer_do_not_declare_it():
    from mmsafe.models.families import FAMILIES

    no_prefill = {f.name for f in FAMILIES if "prefill" not in f.capabilities()}
    assert no_prefill == {"paligemma"}  # a prefix-LM; BLIP-2 with a T5 drops it when loaded (encoder-decoder)
