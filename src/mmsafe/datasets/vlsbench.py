"""VLSBench: 2,241 image–instruction pairs whose harmfulness is only in the image (no visual leakage)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe.datasets._util import (
    check_choices,
    image_folder,
    item_image,
    provenance,
    read_json,
    require_file,
    rows_to_samples,
)
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Sample

CATEGORIES: tuple[str, ...] = ("Violent", "Illegal Activity", "Self-Harm", "Erotic", "Hate", "Privacy")


class VLSBench(Benchmark):
    """VLSBench: 2,241 harmless-looking instructions paired with images that make them unsafe.

    Paper: X. Hu, D. Liu, H. Li, X. Huang, J. Shao, "VLSBench: Unveiling Visual Leakage in Multimodal
    Safety", ACL 2025 (arXiv:2411.19939). Data: github.com/AI45Lab/VLSBench and Hugging Face
    ``Foreshhh/vlsbench`` (licence Apache-2.0 per the dataset card; images drawn from MultiTrust,
    MLLMGuard, Ch3Ef, UnsafeBench and COCO keep their own terms).

    The set is built without visual safety information leakage: the instruction does not say what
    makes the request risky, the image does. So ``text`` is the instruction alone; the image
    description and the reason it is unsafe go to ``metadata`` (for judges), never into the prompt.

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/vlsbench``): ``data/data.json`` (the
    GitHub layout) or ``data.json`` (Hugging Face). Images (``imgs.tar``) are read from
    ``params.images``, default ``<path>``: ``image_path`` is ``imgs/<n>.png`` relative to it. A
    missing image is the item's ``error``, naming the path.

    Params: ``categories`` — keep only these of Violent, Illegal Activity, Self-Harm, Erotic, Hate,
    Privacy (default: all); ``images``.

    Field mapping: ``Sample.id`` = ``"vlsbench/<instruction_id>"``; ``category`` = ``category``;
    ``text`` = ``instruction``; ``images`` = ``image_path``; ``expected=refuse`` for every item (all
    pairs are unsafe; a safe answer refuses or answers with a clear warning); ``metadata``:
    ``instruction_id``, ``sub_category``, ``origin`` (upstream ``source``: generation, MultiTrust, …),
    ``image_path``, ``image_description``, ``safety_reason``, ``source`` = ``{file, row}`` (0-based).

    Metric (paper): a GPT-4o judge labels each response safe-with-refusal, safe-with-warning or unsafe;
    the safety rate is the share of the first two. In mmsafe: 1 − the ASR of the ``llm`` judge (a
    warning that still helps safely is not a success), or of ``harm``; the refusal judge's refusal
    rate is only the first label's share, a lower bound of the safety rate.
    """

    name: ClassVar[str] = "vlsbench"
    paper: ClassVar[Paper | None] = Paper(
        title="VLSBench: Unveiling Visual Leakage in Multimodal Safety",
        authors="Hu et al.",
        year=2024,
        url="https://arxiv.org/abs/2411.19939",
        threat_model="none: a user's harmless-looking instruction about an image that makes it unsafe",
    )
    default_folder: ClassVar[str | None] = "vlsbench"
    size: ClassVar[str | None] = "2,241 image–instruction pairs"
    licence: ClassVar[str | None] = "Apache-2.0 (images: their sources' terms)"
    needs: ClassVar[str | None] = (
        "data folder (data.json); images: user folder (HF Foreshhh/vlsbench imgs.tar)"
    )
    example_params: ClassVar[dict[str, Any]] = {"categories": ["Privacy"]}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        categories: tuple[str, ...] | None = Field(
            None, description="keep only these categories (default: all)"
        )
        images: str | None = Field(None, description="folder holding imgs/ (from imgs.tar); default <path>")

        @field_validator("categories")
        @classmethod
        def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
            check_choices("category", value, CATEGORIES)
            return value

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        rel = "data/data.json" if (root / "data/data.json").is_file() else "data.json"
        file = require_file(root, rel, benchmark=self.name)
        rows = read_json(file)
        if not isinstance(rows, list):
            raise ConfigError(f"{file}: expected a JSON array of image–instruction pairs")
        folder = image_folder(root, self.params.images, ".")
        keep = set(self.params.categories) if self.params.categories else None

        def to_sample(n: int, row: dict[str, Any]) -> Sample | None:
            if keep is not None and row.get("category") not in keep:
                return None
            image_rel = str(row["image_path"])
            images, error = item_image(folder, image_rel)
            return Sample(
                id=f"vlsbench/{row['instruction_id']}",
                benchmark=self.name,
                category=row["category"],
                text=row["instruction"],
                images=images,
                expected=Expected.refuse,
                metadata={
                    "instruction_id": row["instruction_id"],
                    "sub_category": row.get("sub_category"),
                    "origin": row.get("source"),
                    "image_path": image_rel,
                    "image_description": row.get("image_description"),
                    "safety_reason": row.get("safety_reason"),
                    "source": provenance(root, file, n),
                },
                error=error,
            )

        yield from rows_to_samples(
            enumerate(rows),
            to_sample,
            benchmark=self.name,
            id_prefix="vlsbench/",
            source_file=rel,
            first_row=0,
        )
