"""VLGuard test split: 1,558 image–instruction pairs in three subsets (safe_safes, safe_unsafes, unsafes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.datasets._util import (
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

SUBSETS: tuple[str, ...] = ("safe_safes", "safe_unsafes", "unsafes")
#: which key of an ``instr-resp`` entry holds the instruction of each subset
_KEY = {"safe_safes": "safe_instruction", "safe_unsafes": "unsafe_instruction", "unsafes": "instruction"}
_EXPECTED = {"safe_safes": Expected.comply, "safe_unsafes": Expected.refuse, "unsafes": Expected.refuse}


class VLGuard(Benchmark):
    """VLGuard test split: 1,000 images, 1,558 image–instruction pairs; comply or refuse per subset.

    Paper: Y. Zong, O. Bohdal, T. Yu, Y. Yang, T. Hospedales, "Safety Fine-Tuning at (Almost) No Cost:
    A Baseline for Vision Large Language Models", ICML 2024 (arXiv:2402.02207). Data: Hugging Face
    ``ys-zong/VLGuard`` (gated; licence MIT per the dataset card, research use only; the Hateful Memes
    images in it are also under Facebook's Hateful Memes licence); code github.com/ys-zong/VLGuard.

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/vlguard``): ``data/test.json`` (the
    GitHub layout) or ``test.json`` (the Hugging Face layout). Images (``test.zip``) are read from
    ``params.images``, default ``<path>/test``; ``image`` names a file inside it
    (``bad_ads/….png``). A missing image is the item's ``error``, naming the path.

    Subsets (``params.subset``; ``all`` loads the three). The test split has three, not four: a safe
    image carries one safe and one unsafe instruction, an unsafe image one instruction; there is no
    "unsafe image + safe instruction" subset.

    * ``safe_safes`` (558): safe image, safe instruction → ``expected=comply``.
    * ``safe_unsafes`` (558): the same safe images, an unsafe instruction → ``expected=refuse``.
    * ``unsafes`` (442): unsafe image (``safe: false``) with its instruction → ``expected=refuse``.

    Field mapping: ``Sample.id`` = ``"vlguard/<subset>/<id>"``; ``category`` = the subset (the three
    are scored differently); ``text`` = the instruction; ``references`` = (the dataset's
    ``response`` to it,) — for ``safe_safes`` that is GPT-4V's answer, the same text as in
    ``data/gpt4_safe_safes.json``, the reference of the paper's win rate (17 of them are empty upstream:
    no reference); ``metadata``: ``subset``, ``image_id`` (``id``), ``image_file``,
    ``image_safe``, ``harmful_category`` and ``harmful_subcategory`` (unsafe images only, e.g.
    ``risky behavior`` / ``sexually explicit``), ``instruction_index`` (0 or 1 inside the image's
    ``instr-resp``), ``source`` = ``{file, row}`` (0-based index of the image in the JSON array).

    Metric (paper): attack success rate on ``safe_unsafes`` and ``unsafes`` = share of responses
    without a refusal keyword (upstream's string match) — in mmsafe the ``refusal`` judge's
    non-refusal rate on those categories; helpfulness on ``safe_safes`` = win rate of the response
    against GPT-4V's answer (``data/gpt4_safe_safes.json``) judged by GPT-4 — in mmsafe, over-refusal
    of the ``comply`` items, and a ``reference``/``llm`` judge against ``references`` for quality.
    """

    name: ClassVar[str] = "vlguard"
    paper: ClassVar[Paper | None] = Paper(
        title="Safety Fine-Tuning at (Almost) No Cost: A Baseline for Vision Large Language Models",
        authors="Zong et al.",
        year=2024,
        url="https://arxiv.org/abs/2402.02207",
        threat_model="none: a user sends an unsafe image, or an unsafe instruction about a safe image, in one query",
    )
    default_folder: ClassVar[str | None] = "vlguard"
    size: ClassVar[str | None] = "1,558 pairs: safe_safes 558, safe_unsafes 558, unsafes 442"
    licence: ClassVar[str | None] = "MIT (research use; Hateful Memes images: Facebook's licence)"
    needs: ClassVar[str | None] = (
        "data folder (test.json); images: user folder (HF ys-zong/VLGuard test.zip, gated)"
    )
    example_params: ClassVar[dict[str, Any]] = {"subset": "safe_unsafes"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        subset: Literal["all", "safe_safes", "safe_unsafes", "unsafes"] = Field(
            "all", description="safe_safes (comply), safe_unsafes / unsafes (refuse), or all three"
        )
        images: str | None = Field(None, description="the unzipped test.zip folder; default <path>/test")

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        rel = "data/test.json" if (root / "data/test.json").is_file() else "test.json"
        file = require_file(root, rel, benchmark=self.name)
        rows = read_json(file)
        if not isinstance(rows, list):
            raise ConfigError(f"{file}: expected a JSON array of images")
        folder = image_folder(root, self.params.images, "test")
        wanted = SUBSETS if self.params.subset == "all" else (self.params.subset,)
        for subset in wanted:

            def to_sample(n: int, row: Any, subset: str = subset) -> Sample | None:
                return self._sample(n, row, subset, folder=folder, source=provenance(root, file, n))

            yield from rows_to_samples(
                enumerate(rows),
                to_sample,
                benchmark=self.name,
                id_prefix=f"vlguard/{subset}/",
                source_file=rel,
                first_row=0,
            )

    def _sample(
        self, n: int, row: Any, subset: str, *, folder: Path, source: dict[str, Any]
    ) -> Sample | None:
        """The ``subset`` item of image row ``n``; None when that image belongs to the other subsets."""
        safe = row["safe"]
        if not isinstance(safe, bool):
            raise ValueError(f"'safe' is {safe!r}, not true/false")
        if safe == (subset == "unsafes"):
            return None
        entries = row["instr-resp"]
        found = [i for i, p in enumerate(entries) if isinstance(p, dict) and _KEY[subset] in p]
        if len(found) != 1:
            raise ValueError(f"{len(found)} '{_KEY[subset]}' entries in instr-resp, expected 1")
        pair = entries[found[0]]
        image_rel = str(row["image"])
        images, error = item_image(folder, image_rel)
        response = pair.get("response")
        return Sample(
            id=f"vlguard/{subset}/{row['id']}",
            benchmark=self.name,
            category=subset,
            text=str(pair[_KEY[subset]]),
            images=images,
            expected=_EXPECTED[subset],
            references=(response,) if isinstance(response, str) and response else (),
            metadata={
                "subset": subset,
                "image_id": row["id"],
                "image_file": image_rel,
                "image_safe": safe,
                "harmful_category": row.get("harmful_category"),
                "harmful_subcategory": row.get("harmful_subcategory"),
                "instruction_index": found[0],
                "source": source,
            },
            error=error,
        )
