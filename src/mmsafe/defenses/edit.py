"""Prompt edits several defenses share: text added to the user's turn, every image mapped through a function.

Moved here from the plugins that first needed them (``with_user_text`` from :mod:`~mmsafe.defenses.adashield`,
``map_images`` from :mod:`~mmsafe.defenses.purify`, which still re-export them), so a defense uses them without
importing another plugin.
"""

from __future__ import annotations

from collections.abc import Callable

from mmsafe.types import Image, ImagePart, Message, Prompt, TextPart

__all__ = ["map_images", "replace_user_text", "with_user_text"]


def with_user_text(prompt: Prompt, text: str, *, position: str = "after") -> Prompt:
    """``prompt`` with ``text`` added to its last user turn (after or before that turn's text)."""
    messages = list(prompt.messages)
    idx = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if idx is None:
        messages.append(Message.user(text))
        return prompt.model_copy(update={"messages": tuple(messages)})
    parts = list(messages[idx].content)
    t_idx = [i for i, p in enumerate(parts) if isinstance(p, TextPart)]
    if not t_idx:
        parts.append(TextPart(text=text))
    elif position == "after":
        i = t_idx[-1]
        old = parts[i].text  # type: ignore[union-attr]
        parts[i] = TextPart(text=f"{old}\n\n{text}" if old else text)
    else:
        i = t_idx[0]
        old = parts[i].text  # type: ignore[union-attr]
        parts[i] = TextPart(text=f"{text}\n\n{old}" if old else text)
    messages[idx] = messages[idx].model_copy(update={"content": tuple(parts)})
    return prompt.model_copy(update={"messages": tuple(messages)})


def map_images(prompt: Prompt, fn: Callable[[Image], Image]) -> Prompt:
    """``prompt`` with every image (in any message) replaced by ``fn(image)``; text parts unchanged."""
    messages = []
    for m in prompt.messages:
        parts = tuple(ImagePart(image=fn(p.image)) if isinstance(p, ImagePart) else p for p in m.content)
        messages.append(m.model_copy(update={"content": parts}))
    return prompt.model_copy(update={"messages": tuple(messages)})


def replace_user_text(prompt: Prompt, text: str) -> Prompt:
    """``prompt`` with the text of its last user turn replaced by ``text`` (one text part, where the
    turn's first text part was, or after its images when it had none); images and other turns kept."""
    messages = list(prompt.messages)
    idx = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if idx is None:
        messages.append(Message.user(text))
        return prompt.model_copy(update={"messages": tuple(messages)})
    parts = list(messages[idx].content)
    first = next((i for i, p in enumerate(parts) if isinstance(p, TextPart)), len(parts))
    kept = [p for i, p in enumerate(parts) if not isinstance(p, TextPart) or i == first]
    pos = sum(1 for i, p in enumerate(parts) if i < first and not isinstance(p, TextPart))
    if first < len(parts):
        kept[pos] = TextPart(text=text)
    else:
        kept.append(TextPart(text=text))
    messages[idx] = messages[idx].model_copy(update={"content": tuple(kept)})
    return prompt.model_copy(update={"messages": tuple(messages)})
