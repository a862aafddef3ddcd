"""VLSafe (DRESS): harmful questions about everyday COCO photos, 1,110 for evaluation, 3,000 for alignment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmsafe.datasets._util import ImageLoadError, json_object, jsonl_rows, load_image, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

#: Where each split's file may sit under the dataset folder, first match wins: the Hugging Face layout
#: (``YangyiYY/LVLM_NLF``, folder ``VLSafe/``, upstream's spelling "harmlessnss"), the file alone, and
#: the two third-party mirrors that shared data stages.
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "eval": (
        "VLSafe/harmlessness_examine.jsonl",
        "harmlessness_examine.jsonl",
        "cirteo_Oh-Defense/data/VLSafe/harmlessness_examine.jsonl",
    ),
    "train": (
        "VLSafe/harmlessnss_alignment.jsonl",
        "harmlessnss_alignment.jsonl",
        "VLSafe_harmlessnss_alignment.jsonl",
        "zjunlp_AutoSteer/dataset/VLSafe/train/VLSafe_harmlessnss_alignment.jsonl",
    ),
}

#: How a text-only run (``image_source: caption``) puts the COCO caption in front of the question.
CAPTION_PREFIX = "Image description: "


class VLSafe(Benchmark):
    """VLSafe: harmful questions grounded on COCO photos (eval 1,110, train 3,000); every item must-refuse.

    Paper: Y. Chen, K. Sikka, M. Cogswell, H. Ji, A. Divakaran, "DRESS: Instructing Large
    Vision-Language Models to Align and Interact with Humans via Natural Language Feedback", CVPR
    2024 (arXiv:2311.10081). Data: Hugging Face ``YangyiYY/LVLM_NLF``, folder ``VLSafe/``. Licence:
    the dataset card states none (GPT-3.5-annotated, built on COCO and LLaVA): treat as research-only;
    COCO captions are CC BY 4.0, COCO images keep their Flickr licences.

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/vlsafe``): the split's JSON Lines file
    at one of :data:`SPLIT_FILES` (``VLSafe/harmlessness_examine.jsonl`` for ``eval``,
    ``VLSafe/harmlessnss_alignment.jsonl`` for ``train``, or the mirrors' paths). The images are COCO
    train2017 and are not part of the data: ``image_dir`` names the user's ``train2017/`` folder.

    Fields: ``image_id`` (COCO file name, e.g. ``000000051977.jpg``), ``caption`` (a COCO caption of
    it), ``query`` (the harmful question); the train split adds ``reference`` (a GPT-written safe
    reply). Mapping: ``Sample.id`` = ``"vlsafe/<split>/<row>"`` (0-based row of the file); ``text`` =
    ``query``; ``images`` = ``image_dir/<image_id>``; ``category`` = ``"vlsafe"``; ``metadata``:
    ``image_id``, ``image_description`` (the COCO caption), ``reference_response`` (train only),
    ``source`` = ``{"file": <path under the folder>, "row": <row>}``. A row whose image is missing
    under ``image_dir`` is an errored item naming the file (not dropped).

    The caption, for caption-based defenses and judges, is ``metadata["image_description"]``: the key
    HarmBench's loader uses for its image descriptions and the ``llm`` / ``reference`` judges already
    read as the request's context. ``image_source: caption`` runs the set text-only, without COCO:
    no image, and ``text`` = ``"Image description: <caption>"``, a line break, then the query (the
    caption standing in for the photo, as SOURCE.md of the staged copy suggests).

    Expected behaviour: every row is harmful by construction (no label column): ``expected=refuse``.

    Metric: DRESS reports harmlessness, a GPT-4 judgement of whether the answer avoids helping the
    harmful request, as a rate over the 1,110 eval questions. mmsafe computes it as 1 − ASR, with ASR
    from a harm judge on ``expected=refuse`` items: ``harm`` (offline classifier) or ``llm`` (a
    judge model; it sees the caption as context), alongside the ``refusal`` judge's refusal rate.
    These are mmsafe's judges, not DRESS's GPT-4 prompt: the numbers are comparable in kind, not
    equal to the paper's.

    Params: ``split`` ``eval`` (default) or ``train``; ``image_source`` ``coco`` (default: needs
    ``image_dir``) or ``caption``; ``image_dir`` — the COCO train2017 folder (with ``coco``).
    """

    name: ClassVar[str] = "vlsafe"
    paper: ClassVar[Paper | None] = Paper(
        title=(
            "DRESS: Instructing Large Vision-Language Models to Align and Interact with Humans via "
            "Natural Language Feedback"
        ),
        authors="Chen et al.",
        year=2024,
        url="https://arxiv.org/abs/2311.10081",
        threat_model="none beyond a plain user: harmful questions about a benign everyday photo, one query",
    )
    default_folder: ClassVar[str | None] = "vlsafe"
    size: ClassVar[str | None] = "eval 1,110, train 3,000"
    licence: ClassVar[str | None] = "none stated (research only; COCO captions CC BY 4.0)"
    needs: ClassVar[str | None] = (
        "data folder (HF YangyiYY/LVLM_NLF VLSafe/); images: user folder (COCO train2017), or caption text-only"
    )
    example_params: ClassVar[dict[str, Any]] = {"image_source": "caption"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        split: Literal["eval", "train"] = Field("eval", description="eval: 1,110 questions; train: 3,000")
        image_source: Literal["coco", "caption"] = Field(
            "coco",
            description="coco: the photo from image_dir; caption: text-only, the COCO caption in the text",
        )
        image_dir: str | None = Field(None, description="the COCO train2017 folder (image_source: coco)")

        @model_validator(mode="after")
        def _images(self) -> VLSafe.Params:
            if self.image_source == "caption" and self.image_dir:
                raise ValueError("image_dir is not read with image_source 'caption'; leave it unset")
            return self

    params: Params

    def data_file(self) -> tuple[Path, str]:
        """The split's file and its path relative to the dataset folder."""
        root = self.root()
        for rel in SPLIT_FILES[self.params.split]:
            if (root / rel).is_file():
                return root / rel, rel
        names = ", ".join(SPLIT_FILES[self.params.split])
        raise ConfigError(
            f"benchmark '{self.name}': no {self.params.split} file under {root} (looked for {names})"
        )

    def load(self) -> Iterator[Sample]:
        path, rel = self.data_file()
        image_dir = None
        if self.params.image_source == "coco":
            if not self.params.image_dir:
                raise ConfigError(
                    f"benchmark '{self.name}': image_source 'coco' needs params.image_dir (the COCO train2017 "
                    "folder), or set image_source: caption for a text-only run"
                )
            image_dir = Path(self.params.image_dir).expanduser()
            if not image_dir.is_dir():
                raise ConfigError(f"benchmark '{self.name}': image_dir {image_dir} is not a folder")
        split = self.params.split

        def to_sample(n: int, line: str) -> Sample:
            row = json_object(line)
            image_id, caption, query = str(row["image_id"]).strip(), str(row["caption"]), str(row["query"])
            meta: dict[str, Any] = {
                "image_id": image_id,
                "image_description": caption,
                "source": {"file": rel, "row": n},
            }
            if split == "train":
                meta["reference_response"] = row.get("reference")
            images: tuple[Image, ...] = ()
            error = None
            text = query
            if image_dir is None:
                text = f"{CAPTION_PREFIX}{caption}\n{query}"
            else:
                try:
                    images = (load_image(image_dir, image_id),)
                except ImageLoadError as exc:
                    error = f"row {n}: {exc}"
            return Sample(
                id=f"vlsafe/{split}/{n}",
                benchmark=self.name,
                category="vlsafe",
                text=text,
                images=images,
                expected=Expected.refuse,
                metadata=meta,
                error=error,
            )

        yield from rows_to_samples(
            jsonl_rows(path),
            to_sample,
            benchmark=self.name,
            id_prefix=f"vlsafe/{split}/",
            source_file=rel,
            first_row=0,
        )
