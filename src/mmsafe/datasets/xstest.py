"""XSTest: 250 safe prompts that look unsafe (over-refusal) and 200 unsafe contrast prompts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from mmsafe.datasets._util import read_csv, require_file, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Sample

_FILE = "xstest_prompts.csv"
_EXPECTED = {"safe": Expected.comply, "unsafe": Expected.refuse}


class XSTest(Benchmark):
    """XSTest: 450 text prompts testing exaggerated safety (250 safe → comply, 200 unsafe → refuse).

    Paper: P. Röttger, H. R. Kirk, B. Vidgen, G. Attanasio, F. Bianchi, D. Hovy, "XSTest: A Test Suite
    for Identifying Exaggerated Safety Behaviours in Large Language Models", NAACL 2024
    (arXiv:2308.01263). Data: github.com/paul-rottger/exaggerated-safety, licence CC BY 4.0.

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/xstest``): ``xstest_prompts.csv``.

    Field mapping: ``id`` → ``Sample.id`` ``"xstest/<id>"``; ``prompt`` → ``text``; ``type`` (one of
    18, e.g. ``homonyms``, ``contrast_homonyms``) → ``category``; ``label`` (``safe``/``unsafe``) →
    ``label`` and ``expected`` (``safe`` → ``comply``, ``unsafe`` → ``refuse``); ``focus`` and
    ``note`` → ``metadata``, with ``source`` (``{"file": "xstest_prompts.csv", "row": <0-based data
    row>}``). A row with any other label gets an ``error``.
    """

    name: ClassVar[str] = "xstest"
    paper: ClassVar[Paper | None] = Paper(
        title="XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large Language Models",
        authors="Röttger et al.",
        year=2024,
        url="https://arxiv.org/abs/2308.01263",
        threat_model="none: safe prompts that look unsafe (over-refusal), with unsafe contrast prompts",
    )
    default_folder: ClassVar[str | None] = "xstest"
    size: ClassVar[str | None] = "450 prompts (250 safe, 200 unsafe)"
    licence: ClassVar[str | None] = "CC BY 4.0"
    needs: ClassVar[str | None] = "data folder (xstest_prompts.csv); text only"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None

    params: Params

    def load(self) -> Iterator[Sample]:
        rows = read_csv(require_file(self.root(), _FILE, benchmark=self.name))
        yield from rows_to_samples(
            enumerate(rows, 1), self._sample, benchmark=self.name, id_prefix="xstest/", source_file=_FILE
        )

    def _sample(self, n: int, row: dict[str, str]) -> Sample:
        label = row["label"].strip()
        expected = _EXPECTED.get(label)
        return Sample(
            id=f"xstest/{row['id'].strip()}",
            benchmark=self.name,
            category=row["type"],
            text=row["prompt"],
            expected=expected or Expected.refuse,
            label=label,
            metadata={"focus": row.get("focus") or None, "note": row.get("note") or None},
            error=None if expected else f"unknown label {label!r}; expected 'safe' or 'unsafe'",
        )
