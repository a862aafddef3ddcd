"""What every benchmark loader is: params (a local path, a split) → an iterable of :class:`Sample`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from mmsafe.errors import ConfigError
from mmsafe.registry import Component
from mmsafe.types import Sample

#: Environment variable naming a folder that holds one sub-folder per dataset (figstep/, xstest/, …).
DATA_DIR_ENV = "MMSAFE_DATA_DIR"


class Benchmark(Component):
    """Base of every benchmark loader.

    ``load`` yields samples with ids that are stable across runs (resume depends on it). A row that
    cannot be read becomes a Sample with ``error`` set, so it is recorded as failed, not dropped.
    Loaders read local files only; they never download. Every Sample records where it came from:
    ``metadata["source"] = {"file": <path relative to the dataset root>, "row": <0-based index>}``
    (:func:`mmsafe.datasets._util.with_source`); a dataset's variant, subset or split is a param, so
    it is part of the benchmark's spec key.

    What ``mmsafe list benchmark`` shows about a set, one short line each (None: not stated):
    ``size`` (rows, e.g. "1,680 questions; tiny 168"), ``licence`` (of the data) and ``needs`` (what
    the user supplies, e.g. "data folder; images: user folder (COCO)").
    """

    kind: ClassVar[str] = "benchmark"
    #: sub-folder name looked up under $MMSAFE_DATA_DIR when ``params.path`` is not given
    default_folder: ClassVar[str | None] = None
    #: how many items the set holds, per variant ("1,680 questions; tiny 168")
    size: ClassVar[str | None] = None
    #: the data's licence ("CC BY-NC 4.0")
    licence: ClassVar[str | None] = None
    #: what the user must supply ("data folder (github.com/…); images: user folder (COCO)")
    needs: ClassVar[str | None] = None

    def load(self) -> Iterator[Sample]:
        raise NotImplementedError

    def location(self) -> str:
        """Where the data is read from, for error messages (the folder, or the file for a one-file loader)."""
        try:
            return str(self.root())
        except Exception:  # no folder configured: root() raises its own ConfigError when loading
            return "(no data folder)"

    def root(self) -> Path:
        """The dataset folder: ``params.path``, else ``$MMSAFE_DATA_DIR/<default_folder>``."""
        path = getattr(self.params, "path", None)
        if path:
            root = Path(path).expanduser()
        elif self.default_folder and os.environ.get(DATA_DIR_ENV):
            root = Path(os.environ[DATA_DIR_ENV]).expanduser() / self.default_folder
        else:
            raise ConfigError(
                f"benchmark '{self.name}' needs a local copy of its data: set params.path "
                f"(or ${DATA_DIR_ENV} to a folder containing '{self.default_folder}/')"
            )
        if not root.exists():
            raise ConfigError(f"benchmark '{self.name}': data folder {root} does not exist")
        return root
