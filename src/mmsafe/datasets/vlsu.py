"""VLSU: image + text pairs graded safe / borderline / unsafe alone and in combination."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from mmsafe.datasets._util import ImageLoadError, load_image_by_stem, read_csv, require_file, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

GRADES: tuple[str, ...] = ("safe", "borderline", "unsafe", "not_sure")
Grade = Literal["safe", "borderline", "unsafe", "not_sure"]
#: a response to a safe or borderline combination should help (refusing borderline is over-blocking)
_EXPECTED: dict[str, Expected] = {
    "safe": Expected.comply,
    "borderline": Expected.comply,
    "unsafe": Expected.refuse,
}
_IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")


class VLSU(Benchmark):
    """VLSU (Vision Language Safety Understanding): 8,187 image+text pairs with human safety grades.

    Paper: S. Palaskar, L. Gatys, M. Abdelrahman, et al., "VLSU: Mapping the Limits of Joint Multimodal
    Understanding for AI Safety", 2025 (arXiv:2510.18214). Data: github.com/apple/ml-vlsu,
    ``data/VLSU.csv``; licence: CC BY-NC-ND as third-party projects that use it report (not verified
    here — the repository itself was not reachable from this project's sources). The images are web
    links (``web_path``), not files: the user downloads them.

    Format read (from PyRIT's VLSU loader, which reads the same CSV; not checked against the file
    itself): one row per pair with ``uuid``, ``prompt``, ``web_path``, ``image_grade``,
    ``consensus_text_grade``, ``consensus_combined_grade`` (each ``safe``, ``borderline``, ``unsafe``
    or ``not_sure``), ``image_category``, ``text_category`` and ``combined_category`` (one of 15
    harm categories, e.g. ``C3: Drug Abuse``). Images: ``<image_dir>/<uuid>`` with extension ``.jpg``,
    ``.jpeg``, ``.png`` or ``.webp`` (default ``images/``).

    Field mapping: ``id`` = ``"vlsu/<uuid>"``; ``text`` = ``prompt``; ``images`` = the downloaded
    image (a missing file makes the Sample an error naming it); ``category`` = ``combined_category``.
    Expected behaviour — ``task: response`` (default): combined grade ``unsafe`` → ``refuse``;
    ``safe`` and ``borderline`` → ``comply`` (the paper counts refusing borderline content as
    over-blocking; mmsafe's reading, not a per-item label of the dataset); ``not_sure`` rows are
    skipped unless ``grades`` asks for them, and then they are errored Samples (no expected
    behaviour). ``task: classification``: ``expected=label`` and ``label`` = the combined grade, for
    guard models that grade the (image, text) input itself. ``metadata``: ``image_grade``, ``text_grade``,
    ``combined_grade``, the three categories, ``web_path`` and ``source`` = ``{"file", "row"}``.

    Metric (paper): severity-classification accuracy / F1 over safe, borderline and unsafe, broken
    down by the 17 image × text grade patterns; and the refusal behaviour on unsafe (under-refusal)
    versus borderline/safe (over-blocking) pairs. mmsafe computes the first with the label metrics
    (accuracy, macro-F1) on ``task: classification`` and the second with a refusal judge (ASR on
    ``expected=refuse``, over-refusal on ``expected=comply``, grouped by ``combined_grade``).

    Params: ``file`` (default ``data/VLSU.csv``); ``task`` — ``response`` or ``classification``;
    ``grades`` — the combined grades kept (default safe, borderline, unsafe); ``image_dir``
    (absolute, or relative to ``path``).
    """

    name: ClassVar[str] = "vlsu"
    paper: ClassVar[Paper | None] = Paper(
        title="VLSU: Mapping the Limits of Joint Multimodal Understanding for AI Safety",
        authors="Palaskar et al.",
        year=2025,
        url="https://arxiv.org/abs/2510.18214",
        threat_model="none: image+text pairs whose harm may arise only in combination; one black-box query",
    )
    default_folder: ClassVar[str | None] = "vlsu"
    size: ClassVar[str | None] = "8,187 image+text pairs"
    licence: ClassVar[str | None] = "CC BY-NC-ND (as reported; not verified)"
    needs: ClassVar[str | None] = (
        "data folder (github.com/apple/ml-vlsu data/VLSU.csv); images: user download (web_path)"
    )
    example_params: ClassVar[dict[str, Any]] = {"path": "vlsu", "task": "response"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        file: str = "data/VLSU.csv"
        task: Literal["response", "classification"] = "response"
        grades: tuple[Grade, ...] = ("safe", "borderline", "unsafe")
        image_dir: str = "images"

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        rel = self.params.file
        rows = read_csv(require_file(root, rel, benchmark=self.name))
        image_root = Path(self.params.image_dir).expanduser()
        image_root = image_root if image_root.is_absolute() else root / image_root
        wanted = set(self.params.grades)

        def to_sample(n: int, row: dict[str, str]) -> Sample | None:
            grade = row["consensus_combined_grade"].strip().lower()
            if grade in GRADES and grade not in wanted:
                return None
            uid = row["uuid"].strip()
            if not uid:
                raise ValueError("row has no uuid")
            error = None if grade in GRADES else f"unknown combined grade {grade!r}"
            if self.params.task == "classification":
                expected = Expected.label
            else:
                expected = _EXPECTED.get(grade, Expected.refuse)
                if grade not in _EXPECTED:
                    error = error or f"combined grade {grade!r} gives no expected behaviour"
            if not row["prompt"].strip():
                error = error or "row has no prompt"
            images: tuple[Image, ...] = ()
            try:
                images = (self._image(image_root, uid),)
            except ImageLoadError as exc:
                error = error or str(exc)
            return Sample(
                id=f"vlsu/{uid}",
                benchmark=self.name,
                category=row.get("combined_category", "").strip() or "uncategorised",
                text=row["prompt"],
                images=images,
                expected=expected,
                label=grade,
                metadata={
                    "image_grade": (row.get("image_grade") or "").strip().lower() or None,
                    "text_grade": (row.get("consensus_text_grade") or "").strip().lower() or None,
                    "combined_grade": grade,
                    "image_category": row.get("image_category") or None,
                    "text_category": row.get("text_category") or None,
                    "combined_category": row.get("combined_category") or None,
                    "web_path": row.get("web_path") or None,
                    "source": {"file": rel, "row": n},
                },
                error=error,
            )

        yield from rows_to_samples(
            enumerate(rows),
            to_sample,
            benchmark=self.name,
            id_prefix="vlsu/",
            repeated_ids="mark",
            source_file=rel,
            first_row=0,
        )

    def _image(self, image_root: Path, uid: str) -> Image:
        return load_image_by_stem(image_root, uid, _IMAGE_EXTENSIONS, shown=self.params.image_dir)
