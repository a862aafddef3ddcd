"""Metrics: pure functions over judgements and records (no I/O, no global state), one file per family.

- :mod:`~mmsafe.metrics.rates` — :class:`Rate` (k of n with a Wilson interval), ASR, refusal and
  over-refusal rates, the bootstrap helper and :class:`Outcome` (what the metrics read of a record,
  small enough to keep one per record of a long run);
- :mod:`~mmsafe.metrics.summary` — :func:`summarise` (report rows), on top of the other families;
- :mod:`~mmsafe.metrics.classification` — confusion matrix, accuracy, per-class and macro F1,
  Cohen's κ and AUROC, for detection benchmarks and judge evaluation;
- :mod:`~mmsafe.metrics.recognition` — recognition and defense success rates (Wu et al. 2023);
- :mod:`~mmsafe.metrics.privacy` — PrivQA's protection score (Chen et al. 2023);
- :mod:`~mmsafe.metrics.text_overlap` — BLEU, ROUGE-L and CIDEr for caption / VQA utility;
- :mod:`~mmsafe.metrics.utility` — mean utility of benign answers against reference answers and its
  paired change (the price of a defense beyond outright refusals);
- :mod:`~mmsafe.metrics.compare` — the difference between two cells with a Newcombe interval.
- :mod:`~mmsafe.metrics.agreement` — a judge's agreement with labels (accuracy, κ, F1, confusion),
  what judge evaluation and the learned judge report.
- :mod:`~mmsafe.metrics.interrater` — agreement among several annotators: Fleiss' κ,
  Krippendorff's nominal α and the per-item majority label.

Every estimate comes with a 95% interval by default: a :class:`Rate` (Wilson) for proportions, an
:class:`Estimate` (value, lo, hi, n and the interval's ``method``) for everything else. Bootstrap
intervals are seeded and deterministic.
"""

from mmsafe.metrics._common import Estimate
from mmsafe.metrics.classification import (
    ClassScores,
    ConfusionMatrix,
    accuracy,
    auroc,
    cohen_kappa,
    cohen_kappa_value,
    confusion_matrix,
    hanley_mcneil_se,
    macro_f1,
    precision_recall_f1,
)
from mmsafe.metrics.compare import compare_rates, newcombe_interval, newcombe_paired_interval
from mmsafe.metrics.interrater import fleiss_kappa, krippendorff_alpha, majority
from mmsafe.metrics.privacy import PrivacyItem, ProtectionScore, protection_score
from mmsafe.metrics.rates import (
    Item,
    Outcome,
    Rate,
    attack_success_rate,
    bootstrap_interval,
    outcome,
    over_refusal_rate,
    rate,
    refusal_rate,
    wilson_interval,
)
from mmsafe.metrics.recognition import defense_success_rate, recognition_success_rate
from mmsafe.metrics.summary import ALL, labels_of, spec_labels, summarise, summarise_groups
from mmsafe.metrics.text_overlap import (
    bootstrap_text_metric,
    cider,
    cider_d,
    corpus_bleu,
    corpus_rouge_l,
    rouge_l,
    tokenize,
)
from mmsafe.metrics.utility import compare_utility, mean_utility, utility_scores

__all__ = [
    "ALL",
    "ClassScores",
    "ConfusionMatrix",
    "Estimate",
    "Item",
    "Outcome",
    "PrivacyItem",
    "ProtectionScore",
    "Rate",
    "accuracy",
    "attack_success_rate",
    "auroc",
    "bootstrap_interval",
    "bootstrap_text_metric",
    "cider",
    "cider_d",
    "cohen_kappa",
    "cohen_kappa_value",
    "compare_rates",
    "compare_utility",
    "confusion_matrix",
    "corpus_bleu",
    "corpus_rouge_l",
    "defense_success_rate",
    "fleiss_kappa",
    "hanley_mcneil_se",
    "krippendorff_alpha",
    "labels_of",
    "macro_f1",
    "majority",
    "mean_utility",
    "newcombe_interval",
    "newcombe_paired_interval",
    "outcome",
    "over_refusal_rate",
    "precision_recall_f1",
    "protection_score",
    "rate",
    "recognition_success_rate",
    "refusal_rate",
    "rouge_l",
    "spec_labels",
    "summarise",
    "summarise_groups",
    "tokenize",
    "utility_scores",
    "wilson_interval",
]
