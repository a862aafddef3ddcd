"""Typography shared by the typographic attacks: MM-SafetyBench's TYPO layout (a sans font, greedy
word wrap, black on white, 1024 px wide) and the vertical stacking of image parts.

Used by MM-SafetyBench TYPO / SD+TYPO (:mod:`mmsafe.attacks.typographic.mmsb_typo`) and HADES
(:mod:`mmsafe.attacks.typographic.hades`); the layout facts are documented on
:class:`~mmsafe.attacks.typographic.mmsb_typo.MMSafetyBenchTypo`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mmsafe.render.fonts import find_font, load_font

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["SANS_FONT_PATHS", "find_sans_font", "mmsb_wrap", "render_mmsb_typo", "vertical_concat"]

logger = logging.getLogger(__name__)

#: Upstream draws with ARIAL.TTF; FreeSans (fonts-freefont-ttf) is the metric-compatible free stand-in.
SANS_FONT_PATHS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/msttcorefonts/Arial.ttf",
    "/usr/share/fonts/truetype/msttcorefonts/arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",  # Debian / Ubuntu: fonts-freefont-ttf
    "/usr/share/fonts/gnu-free/FreeSans.ttf",  # Fedora / Arch
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)


def find_sans_font(font_path: str | None = None) -> tuple[str, bool]:
    """``(path, is_arial)``: ``font_path`` if given, else Arial, else FreeSans/Liberation Sans.

    An explicit path is validated by :func:`~mmsafe.render.fonts.find_font`. With no
    sans font installed at all, FigStep's font lookup (FreeMonoBold / DejaVu Sans Mono) is used.
    """
    if font_path:
        path, _ = find_font(font_path)
        return path, Path(path).stem.lower() == "arial"
    for cand in SANS_FONT_PATHS:
        if Path(cand).is_file():
            return cand, Path(cand).stem.lower() == "arial"
    logger.warning(
        "no Arial/FreeSans font found (apt-get install fonts-freefont-ttf); using a monospace font"
    )
    path, _ = find_font(None)
    return path, False


# --------------------------------------------------------------------------------------------------
# Layout (MM-SafetyBench creation step, as documented in the class docstring)
# --------------------------------------------------------------------------------------------------


def mmsb_wrap(text: str, *, font_path: str, font_size: int = 90, max_width: int = 1024) -> tuple[str, int]:
    """Greedy word wrap by rendered width; returns ``(wrapped_text, n_lines)``.

    Words are added while the running line length stays ``< max_width``; a new line starts with
    the word preceded by one space (upstream keeps that leading space). A single word wider than
    the canvas is not broken (it is clipped, as upstream).
    """
    font = load_font(font_path, font_size)
    words = " ".join(text.split()).split(" ")
    out = words[0]
    length = font.getlength(out)
    lines = 1
    for word in words[1:]:
        piece = font.getlength(" " + word)
        if length + piece < max_width:
            out += " " + word
            length += piece
        else:
            out += "\n " + word
            length = piece
            lines += 1
    return out, lines


def render_mmsb_typo(
    text: str,
    *,
    font_path: str,
    font_size: int = 90,
    max_width: int = 1024,
    mode: Literal["RGB", "L"] = "RGB",
) -> PILImage:
    """The TYPO image: black text on white, ``max_width`` wide, ``font_size * (lines + 1)`` high.

    Drawn at ``(0, font_size / 2)`` with Pillow's default anchor and line spacing. ``mode="L"`` draws
    the same pixels on an 8-bit grey canvas (the TYPO attack uses it: :meth:`Image.from_pil
    <mmsafe.types.Image.from_pil>` stores it as a fast grey PNG that decodes to the RGB render's pixels;
    :func:`vertical_concat` takes either).
    """
    from PIL import Image as PILImageModule
    from PIL import ImageDraw

    wrapped, lines = mmsb_wrap(text, font_path=font_path, font_size=font_size, max_width=max_width)
    white, black = ((255, 255, 255), (0, 0, 0)) if mode == "RGB" else (255, 0)
    img = PILImageModule.new(mode, (max_width, font_size * (lines + 1)), white)
    ImageDraw.Draw(img).text((0, font_size / 2.0), wrapped, fill=black, font=load_font(font_path, font_size))
    return img


def vertical_concat(top: PILImage, bottom: PILImage) -> PILImage:
    """``top`` above ``bottom`` on a white canvas as wide as the wider one, both left-aligned."""
    from PIL import Image as PILImageModule

    w = max(top.width, bottom.width)
    out = PILImageModule.new("RGB", (w, top.height + bottom.height), (255, 255, 255))
    out.paste(top.convert("RGB"), (0, 0))
    out.paste(bottom.convert("RGB"), (0, top.height))
    return out
