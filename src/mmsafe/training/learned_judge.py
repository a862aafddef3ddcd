"""Training the ``learned`` judge (``mmsafe judge-train``): a seeded train / held-out split, MiniLM
features of (request, response) and an L2-regularised logistic regression, written as the JSON
classifier file :class:`~mmsafe.judges.learned.LearnedJudge` reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmsafe.embeddings import MiniLMEmbedder, sha256_file
from mmsafe.errors import ConfigError
from mmsafe.judge_eval import LabelledRow, agreement
from mmsafe.judges.learned import LearnedClassifier, features

__all__ = ["fit_logistic", "train_learned_judge"]

log = logging.getLogger(__name__)


def fit_logistic(
    X: Any, y: Any, *, l2: float = 1.0, max_iter: int = 100, tol: float = 1e-10
) -> tuple[Any, float, int]:
    """L2-regularised logistic regression by Newton's method; returns ``(coef, intercept, iterations)``.

    Minimises Σᵢ log(1 + exp(−sᵢ·(w·xᵢ + b))) + (l2/2)·‖w‖² (sᵢ = ±1; the intercept is not
    penalised) — scikit-learn's ``LogisticRegression(C=1/l2)`` objective. Each step solves the
    regularised Hessian system exactly, halving the step until the objective falls, so the result
    is deterministic and converges in a few dozen steps for a few thousand rows of 768 features.
    """
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    Xb = np.hstack([X, np.ones((n, 1))])
    reg = np.full(d + 1, float(l2))
    reg[-1] = 1e-10  # keeps the Hessian positive definite without penalising the intercept

    def objective(theta: Any) -> float:
        z = Xb @ theta
        return float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * float(l2) * float(theta[:-1] @ theta[:-1]))

    theta = np.zeros(d + 1)
    f = objective(theta)
    it = 0
    while it < max_iter:
        it += 1
        z = Xb @ theta
        p = 0.5 * (1.0 + np.tanh(0.5 * z))  # a numerically safe sigmoid
        grad = Xb.T @ (p - t) + reg * theta
        hess = (Xb * (p * (1.0 - p))[:, None]).T @ Xb + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)
        if decrement / 2 <= tol * max(1.0, abs(f)):
            break
        a = 1.0
        while True:
            cand = theta - a * step
            fc = objective(cand)
            if fc <= f - 1e-4 * a * decrement or a < 1e-8:
                break
            a *= 0.5
        theta, f = cand, fc
    return theta[:-1].copy(), float(theta[-1]), it


def _split(
    rows: Sequence[LabelledRow], *, seed: int, val_fraction: float
) -> tuple[list[int], list[int], str]:
    """Train / validation indices; rows sharing a ``group`` fall on one side (``"group"`` split)."""
    import numpy as np

    keys = [r.group if r.group is not None else f"row:{i}" for i, r in enumerate(rows)]
    by_group = all(r.group is not None for r in rows)
    uniq = sorted(set(keys))
    if val_fraction <= 0:
        return list(range(len(rows))), [], "none"
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_val = max(1, round(val_fraction * len(uniq)))
    val_keys = {uniq[i] for i in order[:n_val]}
    val = [i for i, k in enumerate(keys) if k in val_keys]
    train = [i for i, k in enumerate(keys) if k not in val_keys]
    return train, val, "group" if by_group else "row"


def train_learned_judge(
    rows: Iterable[LabelledRow],
    out_path: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    l2: float = 1.0,
    threshold: float = 0.5,
    embedder: MiniLMEmbedder | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a :class:`LearnedJudge` classifier on labelled rows, write it to ``out_path``, return held-out metrics.

    A ``val_fraction`` share of the rows is held out (by ``group`` when every row has one — e.g.
    the JailbreakBench behaviour — so no behaviour is on both sides; else by row), chosen by
    ``seed``: the same rows, seed and embeddings give the same file. The classifier is fitted on
    the rest (:func:`fit_logistic`, L2 strength ``l2``) and the file records the held-out
    :func:`~mmsafe.judge_eval.agreement` (accuracy with its Wilson interval, κ, F1…) of exactly the
    classifier it stores. ``data`` (e.g. :meth:`LabelledData.describe`) is recorded as the training
    source. Returns the held-out metrics plus ``path``, ``sha256``, ``n_train`` and ``n_val``.
    """
    rows = list(rows)
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    if not 0 < threshold < 1:
        raise ValueError("threshold must be in (0, 1)")
    train, val, split = _split(rows, seed=seed, val_fraction=val_fraction)
    y_train = [rows[i].label for i in train]
    if len(set(y_train)) < 2:
        raise ConfigError("the training rows need both labels (harmful and safe); found only one")
    embedder = embedder or MiniLMEmbedder()
    t0 = time.perf_counter()
    X = features(embedder.encode([r.prompt for r in rows]), embedder.encode([r.response for r in rows]))
    t_embed = time.perf_counter() - t0
    coef, intercept, iterations = fit_logistic(X[train], y_train, l2=l2)
    clf = LearnedClassifier(coef=tuple(float(c) for c in coef), intercept=intercept, threshold=threshold)
    heldout = None
    if val:
        p_val = clf.predict_proba(X[val])
        heldout = agreement([rows[i].label for i in val], [bool(p >= threshold) for p in p_val])
        heldout["split"] = split
    from mmsafe import __version__

    training = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mmsafe_version": __version__,
        "embedding_package_version": MiniLMEmbedder.package_version(),
        "data": dict(data or {}),
        "n_rows": len(rows),
        "n_train": len(train),
        "n_val": len(val),
        "n_positive_train": int(sum(y_train)),
        "split": split,
        # which behaviours were held out, so the held-out metrics can be reproduced
        "heldout_groups": sorted({g for i in val if (g := rows[i].group) is not None})
        if split == "group"
        else None,
        "seed": seed,
        "val_fraction": val_fraction,
        "classifier": "logistic regression (Newton), L2 on weights",
        "l2": l2,
        "iterations": iterations,
        "embed_seconds": round(t_embed, 2),
    }
    clf = replace(
        clf,
        embedding_weights_sha256=embedder.weights_sha256,
        max_tokens=embedder.max_tokens,
        training=training,
        heldout=heldout,
    )
    path = clf.save(out_path)
    out = dict(heldout or {})
    out.update(path=str(path), sha256=sha256_file(path), n_train=len(train), n_val=len(val))
    log.info("trained on %d rows (%d held out) in %.1fs embedding", len(train), len(val), t_embed)
    return out
