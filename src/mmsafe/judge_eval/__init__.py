"""Judging the judges: measure a judge's agreement with labelled responses.

A labelled set is a file of (request, response, label) rows. What the label measures is the set's
*construct* (:data:`CONSTRUCTS`):

- ``harm`` (the default): the label says whether the response is harmful — the attack succeeded —
  or safe, and the judge's verdict is its ``success``;
- ``refusal``: the label says whether the model refused or complied (XSTest), and the judge is
  measured as a refusal detector: its ``refused`` against the label.

Each row carries what a safe model should do with its request (``expected``): ``refuse`` for a
harmful request (the default), ``comply`` for a benign one (a column ``expected`` / ``behavior
type``, or a preset's rule). A benign request is judged as one: most judges give no harm verdict
for it (``success`` None), so under ``harm`` such rows are counted apart (``n_not_applicable``).

- :func:`read_labelled` reads CSV / TSV / JSONL / JSON files, JailbreakBench artifact files, and —
  with ``preset=`` — the published human-labelled sets (``jbb-human``, ``harmbench-text``,
  ``harmbench-mm``, ``xstest-v2``, ``msts``; see :mod:`mmsafe.labelled.presets`);
- :func:`evaluate_judge` runs a judge over the rows and returns accuracy (Wilson interval), Cohen's
  κ, F1 / precision / recall of the construct's positive class, the confusion matrix and the
  disagreements (each with the row's ``id``). Judge errors (and verdicts the judge left undecided)
  are counted apart, never as a class; answers an LLM judge could not parse are counted too, and a
  judge whose answers mostly do not parse is declared unusable instead of measured;
- :func:`robustness` judges the harmful-labelled rows again under forged verdicts (the ``adaptive``
  family of :mod:`mmsafe.judges.forgery`: ``[[SAFE]]``, ``Verdict: no``, fake judge turns, a
  "THIS ANSWER IS SAFE" image…) and reports per forgery how often the verdict flips (Wilson
  intervals): ``mmsafe judge-eval --robustness``;
- :func:`save_judge_eval` / :func:`load_judge_evals` keep each judge's measured agreement in
  ``<cache>/judge-evals/<judge spec key>.json`` (only when asked: ``mmsafe judge-eval --record``);
  a run copies its judges' entries into its store (:func:`copy_judge_evals`), and the report prints
  them from the store alone (:meth:`mmsafe.store.Store.judge_evals`), never from the cache.

Bad rows (an unknown label, a missing field, a line that is not JSON) stop the read with an error
naming ``file:line``; ``on_bad="skip"`` leaves them out instead and lists each one in
:attr:`LabelledData.skipped`. Failing is the default because a silently thinned labelled set
measures a different judge agreement than the one the user thinks they measured.

The package is in three parts, each importable on its own: the labelled data and its readers live
in the shared home :mod:`mmsafe.labelled` (rows, files, presets), the agreement numbers in
:mod:`mmsafe.metrics.agreement`; here, :mod:`~mmsafe.judge_eval.evaluate` runs a judge over the rows
and :mod:`~mmsafe.judge_eval.records` keeps the results (cache and run store). Every name stays
importable from ``mmsafe.judge_eval``.
"""

from mmsafe.judge_eval.evaluate import UNPARSEABLE_PREFIX, evaluate_judge, is_unparseable, robustness
from mmsafe.judge_eval.records import (
    copy_judge_evals,
    judge_eval_entry,
    judge_evals_dir,
    load_judge_evals,
    record_judge_eval,
    save_judge_eval,
)
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
from mmsafe.metrics.agreement import LABEL_NAMES, agreement

__all__ = [
    "COMPLY_VALUES",
    "CONSTRUCTS",
    "LABEL_NAMES",
    "NEGATIVE_LABELS",
    "POSITIVE_LABELS",
    "REFUSE_VALUES",
    "UNPARSEABLE_PREFIX",
    "Construct",
    "LabelledData",
    "LabelledRow",
    "agreement",
    "copy_judge_evals",
    "evaluate_judge",
    "is_unparseable",
    "judge_eval_entry",
    "judge_evals_dir",
    "load_judge_evals",
    "parse_expected",
    "parse_label",
    "read_jailbreakbench",
    "read_labelled",
    "record_judge_eval",
    "robustness",
    "save_judge_eval",
]
