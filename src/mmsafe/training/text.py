"""Shared pieces of training on a local text backend (``hf-text``, ``gemma-ocr``): encode, score, step.

Every example is (prompt, answer). :func:`encode` renders the prompt exactly as the backend renders it at
inference (system prompt, chat template, OCR text of images) and appends the answer as the template
writes an assistant turn (:meth:`~mmsafe.models.hf_text.HFTextModel.render_answer`), so a model is
trained on the very token sequence it later continues. :func:`answer_logprobs` gives each example's
summed log-probability of its answer tokens (SFT minimises its negative mean; DPO compares it between
the policy and the reference). :func:`run_steps` is the one optimiser loop (AdamW, linear warm-up,
gradient clipping, seeded shuffling) with time and peak-memory accounting.
"""

from __future__ import annotations

import logging
import random
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmsafe.types import Message, Prompt

__all__ = [
    "Encoded",
    "StepStats",
    "answer_logprobs",
    "answer_nll",
    "answer_token_logprobs",
    "encode",
    "nll_loss",
    "peak_rss_mb",
    "run_steps",
    "step_logger",
    "text_prompt",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + answer; the first ``n_prompt`` are the prompt's (no loss on them)."""

    ids: tuple[int, ...]
    n_prompt: int

    @property
    def n_answer(self) -> int:
        return len(self.ids) - self.n_prompt


def text_prompt(request: str, images: Sequence[Any] = ()) -> Prompt:
    """A one-turn user prompt (images first, as :meth:`Message.user` orders them)."""
    return Prompt(messages=(Message.user(request, tuple(images)),))


def encode(
    backend: Any, prompt: Prompt, answer: str, *, max_tokens: int = 384, answer_tokens: int | None = None
) -> Encoded:
    """``prompt`` rendered by ``backend`` followed by ``answer`` as its reply, cut to ``max_tokens``
    in all: the answer to its first ``answer_tokens`` (None: at most half of ``max_tokens``), then the
    prompt from the left (its BOS and its end are kept)."""
    text, tail = backend.render_answer(prompt, answer)
    tok = backend.tokenizer
    prompt_ids = backend._token_ids(text)
    answer_ids = list(tok(tail, add_special_tokens=False)["input_ids"])
    if not answer_ids:
        raise ValueError("the answer has no tokens")
    answer_ids = answer_ids[: max(1, min(answer_tokens or max_tokens // 2, max_tokens // 2))]
    keep = max_tokens - len(answer_ids)
    if len(prompt_ids) > keep:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - keep + 1 :]  # keep BOS and the prompt's end
    return Encoded(tuple(prompt_ids) + tuple(answer_ids), len(prompt_ids))


def _answer_ce(module: Any, batch: Sequence[Encoded], *, pad_id: int, device: Any) -> tuple[Any, Any, int]:
    """(cross-entropy of each scored position ``[B, K]``, which positions are answer tokens ``[B, K]``,
    the sequence position of column 0) for a right-padded batch."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.n_prompt : n] = torch.tensor(e.ids[e.n_prompt :])
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    # logits only where an answer token is predicted: with a 262k-token vocabulary (Gemma 3) the output
    # layer over every prompt position costs as much as the rest of the model
    keep = width - min(e.n_prompt for e in batch) + 1
    try:
        logits = module(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep: all positions
        logits = module(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logits = logits[:, :-1]  # position t predicts token t + 1; the last position predicts nothing here
    target = labels[:, width - logits.shape[1] :]
    ce = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view(target.shape)
    return ce, target != -100, width - logits.shape[1]


def answer_logprobs(module: Any, batch: Sequence[Encoded], *, pad_id: int, device: Any) -> tuple[Any, Any]:
    """(summed log-probability of each example's answer tokens ``[B]``, answer token counts ``[B]``)."""
    ce, valid, _ = _answer_ce(module, batch, pad_id=pad_id, device=device)
    return -(ce * valid).sum(-1), valid.sum(-1)


def answer_token_logprobs(module: Any, batch: Sequence[Encoded], *, pad_id: int, device: Any) -> tuple[Any, Any]:
    """(log-probability of each answer token ``[B, A]``, A the longest answer, left-aligned at the
    answer's first token and padded with 0; the mask of real answer tokens ``[B, A]``): the per-token
    terms a policy-gradient loss weighs (:mod:`mmsafe.training.bluesuffix`)."""
    import torch

    ce, valid, first = _answer_ce(module, batch, pad_id=pad_id, device=device)
    width = max(e.n_answer for e in batch)
    lp = torch.zeros((len(batch), width), dtype=ce.dtype, device=ce.device)
    mask = torch.zeros((len(batch), width), dtype=torch.bool, device=ce.device)
    for i, e in enumerate(batch):
        start = e.n_prompt - first
        lp[i, : e.n_answer] = -ce[i, start : start + e.n_answer]
        mask[i, : e.n_answer] = valid[i, start : start + e.n_answer]
    return lp, mask


def answer_nll(
    module: Any, groups: Mapping[str, Sequence[Encoded]], *, pad_id: int, device: Any, batch_size: int = 16
) -> dict[str, float]:
    """Mean negative log-likelihood per answer token of each named group of examples, without gradients
    (the held-out losses a card records before and after training); an empty group is left out."""
    import torch

    out: dict[str, float] = {}
    with torch.no_grad():
        for name, rows in groups.items():
            if not rows:
                continue
            tot, cnt = 0.0, 0
            for i in range(0, len(rows), batch_size):
                lp, n = answer_logprobs(module, rows[i : i + batch_size], pad_id=pad_id, device=device)
                tot += float(-lp.sum())
                cnt += int(n.sum())
            out[name] = round(tot / max(1, cnt), 4)
    return out


def nll_loss(module: Any, *, pad_id: int, device: Any) -> Callable[[Sequence[Encoded]], Any]:
    """The supervised loss of a batch: mean negative log-likelihood per answer token (prompt tokens unscored)."""

    def loss_fn(batch: Sequence[Encoded]) -> Any:
        lp, n = answer_logprobs(module, batch, pad_id=pad_id, device=device)
        return -(lp.sum() / n.sum())

    return loss_fn


def step_logger(name: str, log_fn: Callable[[str], None], *, every: int = 10) -> Callable[[int, int, float], None]:
    """A ``progress`` callback for :func:`run_steps` that logs the first step, every ``1/every`` of the
    run, and the last: ``"<name> step k/total loss x"``."""

    def progress(step: int, total: int, loss: float) -> None:
        if step == 1 or step % max(1, total // every) == 0 or step == total:
            log_fn(f"{name} step {step}/{total} loss {loss:.3f}")

    return progress


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux/macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@dataclass
class StepStats:
    """What a training run did: steps, loss curve, seconds, peak memory."""

    steps: int = 0
    examples: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def summary(self) -> dict[str, Any]:
        k = max(1, len(self.losses) // 10)
        return {
            "steps": self.steps,
            "examples_seen": self.examples,
            "loss_first": round(sum(self.losses[:k]) / k, 4) if self.losses else None,
            "loss_last": round(sum(self.losses[-k:]) / k, 4) if self.losses else None,
            "seconds": round(self.seconds, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def run_steps(
    params: Sequence[Any],
    items: Sequence[Any],
    loss_fn: Callable[[Sequence[Any]], Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    shuffle: bool = True,
    warmup: float = 0.1,
    max_grad_norm: float = 1.0,
    progress: Callable[[int, int, float], None] | None = None,
    length: Callable[[Any], int] | None = None,
    lr_groups: Sequence[tuple[Sequence[Any], float]] | None = None,
) -> StepStats:
    """AdamW over ``params``: ``epochs`` passes over ``items`` in batches (shuffled per epoch with
    ``seed`` unless ``shuffle`` is False, which keeps the given order — sequential curricula),
    learning rate warmed up linearly over the first ``warmup`` fraction of steps, then constant.

    ``loss_fn(batch)`` returns the batch's loss, or ``(loss, examples)`` when a batch item stands for
    several examples. ``lr_groups`` (``(tensors, lr)`` pairs) replaces ``params`` and ``lr`` when
    parameter groups learn at different rates (a projector trained in full beside LoRA tensors).

    With ``length`` (an item's token count) and ``shuffle``, batches are bucketed: each shuffled
    window of ``16 × batch_size`` items is sorted by length and cut into batches, and the batches are
    shuffled, so short examples are not padded to a long one's width (FigStep renders read by OCR
    are several times as long as a plain request)."""
    import torch

    stats = StepStats()
    groups = [(list(ts), rate) for ts, rate in lr_groups if ts] if lr_groups is not None else [(list(params), lr)]
    tensors = [t for ts, _ in groups for t in ts]
    opt = torch.optim.AdamW([{"params": ts, "lr": rate} for ts, rate in groups], weight_decay=0.0)
    rng = random.Random(seed)
    order = list(range(len(items)))
    total = epochs * ((len(items) + batch_size - 1) // batch_size)
    warm = max(1, int(warmup * total))
    t0 = time.perf_counter()
    step = 0
    for _ in range(epochs):
        if shuffle:
            rng.shuffle(order)
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if shuffle and length is not None:
            window = 16 * batch_size
            batches = []
            for w in range(0, len(order), window):
                chunk = sorted(order[w : w + window], key=lambda i: length(items[i]))
                batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
            rng.shuffle(batches)
        for idx in batches:
            batch = [items[i] for i in idx]
            for g, (_, rate) in zip(opt.param_groups, groups, strict=True):
                g["lr"] = rate * min(1.0, (step + 1) / warm)
            out = loss_fn(batch)
            loss, n = out if isinstance(out, tuple) else (out, len(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tensors, max_grad_norm)
            opt.step()
            step += 1
            stats.losses.append(float(loss.detach()))
            stats.examples += n
            if progress is not None:
                progress(step, total, stats.losses[-1])
    stats.steps = step
    stats.seconds = time.perf_counter() - t0
    stats.peak_rss_mb = peak_rss_mb()
    return stats
