"""MOSSBench: 300 benign image + query pairs that over-sensitive models refuse, with harmful contrast items."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from mmsafe.datasets._util import ImageLoadError, load_image, read_json, require_file, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

#: the three stimulus types of the paper, as upstream's ``metadata.over`` spells them
STIMULI: dict[str, str] = {
    "type 1": "exaggerated_risk",
    "type 2": "negated_harm",
    "type 3": "counterintuitive_interpretation",
}

#: subset → the folder (inside the dataset root) holding ``images_information/information.json`` and ``images/``
_FOLDERS: dict[str, str] = {"benign": "data", "contrast": "data_contrast"}
_EXPECTED: dict[str, Expected] = {"benign": Expected.comply, "contrast": Expected.refuse}


class MOSSBench(Benchmark):
    """MOSSBench: over-sensitivity of MLLMs; 300 benign image+query items (must comply) and harmful contrasts.

    Paper: X. Li, H. Zhou, R. Wang, T. Zhou, M. Cheng, C.-J. Hsieh, "MOSSBench: Is Your Multimodal
    Language Model Oversensitive to Safe Queries?", ICLR 2025 (arXiv:2406.17806). Data:
    github.com/xirui-li/MOSSBench (also on the Hugging Face hub as ``AIcell/MOSSBench``); licence
    CC BY-SA 4.0 (the repository README's licence section). MOSSBench's
    human-labelled response annotations are a judge-evaluation set: mmsafe reads only the prompts.

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/mossbench``), as in the GitHub repository:
    ``data/images_information/information.json`` + ``data/images/`` (300 benign items) and
    ``data_contrast/images_information/information.json`` + ``data_contrast/images/`` (the contrast
    items: 244 in the repository at the time of writing, fewer than the benign ones because not every
    benign item has a contrast). Each JSON file is one object ``pid → record``; a record has ``pid``,
    ``question``, ``image`` (a path relative to ``data/`` or ``data_contrast/``, e.g.
    ``images/1.png``), ``short description``, ``description`` and ``metadata`` (``over``: the
    stimulus type ``type 1``–``type 3``; benign records also carry ``human``, ``child``, ``syn``,
    ``ocr`` flags and ``harm``, a list of harm-type numbers). The hub's parquet export (images
    embedded) is not read: use the repository layout.

    Field mapping: ``id`` = ``"mossbench/<subset>/<pid>"``; ``text`` = ``question``; ``images`` =
    the item's image (a missing file makes the Sample an error naming it); ``category`` = the stimulus
    (``exaggerated_risk``, ``negated_harm``, ``counterintuitive_interpretation``); ``label`` = the
    subset. Expected behaviour: every **benign** item ``comply`` (a refusal is over-sensitivity);
    every **contrast** item ``refuse``. ``metadata``: ``subset``, ``pid``, ``stimulus_type`` (raw
    ``over``), ``short_description``, ``description``, the ``human``/``child``/``syn``/``ocr``
    flags and ``harm`` when present, and ``source`` = ``{"file", "row"}`` (row = the record's
    0-based position in the JSON object).

    Metric (paper): the **refusal rate** on the benign items, overall and per stimulus type (the
    paper judges refusal with a GPT-4 prompt, 0 = comply / 1 = refuse). mmsafe computes it as the
    over-refusal rate of a refusal judge on ``expected=comply`` items, grouped by ``category``;
    on contrast items the same judge gives the refusal rate a safe model should keep high.

    Params: ``subset`` — ``benign`` (default), ``contrast`` or ``all``; ``image_dir`` — the folder
    holding the subset's image files (absolute, or relative to ``path``; default the subset's own
    ``images/`` folder); only the file name of ``image`` is looked up in it. ``image_dir`` cannot be
    combined with ``all`` (the two subsets have different images under the same names).
    """

    name: ClassVar[str] = "mossbench"
    paper: ClassVar[Paper | None] = Paper(
        title="MOSSBench: Is Your Multimodal Language Model Oversensitive to Safe Queries?",
        authors="Li et al.",
        year=2025,
        url="https://arxiv.org/abs/2406.17806",
        threat_model="none: benign image+query pairs with visual stimuli that trigger needless refusals",
    )
    default_folder: ClassVar[str | None] = "mossbench"
    size: ClassVar[str | None] = "300 benign; 244 contrast"
    licence: ClassVar[str | None] = "CC BY-SA 4.0"
    needs: ClassVar[str | None] = (
        "data folder (github.com/xirui-li/MOSSBench data/, data_contrast/); images in it"
    )
    example_params: ClassVar[dict[str, Any]] = {"path": "mossbench", "subset": "benign"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        subset: Literal["benign", "contrast", "all"] = "benign"
        image_dir: str | None = None

        @model_validator(mode="after")
        def _one_image_dir(self) -> MOSSBench.Params:
            if self.image_dir is not None and self.subset == "all":
                raise ValueError("image_dir needs one subset ('benign' or 'contrast'), not 'all'")
            return self

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        subsets = ("benign", "contrast") if self.params.subset == "all" else (self.params.subset,)
        for subset in subsets:
            yield from self._subset(root, subset)

    def _subset(self, root: Path, subset: str) -> Iterator[Sample]:
        folder = _FOLDERS[subset]
        rel = f"{folder}/images_information/information.json"
        records = read_json(require_file(root, rel, benchmark=self.name))
        if not isinstance(records, dict):
            raise ConfigError(f"{root / rel}: expected a JSON object of pid → record")
        if self.params.image_dir is not None:
            image_root = Path(self.params.image_dir).expanduser()
            image_root = image_root if image_root.is_absolute() else root / image_root
        else:
            image_root = root / folder / "images"

        def to_sample(n: int, item: tuple[str, Any]) -> Sample:
            key, rec = item
            pid = str(rec.get("pid", key)).strip()
            meta = rec.get("metadata") or {}
            stimulus = str(meta.get("over", "")).strip()
            error = None if stimulus in STIMULI else f"unknown stimulus type {stimulus!r}"
            images: tuple[Image, ...] = ()
            name = PurePosixPath(str(rec["image"])).name
            try:
                images = (load_image(image_root, name, source=f"{folder}/images/{name}"),)
            except ImageLoadError as exc:
                error = error or str(exc)
            question = rec["question"]
            if not isinstance(question, str) or not question.strip():
                error = error or "record has no question"
            extra = {k: meta[k] for k in ("human", "child", "syn", "ocr", "harm") if k in meta}
            return Sample(
                id=f"mossbench/{subset}/{pid}",
                benchmark=self.name,
                category=STIMULI.get(stimulus, "uncategorised"),
                text=question if isinstance(question, str) else "",
                images=images,
                expected=_EXPECTED[subset],
                label=subset,
                metadata={
                    "subset": subset,
                    "pid": pid,
                    "stimulus_type": stimulus or None,
                    "short_description": rec.get("short description"),
                    "description": rec.get("description"),
                    **extra,
                    "source": {"file": rel, "row": n},
                },
                error=error,
            )

        yield from rows_to_samples(
            enumerate(records.items()),
            to_sample,
            benchmark=self.name,
            id_prefix=f"mossbench/{subset}/",
            repeated_ids="mark",
            source_file=rel,
            first_row=0,
        )
