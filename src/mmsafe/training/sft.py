"""Safety supervised fine-tuning (VLGuard-style): harmful requests → refusals, benign requests → answers.

Paper: Zong et al., "Safety Fine-Tuning at (Almost) No Cost: A Baseline for Vision Large Language
Models" (VLGuard), ICML 2024, arXiv:2402.02207 — fine-tune on safety examples (harmful instruction →
refusal) mixed with ordinary helpful examples, either *mixed* into one training set or *sequential*
(post-hoc: safety data after the helpful data). The survey (Liu et al. 2024, §5.2, §6.3) lists the open
questions this trainer exposes as options: the share of safety examples (``safety_ratio``), mixed vs
sequential order (``order``), and how many examples (``n_examples``).

Threat model: none (a defence made at training time); the trained model is then measured like any other.

What it does: LoRA (``lora``; PEFT, injected in place) on a local text backend (``hf-text``, or
``gemma-ocr``, whose images reach the model as OCR text), teacher-forced cross-entropy on the answer
tokens only, each example rendered exactly as the backend renders it at inference. Data: ``builtin``,
mmsafe's own written set (``mmsafe/data/safety_train.yaml``: harmful requests with refusals, benign
requests — including look-alikes with trigger words — with answers; disjoint from every evaluation set,
``scripts/check_training_overlap.py``), split by request into training and held-out parts
(``held_out_fraction``); or a JSONL file of ``{"request", "answer", "kind": "harmful"|"benign"}`` rows.
``typographic`` > 0 also shows that share of the training requests, harmful and benign alike, as an
image of their FigStep-style title with FigStep's instruction — the multimodal safety examples of
VLGuard, for an OCR pipeline (gemma-ocr reads them through Tesseract, as at inference). Rendering both
kinds keeps "the request came as an image" from becoming a cue to refuse.

Card metrics: training loss, and the held-out answer loss (mean NLL per token of the held-out refusals
and answers) before and after; refusal rates need generation and live in ``benchmarks/training.py``.

Departures from VLGuard: LoRA instead of full fine-tuning (VLGuard trains LLaVA's LLM fully or with
LoRA); our own written data, not VLGuard's GPT-4V-written set (not shipped here); no image content
other than typographic renders.

Params: ``model`` (required; hf-text or gemma-ocr), ``data`` ("builtin"), ``n_examples`` (None: all
training items), ``safety_ratio`` (None: the data's own share), ``order`` (mixed | sequential),
``typographic`` (0.0), ``epochs`` (2), ``lr`` (2e-4), ``batch_size`` (8), ``max_tokens`` (256), ``answer_tokens`` (None),
``lora`` (r 8, α 16, all attention and MLP projections), ``held_out_fraction`` (0.2), ``seed`` (0).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.config import ComponentField
from mmsafe.errors import ConfigError
from mmsafe.lora import LoraSettings, inject
from mmsafe.training.base import Trainer
from mmsafe.training.text import Encoded, answer_nll, encode, nll_loss, run_steps, step_logger, text_prompt

__all__ = ["Example", "SafetySFT", "SafetySFTParams", "load_examples"]


@dataclass(frozen=True)
class Example:
    """One training pair; ``rejected`` is what a preference method should prefer less (may be empty)."""

    request: str
    answer: str
    kind: Literal["harmful", "benign"]
    rejected: str = ""
    title: str | None = None
    id: str = ""
    #: the harm (or benign topic) category, when the data names one (held-out splits by category)
    category: str = ""


def load_examples(data: str, *, held_out_fraction: float, seed: int) -> tuple[list[Example], list[Example], str]:
    """(training examples, held-out examples, sha256 of the data) from ``builtin`` or a JSONL file."""
    if data == "builtin":
        from mmsafe.labelled.safety_examples import load_safety_items, safety_items_sha256, split_items

        items = load_safety_items()
        train, held = split_items(items, held_out_fraction=held_out_fraction, seed=seed)

        def conv(rows: Sequence[Any]) -> list[Example]:
            return [Example(r.request, r.target, r.kind, r.rejected, r.title, r.id, r.category) for r in rows]

        return conv(train), conv(held), safety_items_sha256()
    path = Path(data).expanduser()
    if not path.is_file():
        raise ConfigError(f"data: {data} is neither 'builtin' nor a JSONL file")
    raw = path.read_bytes()
    rows: list[Example] = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind = obj["kind"]
            if kind not in ("harmful", "benign"):
                raise ValueError(f"kind must be harmful or benign, not {kind!r}")
            rows.append(
                Example(
                    str(obj["request"]), str(obj["answer"]), kind, str(obj.get("rejected", "")),
                    obj.get("title"), str(obj.get("id", n)), str(obj.get("category", "")),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: not a training row ({exc}); need request, answer, kind") from None
    rng = random.Random(seed)
    requests = sorted({r.request for r in rows})
    rng.shuffle(requests)
    held_req = set(requests[: round(held_out_fraction * len(requests))])
    return (
        [r for r in rows if r.request not in held_req],
        [r for r in rows if r.request in held_req],
        hashlib.sha256(raw).hexdigest(),
    )


class SafetySFTParams(BaseModel):
    """Parameters of :class:`SafetySFT`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ComponentField = Field(description="the base model: {name, params} of hf-text or gemma-ocr")
    data: str = Field("builtin", description="builtin (mmsafe's written set) or a JSONL file")
    n_examples: int | None = Field(None, ge=2, description="training examples to use (None: all)")
    safety_ratio: float | None = Field(
        None, ge=0.0, le=1.0, description="share of harmful→refusal examples (None: the data's own share)"
    )
    order: Literal["mixed", "sequential"] = Field(
        "mixed", description="mixed: shuffled together; sequential: benign examples first, then the safety ones"
    )
    typographic: float = Field(
        0.0, ge=0.0, le=1.0,
        description="share of the training requests (harmful and benign alike) shown as a typographic image",
    )
    epochs: int = Field(2, ge=1, le=100)
    lr: float = Field(2e-4, gt=0, le=1.0)
    batch_size: int = Field(8, ge=1, le=512)
    max_tokens: int = Field(256, ge=16, le=8192, description="tokens per example, prompt + answer")
    answer_tokens: int | None = Field(
        None, ge=1, description="answer tokens trained on (its opening: whether and how to refuse); None: up to "
        "half of max_tokens",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    held_out_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0


def choose(train: list[Example], *, n: int | None, ratio: float | None, seed: int) -> list[Example]:
    """``n`` examples with a ``ratio`` share of harmful ones (sampled without replacement, seeded)."""
    rng = random.Random(seed)
    harmful = [e for e in train if e.kind == "harmful"]
    benign = [e for e in train if e.kind == "benign"]
    rng.shuffle(harmful)
    rng.shuffle(benign)
    total = n if n is not None else len(train)
    if ratio is None:
        ratio = len(harmful) / max(1, len(train))
    want_h = round(ratio * total)
    want_b = total - want_h
    if want_h > len(harmful) or want_b > len(benign):
        raise ConfigError(
            f"n_examples={total} with safety_ratio={ratio:g} needs {want_h} harmful and {want_b} benign "
            f"training examples; the data has {len(harmful)} and {len(benign)}"
        )
    return harmful[:want_h] + benign[:want_b]


def typographic_prompt(example: Example) -> Any:
    """The example as FigStep shows it: its title typeset in an image, FigStep's instruction as text."""
    from mmsafe.attacks.typographic.figstep import FIGSTEP_PROMPT, render_figstep
    from mmsafe.render.fonts import find_font
    from mmsafe.types import Image

    title = example.title or example.request
    image = Image.from_pil(render_figstep(title, font_path=find_font()[0], mode="L"), source="sft:typographic")
    return text_prompt(FIGSTEP_PROMPT, [image])


class SafetySFT(Trainer):
    """Safety SFT (VLGuard, Zong et al. ICML 2024): LoRA on harmful→refusal + benign→answer examples."""

    name: ClassVar[str] = "sft"
    example_params: ClassVar[dict[str, Any]] = {"model": "scripted"}
    version: ClassVar[str] = "2"  # 2: typographic renders for benign requests too (1: harmful only)
    Params: ClassVar[type[BaseModel]] = SafetySFTParams
    params: SafetySFTParams

    def encode_all(self, backend: Any, examples: Sequence[Example], *, typographic: float = 0.0) -> list[Encoded]:
        p = self.params
        rng = random.Random(p.seed + 1)
        out = []
        for e in examples:
            # both kinds alike (as VLGuard): an image is never by itself a cue to refuse
            image = typographic > 0 and rng.random() < typographic
            prompt = typographic_prompt(e) if image else text_prompt(e.request)
            out.append(encode(backend, prompt, e.answer, max_tokens=p.max_tokens, answer_tokens=p.answer_tokens))
        return out

    def fit(self, backend: Any, *, log_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:

        p = self.params
        train, held, data_sha = load_examples(p.data, held_out_fraction=p.held_out_fraction, seed=p.seed)
        chosen = choose(train, n=p.n_examples, ratio=p.safety_ratio, seed=p.seed)
        if p.order == "sequential":
            chosen = [e for e in chosen if e.kind == "benign"] + [e for e in chosen if e.kind == "harmful"]
        items = self.encode_all(backend, chosen, typographic=p.typographic)
        held_items = self.encode_all(backend, held)
        module = backend.module
        device = next(module.parameters()).device
        pad = backend.tokenizer.pad_token_id or 0

        def held_loss() -> dict[str, float]:
            return answer_nll(
                module,
                {k: [x for x, e in zip(held_items, held, strict=True) if e.kind == k] for k in ("harmful", "benign")},
                pad_id=pad, device=device,
            )

        before = held_loss()
        params = inject(module, p.lora, seed=p.seed)
        module.train()

        loss_fn = nll_loss(module, pad_id=pad, device=device)
        progress = step_logger("sft", log_fn)

        log_fn(
            f"sft: {len(items)} examples ({sum(e.kind == 'harmful' for e in chosen)} harmful→refusal), "
            f"{p.epochs} epochs, order {p.order}; held out {len(held)}"
        )
        stats = run_steps(
            params, items, loss_fn, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed,
            shuffle=p.order == "mixed", progress=progress, length=lambda e: len(e.ids),
        )
        module.eval()
        after = held_loss()
        fields = {
            "data": {
                "source": p.data,
                "sha256": data_sha,
                "n_train": len(items),
                "n_harmful": sum(e.kind == "harmful" for e in chosen),
                "n_held_out": len(held),
                "held_out_split": f"{p.held_out_fraction:g} of the requests (by request, seed {p.seed})",
            },
            "seed": p.seed,
            "training": stats.summary(),
            "metrics": {
                "held_out_answer_nll_before": before,
                "held_out_answer_nll_after": after,
            },
        }
        return p.lora, fields
