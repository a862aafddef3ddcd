"""Direct Preference Optimisation on safety preference pairs (refusal ≻ compliance, answer ≻ refusal).

Paper: Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model", NeurIPS 2023, arXiv:2305.18290. The survey (Liu et al. 2024, §6.3) names RLHF/DPO-style
preference optimisation as the direction for safety alignment of MLLMs.

Objective (the paper's eq. 7): for a prompt x with a preferred answer y_w and a dispreferred y_l,
``loss = −log σ(β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])``, with
``label_smoothing`` ε giving the conservative variant ``(1−ε)·loss(+) + ε·loss(−)`` (as in TRL's
``sigmoid`` loss). π is the base model plus a LoRA adapter (PEFT, injected in place); π_ref is the same
model with the adapter switched off, so no second copy of the weights is held.

Pairs: harmful requests — the refusal preferred over a compliant-sounding answer (mmsafe's written
``compliance`` texts have no operational detail: they teach the model to prefer refusing, not what to
say when complying); benign requests — the helpful answer preferred over an unnecessary refusal (this
half guards against over-refusal). Data as for :mod:`mmsafe.training.sft` (``builtin`` or JSONL rows
with ``rejected``), same held-out split by request.

Threat model: none (a training-time defence).

Card metrics: training loss and reward accuracy (share of pairs whose implicit reward margin is
positive) on held-out pairs before and after, and the held-out margin.

Departures: LoRA instead of full fine-tuning; no SFT stage first (the paper fine-tunes on preferred
answers before DPO when the data was not sampled from the model; use ``sft_weight`` > 0 to add the
preferred answer's NLL to the loss, the "RPO"-style regulariser, instead); TRL is not used (it needs
``datasets``/``pyarrow``; the loss above is the whole of what it would do here).

Params: ``model`` (required), ``data`` ("builtin"), ``n_pairs`` (None: all), ``beta`` (0.1),
``label_smoothing`` (0.0), ``sft_weight`` (0.0), ``epochs`` (2), ``lr`` (2e-4), ``batch_size`` (4),
``max_tokens`` (256), ``answer_tokens`` (None), ``lora``, ``held_out_fraction`` (0.2), ``seed`` (0).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.config import ComponentField
from mmsafe.errors import ConfigError
from mmsafe.lora import LoraSettings, adapters_enabled, inject
from mmsafe.plugin_meta import Paper
from mmsafe.training.base import Trainer
from mmsafe.training.sft import Example, load_examples
from mmsafe.training.text import Encoded, answer_logprobs, encode, run_steps, step_logger, text_prompt

__all__ = ["DPO", "DPOParams", "dpo_loss"]


class DPOParams(BaseModel):
    """Parameters of :class:`DPO`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ComponentField = Field(description="the base model: {name, params} of hf-text or gemma-ocr")
    data: str = Field("builtin", description="builtin (mmsafe's written set) or a JSONL file with 'rejected'")
    n_pairs: int | None = Field(None, ge=2, description="preference pairs to use (None: all)")
    beta: float = Field(0.1, gt=0, le=10.0, description="strength of the KL constraint to the reference")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="conservative DPO ε (noisy preferences)")
    sft_weight: float = Field(0.0, ge=0.0, description="weight of the preferred answer's NLL added to the loss")
    epochs: int = Field(2, ge=1, le=100)
    lr: float = Field(2e-4, gt=0, le=1.0)
    batch_size: int = Field(4, ge=1, le=512)
    max_tokens: int = Field(256, ge=16, le=8192, description="tokens per answer, prompt + answer")
    answer_tokens: int | None = Field(
        None, ge=1, description="answer tokens compared (the opening, where refusing or answering shows); "
        "None: up to half of max_tokens",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    held_out_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0


def dpo_loss(
    policy_w: Any, policy_l: Any, ref_w: Any, ref_l: Any, *, beta: float, label_smoothing: float = 0.0
) -> tuple[Any, Any]:
    """(per-pair DPO loss, implicit reward margin) from summed log-probabilities ``[B]`` each."""
    import torch.nn.functional as F

    margin = beta * ((policy_w - ref_w) - (policy_l - ref_l))
    loss = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return loss, margin


class DPO(Trainer):
    """DPO (Rafailov et al., NeurIPS 2023) on safety preference pairs, LoRA policy, adapter-off reference."""

    name: ClassVar[str] = "dpo"
    paper: ClassVar[Paper | None] = Paper(
        title="Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
        authors="Rafailov et al.",
        year=2023,
        url="https://arxiv.org/abs/2305.18290",
        threat_model="none: training-time preference optimisation",
    )
    example_params: ClassVar[dict[str, Any]] = {"model": "scripted"}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = DPOParams
    params: DPOParams

    def pairs(self, backend: Any, examples: Sequence[Example]) -> list[tuple[Encoded, Encoded]]:
        p = self.params
        out = []
        for e in examples:
            if not e.rejected.strip():
                continue
            prompt = text_prompt(e.request)
            out.append(
                (
                    encode(backend, prompt, e.answer, max_tokens=p.max_tokens, answer_tokens=p.answer_tokens),
                    encode(backend, prompt, e.rejected, max_tokens=p.max_tokens, answer_tokens=p.answer_tokens),
                )
            )
        return out

    def fit(self, backend: Any, *, log_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
        import torch

        p = self.params
        train, held, data_sha = load_examples(p.data, held_out_fraction=p.held_out_fraction, seed=p.seed)
        rng = random.Random(p.seed)
        rng.shuffle(train)
        if p.n_pairs is not None:
            train = train[: p.n_pairs]
        pairs = self.pairs(backend, train)
        held_pairs = self.pairs(backend, held)
        if len(pairs) < 2:
            raise ConfigError("dpo: fewer than 2 preference pairs (rows need a non-empty 'rejected')")
        module = backend.module
        device = next(module.parameters()).device
        pad = backend.tokenizer.pad_token_id or 0
        params = inject(module, p.lora, seed=p.seed)

        def scores(batch: Sequence[tuple[Encoded, Encoded]], *, grad: bool) -> tuple[Any, ...]:
            flat = [w for w, _ in batch] + [lo for _, lo in batch]
            with torch.no_grad(), adapters_enabled(module, False):
                ref, _ = answer_logprobs(module, flat, pad_id=pad, device=device)
            with torch.set_grad_enabled(grad):
                pol, n = answer_logprobs(module, flat, pad_id=pad, device=device)
            k = len(batch)
            return pol[:k], pol[k:], ref[:k], ref[k:], n[:k]

        def held_metrics() -> dict[str, float]:
            if not held_pairs:
                return {}
            wins = 0
            margins: list[float] = []
            for i in range(0, len(held_pairs), 8):
                pw, pl, rw, rl, _ = scores(held_pairs[i : i + 8], grad=False)
                _, m = dpo_loss(pw, pl, rw, rl, beta=p.beta)
                wins += int((m > 0).sum())
                margins.extend(float(x) for x in m)
            # the reference's own preference: how often the base model already prefers y_w
            return {"reward_accuracy": round(wins / len(held_pairs), 4), "mean_margin": round(sum(margins) / len(margins), 4)}

        def base_preference() -> float:
            agree = 0
            with torch.no_grad(), adapters_enabled(module, False):
                for i in range(0, len(held_pairs), 8):
                    chunk = held_pairs[i : i + 8]
                    lw, nw = answer_logprobs(module, [w for w, _ in chunk], pad_id=pad, device=device)
                    ll, nl = answer_logprobs(module, [lo for _, lo in chunk], pad_id=pad, device=device)
                    agree += int(((lw / nw) > (ll / nl)).sum())
            return round(agree / max(1, len(held_pairs)), 4)

        before = held_metrics()
        base_pref = base_preference() if held_pairs else None
        module.train()

        def loss_fn(batch: Sequence[tuple[Encoded, Encoded]]) -> Any:
            pw, pl, rw, rl, nw = scores(batch, grad=True)
            loss, _ = dpo_loss(pw, pl, rw, rl, beta=p.beta, label_smoothing=p.label_smoothing)
            total = loss.mean()
            if p.sft_weight > 0:
                total = total + p.sft_weight * (-(pw / nw).mean())
            return total

        progress = step_logger("dpo", log_fn)

        log_fn(f"dpo: {len(pairs)} pairs, β={p.beta}, {p.epochs} epochs; held out {len(held_pairs)}")
        stats = run_steps(
            params, pairs, loss_fn, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed, progress=progress,
            length=lambda pair: max(len(pair[0].ids), len(pair[1].ids)),
        )
        module.eval()
        after = held_metrics()
        fields = {
            "data": {
                "source": p.data,
                "sha256": data_sha,
                "n_pairs": len(pairs),
                "n_held_out_pairs": len(held_pairs),
                "held_out_split": f"{p.held_out_fraction:g} of the requests (by request, seed {p.seed})",
            },
            "seed": p.seed,
            "training": stats.summary(),
            "metrics": {
                "held_out_before": before,
                "held_out_after": after,
                "base_model_prefers_chosen_per_token": base_pref,
            },
        }
        return p.lora, fields
