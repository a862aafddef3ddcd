"""Text retrieval over a few labelled documents: which key is a query closest to?

:class:`TfidfIndex` (pure Python, no dependency) and :class:`EmbeddingIndex` (cosine of sentence
embeddings, by default the shared MiniLM of :mod:`mmsafe.embeddings`) both score every key for a
query in [0, 1]; ``best(query)`` picks one. AdaShield retrieves its scenario prompt with them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from mmsafe.embeddings import shared_embedder

__all__ = ["EmbeddingIndex", "Index", "TfidfIndex", "tokens"]

_STOP = frozenset(
    """a about above after again all also am an and any are as at be because been before being both
    but by can could did do does doing down during each few for from further had has have having he
    her here hers him his how i if in into is it its itself just me more most my no nor not now of off
    on once only or other our out over own same she should so some such than that the their them then
    there these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours please tell give show me""".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    """A crude suffix stripper (``stealing`` → ``steal``, ``scams`` → ``scam``) so forms match."""
    for suffix in ("ing", "ers", "ies", "ed", "es", "er", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens, stop words dropped, crudely stemmed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]


class Index:
    """Retrieval over scenarios: subclasses give ``scores(query)`` (scenario → similarity)."""

    def scores(self, query: str) -> dict[str, float]:
        raise NotImplementedError

    def best(self, query: str) -> tuple[str | None, float]:
        """The best-scoring scenario (ties: the later name) and its score; (None, 0) when empty."""
        scores = self.scores(query)
        if not scores:
            return None, 0.0
        key = max(scores, key=lambda k: (scores[k], k))
        return key, scores[key]


class TfidfIndex(Index):
    """TF-IDF cosine retrieval over a few documents (pure Python, no dependencies).

    Term weight ``tf × idf`` with raw counts for ``tf`` and ``idf = log((2+N)/(1+df))`` over the N
    indexed documents (a term in every document weighs little, yet not 0, so one document works);
    the query is weighted with the same IDF (terms in no document are dropped); the score is the
    cosine of the two weight vectors, in [0, 1].
    """

    def __init__(self, docs: dict[str, str]) -> None:
        toks = {k: Counter(tokens(v)) for k, v in docs.items()}
        n = len(toks)
        df: Counter[str] = Counter()
        for c in toks.values():
            df.update(c.keys())
        self.idf = {t: math.log((2 + n) / (1 + d)) for t, d in df.items()}
        self.vecs = {k: self._weigh(c) for k, c in toks.items()}

    def _weigh(self, counts: Counter[str]) -> dict[str, float]:
        v = {t: c * self.idf[t] for t, c in counts.items() if t in self.idf}
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {t: x / norm for t, x in v.items()} if norm else {}

    def scores(self, query: str) -> dict[str, float]:
        q = self._weigh(Counter(tokens(query)))
        return {k: sum(w * d.get(t, 0.0) for t, w in q.items()) for k, d in self.vecs.items()}


class EmbeddingIndex(Index):
    """Cosine retrieval over sentence embeddings: a scenario's score is its best key's cosine.

    ``keys`` maps each scenario to its texts (AdaShield's: :func:`mmsafe.defenses.adashield.scenario_keys`); ``embedder`` is anything with
    ``encode(texts) -> (n, d)`` unit-norm rows (None: the shared
    :class:`~mmsafe.embeddings.MiniLMEmbedder`, taken on the first query). Keys are embedded
    on the first query. Scores are cosines clipped to [0, 1].
    """

    def __init__(self, keys: dict[str, list[str]], embedder: Any = None) -> None:
        self.keys = {k: list(v) for k, v in keys.items() if v}
        self.embedder = embedder
        self._key_emb: Any = None
        self._owner: list[str] = [k for k, v in self.keys.items() for _ in v]

    def scores(self, query: str) -> dict[str, float]:
        import numpy as np

        if not self.keys:
            return {}
        if self.embedder is None:
            self.embedder = shared_embedder("embedding retrieval")
        if self._key_emb is None:
            self._key_emb = np.asarray(self.embedder.encode([t for v in self.keys.values() for t in v]))
        q = np.asarray(self.embedder.encode([query]))[0]
        cos = self._key_emb @ q
        out: dict[str, float] = {}
        for k, c in zip(self._owner, cos.tolist(), strict=True):
            out[k] = max(out.get(k, 0.0), min(1.0, max(0.0, float(c))))
        return out
