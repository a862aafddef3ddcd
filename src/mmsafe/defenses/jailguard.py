"""JailGuard: flag an input as an attack when small mutations of it make the model's answers diverge.

Paper: Xiaoyu Zhang, Cen Zhang, Tianlin Li, Yihao Huang, Xiaojun Jia, Ming Hu, Jie Zhang, Yang Liu,
Shiqing Ma, Chao Shen, "JailGuard: A Universal Detection Framework for Prompt-based Attacks on LLM
Systems", arXiv:2312.10766 (2023; journal version in ACM TOSEM, 2025). Its premise: attack inputs
are less robust than benign ones, so the answers to slightly mutated copies of an attack disagree
more than those of a benign input. JailGuard mutates the untrusted input into N variants (text
mutators such as random replacement, insertion and punctuation; image mutators such as crops,
flips, rotations, colour changes and blur), queries the model on each, and measures the divergence
of the responses: as we read the paper, it builds the matrix of pairwise response similarities,
turns each row into a distribution and flags the input when the KL divergence between two rows
exceeds a threshold (N = 8 and a threshold of 0.02 are its defaults).

What it needs: any model; images are mutated with Pillow (already a dependency of the image
attacks). Cost: ``1 + n_variants`` calls per item (the unmutated prompt, whose answer is returned
when the input passes, plus the variants), sent together in slices of the model's batch size.

Parameters (defaults):

* ``n_variants`` (8): mutated copies per input.
* ``threshold`` (``None`` = the similarity's default, :data:`SIMILARITY_THRESHOLDS`: ``char3``
  1.5, ``jaccard`` 4.0, ``minilm`` 1.0): flag when the divergence score exceeds it.
* ``mutate`` (``auto``): ``text``, ``image``, ``both``, or ``auto`` = images when the prompt has
  any, otherwise text.
* ``text_mutators`` (``replace``, ``insert``, ``punctuation``): one is drawn per variant.
* ``image_mutators`` (``crop``, ``hflip``, ``vflip``, ``rotate``, ``color``, ``blur``): one per variant.
* ``text_rate`` (0.1): share of words a text mutator touches (at least one).
* ``similarity`` (``char3``): response similarity, ``char3`` (cosine of character-trigram counts),
  ``jaccard`` (of lower-cased word sets) or ``minilm`` (cosine of all-MiniLM-L6-v2 sentence
  embeddings, clipped to [0, 1] — the nearest we have to the paper's spaCy sentence vectors; needs
  the ``judges`` extra and fails at construction, naming it, when missing).
* ``refusal_text``: the answer given for a flagged input (``blocked``).

Divergence (our documented approximation): the variant answers give an N×N similarity matrix S
(``similarity`` above; S_ii = 1). Row i, plus a small ε, normalised to sum 1, is a distribution
p_i; the score is the largest KL(p_i ‖ p_j) over ordered pairs. Identical answers give 0; the more
the answers split into dissimilar groups, the larger it gets. ``details`` also give the mean
pairwise dissimilarity (1 − S_ij) for inspection.

Differences from the paper: our mutators are a subset, implemented by us (no synonym replacement,
translation or the paper's more elaborate image policies), each variant gets one mutator drawn at
random from the configured list; similarities come from character trigrams, word sets or MiniLM
instead of the paper's spaCy sentence vectors, so the thresholds are not the paper's — tune them
on benign data for the model at hand (see "Thresholds"). Mutations are seeded by the item's seed
(``stable_hash([seed, variant])``), so a run is reproducible; variants are queried with derived
seeds. The unmutated prompt's answer is returned when the input passes (the paper detects only).

Thresholds (measured, ``python benchmarks/calibrate_defenses.py``). The score's scale depends on
the similarity, so one threshold does not fit all. (1) Constructed answer sets, 8 answers each
(divergence char3 / jaccard / minilm): 8 paraphrases of one bread recipe 0.17 / 0.27 / 0.05; 4
differently worded refusals ×2 1.02 / 1.65 / 0.38; 4 refusals + 4 compliances 2.05 / 7.40 / 4.76;
7 refusals + 1 compliance 2.34 / 8.13 / 2.63. Under ``minilm`` answers that mean the same stay
under 0.4 and refuse/comply splits exceed 2.6, hence its default 1.0. The paper's 0.02 is below
what even paraphrases give under ``char3`` and ``jaccard``: with them it flags any input whose
answers are not near-identical (as greedy answers of a stable model are), so the defaults are
1.5 (``char3``) and 4 (``jaccard``), between the same-meaning groups and the refuse/comply splits
above; ``threshold: 0.02`` gives the paper's value. Tune it on benign data for the model at hand.
(2) Starter items
(24 harmful, 16 benign), as plain text and FigStep images, on the tiny random-weight LLaVA
(``--model tiny-llava``, N = 8): no similarity separates harmful from benign (AUROC of the score
0.45 / 0.42 / 0.50 for text, 0.39 / 0.43 / 0.48 for FigStep); at the paper's 0.02 char3 flags
96% harmful / 100% benign text, 67% / 75% FigStep; minilm at 1.0 flags 46% / 44% text and 4% / 6% FigStep. A
random model's answers are noise, so this measures nothing about attacks. The real default model
(``--model gemma-ocr``) was not measured (too slow on the shared CPU in the time available).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.defenses.base import Defense, mark
from mmsafe.models.base import ModelBackend
from mmsafe.plugin_meta import Paper
from mmsafe.types import Generation, Image, ImagePart, Prompt, TextPart, stable_hash

__all__ = [
    "IMAGE_MUTATORS",
    "SIMILARITY_THRESHOLDS",
    "TEXT_MUTATORS",
    "JailGuard",
    "JailGuardParams",
    "divergence",
    "mutate_image",
    "mutate_text",
    "similarity_matrix",
]

TextMutator = Literal["replace", "insert", "punctuation"]
ImageMutator = Literal["crop", "hflip", "vflip", "rotate", "color", "blur"]
TEXT_MUTATORS: tuple[TextMutator, ...] = ("replace", "insert", "punctuation")
IMAGE_MUTATORS: tuple[ImageMutator, ...] = ("crop", "hflip", "vflip", "rotate", "color", "blur")
_PUNCT = (",", ".", "!", "?", ";", ":", "...", "-")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_EPS = 1e-3


def _random_word(rng: random.Random) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 8)))


def mutate_text(text: str, mutator: str, rng: random.Random, rate: float = 0.1) -> str:
    """``text`` after one mutator: ``replace`` swaps random words for random letter strings,
    ``insert`` adds random letter strings at random places, ``punctuation`` puts punctuation marks
    after random words. ``rate`` × words (at least one) are touched."""
    words = text.split()
    if not words:
        return _random_word(rng) if mutator != "punctuation" else rng.choice(_PUNCT)
    k = max(1, round(rate * len(words)))
    if mutator == "replace":
        for i in rng.sample(range(len(words)), min(k, len(words))):
            words[i] = _random_word(rng)
    elif mutator == "insert":
        for _ in range(k):
            words.insert(rng.randint(0, len(words)), _random_word(rng))
    elif mutator == "punctuation":
        for i in rng.sample(range(len(words)), min(k, len(words))):
            words[i] = words[i] + rng.choice(_PUNCT)
    else:
        raise ValueError(f"unknown text mutator {mutator!r}; one of {TEXT_MUTATORS}")
    return " ".join(words)


def mutate_image(image: Image, mutator: str, rng: random.Random) -> Image:
    """``image`` after one mutator: ``crop`` (keep 70–95% of each side, resized back), ``hflip`` /
    ``vflip``, ``rotate`` (±5–30°), ``color`` (brightness and contrast × 0.6–1.4), ``blur``
    (Gaussian, radius 0.5–2)."""
    from PIL import Image as PILImage
    from PIL import ImageEnhance, ImageFilter

    img = image.to_pil("RGB")
    w, h = img.size
    if mutator == "crop":
        fw, fh = rng.uniform(0.7, 0.95), rng.uniform(0.7, 0.95)
        cw, ch = max(1, int(w * fw)), max(1, int(h * fh))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch)).resize((w, h), PILImage.Resampling.BILINEAR)
    elif mutator == "hflip":
        img = img.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
    elif mutator == "vflip":
        img = img.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM)
    elif mutator == "rotate":
        angle = rng.uniform(5, 30) * rng.choice((-1, 1))
        img = img.rotate(angle, resample=PILImage.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    elif mutator == "color":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    elif mutator == "blur":
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 2.0)))
    else:
        raise ValueError(f"unknown image mutator {mutator!r}; one of {IMAGE_MUTATORS}")
    src = f"{image.source or image.sha256[:12]}+jailguard-{mutator}"
    return Image.from_pil(img, source=src)


def _trigrams(text: str) -> Counter[str]:
    t = f"  {' '.join(text.lower().split())} "
    return Counter(t[i : i + 3] for i in range(len(t) - 2))


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


#: default divergence threshold per similarity (measured: see the module docstring)
SIMILARITY_THRESHOLDS: dict[str, float] = {"char3": 1.5, "jaccard": 4.0, "minilm": 1.0}

def _minilm() -> Any:
    """The shared MiniLM embedder; :class:`MissingDependency` names the extra if absent."""
    from mmsafe.embeddings import shared_embedder

    return shared_embedder("the jailguard 'minilm' similarity")


def similarity_matrix(
    texts: Sequence[str], kind: str = "char3", *, embedder: Any = None
) -> list[list[float]]:
    """Pairwise similarities in [0, 1] (diagonal 1): ``char3`` trigram cosine, word ``jaccard``, or
    ``minilm`` (cosine of sentence embeddings, clipped to [0, 1]; ``embedder`` — anything with
    ``encode(texts) -> (n, d)`` unit-norm rows — defaults to the shared MiniLM embedder)."""
    n = len(texts)
    s = [[1.0] * n for _ in range(n)]
    if kind == "minilm":
        import numpy as np

        emb = np.asarray((embedder or _minilm()).encode(list(texts)), dtype=np.float64)
        cos = np.clip(emb @ emb.T, 0.0, 1.0)
        for i in range(n):
            for j in range(i + 1, n):
                s[i][j] = s[j][i] = float(cos[i, j])
    elif kind == "char3":
        vecs = [_trigrams(t) for t in texts]
        norms = [math.sqrt(sum(c * c for c in v.values())) for v in vecs]
        for i in range(n):
            for j in range(i + 1, n):
                a, b = vecs[i], vecs[j]
                if norms[i] and norms[j]:
                    dot = sum(c * b.get(g, 0) for g, c in a.items())
                    v = dot / (norms[i] * norms[j])
                else:
                    v = 1.0 if norms[i] == norms[j] else 0.0
                s[i][j] = s[j][i] = v
    elif kind == "jaccard":
        sets = [_words(t) for t in texts]
        for i in range(n):
            for j in range(i + 1, n):
                union = sets[i] | sets[j]
                v = len(sets[i] & sets[j]) / len(union) if union else 1.0
                s[i][j] = s[j][i] = v
    else:
        raise ValueError(f"unknown similarity {kind!r}; char3, jaccard or minilm")
    return s


def divergence(sim: Sequence[Sequence[float]]) -> float:
    """Largest KL(p_i ‖ p_j) between rows of ``sim`` made distributions (ε-smoothed, normalised)."""
    rows = []
    for r in sim:
        v = [max(0.0, x) + _EPS for x in r]
        total = sum(v)
        rows.append([x / total for x in v])
    best = 0.0
    for i, p in enumerate(rows):
        for j, q in enumerate(rows):
            if i != j:
                best = max(best, sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)))
    return best


def _generate_chunked(
    model: ModelBackend, prompts: list[Prompt], seeds: list[int]
) -> list[Generation | Exception]:
    """``model.generate`` in slices of the model's batch size (variants multiply a batch by 1 + N)."""
    size = max(1, model.batch_size)
    out: list[Generation | Exception] = []
    for i in range(0, len(prompts), size):
        out.extend(model.generate(prompts[i : i + size], seeds=seeds[i : i + size]))
    return out


class JailGuardParams(BaseModel):
    """Parameters of :class:`JailGuard` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_variants: int = Field(8, ge=2, le=64)
    threshold: float | None = Field(None, ge=0.0)
    mutate: Literal["auto", "text", "image", "both"] = "auto"
    text_mutators: list[TextMutator] = Field(default_factory=lambda: list(TEXT_MUTATORS), min_length=1)
    image_mutators: list[ImageMutator] = Field(default_factory=lambda: list(IMAGE_MUTATORS), min_length=1)
    text_rate: float = Field(0.1, gt=0.0, le=1.0)
    similarity: Literal["char3", "jaccard", "minilm"] = "char3"
    refusal_text: str = Field(
        "I can't help with that: the request looks like an attempt to get around my safety rules.",
        min_length=1,
    )


class JailGuard(Defense):
    """JailGuard (Zhang et al. 2023): mutate the input, query each variant, flag divergent answers."""

    name: ClassVar[str] = "jailguard"
    paper: ClassVar[Paper | None] = Paper(
        title="JailGuard: A Universal Detection Framework for Prompt-based Attacks on LLM Systems",
        authors="Zhang et al.",
        year=2023,
        url="https://arxiv.org/abs/2312.10766",
        threat_model=(
            "the defender answers mutated copies of the input and flags inputs whose answers disagree"
        ),
    )
    example_params: ClassVar[dict[str, Any]] = {"n_variants": 2}  # the mechanism at a quarter of the cost
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = JailGuardParams
    requires: ClassVar[frozenset[str]] = frozenset()
    params: JailGuardParams

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        #: the divergence threshold in force (``threshold``, or the similarity's default)
        self.threshold: float = SIMILARITY_THRESHOLDS[p.similarity] if p.threshold is None else p.threshold
        # minilm: a missing package fails here, naming the extra (the weights load on first use)
        self._embedder: Any = _minilm() if p.similarity == "minilm" else None

    def variants(self, prompt: Prompt, seed: int) -> list[tuple[Prompt, str]]:
        """The ``n_variants`` mutated copies of ``prompt`` and the mutator(s) used, seeded by ``seed``."""
        p = self.params
        has_images = bool(prompt.images)
        do_image = p.mutate in ("image", "both") or (p.mutate == "auto" and has_images)
        do_text = p.mutate in ("text", "both") or (p.mutate == "auto" and not has_images)
        user_idx = [i for i, m in enumerate(prompt.messages) if m.role == "user"]
        last_user = user_idx[-1] if user_idx else None
        out: list[tuple[Prompt, str]] = []
        for k in range(p.n_variants):
            rng = random.Random(int(stable_hash([seed, "jailguard", k])[:16], 16))
            t_mut = rng.choice(p.text_mutators) if do_text else None
            i_mut = rng.choice(p.image_mutators) if do_image and has_images else None
            messages = list(prompt.messages)
            for idx in user_idx:
                parts: list[TextPart | ImagePart] = []
                for part in messages[idx].content:
                    if isinstance(part, ImagePart) and i_mut:
                        parts.append(ImagePart(image=mutate_image(part.image, i_mut, rng)))
                    elif isinstance(part, TextPart) and t_mut and idx == last_user:
                        parts.append(TextPart(text=mutate_text(part.text, t_mut, rng, p.text_rate)))
                    else:
                        parts.append(part)
                messages[idx] = messages[idx].model_copy(update={"content": tuple(parts)})
            label = "+".join(x for x in (t_mut, i_mut) if x) or "none"
            out.append((prompt.model_copy(update={"messages": tuple(messages)}), label))
        return out

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        n = p.n_variants
        batch: list[Prompt] = []
        batch_seeds: list[int] = []
        labels: list[list[str]] = []
        errors: dict[int, Exception] = {}
        for i, (x, s) in enumerate(zip(prompts, seeds, strict=True)):
            try:
                vs = self.variants(x, s)
            except Exception as exc:  # an undecodable image fails this item only
                errors[i] = exc
                vs = [(x, "none")] * n
            labels.append([lab for _, lab in vs])
            batch.append(x)
            batch_seeds.append(s)
            batch.extend(v for v, _ in vs)
            batch_seeds.extend(int(stable_hash([s, "jailguard-query", k])[:8], 16) for k in range(n))
        answers = _generate_chunked(model, batch, batch_seeds)
        out: list[Generation | Exception] = []
        for i in range(len(prompts)):
            if i in errors:
                out.append(errors[i])
                continue
            chunk = answers[i * (n + 1) : (i + 1) * (n + 1)]
            original, variant_answers = chunk[0], chunk[1:]
            if isinstance(original, Exception):
                out.append(original)
                continue
            texts = [a.text for a in variant_answers if not isinstance(a, Exception)]
            failed = n - len(texts)
            if len(texts) < 2:
                out.append(RuntimeError(f"jailguard: {failed} of {n} variant queries failed"))
                continue
            sim = similarity_matrix(texts, p.similarity, embedder=self._embedder)
            score = divergence(sim)
            m = len(texts)
            pairs = [1.0 - sim[a][b] for a in range(m) for b in range(a + 1, m)]
            details: dict[str, Any] = {
                "divergence": round(score, 6),
                "similarity": p.similarity,
                "threshold": self.threshold,
                "mean_dissimilarity": round(sum(pairs) / len(pairs), 6),
                "mutators": labels[i],
                "failed_variants": failed,
            }
            if score > self.threshold:
                blocked = Generation(
                    text=p.refusal_text, finish_reason="stop", metadata=dict(original.metadata)
                )
                out.append(mark(blocked, "blocked", calls=1 + n, **details))
            else:
                out.append(mark(original, "passed", calls=1 + n, **details))
        return out
