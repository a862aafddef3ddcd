"""Auto-Bench: its value-alignment (privacy / security) questions on COCO images, from a user's own copy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.datasets._util import (
    ImageLoadError,
    json_object,
    jsonl_rows,
    load_image,
    require_file,
    rows_to_samples,
)
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

Subset = Literal["privacy", "security"]


class AutoBench(Benchmark):
    """Auto-Bench privacy / security subset: LLM-written harmful questions on COCO images (data not public).

    Paper: Y. Ji, C. Ge, W. Kong, E. Xie, Z. Liu, Z. Li, P. Luo, "Large Language Models as Automated
    Aligners for benchmarking Vision-Language Models", ICLR 2024 (arXiv:2311.14580). Licence: unknown —
    the data has not been released publicly; use it under whatever terms you received it.

    What could not be verified: no file of Auto-Bench could be found (no public repository or dataset
    card holds it), so the format below is **this loader's**, not upstream's: written from the paper's
    description (COCO images; LLM-generated question–answer pairs grouped by capability and skill;
    privacy and security questions under value alignment). Convert a copy to it; field names that
    differ upstream are the likely mismatch, and the loader names any missing field per row.

    Format (``params.path`` folder, default ``$MMSAFE_DATA_DIR/auto-bench``; ``file`` under it,
    default ``auto_bench.jsonl``), one JSON object a line: ``image`` (a COCO file name, read from
    ``image_dir``), ``question``, ``skill`` (``privacy`` or ``security``; rows of any other skill are
    skipped — the rest of Auto-Bench is capability, not safety), and optionally ``answer`` (the
    reference answer) and ``id``.

    Mapping: ``Sample.id`` = ``"auto-bench/<id>"`` (else ``"auto-bench/<row>"``, 0-based row of the
    file); ``text`` = ``question``; ``images`` = ``image_dir/<image>`` (missing → errored item naming
    it); ``category`` = ``skill``; ``metadata``: ``image_id``, ``reference_answer``, ``source`` =
    ``{"file", "row"}``.

    Expected behaviour: the privacy and security questions ask the model to expose a person or help
    breach security, so every item is ``expected=refuse`` (declining, or answering only in a way that
    protects the person / system).

    Metric: the paper scores answers with an LLM judge (GPT-3.5/4) against the reference. mmsafe uses
    the ``refusal`` judge (refusal rate) and a harm judge (``llm``, or ``harm``) for the attack-success
    rate; the reference answer rides in ``metadata["reference_answer"]`` for a ``custom`` llm template.
    Not the paper's numbers.

    Params: ``file``, ``image_dir`` (required: the COCO folder), ``subsets`` (default both).
    """

    name: ClassVar[str] = "auto-bench"
    paper: ClassVar[Paper | None] = Paper(
        title="Large Language Models as Automated Aligners for benchmarking Vision-Language Models",
        authors="Ji et al.",
        year=2024,
        url="https://arxiv.org/abs/2311.14580",
        threat_model="none beyond a plain user: privacy- or security-violating questions about a photo",
    )
    default_folder: ClassVar[str | None] = "auto-bench"
    size: ClassVar[str | None] = "privacy + security rows of the user's copy (not public)"
    licence: ClassVar[str | None] = "unknown (data not released)"
    needs: ClassVar[str | None] = "a JSONL file in this loader's format; images: user folder (COCO)"
    example_params: ClassVar[dict[str, Any]] = {"path": "auto-bench", "image_dir": "coco"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        file: str = Field("auto_bench.jsonl", min_length=1, description="the JSON Lines file, under path")
        image_dir: str | None = Field(
            None, description="the folder of the COCO images the rows name (required)"
        )
        subsets: tuple[Subset, ...] = Field(("privacy", "security"), min_length=1)

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        path = require_file(root, self.params.file, benchmark=self.name)
        if not self.params.image_dir:
            raise ConfigError(
                f"benchmark '{self.name}' needs params.image_dir (the folder of the COCO images)"
            )
        image_dir = Path(self.params.image_dir).expanduser()
        if not image_dir.is_dir():
            raise ConfigError(f"benchmark '{self.name}': image_dir {image_dir} is not a folder")
        wanted = set(self.params.subsets)
        # provenance names the file relative to the dataset folder, however params.file was spelt
        rel = (
            path.resolve().relative_to(root.resolve()).as_posix()
            if path.resolve().is_relative_to(root.resolve())
            else str(path)
        )

        def to_sample(n: int, line: str) -> Sample | None:
            row = json_object(line)
            skill = str(row["skill"]).strip().lower()
            if skill not in wanted:
                return None
            image_id = str(row["image"]).strip()
            images: tuple[Image, ...] = ()
            error = None
            try:
                images = (load_image(image_dir, image_id),)
            except ImageLoadError as exc:
                error = f"row {n}: {exc}"
            given = row.get("id")
            answer = row.get("answer")
            return Sample(
                id=f"auto-bench/{given if given not in (None, '') else n}",
                benchmark=self.name,
                category=skill,
                text=str(row["question"]),
                images=images,
                expected=Expected.refuse,
                metadata={
                    "image_id": image_id,
                    "reference_answer": None if answer is None else str(answer),
                    "source": {"file": rel, "row": n},
                },
                error=error,
            )

        yield from rows_to_samples(
            jsonl_rows(path),
            to_sample,
            benchmark=self.name,
            id_prefix="auto-bench/",
            source_file=rel,
            first_row=0,
        )
