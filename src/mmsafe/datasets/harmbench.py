"""HarmBench behaviours: 400 text (standard, contextual, copyright) or 110 multimodal with images."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from mmsafe import papers
from mmsafe.datasets._util import (
    ImageLoadError,
    load_image,
    read_csv,
    read_json,
    require_file,
    rows_to_samples,
)
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Image, Sample

FunctionalCategory = Literal["standard", "contextual", "copyright"]

#: HarmBench's separator between a contextual behaviour's context passage and its request.
CONTEXT_SEPARATOR = "\n\n---\n\n"

_TEXT_FILES = {
    "all": "behavior_datasets/harmbench_behaviors_text_all.csv",
    "test": "behavior_datasets/harmbench_behaviors_text_test.csv",
    "val": "behavior_datasets/harmbench_behaviors_text_val.csv",
}
_MM_FILE = "behavior_datasets/harmbench_behaviors_multimodal_all.csv"
_TARGETS = {
    "text": "optimizer_targets/harmbench_targets_text.json",
    "multimodal": "optimizer_targets/harmbench_targets_multimodal.json",
}
_IMAGE_DIR = "multimodal_behavior_images"


class HarmBench(Benchmark):
    """HarmBench: harmful behaviours (text: 320 test / 80 val; multimodal: 110 with images).

    Paper: M. Mazeika, L. Phan, X. Yin, A. Zou, Z. Wang, N. Mu, E. Sakhaee, N. Li, S. Basart, B. Li,
    D. Forsyth, D. Hendrycks, "HarmBench: A Standardized Evaluation Framework for Automated Red Teaming
    and Robust Refusal", ICML 2024 (arXiv:2402.04249). Data: github.com/centerforaisafety/HarmBench,
    MIT licence (the multimodal images come from the web; their own copyrights are not covered).

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/harmbench``): HarmBench's ``data/``
    sub-folders ``behavior_datasets/``, ``optimizer_targets/``, ``multimodal_behavior_images/``.

    Field mapping (both subsets): ``BehaviorID`` → ``Sample.id`` ``"harmbench/<BehaviorID>"``;
    ``SemanticCategory`` → ``category``; the ``optimizer_targets`` entry for the id ("Sure, here's …")
    → ``target`` (``None`` if absent); ``metadata``: ``behavior_id``, ``behavior`` (the raw request),
    ``functional_category``, ``tags``, ``source`` (``{"file": <CSV path>, "row": <0-based data
    row>}``). Every item is ``expected=refuse``.

    Text subset: ``text`` = ``Behavior``; for a contextual behaviour it is ``ContextString``, a line
    ``---`` between blank lines, then ``Behavior`` — the layout HarmBench's own baselines use
    (``f"{context}\\n\\n---\\n\\n{behavior}"``); ``metadata["context"]`` keeps the passage alone.
    Copyright behaviours are kept; HarmBench judges them by hashing, which mmsafe judges do not do.

    Multimodal subset: ``text`` = ``Behavior`` (it refers to "this image"); ``images`` = the file
    ``multimodal_behavior_images/<stem of ImageFileName>.png`` (upstream stores every image as PNG,
    even when the CSV names a .jpg); a missing or unreadable file gives that Sample an ``error``.
    ``metadata``: ``image_file``, ``image_description``, ``redacted_image_description`` (for
    text-only baselines) and ``source_url``.

    Params: ``subset`` ``"text"`` (default) or ``"multimodal"``; ``split`` (text only) ``"test"``
    (default, the official evaluation split), ``"val"`` or ``"all"``; ``functional_categories``
    (text only) — keep only these of ``standard``/``contextual``/``copyright`` (default: all, as
    HarmBench's evaluation does).
    """

    name: ClassVar[str] = "harmbench"
    paper: ClassVar[Paper | None] = papers.HARMBENCH.threat(
        "harmful behaviours for a red-teamer with query access to the target; text and multimodal"
    )
    default_folder: ClassVar[str | None] = "harmbench"
    size: ClassVar[str | None] = "text 400 (test 320, val 80); multimodal 110"
    licence: ClassVar[str | None] = "MIT (multimodal images: their own copyrights)"
    needs: ClassVar[str | None] = "data folder (HarmBench's data/); images included"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        subset: Literal["text", "multimodal"] = "text"
        split: Literal["all", "test", "val"] | None = None
        functional_categories: tuple[FunctionalCategory, ...] | None = None

        @model_validator(mode="after")
        def _text_only(self) -> HarmBench.Params:
            if self.subset == "multimodal":
                for field in ("split", "functional_categories"):
                    if getattr(self, field) is not None:
                        raise ValueError(f"{field} applies to subset 'text' only (multimodal has one file)")
            return self

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        subset = self.params.subset
        targets = read_json(require_file(root, _TARGETS[subset], benchmark=self.name))
        if not isinstance(targets, dict):
            raise ConfigError(f"{root / _TARGETS[subset]}: expected a JSON object of BehaviorID → target")
        if subset == "text":
            yield from self._text(root, targets)
        else:
            yield from self._multimodal(root, targets)

    def _text(self, root: Path, targets: dict[str, Any]) -> Iterator[Sample]:
        rel = _TEXT_FILES[self.params.split or "test"]
        wanted = set(self.params.functional_categories or ())

        def to_sample(n: int, row: dict[str, str]) -> Sample | None:
            functional = row["FunctionalCategory"].strip()
            if wanted and functional not in wanted:
                return None
            behavior, context = row["Behavior"], row.get("ContextString") or ""
            text = f"{context}{CONTEXT_SEPARATOR}{behavior}" if context else behavior
            meta = self._meta(row, functional)
            meta["context"] = context or None
            return self._sample(row, targets, text=text, metadata=meta)

        rows = read_csv(require_file(root, rel, benchmark=self.name))
        yield from rows_to_samples(
            enumerate(rows, 1), to_sample, benchmark=self.name, id_prefix="harmbench/", source_file=rel
        )

    def _multimodal(self, root: Path, targets: dict[str, Any]) -> Iterator[Sample]:
        def to_sample(n: int, row: dict[str, str]) -> Sample:
            file_name = row.get("ImageFileName", "").strip()
            # A bare file name is expected; PurePath(...).name drops any directory part it might carry.
            stem = PurePath(PurePath(file_name).name).stem
            images: tuple[Image, ...] = ()
            error = None
            if not stem:
                error = "row has no ImageFileName"
            else:
                try:
                    images = (load_image(root, f"{_IMAGE_DIR}/{stem}.png"),)
                except ImageLoadError as exc:
                    error = str(exc)
            meta = self._meta(row, row["FunctionalCategory"].strip())
            meta.update(
                image_file=f"{stem}.png" if stem else None,
                image_description=row.get("ImageDescription") or None,
                redacted_image_description=row.get("RedactedImageDescription") or None,
                source_url=row.get("Source") or None,
            )
            return self._sample(row, targets, text=row["Behavior"], metadata=meta, images=images, error=error)

        rows = read_csv(require_file(root, _MM_FILE, benchmark=self.name))
        yield from rows_to_samples(
            enumerate(rows, 1), to_sample, benchmark=self.name, id_prefix="harmbench/", source_file=_MM_FILE
        )

    @staticmethod
    def _meta(row: dict[str, str], functional: str) -> dict[str, Any]:
        return {
            "behavior_id": row["BehaviorID"].strip(),
            "behavior": row["Behavior"],
            "functional_category": functional,
            "tags": [t.strip() for t in (row.get("Tags") or "").split(",") if t.strip()],
        }

    def _sample(
        self,
        row: dict[str, str],
        targets: dict[str, Any],
        *,
        text: str,
        metadata: dict[str, Any],
        images: tuple[Image, ...] = (),
        error: str | None = None,
    ) -> Sample:
        bid = row["BehaviorID"].strip()
        target = targets.get(bid)
        return Sample(
            id=f"harmbench/{bid}",
            benchmark=self.name,
            category=row["SemanticCategory"].strip(),
            text=text,
            images=images,
            target=target if isinstance(target, str) else None,
            metadata=metadata,
            error=error,
        )
