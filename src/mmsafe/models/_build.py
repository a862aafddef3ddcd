"""Build a model folder into the cache once: :func:`ensure_built`, shared by the tiny test models
(:mod:`mmsafe.models.tiny`, :mod:`mmsafe.models.tiny_families`) and the converted Gemma LLaVA
(:mod:`mmsafe.models.gemma_llava`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mmsafe.models._hf_util import RANDOM_WEIGHTS_MARKER
from mmsafe.paths import default_cache_root

__all__ = ["ensure_built"]

log = logging.getLogger(__name__)


def ensure_built(
    name: str,
    builder: Callable[..., Path],
    cache_root: Path | None = None,
    *,
    seed: int = 0,
    marker: str = RANDOM_WEIGHTS_MARKER,
) -> Path:
    """``cache_root/models/<name>``, written by ``builder(dest, seed=seed)`` on first use.

    Built in a temporary sibling folder and renamed into place, so concurrent processes never see
    a half-written model: the first rename wins and the others discard their copy. ``marker`` is the
    file whose presence says the folder is complete.
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    dest = root / "models" / name
    if (dest / marker).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        builder(tmp / "model", seed=seed)
        try:
            os.rename(tmp / "model", dest)
            log.info("built %s", dest)
        except OSError:
            if not (dest / marker).is_file():
                raise  # not a lost race: something else is in the way
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
