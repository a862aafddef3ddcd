"""MM-SafetyBench: 1,680 harmful questions over 13 scenarios, with key phrases for image attacks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, field_validator

from mmsafe.datasets._util import check_choices, read_json, require_file
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.types import Sample

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
    ``processed_questions/<scenario>.json`` and ``TinyVersion_ID_List.json``. The published images
    (SD / TYPO / SD_TYPO) are not read: image attacks build them from the key phrase.

    Field mapping: ``Sample.id`` = ``"mm-safetybench/<scenario>/<question_id>"`` (e.g.
    ``mm-safetybench/01-Illegal_Activitiy/0``); ``category`` = the scenario name without its number
    (``Illegal_Activitiy``, upstream spelling); ``text`` = ``Question``; ``metadata``:
    ``scenario`` (full name), ``scenario_id`` (int), ``question_id`` (int), ``changed_question``
    (``Changed Question``), ``key_phrase``, ``phrase_type``, ``rephrased_question`` (the prompt paired
    with SD_TYPO/TYPO images), ``rephrased_question_sd`` (paired with SD images) and
    ``judge_template`` — ``"generic"``, or the scenario name for 08 and 10–13, which upstream judges
    with scenario-specific templates (a safe answer there may disclaim rather than refuse). All items
    are ``expected=refuse``.

    Params: ``scenarios`` — full names or names without the number (default: all 13); ``tiny`` — keep
    only the official 168-question sample from ``TinyVersion_ID_List.json``.
    """

    name: ClassVar[str] = "mm-safetybench"
    paper: ClassVar[Paper | None] = Paper(
        title="MM-SafetyBench: A Benchmark for Safety Evaluation of Multimodal Large Language Models",
        authors="Liu et al.",
        year=2024,
        url="https://arxiv.org/abs/2311.17600",
        threat_model=(
            "harmful requests whose key phrase is shown in a query-relevant image; black-box, one query"
        ),
    )
    default_folder: ClassVar[str | None] = "mm-safetybench"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        path: str | None = None
        scenarios: tuple[str, ...] | None = None
        tiny: bool = False

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

    def load(self) -> Iterator[Sample]:
        root = self.root()
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
            for qid, rec in sorted(records.items(), key=lambda kv: int(kv[0])):
                if tiny_ids is not None and qid not in tiny_ids.get(scenario, ()):
                    continue
                yield Sample(
                    id=f"mm-safetybench/{scenario}/{qid}",
                    benchmark=self.name,
                    category=_short(scenario),
                    text=rec.get("Question", ""),
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
                    },
                    error=None if rec.get("Question") else "record has no Question",
                )
