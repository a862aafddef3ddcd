"""Typesetting: word-wrapped text fitted to a box and drawn on a plain image.

:func:`fit_text` picks the largest font size whose wrapped text fits a box, :func:`render_text_image`
draws it, and :func:`typeset_card` does both for a centred phrase on a plain card (the typographic
stand-in image several attacks use when a sample has no image of its own). Shared by the typographic
attacks (render-text), the embedding-space attack's target image and the query-based attacks.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Literal

from mmsafe.render.fonts import load_font

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["fit_text", "render_text_image", "typeset_card"]


def fit_text(
    text: str, *, font_path: str, box: tuple[int, int], min_size: int, max_size: int, spacing: int = 4
) -> tuple[str, int]:
    """Largest font size in ``[min_size, max_size]`` whose word-wrapped ``text`` fits ``box`` (w, h).

    Wrapping is by characters per line (the font's advance width of "M"); returns
    ``(wrapped_text, size)``. When even ``min_size`` overflows, ``min_size`` is returned and the text
    runs past the box (recorded by the caller as ``overflow``).
    """
    from PIL import Image as PILImageModule
    from PIL import ImageDraw

    draw = ImageDraw.Draw(PILImageModule.new("1", (1, 1)))
    clean = " ".join(text.split())
    for size in range(max_size, min_size - 1, -1):
        font = load_font(font_path, size)
        cols = max(1, int(box[0] // max(1.0, font.getlength("M"))))
        wrapped = textwrap.fill(clean, width=cols)
        left, top, right, bottom = draw.multiline_textbbox((0, 0), wrapped, font=font, spacing=spacing)
        if right - left <= box[0] and bottom - top <= box[1]:
            return wrapped, size
    font = load_font(font_path, min_size)
    cols = max(1, int(box[0] // max(1.0, font.getlength("M"))))
    return textwrap.fill(clean, width=cols), min_size


def render_text_image(
    wrapped: str,
    *,
    font_path: str,
    font_size: int,
    size: tuple[int, int],
    xy: tuple[int, int],
    spacing: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
    mode: Literal["RGB", "L"] = "RGB",
) -> PILImage:
    """Black ``wrapped`` text drawn at ``xy`` on a plain ``size`` image in ``mode``.

    ``mode="L"`` draws on an 8-bit grey canvas (``background`` must then be grey, R = G = B): black
    text on a grey background is grey by construction, and Pillow blends the grey canvas exactly as
    each channel of the RGB one, so ``.convert("RGB")`` of it equals the RGB render pixel for pixel;
    :meth:`Image.from_pil <mmsafe.types.Image.from_pil>` stores it as a fast grey PNG."""
    from PIL import Image as PILImageModule
    from PIL import ImageDraw

    if mode == "L":
        if len(set(background)) != 1:
            raise ValueError(f"a grey render needs a grey background (R = G = B), not {background}")
        img = PILImageModule.new("L", size, background[0])
        black: int | tuple[int, int, int] = 0
    else:
        img = PILImageModule.new("RGB", size, background)
        black = (0, 0, 0)
    ImageDraw.Draw(img).multiline_text(
        xy, wrapped, fill=black, font=load_font(font_path, font_size), spacing=spacing
    )
    return img


def typeset_card(
    text: str,
    *,
    font_path: str,
    size: tuple[int, int] = (512, 512),
    margin: int = 32,
    min_size: int = 12,
    max_size: int = 72,
    background: tuple[int, int, int] = (255, 255, 255),
) -> tuple[PILImage, dict[str, object]]:
    """``text`` word-wrapped in black at the largest fitting font size, centred on a plain ``size`` card.

    Returns the RGB image and its layout (``font_size``, ``lines``, ``text_box`` — the drawn text's
    bounding box — and ``overflow`` when even ``min_size`` does not fit inside the margins)."""
    from PIL import Image as PILImageModule
    from PIL import ImageDraw

    w, h = size
    box = (max(1, w - 2 * margin), max(1, h - 2 * margin))
    wrapped, font_size = fit_text(text, font_path=font_path, box=box, min_size=min_size, max_size=max_size)
    font = load_font(font_path, font_size)
    probe = ImageDraw.Draw(PILImageModule.new("1", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox((0, 0), wrapped, font=font, spacing=4, align="center")
    xy = ((w - (right - left)) // 2 - left, (h - (bottom - top)) // 2 - top)
    img = PILImageModule.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    draw.multiline_text(xy, wrapped, fill=(0, 0, 0), font=font, spacing=4, align="center")
    bbox = draw.multiline_textbbox(xy, wrapped, font=font, spacing=4, align="center")
    overflow = right - left > box[0] or bottom - top > box[1]
    layout: dict[str, object] = {
        "font_size": font_size,
        "lines": wrapped.count("\n") + 1,
        "text_box": [int(v) for v in bbox],
        "overflow": overflow,
    }
    return img, layout
