"""Greedy Coordinate Gradient (GCG) over a text suffix: the token-swap search shared by text+image attacks.

Zou, Wang, Carlini, Nasr, Kolter, Fredrikson, "Universal and Transferable Adversarial Attacks on
Aligned Language Models" (arXiv:2307.15043, 2023). One GCG round, for a suffix of ``L`` tokens:

1. **Token gradient.** The gradient of the loss with respect to the one-hot encoding of each
   suffix token, ``∂loss/∂onehot = (∂loss/∂e) · Eᵀ`` (``e`` the token's input embedding, ``E``
   the embedding matrix) — :func:`token_gradients`. We obtain ``∂loss/∂e`` from
   :class:`~mmsafe.models._whitebox.TeacherForced`'s ``embed_delta`` (a zero perturbation added to
   the input embeddings has exactly that gradient), so no backend change is needed.
2. **Candidates.** For each of ``num`` candidates, one position (spread evenly over the suffix)
   takes a token drawn uniformly from that position's ``topk`` most negative gradient entries —
   :func:`sample_candidates`; disallowed ids (special tokens) are never drawn.
3. **Filter.** Candidates whose text does not re-tokenise to the same ids are dropped —
   :func:`retokenizes` (a caller-supplied check, since only the caller knows the context).
4. **Select.** Every remaining candidate is evaluated exactly (no gradient) and the lowest loss
   wins — :func:`select_best`; the caller keeps it only if it beats the current suffix.

Swapping a token at a known position is done in embedding space: ``embed_delta = E[new] −
E[old]`` at that position gives the model exactly the embeddings of the swapped sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Selection", "sample_candidates", "select_best", "swap_delta", "token_gradients"]


def token_gradients(embed_grad: Any, embeddings: Any) -> Any:
    """``[L, V]`` one-hot gradients of ``L`` suffix tokens from their input-embedding gradients
    ``embed_grad`` ``[L, D]`` and the embedding matrix ``[V, D]``, each row scaled to unit L2 norm
    (as in the GCG reference code)."""
    grad = embed_grad.float() @ embeddings.float().T
    return grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def sample_candidates(
    ids: Any, grad: Any, *, num: int, topk: int, generator: Any, not_allowed: Sequence[int] = ()
) -> Any:
    """``[num, L]`` candidate suffixes, each ``ids`` with one token replaced.

    Candidate ``i`` edits position ``⌊i·L/num⌋`` (every position gets its share) with a token drawn
    uniformly (``generator``) from that position's ``topk`` ids of most negative ``grad``."""
    import torch

    length = int(ids.shape[0])
    grad = grad.clone().float()
    if not_allowed:
        grad[:, list(not_allowed)] = float("inf")
    k = min(topk, grad.shape[1] - len(set(not_allowed)))
    top = (-grad).topk(k, dim=1).indices  # [L, k]
    positions = (torch.arange(num) * length // num).clamp(max=length - 1)
    picks = torch.randint(0, k, (num,), generator=generator)
    values = top[positions, picks.to(top.device)]
    out = ids.unsqueeze(0).repeat(num, 1).clone()
    out[torch.arange(num), positions.to(out.device)] = values.to(out.dtype)
    return out


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select_best`: index of the winner among the evaluated, and all their losses."""

    index: int
    loss: float
    losses: list[float]


def select_best(
    candidates: Sequence[Any], evaluate: Callable[[Sequence[Any]], Sequence[float]], *, chunk: int
) -> Selection:
    """Evaluate ``candidates`` ``chunk`` at a time with ``evaluate`` (→ one loss each) and return
    the lowest (the first one on ties)."""
    if not candidates:
        raise ValueError("no candidates to evaluate")
    losses: list[float] = []
    for k in range(0, len(candidates), chunk):
        part = list(candidates[k : k + chunk])
        got = [float(v) for v in evaluate(part)]
        if len(got) != len(part):
            raise ValueError(f"evaluate returned {len(got)} losses for {len(part)} candidates")
        losses.extend(got)
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    return Selection(best, losses[best], losses)


def swap_delta(embeddings: Any, current: Any, candidate: Any) -> Any:
    """``[L, D]``: what to add to the embeddings of ``current`` suffix ids to get ``candidate``'s."""
    return embeddings[candidate] - embeddings[current]
