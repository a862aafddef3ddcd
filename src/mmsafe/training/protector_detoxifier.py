"""MLLM-Protector's detoxifier, trained: a LoRA on a local LM (the harm detector is in :mod:`.protector_detector`).

Paper: R. Pi, T. Han, J. Zhang, Y. Xie, R. Pan, Q. Lian, H. Dong, J. Zhang, T. Zhang, "MLLM-Protector:
Ensuring MLLM's Safety without Hurting Performance", EMNLP 2024, arXiv:2401.02906. The defense
(:mod:`mmsafe.defenses.mllm_protector`, ``mllm-protector``) puts two small models behind an MLLM: a
*harm detector* (a pretrained LM fine-tuned as a binary classifier of responses) and, for the
answers it flags, a *detoxifier* (an LM fine-tuned to turn a harmful answer into a harmless one,
given the query and the answer). The paper trains both on its Safe-Harm-10K data (ChatGPT-written
queries with harmful and safe answers). This module trains both on mmsafe's data, so the defense can
run with trained parts instead of prompted ones:

- ``protector-detoxifier`` (:class:`ProtectorDetoxifier`) writes a LoRA adapter for a local text
  backend; use it as ``detoxifier: {name: hf-text, params: {path: …, adapter: OUT}}``;
- ``protector-detector`` (:class:`ProtectorDetector`) writes a harm classifier (the ``harm`` judge's
  LoRA MiniLM cross-encoder, :mod:`mmsafe.judges.harm_model`); use it as
  ``detector: {name: harm, params: {weights: OUT/detector.safetensors}}``.

Threat model: none at training time. At inference the judged answer and the query are
attacker-controlled: the detoxifier reads them neutralised inside ``<<<`` ``>>>`` blocks (the defense's
own prompt, :func:`~mmsafe.defenses.mllm_protector.detox_prompt`), the detector executes nothing.

Departures from the authors' code: LoRA on any local causal LM (hf-text / gemma-ocr) instead of their
fine-tuned LLMs; the detector is a MiniLM cross-encoder over (query, response) with LoRA, not a
fine-tuned LLM with a classification head; the detoxifier's input is the defense's rewrite prompt (our
wording), not theirs; the data is mmsafe's written set or your JSONL, not Safe-Harm-10K; text only
(the paper's detector, too, reads the response text; its detoxifier sees the query and the answer).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe.config import ComponentField
from mmsafe.errors import ConfigError
from mmsafe.lora import LoraSettings, inject
from mmsafe.plugin_meta import Paper
from mmsafe.training.base import Trainer
from mmsafe.training.sft import Example, load_examples
from mmsafe.training.text import answer_nll, encode, nll_loss, run_steps, step_logger

__all__ = ["ProtectorDetoxifier", "ProtectorDetoxifierParams", "detox_pairs"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# the detoxifier
# --------------------------------------------------------------------------------------------------


class ProtectorDetoxifierParams(BaseModel):
    """Parameters of :class:`ProtectorDetoxifier`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ComponentField = Field(description="the detoxifier's base model: {name, params} of hf-text or gemma-ocr")
    data: str = Field("builtin", description="builtin (mmsafe's written set) or a JSONL file with 'rejected'")
    rewrite_prompt: str | None = Field(
        None, description="the defense's rewrite_prompt, if you changed it there (None: its default)"
    )
    max_answer_chars: int = Field(4000, ge=100, le=200_000, description="as the defense's max_answer_chars")
    keep_benign: bool = Field(True, description="also train harmless answers to pass through unchanged")
    n_examples: int | None = Field(None, ge=2, description="training pairs to use (None: all)")
    epochs: int = Field(2, ge=1, le=100)
    lr: float = Field(2e-4, gt=0, le=1.0)
    batch_size: int = Field(8, ge=1, le=512)
    max_tokens: int = Field(512, ge=32, le=8192, description="prompt + answer tokens (the rewrite prompt is long)")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    held_out_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0

    @field_validator("rewrite_prompt")
    @classmethod
    def _has_fields(cls, v: str | None) -> str | None:
        if v is not None:
            missing = [f for f in ("{query}", "{answer}") if f not in v]
            if missing:
                raise ValueError(f"rewrite_prompt must contain {' and '.join(missing)}")
        return v


def detox_pairs(
    examples: Sequence[Example], *, template: str, max_answer_chars: int = 4000, keep_benign: bool = True
) -> list[tuple[str, Any, str]]:
    """(kind, detoxifier prompt, target) per example: a harmful request's compliant answer
    (``rejected``) → its safe answer (``answer``, the refusal); with ``keep_benign`` a benign request's
    answer → itself. The prompt is the defense's own (:func:`detox_prompt`), so training is inference."""
    from mmsafe.defenses.mllm_protector import detox_prompt

    out = []
    for e in examples:
        if e.kind == "harmful" and e.rejected.strip():
            out.append(("harmful", detox_prompt(template, e.request, e.rejected, max_answer_chars=max_answer_chars), e.answer))
        elif e.kind == "benign" and keep_benign:
            out.append(("benign", detox_prompt(template, e.request, e.answer, max_answer_chars=max_answer_chars), e.answer))
    return out


class ProtectorDetoxifier(Trainer):
    """MLLM-Protector's detoxifier (Pi et al., EMNLP 2024): LoRA that rewrites harmful answers into safe ones.

    Each training pair is the ``mllm-protector`` defense's rewrite prompt filled with (request,
    harmful answer) — for harmful rows the data's ``rejected`` (compliant) answer — and the target is
    the safe answer (the row's ``answer``, a refusal). With ``keep_benign`` benign rows teach the
    detoxifier to return a harmless answer as it is (a detector false positive then costs nothing).
    Loss: teacher-forced NLL on the target tokens (as ``sft``). Use the adapter as the defense's
    ``detoxifier`` model spec, with the same ``rewrite_prompt`` and ``max_answer_chars`` as here.

    Card metrics: the held-out target NLL per token (harmful, benign) before and after; rewrite rates
    need generation and are measured by running the defense (see docs/training.md).

    Params: ``model`` (required), ``data`` ("builtin"), ``rewrite_prompt`` (None: the defense's
    default), ``max_answer_chars`` (4000), ``keep_benign`` (true), ``n_examples`` (None), ``epochs`` (2),
    ``lr`` (2e-4), ``batch_size`` (8), ``max_tokens`` (512), ``lora``, ``held_out_fraction`` (0.2), ``seed`` (0).
    """

    name: ClassVar[str] = "protector-detoxifier"
    paper: ClassVar[Paper | None] = Paper(
        title="MLLM-Protector: Ensuring MLLM's Safety without Hurting Performance",
        authors="Pi et al.",
        year=2024,
        url="https://arxiv.org/abs/2401.02906",
        threat_model="none at training time; at inference the detoxifier reads attacker-controlled answers",
    )
    example_params: ClassVar[dict[str, Any]] = {"model": "scripted"}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = ProtectorDetoxifierParams
    params: ProtectorDetoxifierParams

    def template(self) -> str:
        from mmsafe.defenses.mllm_protector import DEFAULT_REWRITE_PROMPT

        return self.params.rewrite_prompt or DEFAULT_REWRITE_PROMPT

    def fit(self, backend: Any, *, log_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:

        p = self.params
        train, held, data_sha = load_examples(p.data, held_out_fraction=p.held_out_fraction, seed=p.seed)
        pairs_of = partial(
            detox_pairs,
            template=self.template(),
            max_answer_chars=p.max_answer_chars,
            keep_benign=p.keep_benign,
        )
        pairs = pairs_of(train)
        if p.n_examples is not None:
            if p.n_examples > len(pairs):
                raise ConfigError(f"protector-detoxifier: n_examples={p.n_examples} but the data gives {len(pairs)} pairs")
            pairs = random.Random(p.seed).sample(pairs, p.n_examples)
        if not any(kind == "harmful" for kind, _, _ in pairs):
            raise ConfigError("protector-detoxifier: no harmful row with a 'rejected' (harmful) answer to learn from")
        held_pairs = pairs_of(held)
        items = [encode(backend, prompt, target, max_tokens=p.max_tokens) for _, prompt, target in pairs]
        held_items = [(kind, encode(backend, prompt, target, max_tokens=p.max_tokens)) for kind, prompt, target in held_pairs]
        module = backend.module
        device = next(module.parameters()).device
        pad = backend.tokenizer.pad_token_id or 0

        def held_nll() -> dict[str, float]:
            groups = {k: [x for kind, x in held_items if kind == k] for k in ("harmful", "benign")}
            return answer_nll(module, groups, pad_id=pad, device=device)

        before = held_nll()
        params = inject(module, p.lora, seed=p.seed)
        module.train()

        loss_fn = nll_loss(module, pad_id=pad, device=device)
        progress = step_logger("protector-detoxifier", log_fn)

        n_harm = sum(kind == "harmful" for kind, _, _ in pairs)
        log_fn(f"protector-detoxifier: {len(items)} pairs ({n_harm} harmful → safe), {p.epochs} epochs; held out {len(held_items)}")
        stats = run_steps(params, items, loss_fn, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed, progress=progress)
        module.eval()
        after = held_nll()
        fields = {
            "data": {
                "source": p.data,
                "sha256": data_sha,
                "n_train": len(items),
                "n_harmful": n_harm,
                "n_held_out": len(held_items),
                "held_out_split": f"{p.held_out_fraction:g} of the requests (by request, seed {p.seed})",
            },
            "seed": p.seed,
            "rewrite_prompt_sha256": hashlib.sha256(self.template().encode()).hexdigest(),
            "usage": "mllm-protector detoxifier: {name: <base model>, params: {<base params>, adapter: OUT}}, "
            "with the same rewrite_prompt and max_answer_chars as in training",
            "training": stats.summary(),
            "metrics": {"held_out_target_nll_before": before, "held_out_target_nll_after": after},
        }
        return p.lora, fields
