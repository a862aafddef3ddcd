"""Greedy answers for candidate adversarial images (the success test run during optimisation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmsafe.types import Image, ImagePart, Prompt, TextPart

__all__ = ["greedy_answers", "swap_first_image"]


def swap_first_image(prompt: Prompt, image: Image) -> Prompt:
    """``prompt`` with its first image (in message order) replaced by ``image``."""
    messages, swapped = [], False
    for m in prompt.messages:
        parts: list[TextPart | ImagePart] = []
        for part in m.content:
            if isinstance(part, ImagePart) and not swapped:
                parts.append(ImagePart(image=image))
                swapped = True
            else:
                parts.append(part)
        messages.append(m.model_copy(update={"content": tuple(parts)}))
    if not swapped:
        raise ValueError("the prompt has no image to replace")
    return prompt.model_copy(update={"messages": tuple(messages)})


def greedy_answers(model: Any, prompts: Sequence[Prompt], pixels: Any, *, max_new_tokens: int) -> list[str]:
    """Greedy answers of ``model`` to ``prompts[i]`` with image ``pixels[i]`` (rounded to 8 bits,
    as the saved PNG will be)."""
    from mmsafe.models.families import pil_from_pixels

    swapped = [
        swap_first_image(p, Image.from_pil(pil_from_pixels(x), source="candidate.png"))
        for p, x in zip(prompts, pixels, strict=True)
    ]
    return model.greedy_answers(swapped, max_new_tokens=max_new_tokens)
