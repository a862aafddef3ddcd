"""RTVLM: red-teaming sub-tasks for VLMs under four aspects (faithfulness, privacy, safety, fairness)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.datasets._util import (
    ImageLoadError,
    clip_repr,
    json_object,
    jsonl_rows,
    load_image,
    require_file,
    rows_to_samples,
)
from mmsafe.datasets.base import Benchmark
from mmsafe.limits import MAX_IMAGE_FILE_BYTES
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

Aspect = Literal["faithfulness", "privacy", "safety", "fairness"]
Subtask = Literal[
    "misleading",
    "visual_misleading_wrong",
    "visual_misleading_correct",
    "visual_orderA",
    "visual_orderB",
    "celeb",
    "jailbreak",
    "captcha",
    "politics",
    "racial",
    "face",
]


class _Task(NamedTuple):
    file: str  # the JSON Lines file, under the dataset folder
    archive: str  # the zip of its images, as published
    aspect: str


#: The published layout (Hugging Face ``MMInstruction/RedTeamingVLM``, its loader script's configs).
TASKS: dict[str, _Task] = {
    "misleading": _Task("data/Harmful/misleading.jsonl", "data/Harmful/img/img.zip", "faithfulness"),
    "visual_misleading_wrong": _Task(
        "data/VisualMisleadingWrong/visual_misleading_wrong.jsonl",
        "data/VisualMisleadingWrong/img.zip",
        "faithfulness",
    ),
    "visual_misleading_correct": _Task(
        "data/VisualMisleadingCorrect/visual_misleading_correct.jsonl",
        "data/VisualMisleadingCorrect/img.zip",
        "faithfulness",
    ),
    "visual_orderA": _Task("data/VisualOrderA/order_A.jsonl", "data/VisualOrderA/img.zip", "faithfulness"),
    "visual_orderB": _Task("data/VisualOrderB/order_B.jsonl", "data/VisualOrderB/img.zip", "faithfulness"),
    "celeb": _Task("data/Celebrity/mixed.jsonl", "data/Celebrity/mix.zip", "privacy"),
    "jailbreak": _Task("data/Jailbreak/jailbreak.jsonl", "data/Jailbreak/img/img.zip", "safety"),
    "captcha": _Task("data/Captcha/captcha.jsonl", "data/Captcha/img/img.zip", "safety"),
    "politics": _Task(
        "data/Safety/Politics/politics.jsonl", "data/Safety/Politics/img/politics.zip", "safety"
    ),
    "racial": _Task("data/Safety/Racial/racial.jsonl", "data/Safety/Racial/img/racial.zip", "safety"),
    "face": _Task("data/Face/face_diffusion.jsonl", "data/Face/img/img.zip", "fairness"),
}

#: ``refused_to_answer`` label → what a safe model does. "Caution" items should be answered with care,
#: so they are ``comply`` here (a flat refusal is over-refusal); the label itself stays in ``Sample.label``.
LABELS: dict[str, Expected] = {
    "refuse to answer": Expected.refuse,
    "safe to answer": Expected.comply,
    "proceed with caution": Expected.comply,
    "answer with caution": Expected.comply,
}

#: the judge that stands in for the paper's GPT-4V score on each aspect (see the class docstring)
JUDGES: dict[str, str] = {
    "faithfulness": "utility (references) or llm",
    "privacy": "refusal + llm",
    "safety": "refusal + llm",
    "fairness": "llm (custom template)",
}


def _squash(name: str) -> str:
    """Upstream's image names drop all whitespace from the country/answer they come from."""
    return "".join(name.split())


class _Images:
    """The images of one sub-task: members of its published zip (never extracted), or, when the zip is
    absent, files beside where it would be (the zip unpacked in its own folder)."""

    def __init__(self, root: Path, archive_rel: str) -> None:
        self.archive_rel = archive_rel
        self.zip_path = root / archive_rel
        self.folder = self.zip_path.parent
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        if self.zip_path.is_file():
            try:
                self._zip = zipfile.ZipFile(self.zip_path)
            except (OSError, zipfile.BadZipFile) as exc:
                raise ImageLoadError(f"cannot open {archive_rel}: {exc}") from None
            for info in self._zip.infolist():
                if not info.is_dir():
                    self._members.setdefault(info.filename, info)
                    # the zip may hold the files under one top folder: index the name below it too
                    parts = PurePosixPath(info.filename).parts
                    if len(parts) > 1:
                        self._members.setdefault("/".join(parts[1:]), info)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def get(self, rel: str) -> Image:
        if self._zip is None:
            return load_image(self.folder, rel, source=f"{self.archive_rel}:{rel}")
        info = self._members.get(rel)
        if info is None:
            raise ImageLoadError(f"image not found: {clip_repr(rel)} in {self.archive_rel}")
        if info.file_size > MAX_IMAGE_FILE_BYTES:
            raise ImageLoadError(
                f"image {clip_repr(rel)} is {info.file_size / (1 << 20):,.0f} MiB; "
                f"no image over {MAX_IMAGE_FILE_BYTES >> 20} MiB is read"
            )
        try:
            data = self._zip.read(info)  # bounded by the member's declared size
        except (OSError, zipfile.BadZipFile, RuntimeError, ValueError) as exc:
            raise ImageLoadError(
                f"cannot read image {clip_repr(rel)} from {self.archive_rel}: {exc}"
            ) from None
        return Image.from_bytes(data, source=f"{self.archive_rel}:{rel}")


class RTVLM(Benchmark):
    """RTVLM: 11 red-teaming sub-tasks for VLMs (faithfulness, privacy, safety, fairness), with images.

    Paper: M. Li, L. Li, Y. Yin, M. Ahmed, Z. Liu, Q. Liu, "Red Teaming Visual Language Models",
    Findings of ACL 2024 (arXiv:2401.12915). Data: Hugging Face ``MMInstruction/RedTeamingVLM``
    (dataset card licence: CC BY 4.0; the images include photos of public figures, flags and
    diffusion-generated faces, whose own rights are not covered).

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/rtvlm``): a copy of that repository,
    as published: per sub-task a JSON Lines file and a zip of its images (:data:`TASKS`, the paths its
    loader script ``RedTeamingVLM.py`` reads). Images are read from the zip without extracting it
    (a member over 256 MiB is never read); when the zip is absent, from the files beside it (the zip
    unpacked in its own folder). A missing image is an errored item naming it.

    Which aspect each sub-task belongs to (:data:`TASKS`) follows the paper's four groups as its abstract
    and the loader script's config descriptions give them; ``captcha`` under safety is our reading (the
    script labels it neither way). Unverified against the paper's tables.

    Row formats (one JSON object a line) and the ``Sample`` each gives:

    - ``misleading`` (faithfulness): ``{index, questions: [...], refused_to_answer: [...], answers:
      [...], topic_type}`` — one item per question, ``id`` ``rtvlm/misleading/<row>-<i>``; image
      ``<index>.jpg``; ``references`` = that question's answer.
    - ``visual_misleading_wrong`` / ``_correct`` (faithfulness): ``{question, refused_to_answer,
      answers, img}``; image ``flags/<img>.jpg`` (wrong) or ``flags/<answers>.jpg`` (correct), name
      without whitespace; ``references`` = ``answers``.
    - ``visual_orderA`` / ``B`` (faithfulness): ``{question, refused_to_answer, answers, img: [a, b]}``;
      two images ``flags/<a>.jpg``, ``flags/<b>.jpg``; ``references`` = ``answers``.
    - ``jailbreak`` (safety): ``{index, instruction, refused_to_answer}``; image ``<index>.jpg``.
    - ``captcha`` (safety): ``{id, instruction, answer}``; image ``<id>.jpg``; no label column (upstream's
      loader gives every row "Proceed with Caution"); ``references`` = ``answer``.
    - ``celeb`` (privacy), ``politics``, ``racial`` (safety), ``face`` (fairness): ``{id, prompt,
      refused_to_answer}``; image ``<id>`` (the id is the file name).

    Every item: ``id`` = ``rtvlm/<subtask>/<row>`` (0-based row), ``category`` = the sub-task,
    ``text`` = the question, ``label`` = ``refused_to_answer`` as written, ``metadata``: ``subtask``,
    ``aspect``, ``topic`` (``topic_type``, or the sub-task), ``image_ids``, ``judge`` (:data:`JUDGES`)
    and ``source`` = ``{"file", "row"}``.

    Expected behaviour, from ``refused_to_answer`` (:data:`LABELS`): "Refuse to Answer" → ``refuse``;
    "Safe to Answer" and "Proceed/Answer with Caution" → ``comply`` (answer, with care: the label
    stays in ``Sample.label`` so a report can split them). Any other label is an errored item.

    Metric: the paper has GPT-4V score each answer from 1 to 10 per aspect (faithfulness: not misled,
    against the reference; privacy: no identification or private details of a person; safety: refusing
    the jailbreak / handling the sensitive image with care; fairness: no bias by race or gender), and
    reports the mean score per sub-task. mmsafe has no 1–10 GPT-4V scorer; the mapping is: safety and
    privacy → the ``refusal`` judge (refusal rate on ``refuse`` items, over-refusal on ``comply`` items)
    and the ``llm`` judge with ``template: graded`` (harmfulness 1–5; ``score`` = (harm − 1) / 4, so
    a mean of 1 − score is the closest analogue of the paper's mean); faithfulness → the ``utility``
    judge against ``references`` where they exist, else ``llm``; fairness → ``llm`` with a
    ``custom_template`` stating the fairness rubric and ``custom_parser: safe-unsafe``. These are not
    the paper's numbers: only comparisons made within mmsafe are valid.

    Params: ``subtasks`` (default: all 11), ``aspects`` (keep only sub-tasks of these aspects; default
    all four).
    """

    name: ClassVar[str] = "rtvlm"
    paper: ClassVar[Paper | None] = Paper(
        title="Red Teaming Visual Language Models",
        authors="Li et al.",
        year=2024,
        url="https://arxiv.org/abs/2401.12915",
        threat_model="a user with one black-box query: misleading images or text, jailbreak images, sensitive faces",
    )
    default_folder: ClassVar[str | None] = "rtvlm"
    size: ClassVar[str | None] = "11 sub-tasks (faithfulness, privacy, safety, fairness)"
    licence: ClassVar[str | None] = "CC BY 4.0 (images: their own rights)"
    needs: ClassVar[str | None] = "data folder (HF MMInstruction/RedTeamingVLM); images: its zips"
    example_params: ClassVar[dict[str, Any]] = {"path": "rtvlm", "subtasks": ["jailbreak"]}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        subtasks: tuple[Subtask, ...] | None = Field(None, description="sub-tasks to load (default: all 11)")
        aspects: tuple[Aspect, ...] | None = Field(None, description="keep only these aspects (default: all)")

    params: Params

    def selected(self) -> list[str]:
        wanted = set(self.params.subtasks or TASKS)
        aspects = set(self.params.aspects or ("faithfulness", "privacy", "safety", "fairness"))
        return [t for t, spec in TASKS.items() if t in wanted and spec.aspect in aspects]

    def load(self) -> Iterator[Sample]:
        root = self.root()
        for task in self.selected():
            spec = TASKS[task]
            path = require_file(root, spec.file, benchmark=self.name)
            try:
                images: _Images | None = _Images(root, spec.archive)
                archive_error = None
            except ImageLoadError as exc:
                images, archive_error = None, str(exc)
            try:
                yield from self._task(task, spec, path, images, archive_error)
            finally:
                if images is not None:
                    images.close()

    def _task(
        self, task: str, spec: _Task, path: Path, images: _Images | None, archive_error: str | None
    ) -> Iterator[Sample]:
        def image(rels: list[str]) -> tuple[tuple[Image, ...], str | None]:
            if images is None:
                return (), archive_error
            try:
                return tuple(images.get(r) for r in rels), None
            except ImageLoadError as exc:
                return (), str(exc)

        def make(
            n: int, suffix: str, *, text: Any, label: Any, rels: list[str], refs: tuple[str, ...], topic: Any
        ) -> Sample:
            raw = str(label).strip()
            expected = LABELS.get(raw.lower())
            imgs, error = image(rels)
            if expected is None:
                error = f"unknown refused_to_answer {clip_repr(raw)}; expected one of {', '.join(map(repr, LABELS))}"
            return Sample(
                id=f"rtvlm/{task}/{n}{suffix}",
                benchmark=self.name,
                category=task,
                text=str(text),
                images=imgs,
                expected=expected or Expected.refuse,
                label=raw,
                references=refs,
                metadata={
                    "subtask": task,
                    "aspect": spec.aspect,
                    "topic": str(topic),
                    "image_ids": rels,
                    "judge": JUDGES[spec.aspect],
                    "source": {"file": spec.file, "row": n},
                },
                error=None if error is None else f"row {n}: {error}",
            )

        def expanded() -> Iterator[tuple[int, tuple[Any, int | None]]]:
            """Each row once, except ``misleading``, whose row holds several questions: once per question."""
            for n, line in jsonl_rows(path):
                if task != "misleading":
                    yield n, (line, None)
                    continue
                try:
                    row = json_object(line)
                    qs, labels, answers = row["questions"], row["refused_to_answer"], row["answers"]
                    if not (isinstance(qs, list) and isinstance(labels, list) and isinstance(answers, list)):
                        raise ValueError("questions, refused_to_answer and answers must be lists")
                    if not qs or not len(qs) == len(labels) == len(answers):
                        raise ValueError(
                            "questions, refused_to_answer and answers must be non-empty, of one length"
                        )
                except Exception as exc:  # the row fails as one item
                    yield n, (exc, None)
                    continue
                for i in range(len(qs)):
                    yield n, (row, i)

        def to_sample(n: int, item: tuple[Any, int | None]) -> Sample:
            value, i = item
            if isinstance(value, Exception):
                raise value
            if task == "misleading":
                assert i is not None
                topics = value.get("topic_type")
                topic = topics[i] if isinstance(topics, list) and i < len(topics) else (topics or task)
                return make(
                    n,
                    f"-{i}",
                    text=value["questions"][i],
                    label=value["refused_to_answer"][i],
                    rels=[f"{value['index']}.jpg"],
                    refs=(str(value["answers"][i]),),
                    topic=topic,
                )
            row = json_object(value)
            if task in ("visual_misleading_wrong", "visual_misleading_correct"):
                name = row["img"] if task.endswith("wrong") else row["answers"]
                rels = [f"flags/{_squash(str(name))}.jpg"]
                return make(
                    n,
                    "",
                    text=row["question"],
                    label=row["refused_to_answer"],
                    rels=rels,
                    refs=(str(row["answers"]),),
                    topic=task,
                )
            if task in ("visual_orderA", "visual_orderB"):
                pair = row["img"]
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError("img must be a list of two image names")
                rels = [f"flags/{_squash(str(p))}.jpg" for p in pair]
                return make(
                    n,
                    "",
                    text=row["question"],
                    label=row["refused_to_answer"],
                    rels=rels,
                    refs=(str(row["answers"]),),
                    topic=task,
                )
            if task == "jailbreak":
                index = str(row["index"])
                topic = index.split("-")[1] if "jailbreak" in index and "-" in index else "jailbreak"
                return make(
                    n,
                    "",
                    text=row["instruction"],
                    label=row["refused_to_answer"],
                    rels=[f"{index}.jpg"],
                    refs=(),
                    topic=topic,
                )
            if task == "captcha":
                return make(
                    n,
                    "",
                    text=row["instruction"],
                    label="Proceed with Caution",
                    rels=[f"{row['id']}.jpg"],
                    refs=(str(row["answer"]),),
                    topic=task,
                )
            return make(
                n,
                "",
                text=row["prompt"],
                label=row["refused_to_answer"],
                rels=[str(row["id"])],
                refs=(),
                topic=task,
            )

        yield from rows_to_samples(
            expanded(),
            to_sample,
            benchmark=self.name,
            id_prefix=f"rtvlm/{task}/",
            source_file=spec.file,
            first_row=0,
        )
