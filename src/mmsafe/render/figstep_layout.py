"""FigStep's layout: a text wrapped at a fixed column count, then empty numbered items, typeset black on white.

Shared by every component that draws a FigStep-style image: the ``figstep`` attack, the ``mml``
attack (its encrypted titles use the same layout), the safety-SFT data builders.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Literal

from mmsafe.render.fonts import load_font

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "LINE_SPACING",
    "N_ITEMS",
    "TEXT_XY",
    "figstep_extent",
    "figstep_overflows",
    "figstep_text",
    "render_figstep",
]

#: Fixed parts of the upstream layout (ThuCCSLab/FigStep ``src/generate_prompts.py``).
TEXT_XY: tuple[int, int] = (20, 10)
LINE_SPACING = 11
N_ITEMS = 3


def figstep_text(instruction: str, *, width: int = 15, n_items: int = N_ITEMS) -> str:
    """The text FigStep typesets: the instruction wrapped at ``width`` columns, then empty items.

    The instruction is stripped of surrounding whitespace, wrapped with :func:`textwrap.fill`
    defaults (which break long words and after hyphens), and ``"\\n1. "``, ``"\\n2. "``, ``"\\n3. "``
    are appended, each with its trailing space, exactly as upstream does.
    """
    body = textwrap.fill(instruction.strip(), width=width)
    return body + "".join(f"\n{i}. " for i in range(1, n_items + 1))


def render_figstep(
    text: str,
    *,
    font_path: str,
    font_size: int = 80,
    width: int = 15,
    canvas: int = 760,
    xy: tuple[int, int] = TEXT_XY,
    spacing: int = LINE_SPACING,
    n_items: int = N_ITEMS,
    mode: Literal["RGB", "L"] = "RGB",
    height: int | None = None,
) -> PILImage:
    """Typeset ``text`` the FigStep way and return a ``canvas``×``canvas`` PIL image in ``mode``.

    ``height`` (default: ``canvas``) makes the canvas ``canvas``×``height`` instead, for callers that
    grow it to hold a long text (see :func:`figstep_extent`); FigStep itself always draws a square.

    Black text on white, drawn with Pillow's default anchor at ``xy`` with ``spacing`` px between
    lines, after :func:`figstep_text` layout. Like upstream there is no overflow check: a long
    instruction runs off the bottom edge (see :func:`figstep_overflows`). With FreeMonoBold at the
    defaults the output is pixel-identical to most published SafeBench images.

    ``mode="RGB"`` (the default) is upstream's canvas. ``mode="L"`` draws the same text on an 8-bit
    grey canvas: black on white is grey by construction, and Pillow blends each channel of the RGB
    canvas exactly as it blends the grey one, so ``render_figstep(t, mode="L").convert("RGB")`` equals
    ``render_figstep(t)`` pixel for pixel (checked on all 500 SafeBench instructions by
    ``benchmarks/typographic_render.py`` and on SafeBench-Tiny by the tests). It draws in half the time
    and :meth:`Image.from_pil <mmsafe.types.Image.from_pil>` stores it as a fast grey PNG.
    """
    from PIL import Image as PILImageModule
    from PIL import ImageDraw

    font = load_font(font_path, font_size)
    white, black = ((255, 255, 255), (0, 0, 0)) if mode == "RGB" else (255, 0)
    img = PILImageModule.new(mode, (canvas, height or canvas), white)
    ImageDraw.Draw(img).text(
        xy, figstep_text(text, width=width, n_items=n_items), fill=black, font=font, spacing=spacing
    )
    return img


def figstep_extent(
    text: str,
    *,
    font_path: str,
    font_size: int = 80,
    width: int = 15,
    xy: tuple[int, int] = TEXT_XY,
    spacing: int = LINE_SPACING,
    n_items: int = N_ITEMS,
) -> tuple[int, int]:
    """``(right, bottom)`` in px of the typeset text's bounding box (the canvas size it needs, less margin)."""
    from PIL import Image as PILImageModule
    from PIL import ImageDraw

    font = load_font(font_path, font_size)
    draw = ImageDraw.Draw(PILImageModule.new("1", (1, 1)))
    _, _, right, bottom = draw.multiline_textbbox(
        xy, figstep_text(text, width=width, n_items=n_items), font=font, spacing=spacing
    )
    return math.ceil(right), math.ceil(bottom)


def figstep_overflows(
    text: str,
    *,
    font_path: str,
    font_size: int = 80,
    width: int = 15,
    canvas: int = 760,
    xy: tuple[int, int] = TEXT_XY,
    spacing: int = LINE_SPACING,
    n_items: int = N_ITEMS,
) -> bool:
    """Whether the typeset text runs past the canvas (upstream keeps such images, cropped)."""
    right, bottom = figstep_extent(
        text, font_path=font_path, font_size=font_size, width=width, xy=xy, spacing=spacing, n_items=n_items
    )
    return right > canvas or bottom > canvas
