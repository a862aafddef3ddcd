"""The built-in starter suite: 40 short requests shipped with mmsafe, usable with no downloads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.datasets._util import read_packaged_items
from mmsafe.datasets.base import Benchmark
from mmsafe.types import Expected, Sample

#: The harm categories of the starter suite (also the values the ``categories`` param accepts).
StarterCategory = Literal[
    "illegal_activity", "malware_hacking", "physical_harm", "fraud_scams", "hate_harassment", "privacy"
]


class _Item(BaseModel):
    """One entry of ``data/starter.yaml`` (validated so a typo in the file fails loudly)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    category: StarterCategory
    expected: Literal[Expected.refuse, Expected.comply]
    question: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    target: str | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    categories: tuple[StarterCategory, ...]
    items: tuple[_Item, ...]


def _read_items() -> tuple[_Item, ...]:
    return read_packaged_items("starter.yaml", _File)


class Starter(Benchmark):
    """Built-in starter suite: 24 harmful requests and 16 benign look-alikes over 6 harm categories.

    Written for mmsafe (no paper; licence Apache-2.0, as the package) and shipped as package data in
    ``mmsafe/data/starter.yaml``, so it runs with no data download. Modelled on the designs of
    FigStep's SafeBench (Gong et al., 2025, AAAI; a question plus a declarative "Steps to …"
    instruction per item) and XSTest (Röttger et al., 2024, NAACL; benign prompts that reuse the
    trigger words of harmful ones, to measure over-refusal). Harmful phrasing is generic and
    non-graphic; it is a smoke test, not a replacement for the published benchmarks.

    Categories: ``illegal_activity``, ``malware_hacking``, ``physical_harm``, ``fraud_scams``,
    ``hate_harassment``, ``privacy``. A benign look-alike keeps the category of the harmful items it
    mirrors; ``expected`` (``comply``) and ``metadata["benign"]`` (``True``) mark it, so per-category
    results set attack success (refuse items) beside over-refusal (comply items) for the same topic.

    Field mapping: ``id`` → ``Sample.id`` as ``"starter/<id>"``; ``question`` → ``text``;
    ``instruction`` → ``metadata["instruction"]`` (the FigStep-style rephrasing a typographic
    attack renders); ``metadata["source"]`` = ``{"file": "starter.yaml", "row": <0-based index in
    its items>}`` (relative to ``mmsafe/data/``); ``target`` → ``target``; ``category`` → ``category``; ``expected`` → ``expected``.

    Params: ``categories`` — keep only these categories (default: all).
    """

    name: ClassVar[str] = "starter"
    size: ClassVar[str | None] = "40 requests (24 harmful, 16 benign)"
    licence: ClassVar[str | None] = "Apache-2.0 (ships with mmsafe)"
    needs: ClassVar[str | None] = "nothing (package data)"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        categories: tuple[StarterCategory, ...] | None = None

    params: Params

    def location(self) -> str:
        return "package data mmsafe/data/starter.yaml"

    def load(self) -> Iterator[Sample]:
        wanted = set(self.params.categories) if self.params.categories else None
        for row, item in enumerate(_read_items()):
            if wanted is not None and item.category not in wanted:
                continue
            yield Sample(
                id=f"starter/{item.id}",
                benchmark=self.name,
                category=item.category,
                text=item.question,
                expected=item.expected,
                target=item.target,
                metadata={
                    "instruction": item.instruction,
                    "benign": item.expected is Expected.comply,
                    "source": {"file": "starter.yaml", "row": row},
                },
            )
