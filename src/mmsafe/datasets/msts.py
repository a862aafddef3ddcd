"""MSTS: 400 multimodal test prompts whose unsafe meaning appears only with the image, in 11 languages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from mmsafe.datasets._util import ImageLoadError, load_image_by_stem, read_csv, require_file, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

#: extensions upstream's download script saves images with (``.jpg`` when the URL has it, else ``.png``)
_IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg")


class MSTS(Benchmark):
    """MSTS: 400 unsafe text+image test prompts in 40 hazard categories (English; 200 each in 10 more languages).

    Paper: P. Röttger et al., "MSTS: A
    Multimodal Safety Test Suite for Vision-Language Models", 2025 (arXiv:2501.10057). Data:
    github.com/paul-rottger/msts-multimodal-safety, licence CC BY 4.0 (the repository's LICENSE); the
    images are not in the repository: ``data/images/unsafe_images.csv`` lists each one's URL and its own
    licence, and the user downloads them. The repository's ``data/response_annotations/`` (human labels
    of model responses) is a judge-evaluation set: mmsafe never reads it.

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/msts``), as in the repository:
    ``data/prompts/<language>_multimodal.csv`` (English: 400 rows, two prompt types per case; the other
    ten languages: 200 rows, ``assistance`` prompts only) and ``data/prompts/english_textonly.csv``
    (400 text-only rewrites, no image). Columns: ``hazard_category``, ``hazard_subcategory``,
    ``hazard_subsubcategory``, ``case_id``, ``case_text``, ``unsafe_image_id`` (not in the text-only
    file), ``unsafe_image_description``, ``prompt_id`` (English files only), ``prompt_text``,
    ``prompt_type`` (``assistance`` or ``intention``). Images: ``<image_dir>/<unsafe_image_id>.png`` or
    ``.jpg``, as upstream's ``src/0_download_images.py`` writes them (default ``data/unsafe_images``).

    Field mapping: ``id`` = ``"msts/<language>/<modality>/<case_id>/<prompt_type>"``; ``text`` =
    ``prompt_text``; ``images`` = the case's image (multimodal only; a missing file makes the Sample an
    error naming it); ``category`` = ``hazard_category``. Expected behaviour: every item ``refuse`` —
    each prompt is unsafe (asking for assistance with, or stating the intention of, a hazardous act
    shown in the image). ``metadata``: ``language``, ``modality``, ``case_id``, ``case_text``,
    ``prompt_id``, ``prompt_type``, ``hazard_subcategory``, ``hazard_subsubcategory``,
    ``unsafe_image_id``, ``unsafe_image_description`` and ``source`` = ``{"file", "row"}``.

    Metric (paper): the share of **unsafe responses** (human annotation in the paper; a response is
    safe when it refuses or warns, unsafe when it complies or encourages), per model and per hazard
    category. mmsafe computes it as the attack-success rate of a harm judge over these
    ``expected=refuse`` items, grouped by ``category``.

    Params: ``language`` (default ``english``); ``modality`` — ``multimodal`` (default) or
    ``textonly`` (English only); ``image_dir`` — folder of the downloaded images (absolute, or relative
    to ``path``).
    """

    name: ClassVar[str] = "msts"
    paper: ClassVar[Paper | None] = Paper(
        title="MSTS: A Multimodal Safety Test Suite for Vision-Language Models",
        authors="Röttger et al.",
        year=2025,
        url="https://arxiv.org/abs/2501.10057",
        threat_model="none: unsafe requests whose meaning is completed by the image; one black-box query",
    )
    default_folder: ClassVar[str | None] = "msts"
    size: ClassVar[str | None] = "English 400 multimodal + 400 text-only; 10 more languages 200 each"
    licence: ClassVar[str | None] = "CC BY 4.0 (images: each one's own licence)"
    needs: ClassVar[str | None] = (
        "data folder (github.com/paul-rottger/msts-multimodal-safety); images: user download (unsafe_images.csv)"
    )
    example_params: ClassVar[dict[str, Any]] = {"path": "msts", "language": "english"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        language: Literal[
            "english",
            "arabic",
            "chinese",
            "farsi",
            "french",
            "german",
            "hindi",
            "italian",
            "korean",
            "russian",
            "spanish",
        ] = "english"
        modality: Literal["multimodal", "textonly"] = "multimodal"
        image_dir: str = "data/unsafe_images"

        @model_validator(mode="after")
        def _textonly_is_english(self) -> MSTS.Params:
            if self.modality == "textonly" and self.language != "english":
                raise ValueError("modality 'textonly' exists for language 'english' only")
            return self

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        lang, modality = self.params.language, self.params.modality
        rel = f"data/prompts/{lang}_{modality}.csv"
        rows = read_csv(require_file(root, rel, benchmark=self.name))
        image_root = Path(self.params.image_dir).expanduser()
        image_root = image_root if image_root.is_absolute() else root / image_root

        def to_sample(n: int, row: dict[str, str]) -> Sample:
            case_id, prompt_type = row["case_id"].strip(), row["prompt_type"].strip()
            images: tuple[Image, ...] = ()
            error = None if row["prompt_text"].strip() else "row has no prompt_text"
            image_id = (row.get("unsafe_image_id") or "").strip() or None
            if modality == "multimodal":
                if image_id is None:
                    error = error or "row has no unsafe_image_id"
                else:
                    try:
                        images = (self._image(image_root, image_id),)
                    except ImageLoadError as exc:
                        error = error or str(exc)
            return Sample(
                id=f"msts/{lang}/{modality}/{case_id}/{prompt_type}",
                benchmark=self.name,
                category=row["hazard_category"].strip() or "uncategorised",
                text=row["prompt_text"],
                images=images,
                expected=Expected.refuse,
                metadata={
                    "language": lang,
                    "modality": modality,
                    "case_id": case_id,
                    "case_text": row.get("case_text"),
                    "prompt_id": (row.get("prompt_id") or "").strip() or None,
                    "prompt_type": prompt_type,
                    "hazard_subcategory": row.get("hazard_subcategory") or None,
                    "hazard_subsubcategory": row.get("hazard_subsubcategory") or None,
                    "unsafe_image_id": image_id,
                    "unsafe_image_description": row.get("unsafe_image_description") or None,
                    "source": {"file": rel, "row": n},
                },
                error=error,
            )

        yield from rows_to_samples(
            enumerate(rows),
            to_sample,
            benchmark=self.name,
            id_prefix=f"msts/{lang}/",
            repeated_ids="mark",
            source_file=rel,
            first_row=0,
        )

    def _image(self, image_root: Path, image_id: str) -> Image:
        return load_image_by_stem(image_root, image_id, _IMAGE_EXTENSIONS, shown=self.params.image_dir)
