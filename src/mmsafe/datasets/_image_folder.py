"""The user's image folder of a benchmark whose images are not shipped with its text files.

SIUO, JailBreakV-28K, VLGuard and VLSBench publish their queries in a repository and their images in a
separate archive. A loader takes that folder as a param; an item whose image is not there still
loads, as a Sample whose ``error`` names the file it looked for, so the run records it as failed.
"""

from __future__ import annotations

from pathlib import Path

from mmsafe.datasets._util import ImageLoadError, load_image
from mmsafe.types import Image

__all__ = ["image_folder", "item_image", "provenance"]


def image_folder(root: Path, param: str | None, default: str) -> Path:
    """``param`` (a user path, ``~`` expanded), else ``root / default``; the folder need not exist."""
    return Path(param).expanduser() if param else root / default


def item_image(folder: Path, rel: str) -> tuple[tuple[Image, ...], str | None]:
    """``((image,), None)`` for ``folder / rel``, or ``((), reason)`` naming the path when it cannot be read."""
    if not rel:
        return (), "row names no image file"
    try:
        return (load_image(folder, rel),), None
    except ImageLoadError as exc:
        return (), f"{exc} (looked for {folder / rel})"


def provenance(root: Path, file: Path, row: int) -> dict[str, object]:
    """``metadata["source"]``: the data file relative to the dataset root and the 0-based row in it."""
    return {"file": file.relative_to(root).as_posix(), "row": row}
