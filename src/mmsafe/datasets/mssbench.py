"""MSSBench: one query under a safe and an unsafe visual situation (chat and embodied tasks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from mmsafe.datasets._util import ImageLoadError, load_image, read_json, require_file, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Image, Sample

_FILE = "combine.json"
_SITUATIONS: tuple[str, ...] = ("safe", "unsafe")
_EXPECTED: dict[str, Expected] = {"safe": Expected.comply, "unsafe": Expected.refuse}
#: (entry index, query/pair index, situation, entry, query or instruction text)
_Item = tuple[int, int, str, Any, Any]


class MSSBench(Benchmark):
    """MSSBench (Multimodal Situational Safety): each query paired with a safe and an unsafe situation image.

    Paper: K. Zhou, C. Liu, X. Zhao, A. Compalas, D. Song, X. E. Wang, "Multimodal Situational Safety",
    2024 (arXiv:2410.06172). Code: github.com/eric-ai-lab/MSSBench (MIT); data: the Hugging Face
    dataset ``kzhou35/mssbench`` (its card states no licence: check before redistributing).

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/mssbench``), as upstream's
    ``inference.py`` reads it: ``combine.json`` — an object with two lists, ``chat`` and ``embodied`` —
    and the images under ``chat/`` and ``embodied/`` (``image_dir`` moves that root). A **chat** entry
    has ``safe_image_path`` and ``unsafe_image_path`` (relative to ``chat/``), ``intent``,
    ``unsafe_image`` (a description of the unsafe image), ``Type`` (the situational-safety category)
    and ``queries`` (a list). An **embodied** entry has ``task``, ``category``, ``safe`` and ``unsafe``
    (image paths relative to ``embodied/``), ``safe_instructions`` and ``unsafe_instructions`` (lists of
    the same length; a lone ``safe_instruction``/``unsafe_instruction`` is used when the lists are
    absent) and optional ``observation_safe``/``observation_unsafe`` captions. Fields beyond those the
    repository's README and ``utils/infer_on_data.py`` name were not verified.

    Items: every chat query is asked twice, once with the safe image and once with the unsafe one;
    every embodied instruction pair gives the safe instruction with the safe image and the unsafe one
    with the unsafe image. ``id`` = ``"mssbench/chat/<entry>/<query>/<safe|unsafe>"`` or
    ``"mssbench/embodied/<entry>/<pair>/<safe|unsafe>"``; ``text`` = the query or instruction (the raw
    text: upstream's setting-specific instruction prefixes — ``if``, ``qc``, ``ic``, ``ic_cap`` — are
    not added); ``category`` = ``Type`` / ``category``; ``label`` = the situation. Expected
    behaviour: the **safe** situation ``comply`` (answer / plan the task), the **unsafe** one
    ``refuse`` (decline, or point out the risk the image shows). A missing image makes that one
    Sample an error naming it. ``metadata``: ``task`` (``chat``/``embodied``), ``situation``,
    ``pair`` (the id shared by the two situations of one query), ``intent``,
    ``unsafe_image_description`` or ``embodied_task``, ``observation`` and ``source`` =
    ``{"file", "row"}`` (row = the entry's 0-based index in its task's list).

    Metric (paper): with a GPT-4 judge, **safe accuracy** (share of safe-situation answers that
    comply), **unsafe accuracy** (share of unsafe-situation answers that refuse or flag the risk) and
    their mean, per task. mmsafe computes them with a refusal judge: 1 − over-refusal rate on
    ``expected=comply`` items, refusal rate on ``expected=refuse`` items, grouped by ``task``.

    Params: ``file`` (default ``combine.json``; some copies name it ``combined.json``); ``task`` —
    ``chat``, ``embodied`` or ``all`` (default); ``image_dir`` — the folder
    holding ``chat/`` and ``embodied/`` (absolute, or relative to ``path``; default ``path``).
    """

    name: ClassVar[str] = "mssbench"
    paper: ClassVar[Paper | None] = Paper(
        title="Multimodal Situational Safety",
        authors="Zhou et al.",
        year=2024,
        url="https://arxiv.org/abs/2410.06172",
        threat_model="none: the same query is safe in one visual situation and unsafe in another",
    )
    default_folder: ClassVar[str | None] = "mssbench"
    size: ClassVar[str | None] = "chat and embodied queries, each with a safe and an unsafe image"
    licence: ClassVar[str | None] = "none stated (code MIT)"
    needs: ClassVar[str | None] = (
        "data folder (HF kzhou35/mssbench: combine.json, chat/, embodied/); images in it"
    )
    example_params: ClassVar[dict[str, Any]] = {"path": "mssbench", "task": "chat"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        file: str = _FILE
        task: Literal["chat", "embodied", "all"] = "all"
        image_dir: str | None = None

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        rel = self.params.file
        data = read_json(require_file(root, rel, benchmark=self.name))
        if not isinstance(data, dict):
            raise ConfigError(f"{root / rel}: expected a JSON object with 'chat' and 'embodied' lists")
        image_root = Path(self.params.image_dir).expanduser() if self.params.image_dir else root
        image_root = image_root if image_root.is_absolute() else root / image_root
        tasks = ("chat", "embodied") if self.params.task == "all" else (self.params.task,)
        for task in tasks:
            entries = data.get(task)
            if not isinstance(entries, list):
                raise ConfigError(f"{root / rel}: expected a list under {task!r}")

            def to_sample(n: int, item: _Item, task: str = task) -> Sample:
                return self._sample(task, item, image_root, rel)

            yield from rows_to_samples(
                enumerate(self._items(task, entries)),
                to_sample,
                benchmark=self.name,
                id_prefix=f"mssbench/{task}/",
                repeated_ids="mark",
                source_file=rel,
                source_row=lambda n, item: item[0],  # the entry, of which each query is an item
            )

    @staticmethod
    def _items(task: str, entries: list[Any]) -> Iterator[_Item]:
        """(entry index, query/pair index, situation, entry, text) for every item; an entry whose
        queries cannot be read gives one item with text None (one errored Sample for the entry)."""
        for row, entry in enumerate(entries):
            texts: dict[str, list[Any]] | None = None
            if isinstance(entry, dict):
                if task == "chat" and isinstance(entry.get("queries"), list):
                    queries = entry["queries"]
                    texts = {"safe": queries, "unsafe": queries}
                elif task == "embodied":
                    safe = entry.get("safe_instructions", [entry.get("safe_instruction")])
                    unsafe = entry.get("unsafe_instructions", [entry.get("unsafe_instruction")])
                    if isinstance(safe, list) and isinstance(unsafe, list) and len(safe) == len(unsafe):
                        texts = {"safe": safe, "unsafe": unsafe}
            if texts is None:
                yield row, 0, "safe", entry, None
                continue
            for k in range(len(texts["safe"])):
                for situation in _SITUATIONS:
                    yield row, k, situation, entry, texts[situation][k]

    def _sample(self, task: str, item: _Item, image_root: Path, rel: str) -> Sample:
        row, k, situation, entry, text = item
        pair = f"mssbench/{task}/{row}/{k}"
        if not isinstance(text, str) or not text.strip():
            what = "queries" if task == "chat" else "safe_instructions/unsafe_instructions of equal length"
            return Sample(
                id=f"mssbench/{task}/{row}",
                benchmark=self.name,
                metadata={"task": task, "source": {"file": rel, "row": row}},
                error=f"entry {row} has no readable {what}",
            )
        if task == "chat":
            image_rel = entry[f"{situation}_image_path"]
            category = entry.get("Type")
            extra = {"intent": entry.get("intent"), "unsafe_image_description": entry.get("unsafe_image")}
        else:
            image_rel = entry[situation]
            category = entry.get("category")
            extra = {"embodied_task": entry.get("task"), "observation": entry.get(f"observation_{situation}")}
        images: tuple[Image, ...] = ()
        error = None
        try:
            images = (load_image(image_root, f"{task}/{image_rel}", source=f"{task}/{image_rel}"),)
        except ImageLoadError as exc:
            error = str(exc)
        return Sample(
            id=f"{pair}/{situation}",
            benchmark=self.name,
            category=str(category).strip() if category else "uncategorised",
            text=text,
            images=images,
            expected=_EXPECTED[situation],
            label=situation,
            metadata={
                "task": task,
                "situation": situation,
                "pair": pair,
                **extra,
                "source": {"file": rel, "row": row},
            },
            error=error,
        )
