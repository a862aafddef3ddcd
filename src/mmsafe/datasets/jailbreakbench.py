"""JailbreakBench JBB-Behaviors: 100 harmful behaviours and 100 topic-matched benign ones."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from mmsafe.datasets._util import read_csv, require_file, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Sample

_SUBSETS = {
    "harmful": ("harmful-behaviors.csv", Expected.refuse),
    "benign": ("benign-behaviors.csv", Expected.comply),
}


class JailbreakBench(Benchmark):
    """JailbreakBench JBB-Behaviors: 100 harmful (refuse) + 100 matched benign (comply) behaviours.

    Paper: P. Chao, E. Debenedetti, A. Robey, M. Andriushchenko, F. Croce, V. Sehwag, E. Dobriban,
    N. Flammarion, G. J. Pappas, F. Tramèr, H. Hassani, E. Wong, "JailbreakBench: An Open Robustness
    Benchmark for Jailbreaking Large Language Models", NeurIPS 2024 Datasets and Benchmarks Track
    (arXiv:2404.01318). Data: Hugging Face ``JailbreakBench/JBB-Behaviors``, MIT licence.

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/jailbreakbench``):
    ``harmful-behaviors.csv`` and ``benign-behaviors.csv``.

    Field mapping: ``Index`` → ``Sample.id`` ``"jbb/harmful/<Index>"`` or ``"jbb/benign/<Index>"``;
    ``Goal`` → ``text``; ``Target`` ("Sure, here is …") → ``target``; ``Category`` (10 categories, the
    same for a harmful row and its benign counterpart) → ``category``; ``metadata``: ``subset``,
    ``index`` (int), ``behavior``, ``behavior_source`` (the ``Source`` column: where the behaviour
    was taken from), ``source`` (provenance: ``{"file": <CSV>, "row": <0-based data row>}``) and ``pair_id`` (the id of the same-index row of the
    other subset: benign row i is the topic-matched control of harmful row i). Harmful rows are
    ``expected=refuse``, benign rows ``expected=comply``.

    Params: ``subset`` ``"harmful"``, ``"benign"`` or ``"both"`` (default; harmful rows first).
    """

    name: ClassVar[str] = "jailbreakbench"
    paper: ClassVar[Paper | None] = Paper(
        title="JailbreakBench: An Open Robustness Benchmark for Jailbreaking Large Language Models",
        authors="Chao et al.",
        year=2024,
        url="https://arxiv.org/abs/2404.01318",
        threat_model="harmful behaviours and benign twins for black-box jailbreak attacks",
    )
    default_folder: ClassVar[str | None] = "jailbreakbench"
    size: ClassVar[str | None] = "100 harmful + 100 benign behaviours"
    licence: ClassVar[str | None] = "MIT"
    needs: ClassVar[str | None] = "data folder (JBB-Behaviors CSVs); text only"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        subset: Literal["harmful", "benign", "both"] = "both"

    params: Params

    def load(self) -> Iterator[Sample]:
        root = self.root()
        subsets = ("harmful", "benign") if self.params.subset == "both" else (self.params.subset,)
        for subset in subsets:
            rel = _SUBSETS[subset][0]
            rows = read_csv(require_file(root, rel, benchmark=self.name))
            to_sample = partial(self._sample, subset=subset)
            prefix = f"jbb/{subset}/"
            yield from rows_to_samples(
                enumerate(rows, 1), to_sample, benchmark=self.name, id_prefix=prefix, source_file=rel
            )

    def _sample(self, n: int, row: dict[str, str], *, subset: str) -> Sample:
        expected = _SUBSETS[subset][1]
        other = "benign" if subset == "harmful" else "harmful"
        index = row["Index"].strip()
        return Sample(
            id=f"jbb/{subset}/{index}",
            benchmark=self.name,
            category=row["Category"],
            text=row["Goal"],
            expected=expected,
            target=row.get("Target") or None,
            metadata={
                "subset": subset,
                "index": int(index),
                "behavior": row.get("Behavior"),
                "behavior_source": row.get("Source"),
                "pair_id": f"jbb/{other}/{index}",
            },
        )
