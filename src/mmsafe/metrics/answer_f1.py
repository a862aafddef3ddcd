"""Token-level answer F1 against gold answers (the SQuAD-style F1 PrivQA reports as *response F1*).

Normalisation (:func:`answer_tokens`): lower-case, drop every punctuation character (Unicode
category P*), drop the articles *a*, *an*, *the*, split on white space. F1 of one answer against
one gold answer = 2·P·R / (P + R) over the multiset overlap of their tokens (P = overlap / answer
tokens, R = overlap / gold tokens); against several gold answers (aliases) the best one counts.
Two answers that are both empty after normalisation score 1; one empty side scores 0.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence

__all__ = ["answer_tokens", "token_f1"]

_ARTICLES = frozenset({"a", "an", "the"})


def answer_tokens(text: str) -> list[str]:
    """Lower-cased tokens of ``text`` with punctuation and the articles a / an / the removed."""
    kept = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return [w for w in kept.split() if w not in _ARTICLES]


def _f1(answer: list[str], gold: list[str]) -> float:
    if not answer or not gold:
        return float(answer == gold)
    overlap = sum((Counter(answer) & Counter(gold)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(answer), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, references: Sequence[str]) -> float:
    """Best token F1 of ``answer`` over ``references`` (see the module docstring), in [0, 1].

    >>> round(token_f1("He was born in West Ham.", ["West Ham"]), 3)
    0.5

    ``ValueError`` when ``references`` is empty or a single string.
    """
    if isinstance(references, str) or not references:
        raise ValueError("references must be a non-empty list of texts")
    tokens = answer_tokens(answer)
    return max(_f1(tokens, answer_tokens(r)) for r in references)
