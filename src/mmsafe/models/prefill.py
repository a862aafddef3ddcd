"""Prefilling: a prompt whose last turn is the assistant's asks the model to continue that turn, not to start a new one.

A :class:`~mmsafe.types.Prompt` ending with an assistant message (``Message(role="assistant", …)``, text only) means
"the answer begins with this text; write the rest". Backends that render a chat template themselves (``hf``,
``hf-text``, ``gemma-ocr``, ``llamacpp``) do it and declare the ``prefill`` capability; the answer they return is
the continuation only, without the prefilled text. Inference-time defenses that steer the start of an answer use it
(ETA's shallow and sentence-level alignment, Ding et al., ICLR 2025), as do prefilling attacks (Andriushchenko et al.,
ICLR 2025, "Jailbreaking leading safety-aligned LLMs with simple adaptive attacks", §prefilling).

How the text is built, for every template: the conversation before the assistant turn is rendered with the
generation prompt, and the whole conversation without it; the second is cut right after the prefilled text when it
begins with the first (what transformers' ``continue_final_message`` does), so the model sees exactly the bytes an
answer beginning with that text would have; otherwise (a template that trims or rewrites the turn) the prefilled text
is appended to the generation prompt. A template without a chat format (BLIP-2, PaliGemma) gets the text after a
space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mmsafe.types import Prompt

__all__ = ["prefill_of", "render_prefilled", "split_prefill"]


def prefill_of(prompt: Prompt) -> str | None:
    """The text the answer must begin with (the last turn's, when it is the assistant's), or None. Raises
    ``ValueError`` for an assistant turn that holds images."""
    if not prompt.messages or prompt.messages[-1].role != "assistant":
        return None
    last = prompt.messages[-1]
    if last.images:
        raise ValueError("a prefilled assistant turn holds text only; this one holds images")
    return last.text


def split_prefill(conversation: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """(the conversation before a final assistant turn, that turn's text) — or (the conversation, None) when it does
    not end with one. Turns are chat-template dicts, their content a string or a list of text/image items."""
    turns = list(conversation)
    if not turns or turns[-1].get("role") != "assistant":
        return turns, None
    content = turns[-1].get("content")
    if isinstance(content, str):
        return turns[:-1], content
    texts = []
    for item in content or []:
        if item.get("type") != "text":
            raise ValueError("a prefilled assistant turn holds text only; this one holds images")
        texts.append(str(item.get("text", "")))
    return turns[:-1], "".join(texts)


def render_prefilled(
    conversation: Sequence[dict[str, Any]],
    render: Callable[[list[dict[str, Any]], bool], str],
    *,
    chat_template: bool = True,
) -> str:
    """The prompt text of ``conversation``: with the generation prompt, or, when it ends with an assistant turn,
    continuing that turn (see the module docstring). ``render(turns, add_generation_prompt)`` is the backend's own
    chat-template rendering; ``chat_template=False`` for families that have none (the text goes after a space)."""
    head, prefill = split_prefill(conversation)
    text = render(head, True)
    if prefill is None:
        return text
    if not chat_template:
        sep = "" if not text or text[-1].isspace() or not prefill else " "
        return text + sep + prefill
    full = render(list(conversation), False)
    if full.startswith(text):
        for wanted in dict.fromkeys((prefill, prefill.strip())):
            at = full.find(wanted, len(text)) if wanted else -1
            if at >= 0:
                return full[: at + len(wanted)]
    return text + prefill
