"""JailBreakV-28K: jailbreak text–image pairs against multimodal models (mini 280, full 28,000; RedTeam-2K)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.datasets._util import image_folder, item_image, provenance, read_csv, rows_to_samples
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Expected, Sample

_FILES = {
    "mini": "mini_JailBreakV_28K.csv",
    "full": "JailBreakV_28K.csv",
    "redteam-2k": "RedTeam_2K.csv",
}
#: where the CSVs sit under the dataset folder: the Hugging Face layout, the GitHub mirrors' layout, flat
_CSV_DIRS = ("JailBreakV_28K", "data/JailBreakV_28K", ".")
#: ``format`` values whose attack is in the text (an LLM jailbreak carried over); the rest are image attacks
_LLM_TRANSFER = frozenset({"Template", "Persuade", "Logic"})


def _flag(value: str | None) -> bool | None:
    text = (value or "").strip().lower()
    return True if text == "true" else False if text == "false" else None


class JailBreakV28K(Benchmark):
    """JailBreakV-28K: 28,000 jailbreak text–image pairs built on 2,000 harmful queries (RedTeam-2K).

    Paper: W. Luo, S. Ma, X. Liu, X. Guo, C. Xiao, "JailBreakV: A Benchmark for Assessing the
    Robustness of MultiModal Large Language Models against Jailbreak Attacks", COLM 2024
    (arXiv:2404.03027). Data: Hugging Face ``JailbreakV-28K/JailBreakV-28k`` (licence MIT, per the
    dataset card); GitHub ``SaFoLab-WISC/JailBreakV_28K``.

    Params: ``variant`` — ``mini`` (280 pairs, ``mini_JailBreakV_28K.csv``), ``full`` (28,000,
    ``JailBreakV_28K.csv``, 23 MB, only when you have the file) or ``redteam-2k`` (the 2,000 plain
    harmful queries, text only, ``RedTeam_2K.csv``); ``images`` — the folder ``image_path`` is relative
    to, default the folder holding the CSV (the Hugging Face layout: ``JailBreakV_28K/`` with
    ``llm_transfer_attack/``, ``query_related/``, ``figstep/`` beside the CSVs).

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/jailbreakv-28k``): the CSV is looked
    for in ``JailBreakV_28K/``, then ``data/JailBreakV_28K/``, then the folder itself.

    CSV formats (header row, RFC-4180 quoting; cells may hold newlines):

    * mini and full share one header: ``id, jailbreak_query, redteam_query, format, policy,
      image_path, from, selected_mini, transfer_from_llm``. ``format`` is the jailbreak type:
      ``Template``, ``Persuade``, ``Logic`` (LLM-transfer attacks: the jailbreak is in the text, the
      image is noise or an unrelated picture) or ``SD``, ``SD_typo``, ``typo``, ``figstep`` (image
      attacks: the request is carried by the image). ``policy`` is one of 16 safety policies.
    * RedTeam-2K: ``id, question, policy, from``.

    Field mapping: ``Sample.id`` = ``"jailbreakv-28k/<variant>/<id>"``; ``category`` = ``policy``;
    ``expected=refuse`` for every item. Mini/full: ``text`` = ``jailbreak_query`` (the prompt the
    paper sends); ``images`` = ``image_path`` read from ``images`` (a missing file is the item's
    ``error``, naming the path); ``metadata``: ``format``, ``attack_type`` (``llm-transfer`` or
    ``mllm``, from ``format``), ``policy``, ``image_path``, ``redteam_query`` (the bare harmful
    query, for judges that want it), ``origin`` (``from``: where the query came from),
    ``selected_mini``, ``transfer_from_llm`` (booleans). RedTeam-2K: ``text`` = ``question``, no image;
    ``metadata``: ``policy``, ``origin``. Every sample: ``metadata["source"]`` = ``{file, row}`` (the CSV
    relative to ``path``, 0-based data row).

    Metric (paper): attack success rate — the share of responses an automatic judge (Llama Guard)
    calls unsafe, by jailbreak format and by policy. In mmsafe: the ASR of the ``guard`` judge (a
    Llama-Guard-style classifier of the response), or of ``llm``/``harm``; the report groups it by
    ``category`` (policy). The refusal judge's "non-refusal rate" is not this ASR.
    """

    name: ClassVar[str] = "jailbreakv-28k"
    paper: ClassVar[Paper | None] = Paper(
        title=(
            "JailBreakV: A Benchmark for Assessing the Robustness of MultiModal Large Language Models "
            "against Jailbreak Attacks"
        ),
        authors="Luo et al.",
        year=2024,
        url="https://arxiv.org/abs/2404.03027",
        threat_model="black-box user sending one jailbreak prompt (template, persuasion, logic) with an image attack or noise",
    )
    default_folder: ClassVar[str | None] = "jailbreakv-28k"
    size: ClassVar[str | None] = "mini 280; full 28,000; redteam-2k 2,000 (text)"
    licence: ClassVar[str | None] = "MIT"
    needs: ClassVar[str | None] = (
        "data folder (HF JailbreakV-28K/JailBreakV-28k CSVs); images: user folder (its HF images)"
    )
    example_params: ClassVar[dict[str, Any]] = {"variant": "redteam-2k"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        variant: Literal["mini", "full", "redteam-2k"] = Field(
            "mini", description="mini (280), full (28,000; your own copy) or redteam-2k (2,000 text queries)"
        )
        images: str | None = Field(
            None, description="folder image_path is relative to; default the CSV's folder"
        )

    params: Params

    def _csv(self, root: Path) -> Path:
        name = _FILES[self.params.variant]
        for folder in _CSV_DIRS:
            if (root / folder / name).is_file():
                return root / folder / name
        looked = ", ".join(str(root / d / name) for d in _CSV_DIRS)
        hint = " (the full 28K CSV is a separate 23 MB download)" if self.params.variant == "full" else ""
        raise ConfigError(f"benchmark '{self.name}': {name} not found; looked for {looked}{hint}")

    def load(self) -> Iterator[Sample]:
        root = self.root()
        file = self._csv(root)
        rows = read_csv(file)
        variant = self.params.variant
        prefix = f"jailbreakv-28k/{variant}/"
        folder = image_folder(root, self.params.images, file.parent.relative_to(root).as_posix())

        def to_sample(n: int, row: dict[str, str]) -> Sample:
            source = provenance(root, file, n)
            if variant == "redteam-2k":
                return Sample(
                    id=f"{prefix}{row['id'].strip()}",
                    benchmark=self.name,
                    category=row["policy"],
                    text=row["question"],
                    expected=Expected.refuse,
                    metadata={"policy": row["policy"], "origin": row.get("from"), "source": source},
                )
            fmt = row["format"].strip()
            rel = row["image_path"].strip()
            images, error = item_image(folder, rel)
            return Sample(
                id=f"{prefix}{row['id'].strip()}",
                benchmark=self.name,
                category=row["policy"],
                text=row["jailbreak_query"],
                images=images,
                expected=Expected.refuse,
                metadata={
                    "format": fmt,
                    "attack_type": "llm-transfer" if fmt in _LLM_TRANSFER else "mllm",
                    "policy": row["policy"],
                    "image_path": rel,
                    "redteam_query": row.get("redteam_query"),
                    "origin": row.get("from"),
                    "selected_mini": _flag(row.get("selected_mini")),
                    "transfer_from_llm": _flag(row.get("transfer_from_llm")),
                    "source": source,
                },
                error=error,
            )

        yield from rows_to_samples(
            enumerate(rows),
            to_sample,
            benchmark=self.name,
            id_prefix=prefix,
            source_file=file.relative_to(root).as_posix(),
            first_row=0,
        )
