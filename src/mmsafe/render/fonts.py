"""Fonts for typographic rendering: :func:`find_font` resolves the TrueType font to draw with and
:func:`load_font` loads it once per (path, size).

Shared by every component that draws text onto an image: the typographic attacks (FigStep and its
variants, MM-SafetyBench, injection, render-text), the embedding-space attack's target image, the
forgery judge, the vision starter dataset and the vision SFT data.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mmsafe.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont

__all__ = ["FALLBACK_FONT_PATHS", "REFERENCE_FONT_PATHS", "find_font", "load_font"]

logger = logging.getLogger(__name__)

#: Where FreeMonoBold (the font of the published FigStep images) lives on common systems.
REFERENCE_FONT_PATHS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf",  # Debian / Ubuntu: fonts-freefont-ttf
    "/usr/share/fonts/opentype/freefont/FreeMonoBold.otf",  # Debian: fonts-freefont-otf
    "/usr/share/fonts/gnu-free/FreeMonoBold.ttf",  # Fedora / Arch: gnu-free-mono-fonts
    "/usr/share/fonts/gnu-free/FreeMonoBold.otf",
    "/usr/local/share/fonts/FreeMonoBold.ttf",
    "/Library/Fonts/FreeMonoBold.ttf",
)
#: A bold monospace fallback (different glyph metrics: renders will not match the published images).
FALLBACK_FONT_PATHS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",  # Debian / Ubuntu: fonts-dejavu-core
    "/usr/share/fonts/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/TTF/DejaVuSansMono-Bold.ttf",
)


@functools.lru_cache(maxsize=8)
def load_font(path: str, size: int) -> FreeTypeFont:
    # An immutable, read-only resource: caching it only saves re-parsing the font file per image.
    from PIL import ImageFont

    try:
        return ImageFont.truetype(path, size)
    except OSError as exc:
        raise ConfigError(f"cannot load font {path!r}: {exc}") from exc


def find_font(font_path: str | None = None) -> tuple[str, bool]:
    """Resolve the font to draw with; returns ``(path, is_reference_font)``.

    An explicit ``font_path`` must exist (:class:`ConfigError` otherwise) and is used as given.
    Without one, FreeMonoBold is looked up in :data:`REFERENCE_FONT_PATHS`; when it is absent,
    DejaVuSansMono-Bold is used and a WARNING is logged (the renders then differ from the
    published FigStep images). With neither installed, :class:`MissingDependency` names the package.
    """
    if font_path:
        p = Path(font_path).expanduser()
        if not p.is_file():
            raise ConfigError(f"figstep: font_path {str(p)!r} does not exist")
        return str(p), p.stem == "FreeMonoBold"
    for cand in REFERENCE_FONT_PATHS:
        if Path(cand).is_file():
            return cand, True
    for cand in FALLBACK_FONT_PATHS:
        if Path(cand).is_file():
            logger.warning(
                "FreeMonoBold.ttf not found (apt-get install fonts-freefont-ttf); FigStep images are drawn "
                "with %s instead and will NOT match the published FigStep images",
                cand,
            )
            return cand, False
    raise MissingDependency(
        "FigStep needs a TrueType font: install FreeMonoBold (Debian: apt-get install fonts-freefont-ttf) "
        "or set params.font_path"
    )
