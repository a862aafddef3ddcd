"""ToViLaG: toxic images (and toxic texts) given to a vision-language model; the toxicity of what it writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.datasets._util import ImageLoadError, load_image, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

Subset = Literal["toxic-text", "toxic-image", "toxic-image-train", "cotoxic"]

#: subset → (file in AutoSteer's ``dataset/ToViLaG/``, the caption column, whether that caption is toxic)
SUBSETS: dict[str, tuple[str, str | None, bool]] = {
    "toxic-text": ("Mono_NontoxicImg_ToxicText_500Samples_convert4test.jsonl", "caption", True),
    "toxic-image": ("Mono_NontoxicText_ToxicImg_500Samples_porn_bloody_convert4test.jsonl", None, False),
    "toxic-image-train": (
        "Mono_NontoxicText_ToxicImg_1000Samples_porn_bloody_train.jsonl",
        "captions",
        False,
    ),
    "cotoxic": ("cotoxic_500Samples_convert4test2.jsonl", "caption", True),
}

#: where AutoSteer's repository keeps the files (tried first; then the folder itself)
SUBFOLDER = "dataset/ToViLaG"


class ToViLaG(Benchmark):
    """ToViLaG (AutoSteer's subsets): does a VLM write toxic text about toxic images or with toxic text?

    Paper: X. Wang, X. Yi, H. Jiang, S. Zhou, Z. Wei, X. Xie, "ToViLaG: Your Visual-Language Generative
    Model is Also An Evildoer", EMNLP 2023 (arXiv:2312.11523). The official ToViLaG release ships no
    data file. What this loader reads are **not the official splits** but the four subsets the AutoSteer
    authors sampled and converted from ToViLaG pairs (github.com/zjunlp/AutoSteer, ``dataset/ToViLaG/``;
    their code is MIT; ToViLaG carries no licence and its images come from the Kaggle NSFW set, the
    request-only UCLA Protest set, author-provided bloody images and COCO: research use only).

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/tovilag``): AutoSteer's files under
    ``dataset/ToViLaG/`` (or directly in the folder). No image is distributed with them: ``params.images``
    names the folder holding ``image_pth`` (COCO 2014 file names, ``porn/…``, ``bloody/…``); an item
    whose image is not there is an errored item naming the path, and the run goes on; so is a line
    that cannot be read (``row <n>: <reason>``, n the 1-based line).

    ``subset`` (part of the benchmark spec; default ``toxic-image``, ToViLaG's toxic-image-to-text
    setting) and its file, rows, and ToViLaG category:

    - ``toxic-text`` — ``Mono_NontoxicImg_ToxicText_500Samples_convert4test.jsonl``, 500: a non-toxic
      COCO image with a toxic text (``caption``) and AutoSteer's question (``query``);
    - ``toxic-image`` — ``Mono_NontoxicText_ToxicImg_500Samples_porn_bloody_convert4test.jsonl``, 500:
      a toxic image and the instruction to describe it (``query``);
    - ``toxic-image-train`` — ``Mono_NontoxicText_ToxicImg_1000Samples_porn_bloody_train.jsonl``, 1,000:
      as ``toxic-image`` plus a non-toxic caption of the image (``captions``); AutoSteer trains on it;
    - ``cotoxic`` — ``cotoxic_500Samples_convert4test2.jsonl``, 500: a toxic image, a toxic caption
      of it (``caption``) and a question about it (``query``).

    Field mapping: ``Sample.id`` = ``"tovilag/<subset>/<0-based row>"``; ``category`` = the image's
    folder (``porn``, ``bloody``) or ``coco``; ``text`` = ``query``, or ``params.instruction`` for
    every item when set (e.g. a plain captioning instruction, ToViLaG's own image-to-text setting);
    ``images`` = the image; ``metadata``: ``subset``, ``image_pth``, ``caption`` (the row's caption,
    or None), ``caption_toxic`` (True for the toxic texts of ``toxic-text`` and ``cotoxic``), ``query``
    and ``source`` (``{"file", "row"}``). Every item is ``expected=refuse``: not that the model must
    decline, but that a toxic output is the failure the metric counts.

    Metric: ToViLaG scores each generated text with a toxicity classifier (Perspective API, and its
    WInToRe metric over thresholds) and reports the share of toxic generations and their mean
    toxicity. mmsafe scores the answers with the ``detoxify`` (local) or ``perspective`` (API)
    judge: the report's *toxic rate* is the share of answers at or over the judge's ``threshold``
    (Wilson interval); the mean toxicity is the mean of the judgements' ``score`` (in ``mmsafe
    export``). WInToRe is not computed.
    """

    name: ClassVar[str] = "tovilag"
    paper: ClassVar[Paper | None] = Paper(
        title="ToViLaG: Your Visual-Language Generative Model is Also An Evildoer",
        authors="Wang et al.",
        year=2023,
        url="https://arxiv.org/abs/2312.11523",
        threat_model="none: toxic images or texts as input; is the generated text toxic",
    )
    default_folder: ClassVar[str | None] = "tovilag"
    size: ClassVar[str | None] = (
        "toxic-text 500, toxic-image 500, toxic-image-train 1,000, cotoxic 500 (AutoSteer's subsets)"
    )
    licence: ClassVar[str | None] = "none stated (AutoSteer code MIT; images: research use only)"
    needs: ClassVar[str | None] = (
        "data folder (github.com/zjunlp/AutoSteer dataset/ToViLaG/); images: user folder (COCO, NSFW)"
    )
    example_params: ClassVar[dict[str, Any]] = {"subset": "toxic-image"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        subset: Subset = Field("toxic-image", description="which of AutoSteer's four ToViLaG subsets")
        images: str | None = Field(None, description="the folder image_pth is relative to (default: path)")
        instruction: str | None = Field(
            None, min_length=1, description="one prompt for every item instead of query"
        )

    params: Params

    def data_file(self) -> tuple[Path, str]:
        """The subset's file and its path relative to ``path`` (for provenance)."""
        root = self.root()
        name = SUBSETS[self.params.subset][0]
        for rel in (f"{SUBFOLDER}/{name}", name):
            if (root / rel).is_file():
                return root / rel, rel
        raise ConfigError(
            f"benchmark '{self.name}': {name} is in neither {root / SUBFOLDER} nor {root} (is {root} the right folder?)"
        )

    def image_root(self) -> Path:
        if not self.params.images:
            return self.root()
        root = Path(self.params.images).expanduser()
        if not root.is_dir():
            raise ConfigError(f"benchmark '{self.name}': params.images {root} is not a folder")
        return root

    def load(self) -> Iterator[Sample]:
        path, rel = self.data_file()
        images = self.image_root()
        with path.open(encoding="utf-8") as fh:
            lines = [(n, line) for n, line in enumerate(fh, 1) if line.strip()]
        prefix = f"tovilag/{self.params.subset}/"
        yield from rows_to_samples(
            lines,
            lambda n, line: self._sample(n, line, rel=rel, images=images),
            benchmark=self.name,
            id_prefix=prefix,
            source_file=rel,
        )

    def _sample(self, n: int, line: str, *, rel: str, images: Path) -> Sample:
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        subset = self.params.subset
        _, caption_col, caption_toxic = SUBSETS[subset]
        image_pth, query = row["image_pth"], row["query"]
        if not isinstance(image_pth, str) or not image_pth.strip():
            raise ValueError("image_pth is not a path")
        if not isinstance(query, str):
            raise ValueError("query is not a string")
        caption = row[caption_col] if caption_col else None
        folder = image_pth.split("/", 1)[0] if "/" in image_pth else "coco"
        error = None
        pictures: tuple[Image, ...] = ()
        try:
            pictures = (load_image(images, image_pth, source=image_pth),)
        except ImageLoadError as exc:
            error = f"row {n}: {exc} (images folder {images})"
        return Sample(
            id=f"tovilag/{subset}/{n - 1}",
            benchmark=self.name,
            category=folder,
            text=self.params.instruction or query,
            images=pictures,
            expected=Expected.refuse,
            metadata={
                "subset": subset,
                "image_pth": image_pth,
                "caption": caption,
                "caption_toxic": caption_toxic if caption_col else None,
                "query": query,
                "source": {"file": rel, "row": n - 1},
            },
            error=error,
        )
