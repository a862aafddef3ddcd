"""HiddenDetect: refuse a request whose hidden states already lean towards refusal in the safety-aware layers.

Paper: Y. Jiang, X. Gao, T. Peng, Y. Tan, X. Zhu, B. Zheng, X. Yue, "HiddenDetect: Detecting Jailbreak Attacks against
Large Vision-Language Models via Monitoring Hidden States", ACL 2025 (arXiv:2502.14744); code:
github.com/leigest519/HiddenDetect (``code/test.py``, ``code/safety_aware_layers.py``, read at its first release).

Threat model: the defender has the model's weights (white-box: hidden states, final norm, output head) and no
training; the attacker writes the request (text and images) and, in the paper, does not adapt to the detector (an
adaptive one: see "Adaptive attack" below). Cost: one forward pass over the prompt (no generation) before the answer.

The algorithm, as the authors' code does it:

1. **Refusal vector** ``r``: a multi-hot vector over the vocabulary, 1 at the first token of each refusal word
   (``refusal_tokens``; the default is the authors' list of 20: "Sorry", "sorry", "unfortunately", …, "shouldn").
2. **Refusal strength per layer**: the prompt (chat template, generation prompt, images) runs once; the last
   position's residual state after every decoder layer ℓ goes through the model's final norm and output head (the
   logit lens: :meth:`~mmsafe.models.base.WhiteBoxModel.logit_lens`), and ``F_ℓ = cos(logits_ℓ, r)``.
3. **Score**: the area under ``F`` over the safety-aware layers ``s..e`` (trapezoid rule, unit spacing — NumPy's
   ``trapz``), higher = more refusal-like = more likely a harmful request.
4. **Safety-aware layers** (``safety_aware_layers.py``): over a few-shot set of safe and unsafe prompts, the refusal
   discrepancy ``FDV_ℓ = mean F_unsafe − mean F_safe``; the most safety-aware layers are those whose ``FDV`` exceeds the
   last layer's. :meth:`HiddenDetect.calibrate` computes it, and takes ``s..e`` as the first and last such layer.

What mmsafe adds to make it a defense (the authors' code reports AUROC / AUPRC and sets no threshold): a ``threshold``
on the score; a request scoring above it is refused with ``refusal_text`` and never answered (action ``blocked``, 0
calls), else answered (``passed``, 1 call), the score and layers in the details. :meth:`HiddenDetect.calibrate` also
picks the threshold from the few-shot set: the smallest score above all but ``target_fpr`` of the safe prompts' scores.
The few-shot prompts must be the user's (the authors used a few dozen benign and harmful text/image prompts); never
the benchmark being evaluated, and never a judge-evaluation set.

Departures: ``layers`` default to the second half of the decoder but the last two (the authors' 16–29 of 32 layers
for LLaVA-v1.6-Vicuna-7B is 50–91%); the authors' code hard-codes a 32,000-token vocabulary and CUDA, here the
vocabulary and device are the model's; the refusal words are tokenised without special tokens and their first token
taken, as theirs are (a word the tokenizer splits is represented by its first piece).

Adaptive attack (:meth:`HiddenDetect.detection_margin`, used by an attack's ``evade`` param): the margin is the
refusal area minus ``threshold`` in torch — hidden states with gradients to the pixels
(:meth:`~mmsafe.models.base.WhiteBoxModel.hidden_states` with ``pixels``), the logit lens (differentiable when its
input carries a gradient), the cosine with ``r`` and the trapezoid — so a white-box attacker lowers the score directly,
as Carlini & Wagner (AISec 2017) lower a detector's logit and Tramèr et al. (NeurIPS 2020) recommend; nothing in it
is non-differentiable, so no BPDA (Athalye et al., ICML 2018) is needed. Supported for ``hf``/``tiny-llava`` (any
family with pixel gradients); ``hf-text``/``gemma-ocr`` read images through OCR and give no pixel gradient (they
raise). Without a ``threshold`` (monitoring mode) there is nothing to evade, and it raises.

Params: ``layers`` ([s, e], 0-based inclusive over decoder layers, or None for the default above), ``threshold``
(required for the defense to act: without one every item is answered and ``flagged`` with its score — a monitoring
mode for computing AUROC from the records), ``refusal_tokens``, ``refusal_text``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe.defenses.base import Defense, mark
from mmsafe.defenses.output_guard import DEFAULT_REFUSAL
from mmsafe.plugin_meta import Paper
from mmsafe.types import Generation, Prompt

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend, WhiteBoxModel

__all__ = ["REFUSAL_TOKENS", "HiddenDetect", "HiddenDetectParams", "refusal_area"]

#: The authors' refusal words (``refusal_lst`` in their ``code/test.py``).
REFUSAL_TOKENS: tuple[str, ...] = (
    "Sorry",
    "sorry",
    "unfortunately",
    "unfortunate",
    "sadly",
    "explicit",
    "deadly",
    "crim",
    "criminal",
    "illegal",
    "dangerous",
    "harmful",
    "warning",
    "alarm",
    "caution",
    "shame",
    "conspiracy",
    "Subject",
    "contrary",
    "shouldn",
)


class HiddenDetectParams(BaseModel):
    """Parameters of :class:`HiddenDetect`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: tuple[int, int] | None = Field(
        None,
        description="safety-aware decoder layers [s, e] (0-based, inclusive); None: second half but the last two",
    )
    threshold: float | None = Field(
        None,
        description="refuse when the refusal area exceeds it; None: answer everything, flagged with its score",
    )
    refusal_tokens: tuple[str, ...] = Field(
        REFUSAL_TOKENS, min_length=1, description="refusal words (first token each)"
    )
    refusal_text: str = Field(DEFAULT_REFUSAL, min_length=1, max_length=5000)

    @field_validator("layers")
    @classmethod
    def _ordered(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not 0 <= v[0] <= v[1]:
            raise ValueError(f"layers must be [s, e] with 0 <= s <= e, got {list(v)}")
        return v


def refusal_area(strengths: Sequence[float]) -> float:
    """The trapezoid area under per-layer refusal strengths (unit spacing; 0 for a single layer, as ``np.trapz``)."""
    return float(sum((a + b) / 2 for a, b in itertools.pairwise(strengths)))


class HiddenDetect(Defense):
    """HiddenDetect (Jiang et al., ACL 2025): refuse requests whose hidden states lean to refusal in safety layers."""

    name: ClassVar[str] = "hidden-detect"
    version: ClassVar[str] = "1"
    paper: ClassVar[Paper | None] = Paper(
        title="HiddenDetect: Detecting Jailbreak Attacks against Large Vision-Language Models via Monitoring Hidden States",
        authors="Jiang et al.",
        year=2025,
        url="https://arxiv.org/abs/2502.14744",
        threat_model="white-box defender (hidden states, no training); the attacker writes the request, not adaptive",
    )
    example_params: ClassVar[dict[str, Any]] = {"threshold": 0.0}
    Params: ClassVar[type[BaseModel]] = HiddenDetectParams
    params: HiddenDetectParams
    requires: ClassVar[frozenset[str]] = frozenset({"hidden_states"})

    # ------------------------------------------------------------------ the signal

    def refusal_vector(self, model: WhiteBoxModel) -> Any:
        """The multi-hot refusal vector over ``model``'s vocabulary (the first token of each refusal word), built
        once per model (its vocabulary size takes one forward pass)."""
        cache: dict[int, tuple[Any, Any]] = self.__dict__.setdefault("_refusal_vectors", {})
        hit = cache.get(id(model))
        if hit is not None and hit[0] is model:
            return hit[1]
        vec = self._build_refusal_vector(model)
        cache[id(model)] = (model, vec)
        return vec

    def _build_refusal_vector(self, model: WhiteBoxModel) -> Any:
        import torch

        tok = model.tokenizer
        ids = set()
        for word in self.params.refusal_tokens:
            pieces = tok.encode(word, add_special_tokens=False)
            if pieces:
                ids.add(int(pieces[0]))
        probe = model.logit_lens(model.hidden_states(_probe_prompt(), layers=[-1])[-1][-1:])
        vec = torch.zeros(probe.shape[-1])
        vec[sorted(i for i in ids if i < probe.shape[-1])] = 1.0
        return vec

    def strengths(self, model: WhiteBoxModel, prompt: Prompt, refusal: Any) -> list[float]:
        """``F_ℓ`` for every decoder layer ℓ: cosine of the last position's logit-lens logits with ``refusal``."""
        import torch

        n = len(model.decoder_layers())
        states = model.hidden_states(prompt, layers=list(range(n)))
        last = torch.stack([states[i][-1] for i in range(n)])  # [layers, hidden]
        logits = model.logit_lens(last)  # [layers, vocab]
        ref = refusal.to(logits.device, logits.dtype).expand_as(logits)
        return [float(v) for v in torch.nn.functional.cosine_similarity(logits, ref, dim=-1)]

    def span(self, n_layers: int) -> tuple[int, int]:
        """The layers ``[s, e]`` scored (clamped to the model's depth)."""
        if self.params.layers is not None:
            s, e = self.params.layers
        else:
            s, e = n_layers // 2, max(n_layers // 2, n_layers - 3)
        if s >= n_layers:
            raise ValueError(
                f"hidden-detect: layers start at {s} but the model has {n_layers} decoder layers"
            )
        return s, min(e, n_layers - 1)

    def score(self, model: WhiteBoxModel, prompt: Prompt, refusal: Any) -> tuple[float, tuple[int, int]]:
        f = self.strengths(model, prompt, refusal)
        s, e = self.span(len(f))
        return refusal_area(f[s : e + 1]), (s, e)

    # ------------------------------------------------------------------ adaptive attack

    evadable: ClassVar[bool] = True

    def detection_margin(self, model: WhiteBoxModel, x: Any, prompts: Sequence[Prompt]) -> Any:
        """``[B]``: the refusal area of ``prompts[i]`` with ``x[i]`` as its first image, minus ``threshold``,
        differentiable in ``x`` (hidden states with gradients, the logit lens, the cosine and the trapezoid all in
        torch). The forward value is :meth:`score`'s for that prompt (see "Adaptive attack" in the docstring)."""
        import torch

        if self.params.threshold is None:
            raise ValueError(
                "hidden-detect: no threshold (monitoring only), so there is nothing to evade; set one"
            )
        refusal = self.refusal_vector(model)
        s, e = self.span(len(model.decoder_layers()))
        layers = list(range(s, e + 1))
        out = []
        for i, prompt in enumerate(prompts):
            others = [model.to_pixels(im) for im in prompt.images[1:]]
            states = model.hidden_states(prompt, layers=layers, pixels=[x[i], *others])
            logits = model.logit_lens(torch.stack([states[k][-1] for k in layers]))  # [layers, vocab]
            ref = refusal.to(logits.device, logits.dtype).expand_as(logits)
            f = torch.nn.functional.cosine_similarity(logits, ref, dim=-1)
            out.append(((f[1:] + f[:-1]) / 2).sum() - self.params.threshold)
        return torch.stack(out)

    # ------------------------------------------------------------------ calibration

    def calibrate(
        self,
        model: WhiteBoxModel,
        safe: Sequence[Prompt],
        unsafe: Sequence[Prompt],
        *,
        target_fpr: float = 0.05,
    ) -> dict[str, Any]:
        """The authors' safety-aware layer search over a few-shot set, and a threshold for it.

        Returns ``{"fdv", "aware_layers", "layers", "threshold", "safe_scores", "unsafe_scores"}``: ``FDV`` per layer,
        the layers whose ``FDV`` exceeds the last layer's, ``[s, e]`` = their first and last, and the smallest score
        above all but ``target_fpr`` of the safe prompts (so at most that share of them is refused). Use the returned
        ``layers`` and ``threshold`` as params."""
        if not safe or not unsafe:
            raise ValueError("hidden-detect calibration needs safe and unsafe prompts")
        refusal = self.refusal_vector(model)
        f_safe = [self.strengths(model, p, refusal) for p in safe]
        f_unsafe = [self.strengths(model, p, refusal) for p in unsafe]
        n = len(f_safe[0])
        mean_safe = [sum(f[i] for f in f_safe) / len(f_safe) for i in range(n)]
        mean_unsafe = [sum(f[i] for f in f_unsafe) / len(f_unsafe) for i in range(n)]
        fdv = [u - v for u, v in zip(mean_unsafe, mean_safe, strict=True)]
        aware = [i for i, d in enumerate(fdv) if d > fdv[-1]]
        s, e = (aware[0], aware[-1]) if aware else self.span(n)
        safe_scores = sorted(refusal_area(f[s : e + 1]) for f in f_safe)
        unsafe_scores = [refusal_area(f[s : e + 1]) for f in f_unsafe]
        allowed = int(target_fpr * len(safe_scores))  # safe prompts that may score above the threshold
        threshold = safe_scores[len(safe_scores) - 1 - allowed]
        return {
            "fdv": fdv,
            "aware_layers": aware,
            "layers": [s, e],
            "threshold": threshold,
            "safe_scores": safe_scores,
            "unsafe_scores": unsafe_scores,
        }

    # ------------------------------------------------------------------ the defense

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        wb: Any = (
            model  # requires hidden_states: a white-box backend, read without the response cache around it
        )
        while hasattr(wb, "inner"):
            wb = wb.inner
        results: list[Generation | Exception | None] = [None] * len(prompts)
        answer: dict[int, dict[str, Any]] = {}
        try:
            refusal = self.refusal_vector(wb)
        except Exception as exc:  # the model cannot give hidden states or logits: every item fails, with why
            return [RuntimeError(f"hidden-detect: {type(exc).__name__}: {exc}")] * len(prompts)
        for i, prompt in enumerate(prompts):
            try:
                value, (s, e) = self.score(wb, prompt, refusal)
            except Exception as exc:  # e.g. a broken image: this item fails
                results[i] = RuntimeError(f"hidden-detect: {type(exc).__name__}: {exc}")
                continue
            details = {"score": round(value, 6), "decoder_layers": [s, e]}
            if p.threshold is None:
                answer[i] = {"action": "flagged", **details, "note": "no threshold: monitoring only"}
            elif value > p.threshold:
                blocked = Generation(text=p.refusal_text, finish_reason="blocked")
                results[i] = mark(blocked, "blocked", calls=0, **details, threshold=p.threshold)
            else:
                answer[i] = {"action": "passed", **details, "threshold": p.threshold}
        if answer:
            todo = sorted(answer)
            gens = model.generate([prompts[i] for i in todo], seeds=[seeds[i] for i in todo])
            for i, g in zip(todo, gens, strict=True):
                info = answer[i]
                results[i] = g if isinstance(g, Exception) else mark(g, info.pop("action"), calls=1, **info)
        return [r if r is not None else RuntimeError("hidden-detect: no result") for r in results]


def _probe_prompt() -> Prompt:
    from mmsafe.types import Message

    return Prompt(messages=(Message.user("Hello"),))
