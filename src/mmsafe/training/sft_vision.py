"""Multimodal safety SFT (VLGuard): typographic renders of harmful requests → refusals, of benign ones → answers.

Paper: Zong et al., "Safety Fine-Tuning at (Almost) No Cost: A Baseline for Vision Large Language
Models" (VLGuard), ICML 2024, arXiv:2402.02207. VLGuard fine-tunes LLaVA-style models on image–text
pairs — unsafe images or unsafe instructions with a refusal, safe ones with a helpful answer — mixed
with ordinary instruction data, training the language model (fully or with LoRA) and the multimodal
projector, the vision encoder frozen. This trainer does that on a local vision-language backend
(``hf``: any LLaVA-family checkpoint; ``gemma-llava``; ``tiny-llava``).

Threat model: none (a defence made at training time). It targets the typographic jailbreak
(FigStep, Gong et al. AAAI 2025): the attacker typesets the harmful request in the image and sends
a benign instruction as text, so text-only safety training never sees the request. Here both kinds
of training image carry the same text prompt — FigStep's instruction — and differ only in the
typeset title, so the model can learn when to refuse only by reading the image.

Data (``data``): ``builtin`` (mmsafe's written set, split by request into training and held-out
parts with ``held_out_fraction``) or a JSONL file of ``{"request", "answer", "kind", "title"?}``
rows (:func:`mmsafe.training.sft.load_examples`). Each example is shown as a typographic render
(:func:`render_figstep`, FigStep's layout) of its title — the row's ``title`` when it has one, else
the request rephrased as FigStep does (:func:`~mmsafe.render.rephrase.rephrase_as_statement`; the
FigStep attack picks its text by the same rule, and an untitled harmful or benign request is typeset alike, so a render's
format is no cue; hand-written titles, which mmsafe's data has for some harmful requests only, can
be one) — with :data:`FIGSTEP_PROMPT` as the text, and
its answer (a refusal for a harmful request, the helpful answer for a benign one) as the target.
``typographic_share`` of the chosen examples (the same share of each kind) are rendered; the rest,
and ``text_share`` of the rendered ones again, appear as text-only pairs (the request as plain
text), which keeps text-only safety in the mix as VLGuard keeps its instruction data.

What trains: LoRA (``lora``; PEFT, injected in place) on the projections of the language model
only (``lora.scope``: the vision tower's same-named layers are left alone), and the multimodal
projector in full (``projector``; LLaVA and VLGuard train it) at its own learning rate
(``projector_lr``, default 1e-3: LLaVA's rate for a projector not yet aligned; on the tiny test
model a LoRA rate as high as the projector's learns the answers' prior and never the image cue);
the vision tower is frozen. The loss is the teacher-forced cross-entropy of the answer tokens (token
mean over the batch), each example rendered exactly as the backend renders it at generation
(:meth:`HFModel.teacher_forced`); the answer ends with the chat template's end-of-turn marker (or
the backend's stop string). AdamW with linear warm-up and gradient clipping as
:func:`mmsafe.training.text.run_steps` (one learning rate per parameter group); batches are formed
once (seeded) and visited in a new order each epoch, so each batch's images are processed once and
reused. The adapter
file holds the LoRA weights and the projector's full weights; the card lists both
(``lora.scope``, ``lora.modules_to_save``, ``full_weight_modules``) and loads as ``adapter:`` of the
same model spec (``hf`` with the checkpoint's path, or ``gemma-llava``; an adapter trained on
``tiny-llava`` loads through ``hf`` with the tiny model's folder).

Card metrics: training loss; the held-out answer loss (mean NLL per token) before and after, for
renders of harmful requests (refusal), renders of benign ones (answer) and the text-only
harmful requests, on at most ``n_held_out_eval`` held-out items. Refusal rates need generation:
``benchmarks/vision_sft.py`` measures the FigStep attack's refusal rate on held-out harmful
requests, the answered rate on held-out benign renders and text-only refusal, base vs trained.

Departures from VLGuard: no GPT-4V-written data and no natural images — mmsafe's own written
requests, shown as typographic renders only (VLGuard's set is not shipped here); LoRA plus the
projector instead of full fine-tuning; no general instruction-tuning data mixed in (text-only safety
pairs stand in). On ``gemma-llava`` the vision tower is RANDOM (it has never seen an image): the
projector and LoRA can only learn whatever statistics of the renders the random features keep, so
a rise in refusal on held-out renders there shows that the pipeline trains on the image channel and
that the learned cue generalises to unseen titles — not that the model reads text the way a trained
CLIP would (the effect may be memorisation of render statistics; compare with the benign renders'
answered rate, which a blanket "refuse every image" rule would fail).

Params: ``model`` (required; hf, gemma-llava or tiny-llava), ``data`` ("builtin"), ``n_examples``
(None: all training items), ``safety_ratio`` (None: the data's own share), ``typographic_share``
(1.0), ``text_share`` (0.0), ``projector`` (True), ``projector_module`` (None: found by name),
``epochs`` (2), ``lr`` (2e-4, LoRA), ``projector_lr`` (1e-3), ``batch_size`` (4), ``max_tokens``
(256: answer tokens kept),
``gradient_checkpointing`` (False), ``lora`` (r 8, α 16, attention and MLP projections),
``held_out_fraction`` (0.2), ``n_held_out_eval`` (32), ``seed`` (0).

Example::

    mmsafe train sft-vision --model gemma-llava --out adapters/vlguard --params '{epochs: 2}'
    # then, in a run grid: {name: gemma-llava, params: {adapter: adapters/vlguard}}
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.config import ComponentField
from mmsafe.errors import ConfigError
from mmsafe.lora import LoraSettings, inject
from mmsafe.training.base import Trainer
from mmsafe.training.sft import Example, choose, load_examples
from mmsafe.training.text import run_steps, step_logger, text_prompt
from mmsafe.types import Prompt

__all__ = [
    "PROJECTOR_NAMES",
    "Pair",
    "VisionSafetySFT",
    "VisionSafetySFTParams",
    "language_model_path",
    "projector_path",
    "render_title",
    "typographic_prompt",
]

#: Names of multimodal projectors in transformers' vision-language models (LLaVA, LLaVA-NeXT,
#: Idefics3/SmolVLM, Qwen2-VL's patch merger, BLIP-2's language projection), looked up in this order.
PROJECTOR_NAMES: tuple[str, ...] = (
    "multi_modal_projector",
    "mm_projector",
    "connector",
    "merger",
    "language_projection",
)


class VisionSafetySFTParams(BaseModel):
    """Parameters of :class:`VisionSafetySFT`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ComponentField = Field(description="the base model: {name, params} of hf, gemma-llava or tiny-llava")
    data: str = Field("builtin", description="builtin (mmsafe's written set) or a JSONL file")
    n_examples: int | None = Field(None, ge=2, description="training examples to use (None: all)")
    safety_ratio: float | None = Field(
        None, ge=0.0, le=1.0, description="share of harmful→refusal examples (None: the data's own share)"
    )
    typographic_share: float = Field(
        1.0, ge=0.0, le=1.0, description="share of the examples (of each kind) shown as a typographic render"
    )
    text_share: float = Field(
        0.0, ge=0.0, le=1.0, description="share of the rendered examples also shown as a text-only pair"
    )
    projector: bool = Field(True, description="train the multimodal projector in full (VLGuard, LLaVA)")
    projector_module: str | None = Field(
        None, description="dotted path of the projector (None: found by name, see PROJECTOR_NAMES)"
    )
    epochs: int = Field(2, ge=1, le=100)
    lr: float = Field(2e-4, gt=0, le=1.0, description="learning rate of the LoRA weights")
    projector_lr: float = Field(
        1e-3, gt=0, le=1.0, description="learning rate of the projector (LLaVA's stage-1 rate for a projector not yet aligned)"
    )
    batch_size: int = Field(4, ge=1, le=512)
    max_tokens: int = Field(256, ge=8, le=8192, description="answer tokens kept per example (the rest is cut)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    held_out_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    n_held_out_eval: int = Field(32, ge=0, description="held-out items per kind for the card's answer loss (0: none)")
    seed: int = 0


@dataclass(frozen=True)
class Pair:
    """One training pair: the prompt as the model sees it, the answer text, and what it is."""

    prompt: Prompt
    answer: str
    kind: str  # harmful | benign
    image: bool
    #: what the model is trained to write after the prompt (answer + end-of-turn; see ``render_answer``)
    target: str | None = None


def render_title(example: Example) -> str:
    """The text typeset in the example's image: its ``title``, else its request rephrased as FigStep does."""
    from mmsafe.render.rephrase import rephrase_as_statement

    return example.title or rephrase_as_statement(example.request)[0]


def typographic_prompt(title: str, *, font_path: str | None = None) -> Prompt:
    """``title`` as FigStep shows a request: typeset in an image, FigStep's instruction as the text."""
    from mmsafe.attacks.typographic.figstep import FIGSTEP_PROMPT, render_figstep
    from mmsafe.render.fonts import find_font
    from mmsafe.types import Image

    font = font_path or find_font()[0]
    image = Image.from_pil(render_figstep(title, font_path=font, mode="L"), source="sft-vision:typographic")
    return text_prompt(FIGSTEP_PROMPT, [image])


def language_model_path(module: Any) -> str:
    """Dotted path of a vision-language model's language model (its decoder), for ``lora.scope``."""
    decoder = module.get_decoder() if hasattr(module, "get_decoder") else None
    if decoder is not None and decoder is not module:
        for name, m in module.named_modules():
            if m is decoder and name:
                return name
    found = sorted(
        (n for n, _ in module.named_modules() if n.rsplit(".", 1)[-1] in ("language_model", "text_model")),
        key=len,
    )
    if not found:
        raise ConfigError(f"cannot find the language model of {type(module).__name__} (no get_decoder, no language_model)")
    return found[0]


def projector_path(module: Any, given: str | None = None) -> str:
    """Dotted path of the multimodal projector: ``given`` (checked), else the first of
    :data:`PROJECTOR_NAMES` present (the shortest path for that name)."""
    names = [n for n, _ in module.named_modules() if n]
    if given is not None:
        if given not in names:
            raise ConfigError(f"projector_module: {type(module).__name__} has no submodule {given!r}")
        return given
    for wanted in PROJECTOR_NAMES:
        hits = sorted((n for n in names if n.rsplit(".", 1)[-1] == wanted), key=len)
        if hits:
            return hits[0]
    raise ConfigError(
        f"cannot find the multimodal projector of {type(module).__name__} (looked for {', '.join(PROJECTOR_NAMES)}); "
        "set projector_module, or projector: false"
    )


def _stratified(examples: Sequence[Example], share: float, rng: random.Random) -> set[int]:
    """Indices of ``share`` of the examples of each kind (seeded)."""
    chosen: set[int] = set()
    for kind in ("harmful", "benign"):
        idx = [i for i, e in enumerate(examples) if e.kind == kind]
        rng.shuffle(idx)
        chosen.update(idx[: round(share * len(idx))])
    return chosen


class VisionSafetySFT(Trainer):
    """Multimodal safety SFT (VLGuard, Zong et al. ICML 2024): typographic renders → refusal / answer."""

    name: ClassVar[str] = "sft-vision"
    example_params: ClassVar[dict[str, Any]] = {"model": "scripted"}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = VisionSafetySFTParams
    trains: ClassVar[frozenset[str]] = frozenset({"hf", "gemma-llava", "tiny-llava"})
    params: VisionSafetySFTParams

    # ------------------------------------------------------------------ data

    def pairs(self, examples: Sequence[Example], *, font_path: str | None = None) -> list[Pair]:
        """The training pairs of ``examples``: renders (``typographic_share`` of each kind) and text."""
        p = self.params
        rng = random.Random(p.seed + 1)
        rendered = _stratified(examples, p.typographic_share, rng)
        again = _stratified([examples[i] for i in sorted(rendered)], p.text_share, rng)
        also_text = {sorted(rendered)[j] for j in again}
        out = []
        for i, e in enumerate(examples):
            if i in rendered:
                out.append(Pair(typographic_prompt(render_title(e), font_path=font_path), e.answer, e.kind, True))
            if i not in rendered or i in also_text:
                out.append(Pair(text_prompt(e.request), e.answer, e.kind, False))
        return out

    def with_targets(self, backend: Any, pairs: Sequence[Pair]) -> list[Pair]:
        """``pairs`` with their training targets: the answer cut to ``max_tokens`` tokens, then
        written as the backend's chat template writes an assistant turn (end-of-turn included)."""
        tok = backend.tokenizer
        out = []
        for x in pairs:
            answer = x.answer
            ids = tok(answer, add_special_tokens=False)["input_ids"]
            if len(ids) > self.params.max_tokens:
                answer = tok.decode(ids[: self.params.max_tokens], skip_special_tokens=True)
            out.append(replace(x, target=backend.render_answer(x.prompt, answer)[1]))
        return out

    # ------------------------------------------------------------------ loss

    def objectives(self, backend: Any, batch: Sequence[Pair]) -> list[Any]:
        """The teacher-forced objectives of ``batch`` (:class:`TeacherForced`: encoded once, callable often).

        Prompts with and without images go to separate objectives (one padded batch cannot mix
        them); a group whose images are all the same is split into single examples (the shared
        prefix fast path of :class:`TeacherForced` keeps a key/value cache, which gradient
        checkpointing switches off)."""
        out = []
        for with_image in (True, False):
            group = [x for x in batch if x.image == with_image]
            if not group:
                continue
            same = with_image and len(group) > 1 and len({x.prompt.images[0].sha256 for x in group}) == 1
            for chunk in [[x] for x in group] if same else [group]:
                if any(x.target is None for x in chunk):
                    chunk = self.with_targets(backend, chunk)
                out.append(backend.teacher_forced([x.prompt for x in chunk], [x.target for x in chunk]))
        return out

    @staticmethod
    def objectives_loss(objectives: Sequence[Any], *, reduce: bool = True) -> Any:
        """Token-mean answer NLL over ``objectives`` (``reduce=False``: (summed NLL, token count))."""
        import torch

        total: Any = 0.0
        count = 0
        for objective in objectives:
            losses = objective()
            n = torch.tensor([len(t) for t in objective.target_ids], dtype=losses.dtype, device=losses.device)
            total = total + (losses * n).sum()
            count += int(n.sum())
        if not reduce:
            return total, count
        return total / max(1, count)

    def batch_loss(self, backend: Any, batch: Sequence[Pair], *, reduce: bool = True) -> Any:
        """Token-mean answer NLL of ``batch`` (``reduce=False``: (summed NLL, token count))."""
        return self.objectives_loss(self.objectives(backend, batch), reduce=reduce)

    def held_out_loss(self, backend: Any, held: Sequence[Example], *, font_path: str | None) -> dict[str, float]:
        """Mean answer NLL per token on held-out items: renders of each kind, and harmful requests as text."""
        import torch

        n = self.params.n_held_out_eval
        if n == 0 or not held:
            return {}
        groups = {
            "render_harmful": [e for e in held if e.kind == "harmful"][:n],
            "render_benign": [e for e in held if e.kind == "benign"][:n],
        }
        out = {}
        with torch.no_grad():
            for key, rows in groups.items():
                pairs = [Pair(typographic_prompt(render_title(e), font_path=font_path), e.answer, e.kind, True) for e in rows]
                if key == "render_harmful":
                    text = [Pair(text_prompt(e.request), e.answer, e.kind, False) for e in rows]
                    out["text_harmful"] = self._mean_nll(backend, text)
                out[key] = self._mean_nll(backend, pairs)
        return {k: v for k, v in out.items() if v is not None}

    def _mean_nll(self, backend: Any, pairs: Sequence[Pair]) -> float | None:
        if not pairs:
            return None
        tot, cnt = 0.0, 0
        size = self.params.batch_size
        for i in range(0, len(pairs), size):
            s, c = self.batch_loss(backend, pairs[i : i + size], reduce=False)
            tot += float(s)
            cnt += c
        return round(tot / max(1, cnt), 4)

    # ------------------------------------------------------------------ fit

    def fit(self, backend: Any, *, log_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
        from mmsafe.render.fonts import find_font

        p = self.params
        module = backend.module
        font_path, reference_font = find_font()
        train, held, data_sha = load_examples(p.data, held_out_fraction=p.held_out_fraction, seed=p.seed)
        chosen = choose(train, n=p.n_examples, ratio=p.safety_ratio, seed=p.seed)
        settings = p.lora.model_copy(
            update={
                "scope": p.lora.scope or language_model_path(module),
                "modules_to_save": p.lora.modules_to_save
                or ((projector_path(module, p.projector_module),) if p.projector else ()),
            }
        )
        # LoRA's B starts at zero and the projector is untouched: the model computes what the base does
        params = inject(module, settings, seed=p.seed)  # LoRA tensors first, then the full-weight ones
        n_lora_tensors = sum(1 for n, _ in module.named_parameters() if "lora_" in n)
        n_lora = sum(t.numel() for t in params[:n_lora_tensors])
        n_full = sum(t.numel() for t in params[n_lora_tensors:])
        items = self.with_targets(backend, self.pairs(chosen, font_path=font_path))
        if not any(x.image for x in items):
            log_fn("sft-vision: typographic_share is 0: no image–text pairs (text-only SFT)")
        before = self.held_out_loss(backend, held, font_path=font_path)

        # batches formed once (seeded), visited in a new order each epoch: each batch is encoded
        # (images processed, tokens laid out) once and its objectives reused by later epochs
        order = list(range(len(items)))
        random.Random(p.seed).shuffle(order)
        batches = [[items[i] for i in order[k : k + p.batch_size]] for k in range(0, len(order), p.batch_size)]
        cache: dict[int, list[Any]] = {}

        def loss_fn(batch: Sequence[int]) -> tuple[Any, int]:
            (i,) = batch
            objectives = cache.get(i) or self.objectives(backend, batches[i])
            if p.epochs > 1:
                cache[i] = objectives
            return self.objectives_loss(objectives), len(batches[i])

        n_img = sum(x.image for x in items)
        log_fn(
            f"sft-vision: {len(items)} pairs ({n_img} typographic renders, {len(items) - n_img} text; "
            f"{sum(x.kind == 'harmful' for x in items)} harmful→refusal), {p.epochs} epochs; "
            f"LoRA in {settings.scope} ({n_lora} weights), full weights of "
            f"{', '.join(settings.modules_to_save) or 'nothing'} ({n_full}); held out {len(held)}"
        )
        module.train()
        try:
            with backend.gradient_checkpointing(p.gradient_checkpointing):
                stats = run_steps(
                    params,
                    range(len(batches)),
                    loss_fn,
                    epochs=p.epochs,
                    batch_size=1,
                    lr=p.lr,
                    seed=p.seed,
                    progress=step_logger("sft-vision", log_fn),
                    lr_groups=[(params[:n_lora_tensors], p.lr), (params[n_lora_tensors:], p.projector_lr)],
                )
        finally:
            cache.clear()
            module.eval()
            for t in module.parameters():
                t.requires_grad_(False)
        after = self.held_out_loss(backend, held, font_path=font_path)
        fields = {
            "data": {
                "source": p.data,
                "sha256": data_sha,
                "n_train": len(items),
                "n_examples": len(chosen),
                "n_harmful": sum(e.kind == "harmful" for e in chosen),
                "n_typographic": n_img,
                "n_text": len(items) - n_img,
                "n_held_out": len(held),
                "held_out_split": f"{p.held_out_fraction:g} of the requests (by request, seed {p.seed})",
                "render": {"layout": "figstep", "font": font_path, "reference_font": reference_font},
            },
            "seed": p.seed,
            "trainable": {"lora_parameters": n_lora, "full_weight_parameters": n_full, "vision_tower": "frozen"},
            "training": stats.summary(),
            "metrics": {
                "held_out_answer_nll_before": before,
                "held_out_answer_nll_after": after,
            },
        }
        return settings, fields
