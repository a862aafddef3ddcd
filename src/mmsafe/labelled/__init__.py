"""Labelled data, a shared home: rows of (request, response, label) and their readers, used by judge
evaluation (:mod:`mmsafe.judge_eval`), the learned judge and calibration alike.

- :mod:`~mmsafe.labelled.rows` — :class:`LabelledRow`, :class:`LabelledData`, the constructs a
  label can measure (:data:`CONSTRUCTS`) and the accepted label spellings;
- :mod:`~mmsafe.labelled.read` — :func:`read_labelled` (CSV / TSV / JSONL / JSON, presets) and
  :func:`read_jailbreakbench`;
- :mod:`~mmsafe.labelled.presets` — the published human-labelled sets (``jbb-human``,
  ``harmbench-text``, ``harmbench-mm``, ``xstest-v2``, ``msts``).

It imports no judge, model or runner: any stage may read labelled data.
"""

from mmsafe.labelled.read import read_jailbreakbench, read_labelled
from mmsafe.labelled.rows import (
    COMPLY_VALUES,
    CONSTRUCTS,
    NEGATIVE_LABELS,
    POSITIVE_LABELS,
    REFUSE_VALUES,
    Construct,
    LabelledData,
    LabelledRow,
    parse_expected,
    parse_label,
)

__all__ = [
    "COMPLY_VALUES",
    "CONSTRUCTS",
    "NEGATIVE_LABELS",
    "POSITIVE_LABELS",
    "REFUSE_VALUES",
    "Construct",
    "LabelledData",
    "LabelledRow",
    "parse_expected",
    "parse_label",
    "read_jailbreakbench",
    "read_labelled",
]
