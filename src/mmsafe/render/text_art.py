"""A block of text typeset on a plain canvas: greedy word wrap by rendered width, one line per row,
each line centred or left-aligned. Shared by the attacks that draw a query or a phrase as an image
tile (CS-DJ's sub-query tiles, VisCRA's key-phrase image for a sample that has no image)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from mmsafe.render.fonts import load_font

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["render_text_block", "wrap_by_width"]


def wrap_by_width(text: str, *, font_path: str, font_size: int, max_width: int) -> list[str]:
    """Greedy word wrap: words join a line while its rendered width stays ``<= max_width``.

    Whitespace runs collapse to one space. A single word wider than ``max_width`` is cut between
    characters (the pieces keep their order), so every line fits and no character is lost:
    ``"".join(lines)`` equals the text with its spaces removed."""
    font = load_font(font_path, font_size)
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}" if current else word
        if font.getlength(trial) <= max_width:
            current = trial
            continue
        if current:
            lines.append(current)
            current = ""
        while font.getlength(word) > max_width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > max_width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def render_text_block(
    text: str,
    *,
    font_path: str,
    font_size: int,
    width: int,
    line_gap: int = 10,
    color: tuple[int, int, int] = (0, 0, 0),
    background: tuple[int, int, int] = (255, 255, 255),
    align: Literal["center", "left"] = "center",
    margin: int = 0,
) -> tuple[PILImage, list[str]]:
    """``(image, lines)``: ``text`` wrapped to ``width - 2 * margin`` px and drawn one line per row
    of ``font_size + line_gap`` px, from the top, on a ``width``-wide RGB canvas exactly as tall as
    the lines need (at least one row). Lines are centred (``align="center"``) or start at ``margin``."""
    from PIL import Image as PILImageModule
    from PIL import ImageDraw

    usable = max(1, width - 2 * margin)
    lines = wrap_by_width(text, font_path=font_path, font_size=font_size, max_width=usable) or [""]
    row = font_size + line_gap
    img = PILImageModule.new("RGB", (width, row * len(lines)), background)
    draw = ImageDraw.Draw(img)
    font = load_font(font_path, font_size)
    for i, line in enumerate(lines):
        x = (width - font.getlength(line)) / 2 if align == "center" else margin
        draw.text((x, i * row), line, font=font, fill=color)
    return img, lines
