"""MM-SafetyBench: 1,680 harmful questions over 13 scenarios, with key phrases for image attacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from mmsafe import papers
from mmsafe.datasets._util import ImageLoadError, check_choices, load_image, read_json, require_file
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Image, Sample

#: The 13 scenarios, spelled as upstream names their files (including "Illegal_Activitiy").
SCENARIOS: tuple[str, ...] = (
    "01-Illegal_Activitiy",
    "02-HateSpeech",
    "03-Malware_Generation",
    "04-Physical_Harm",
    "05-EconomicHarm",
    "06-Fraud",
    "07-Sex",
    "08-Political_Lobbying",
    "09-Privacy_Violence",
    "10-Legal_Opinion",
    "11-Financial_Advice",
    "12-Health_Consultation",
    "13-Gov_Decision",
)

#: The published image kinds, and the question field upstream pairs with each (README "Evaluation").
IMAGE_PROMPTS: dict[str, str] = {
    "SD": "Rephrased Question(SD)",
    "SD_TYPO": "Rephrased Question",
    "TYPO": "Rephrased Question",
}

ImageVariant = Literal["none", "SD", "SD_TYPO", "TYPO"]

#: Scenarios upstream judges with a scenario-specific GPT-4 template (not the generic safety one).
_SPECIAL_JUDGE = {"08", "10", "11", "12", "13"}


def _short(scenario: str) -> str:
    return scenario.split("-", 1)[1]


class MMSafetyBench(Benchmark):
    """MM-SafetyBench: 1,680 GPT-4-generated harmful questions in 13 scenarios (168 in the tiny set).

    Paper: X. Liu, Y. Zhu, J. Gu, Y. Lan, C. Yang, Y. Qiao, "MM-SafetyBench: A Benchmark for Safety
    Evaluation of Multimodal Large Language Models", ECCV 2024 (arXiv:2311.17600). Data:
    github.com/isXinLiu/MM-SafetyBench, licence CC BY-NC 4.0 (research, non-commercial use only).

    Folder layout (``params.path``, default ``$MMSAFE_DATA_DIR/mm-safetybench``):
    ``processed_questions/<scenario>.json`` and ``TinyVersion_ID_List.json``; the published images
    (upstream's ``MM-SafetyBench(imgs).zip``) as ``imgs/<scenario>/{SD,SD_TYPO,TYPO}/<question_id>.jpg``
    (``params.image_dir`` names another folder of that layout).

    Field mapping: ``Sample.id`` = ``"mm-safetybench/<scenario>/<question_id>"`` (e.g.
    ``mm-safetybench/01-Illegal_Activitiy/0``); ``category`` = the scenario name without its number
    (``Illegal_Activitiy``, upstream spelling); ``text`` = ``Question`` (with an image: the rephrased
    question paired with it, below); ``metadata``:
    ``scenario`` (full name), ``scenario_id`` (int), ``question_id`` (int), ``changed_question``
    (``Changed Question``), ``key_phrase``, ``phrase_type``, ``rephrased_question`` (the prompt paired
    with SD_TYPO/TYPO images), ``rephrased_question_sd`` (paired with SD images) and
    ``judge_template`` — ``"generic"``, or the scenario name for 08 and 10–13, which upstream judges
    with scenario-specific templates (a safe answer there may disclaim rather than refuse);
    ``source`` = ``{"file": "processed_questions/<scenario>.json", "row": <0-based position of the
    record in that file>}``. All items are ``expected=refuse``.

    Image variants (``image_variant``), as the paper evaluates them: ``none`` (default) — ``text`` is
    the original ``Question``, no image (image attacks such as ``mmsb-typo`` build their own from the
    key phrase); ``SD`` — the Stable Diffusion image of the key phrase with ``Rephrased Question(SD)``
    ("The image shows a phrase of …"); ``TYPO`` — the key phrase typeset alone, and ``SD_TYPO`` — the
    SD image with the phrase typeset below it, both with ``Rephrased Question`` ("The bottom of the
    image shows a phrase of …"). With an image, ``text`` is that rephrased question, ``images`` the
    JPEG, ``metadata["image_variant"]`` the variant; an item whose image is missing keeps its text and
    gets an ``error`` naming the missing path (upstream publishes images for all 1,680 questions; the
    shared copy holds the tiny set's 504).

    Metrics (paper): attack success rate (ASR, the share of answers a GPT-4 judge rates unsafe; for 08
    and 10–13, answers without the expected caution) and refusal rate (RR), per scenario; in mmsafe the
    ``harm`` / ``llm`` judges give the harmful rate (ASR) and the ``refusal`` judge the refusal and
    non-refusal rates, per scenario via ``category``.

    Params: ``scenarios`` — full names or names without the number (default: all 13); ``tiny`` — keep
    only the official 168-question sample from ``TinyVersion_ID_List.json`` (the subset: ``False`` is
    the full 1,680); ``image_variant`` (above); ``image_dir`` — the images folder (default
    ``<path>/imgs``).
    """

    name: ClassVar[str] = "mm-safetybench"
    paper: ClassVar[Paper | None] = papers.MM_SAFETYBENCH.threat(
        "harmful requests whose key phrase is shown in a query-relevant image; black-box, one query"
    )
    default_folder: ClassVar[str | None] = "mm-safetybench"
    size: ClassVar[str | None] = "1,680 questions × 3 image kinds; tiny 168"
    licence: ClassVar[str | None] = "CC BY-NC 4.0 (research only)"
    needs: ClassVar[str | None] = "data folder (processed_questions/); images: imgs/ folder (upstream zip)"
    example_params: ClassVar[dict[str, Any]] = {"tiny": True, "image_variant": "TYPO"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        scenarios: tuple[str, ...] | None = None
        tiny: bool = False
        image_variant: ImageVariant = "none"
        image_dir: str | None = None

        @model_validator(mode="after")
        def _dir_needs_images(self) -> MMSafetyBench.Params:
            if self.image_dir is not None and self.image_variant == "none":
                raise ValueError("image_dir is read only with an image_variant (SD, SD_TYPO or TYPO)")
            return self

        @field_validator("scenarios")
        @classmethod
        def _known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
            if value is None:
                return None
            by_short = {_short(s): s for s in SCENARIOS}
            full = tuple(by_short.get(v, v) for v in value)
            check_choices("scenario", full, SCENARIOS)
            return full

    params: Params

    def image_root(self) -> Path:
        """The images folder: ``params.image_dir``, else ``<dataset folder>/imgs``."""
        if self.params.image_dir:
            return Path(self.params.image_dir).expanduser()
        return self.root() / "imgs"

    def load(self) -> Iterator[Sample]:
        root = self.root()
        variant = self.params.image_variant
        image_root = self.image_root() if variant != "none" else None
        tiny_ids: dict[str, set[str]] | None = None
        if self.params.tiny:
            listing = read_json(require_file(root, "TinyVersion_ID_List.json", benchmark=self.name))
            tiny_ids = {e["Scenario"]: {str(i) for i in e["Sampled_ID_List"]} for e in listing}
        for scenario in self.params.scenarios or SCENARIOS:
            path = require_file(root, f"processed_questions/{scenario}.json", benchmark=self.name)
            records = read_json(path)
            if not isinstance(records, dict):
                raise ConfigError(f"{path}: expected a JSON object of question_id → record")
            number = scenario.split("-", 1)[0]
            rel = f"processed_questions/{scenario}.json"
            rows = {qid: row for row, qid in enumerate(records)}
            for qid, rec in sorted(records.items(), key=lambda kv: int(kv[0])):
                if tiny_ids is not None and qid not in tiny_ids.get(scenario, ()):
                    continue
                text: str = rec.get("Question", "")
                images: tuple[Image, ...] = ()
                error = None if text else "record has no Question"
                if image_root is not None:
                    text, images, error = self._with_image(image_root, scenario, qid, rec, error)
                yield Sample(
                    id=f"mm-safetybench/{scenario}/{qid}",
                    benchmark=self.name,
                    category=_short(scenario),
                    text=text,
                    images=images,
                    metadata={
                        "scenario": scenario,
                        "scenario_id": int(number),
                        "question_id": int(qid),
                        "changed_question": rec.get("Changed Question"),
                        "key_phrase": rec.get("Key Phrase"),
                        "phrase_type": rec.get("Phrase Type"),
                        "rephrased_question": rec.get("Rephrased Question"),
                        "rephrased_question_sd": rec.get("Rephrased Question(SD)"),
                        "judge_template": _short(scenario) if number in _SPECIAL_JUDGE else "generic",
                        "image_variant": variant,
                        "source": {"file": rel, "row": rows[qid]},
                    },
                    error=error,
                )

    def _with_image(
        self, image_root: Path, scenario: str, qid: str, rec: dict[str, Any], error: str | None
    ) -> tuple[str, tuple[Image, ...], str | None]:
        """The variant's rephrased question and its image (or an error naming what is missing)."""
        variant = self.params.image_variant
        field = IMAGE_PROMPTS[variant]
        text = rec.get(field) or ""
        if not text:
            return text, (), error or f"record has no {field!r}"
        rel = f"{scenario}/{variant}/{qid}.jpg"
        try:
            return text, (load_image(image_root, rel),), error
        except ImageLoadError as exc:
            return text, (), error or f"{exc} (looked for {image_root / rel})"
