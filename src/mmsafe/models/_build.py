"""Build a model folder into the cache once: :func:`build_once` (any folder) and :func:`ensure_built`
(``<cache_root>/models/<name>``), shared by the tiny test models (:mod:`mmsafe.models.tiny_llava`,
:mod:`mmsafe.models.tiny`), the converted Gemma-3-270M (:mod:`mmsafe.models.gemma`) and the
Gemma LLaVA (:mod:`mmsafe.models.gemma_llava`).

A folder is complete when its marker file is there (the builder writes it last). Building happens in
a temporary sibling folder that is renamed into place, under a lock file, so a reader never sees half
a model and a second process waits for the first build instead of repeating it. A process killed
mid-build leaves its temporary folder, or (from a writer that did not rename) a folder without the
marker: the next build removes both and builds again rather than loading what is there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmsafe.models._hf_util import RANDOM_WEIGHTS_MARKER
from mmsafe.paths import default_cache_root

__all__ = ["build_lock", "build_once", "ensure_built"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` for the block, so concurrent processes build once
    (POSIX ``flock``; elsewhere a no-op).

    The file is removed on exit, so a finished cache holds no lock files. A process that waited on a
    file its holder has since removed sees that the path no longer names the file it locked and
    locks the path anew. The kernel drops the lock when its holder dies, so a killed build never
    blocks the next one.
    """
    try:
        import fcntl
    except ImportError:  # Windows: the rename in build_once still keeps the folder consistent
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it while we waited: lock the path anew
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # closing drops the lock


def _clear_leftovers(dest: Path, marker: str) -> None:
    """Remove what an interrupted build left: ``dest`` without its marker, and temporary siblings.

    Called under the lock, so no temporary sibling belongs to a build still running.
    """
    if dest.exists() and not (dest / marker).is_file():
        log.warning("%s has no %s (an interrupted build): building it again", dest, marker)
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        else:
            dest.unlink()
    for tmp in dest.parent.glob(f".{dest.name}.*"):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def build_once(dest: Path, build: Callable[[Path], Any], *, marker: str) -> Path:
    """``dest``, written by ``build(folder)`` unless ``dest/marker`` already says it is complete.

    ``build`` gets a folder that does not exist yet (inside a temporary sibling of ``dest``, which it
    may use as scratch space) and must write ``marker`` into it last.
    """
    dest = Path(dest)
    if (dest / marker).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(dest.parent / f".{dest.name}.lock"):
        if (dest / marker).is_file():  # another process finished while we waited
            return dest
        _clear_leftovers(dest, marker)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            build(tmp / "model")
            if not (tmp / "model" / marker).is_file():
                raise RuntimeError(f"building {dest.name} wrote no {marker}: the folder is not complete")
            try:
                os.rename(tmp / "model", dest)
                log.info("built %s", dest)
            except OSError:
                if not (dest / marker).is_file():
                    raise  # not a lost race: something else is in the way
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def ensure_built(
    name: str,
    builder: Callable[..., Path],
    cache_root: Path | str | None = None,
    *,
    seed: int = 0,
    marker: str = RANDOM_WEIGHTS_MARKER,
) -> Path:
    """``cache_root/models/<name>``, written by ``builder(dest, seed=seed)`` on first use (see :func:`build_once`)."""
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return build_once(root / "models" / name, lambda folder: builder(folder, seed=seed), marker=marker)
