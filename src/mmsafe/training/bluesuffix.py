"""BlueSuffix's suffix generator, trained by PPO-style RL against a black-box target with a judge's reward.

Paper: Yunhan Zhao, Xiang Zheng, Lin Luo, Yige Li, Xingjun Ma, Yu-Gang Jiang, "BlueSuffix: Reinforced
Blue Teaming for Vision-Language Models Against Jailbreak Attacks", ICLR 2025, arXiv:2410.20971; code
github.com/Vinsonzyh/BlueSuffix (``ppo_blue_team.py``; the fine-tuned generator is not released). The
inference-time defense is :mod:`mmsafe.defenses.bluesuffix`; this trainer writes the adapter its
``generator`` loads.

Threat model: none at training time (a blue team tunes its own generator). The target is black-box:
only its generation is used, never its weights or gradients.

What one step does (``steps`` times):

1. takes ``prompts_per_step`` training requests (a seeded pass over the shuffled pool), each made a
   jailbreak prompt by ``attack`` when one is set (any black-box mmsafe attack, applied once per request
   with the trainer's seed; the authors train on jailbreak prompts; its images, if any, reach the target
   unpurified) and its text then rewritten by the text purifier when one is set (``text_purifier``, any
   model backend; the defense's template and parsing); a request whose attack or purification fails is
   skipped and counted;
2. samples ``group_size`` suffixes per request from the generator π_θ (the ``model``: an hf-text base
   plus LoRA; exactly ``suffix_tokens`` new tokens, temperature ``temperature``, nucleus ``top_p``, no
   top-k, as the authors' ``generation_kwargs``), its input being ``generator_prompt`` rendered exactly
   as the ``hf-text`` backend renders it at inference;
3. the target answers each (purified) request + suffix (joined as in the defense: ``suffix_join``),
   and the reward judge (``judge``, any mmsafe judge) rates the answer: harmful request — reward 1
   when the judge finds no harmful compliance (``success`` False), 0 when it does; benign request —
   reward 1 when the answer is not a refusal (``refused`` False), 0 when it is. A judge error or no
   verdict gives 0 and is counted (``unrated``), as the authors give 0 to an unparsable verdict;
4. advantage A = reward − mean reward of the request's group (no value head);
5. ``ppo_epochs`` passes of the PPO clipped surrogate on the sampled suffix tokens,
   −min(ρ_t·A, clip(ρ_t, 1 ± ``clip_range``)·A) with ρ_t = π_θ(a_t)/π_old(a_t) (π_old: the generator
   that sampled), plus ``kl_coef`` · KL(π_θ ‖ π_ref) per token (the k3 estimator
   exp(r) − r − 1, r = log π_ref − log π_θ; zero while π_θ = π_ref), averaged over tokens; π_ref is the
   same model with LoRA switched off (no second copy). AdamW, gradient clipping at 1.

Data: the trainers' format (``builtin``: ``mmsafe/data/safety_train.yaml``, or a JSONL file of
``{"request", "answer", "kind", "category"}`` rows; :func:`mmsafe.training.sft.load_examples`).
Validation (project rule): requests of the ``held_out_categories`` (by category, never at random) are
never trained on; the card reports, on at most ``eval_prompts`` held-out requests per kind, the judge's
safe rate on harmful requests and refusal rate on benign ones for three variants of the target's
input: no suffix, the base generator's suffix, the trained generator's suffix (greedy suffixes, one
target seed), plus the per-step training rewards, KL and clipped share. Never train on a judge-evaluation
set (JailbreakBench judge comparison, HarmBench classifier validation, XSTest labelled completions, MSTS,
MOSSBench, MMSafeAware): the builtin data is disjoint from them (``scripts/check_training_overlap.py``).

Parameters (default; the authors' code): ``model`` (required: hf-text; GPT-2), ``target`` (required;
LLaVA / MiniGPT-4 / Gemini), ``judge`` (refusal; GPT-4o with their harmfulness template),
``attack`` (None; their jailbreak prompts), ``text_purifier`` (None; GPT-4o), ``prompt`` /
``on_unparsed`` (as the defense), ``generator_prompt``
("{query}"), ``suffix_join`` (question; theirs), ``data`` (builtin), ``held_out_categories`` (fraud,
privacy, history), ``benign`` (true; —), ``max_train_prompts`` (None), ``eval_prompts`` (16),
``steps`` (40; 500), ``prompts_per_step`` (4; batch 32), ``group_size`` (4; 1), ``ppo_epochs`` (4; 4),
``clip_range`` (0.2; TRL's 0.2), ``kl_coef`` (0.05; 0.001 fixed), ``lr`` (1e-4; 3e-5), ``suffix_tokens``
(10; 10), ``temperature`` (0.7; 0.7), ``top_p`` (0.92; 0.92), ``lora`` (r 16, α 16; r 16, α 16),
``seed`` (0).

Departures from the authors' code and why: no value head, no GAE — a per-request group baseline
(several suffixes per request, advantage = reward − group mean, as in GRPO) replaces TRL's critic,
which would need its own warm-up on a few hundred steps we cannot afford on CPU; the KL to the
reference is a loss term (k3 estimator) rather than TRL's per-token KL penalty folded into the reward,
and its default coefficient is larger because runs here are short and LoRA learning rates higher; one
minibatch per step (theirs: batch 32, minibatches of 8); any hf-text LM rather than GPT-2, rendered
through its chat template (give a plain ``chat_template`` to feed raw text as they do); benign requests
with a reward for not refusing are an mmsafe addition against over-refusal (the authors train on
jailbreak prompts only); the reward judge is any mmsafe judge rather than GPT-4o; training requests are
text, or the attack's prompt with its images unpurified (the authors pair jailbreak text with purified
images). Confirmed from ``ppo_blue_team.py``: the
generation settings, LoRA r/α, PPO epochs, learning rate, KL coefficient, the 0/1 reward and the suffix
join. Not confirmed (paper text not read here): anything else.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe import papers
from mmsafe.components import SubAttack, SubJudge, SubModel
from mmsafe.config import ComponentConfig, ComponentField
from mmsafe.defenses._bluesuffix import (
    PURIFIER_PROMPT,
    SuffixJoin,
    generator_query,
    join_suffix,
    purify_texts,
)
from mmsafe.defenses.edit import replace_user_text
from mmsafe.defenses.output_guard import query_text
from mmsafe.errors import ConfigError
from mmsafe.lora import LoraSettings, adapters_enabled, inject
from mmsafe.plugin_meta import Paper
from mmsafe.training.base import Trainer
from mmsafe.training.sft import Example, load_examples
from mmsafe.training.text import Encoded, answer_token_logprobs, peak_rss_mb
from mmsafe.types import Expected, Judgement, Message, Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.attacks.base import Attack
    from mmsafe.judges.base import Judge
    from mmsafe.models.base import ModelBackend

__all__ = ["BlueSuffixTrainParams", "BlueSuffixTrainer", "Item", "Rollout", "ppo_loss", "reward"]


class BlueSuffixTrainParams(BaseModel):
    """Parameters of :class:`BlueSuffixTrainer`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ComponentField = Field(description="the suffix generator's base: {name, params} of hf-text")
    target: ComponentField = Field(description="the black-box target: {name, params} of any model backend")
    judge: ComponentField = Field(
        default_factory=lambda: ComponentConfig(name="refusal"),
        description="the reward judge: {name, params} of any judge (harmful: no success; benign: no refusal)",
    )
    attack: ComponentField | None = Field(
        None,
        description="an mmsafe attack applied to every request first: the jailbreak prompts trained against",
    )
    text_purifier: ComponentField | None = Field(
        None, description="the text purifier: any model backend (None: none)"
    )
    prompt: str = Field(
        PURIFIER_PROMPT, min_length=8, max_length=20000, description="the purifier's template"
    )
    on_unparsed: Literal["fail", "keep"] = Field(
        "fail", description="purifier answer without @@: skip the request, or keep its text"
    )
    generator_prompt: str = Field(
        "{query}", min_length=7, max_length=5000, description="the generator's input"
    )
    suffix_join: SuffixJoin = Field("question", description="how the suffix joins the text (as the defense)")
    data: str = Field("builtin", description="builtin (mmsafe's written set) or a JSONL file with category")
    held_out_categories: tuple[str, ...] = Field(
        ("fraud", "privacy", "history"), min_length=1, description="categories never trained on (validation)"
    )
    benign: bool = Field(True, description="train on benign requests too, rewarded for not refusing")
    max_train_prompts: int | None = Field(None, ge=1, description="training requests used (None: all)")
    eval_prompts: int = Field(16, ge=1, le=10000, description="held-out requests evaluated per kind")
    steps: int = Field(40, ge=1, le=100000, description="PPO steps (authors: 500)")
    prompts_per_step: int = Field(4, ge=1, le=1024)
    group_size: int = Field(4, ge=2, le=64, description="suffixes sampled per request (the group baseline)")
    ppo_epochs: int = Field(4, ge=1, le=64, description="passes over each step's rollouts (authors: 4)")
    clip_range: float = Field(0.2, gt=0.0, lt=1.0, description="PPO ratio clip ε")
    kl_coef: float = Field(0.05, ge=0.0, le=10.0, description="weight of KL(π‖π_ref) (authors: 0.001)")
    lr: float = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate (authors: 3e-5)")
    suffix_tokens: int = Field(10, ge=1, le=256, description="new tokens per suffix (authors: 10)")
    temperature: float = Field(0.7, gt=0.0, le=5.0, description="sampling temperature (authors: 0.7)")
    top_p: float = Field(0.92, gt=0.0, le=1.0, description="nucleus sampling (authors: 0.92)")
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(r=16, alpha=16.0))
    seed: int = 0

    @field_validator("prompt", "generator_prompt")
    @classmethod
    def _has_query(cls, v: str) -> str:
        if "{query}" not in v:
            raise ValueError("the template must contain {query}")
        return v


@dataclass(frozen=True)
class Item:
    """A request as the target receives it before the suffix: the (attacked) prompt and its purified text."""

    example: Example
    base: Prompt
    text: str


@dataclass(frozen=True)
class Rollout:
    """One sampled suffix: the generator's prompt + suffix tokens, its text, and its reward."""

    item: Item
    encoded: Encoded
    suffix: str
    reward: float
    rated: bool
    group: int


def reward(kind: str, judgement: Judgement) -> float | None:
    """1.0 for a safe outcome (harmful: no harmful compliance; benign: no refusal), 0.0 for an unsafe
    one, None when the judge decided nothing."""
    if judgement.error:
        return None
    if kind == "harmful":
        return None if judgement.success is None else float(not judgement.success)
    return None if judgement.refused is None else float(not judgement.refused)


def ppo_loss(
    new: Any, old: Any, ref: Any, mask: Any, advantages: Any, *, clip_range: float, kl_coef: float
) -> tuple[Any, dict[str, float]]:
    """The clipped surrogate plus ``kl_coef``·KL(π‖π_ref) (k3), averaged over the real tokens.

    ``new``/``old``/``ref``: per-token log-probabilities ``[B, T]`` under the policy being trained (with
    gradients), the policy that sampled, and the reference; ``mask`` ``[B, T]``; ``advantages`` ``[B]``."""
    import torch

    m = mask.float()
    count = m.sum().clamp(min=1.0)
    ratio = torch.exp(new - old)
    adv = advantages[:, None]
    surrogate = -torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    r = ref - new
    kl = torch.exp(r) - r - 1
    loss = ((surrogate + kl_coef * kl) * m).sum() / count
    with torch.no_grad():
        stats = {
            "pg": float((surrogate * m).sum() / count),
            "kl": float((kl * m).sum() / count),
            "clipped": float((((ratio - 1).abs() > clip_range).float() * m).sum() / count),
        }
    return loss, stats


def _sample(example: Example, index: int) -> Sample:
    return Sample(
        id=f"bluesuffix-{index}",
        benchmark="bluesuffix",
        text=example.request,
        expected=Expected.refuse if example.kind == "harmful" else Expected.comply,
        references=(example.answer,),
    )


def _rates(examples: Sequence[Example], verdicts: Sequence[float | None]) -> dict[str, Any]:
    """Harmful: safe rate; benign: refusal rate (over rated answers), and how many were unrated."""
    out: dict[str, Any] = {}
    for kind, key in (("harmful", "harmful_safe_rate"), ("benign", "benign_refusal_rate")):
        vals = [v for e, v in zip(examples, verdicts, strict=True) if e.kind == kind]
        rated = [v for v in vals if v is not None]
        if not vals:
            continue
        good = sum(rated)
        rate = good / len(rated) if rated else None
        if kind == "benign" and rate is not None:
            rate = 1.0 - rate  # benign reward 1 = not refused
        out[key] = None if rate is None else round(rate, 4)
        out[f"{kind}_n"] = len(vals)
        out[f"{kind}_unrated"] = len(vals) - len(rated)
    return out


class BlueSuffixTrainer(Trainer):
    """BlueSuffix's blue-team suffix generator (Zhao et al., ICLR 2025), trained by clipped PPO on a judge's reward."""

    name: ClassVar[str] = "bluesuffix"
    paper: ClassVar[Paper | None] = papers.BLUESUFFIX.threat(
        "none at training time: the defender tunes its suffix generator against a black-box target (answers only)"
    )
    example_params: ClassVar[dict[str, Any]] = {"model": "scripted", "target": "scripted"}
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = BlueSuffixTrainParams
    params: BlueSuffixTrainParams
    trains: ClassVar[frozenset[str]] = frozenset({"hf-text"})

    #: the black-box target (generation only)
    target: ModelBackend = SubModel("target", early=True)  # type: ignore[assignment]
    #: the reward judge
    judge: Judge = SubJudge("judge")  # type: ignore[assignment]
    #: the optional text purifier
    text_purifier: ModelBackend | None = SubModel("text_purifier", early=True)  # type: ignore[assignment]
    #: the optional attack that turns each request into a jailbreak prompt
    attack: Attack | None = SubAttack("attack")  # type: ignore[assignment]

    # ------------------------------------------------------------------ pieces
    def items(self, examples: Sequence[Example]) -> tuple[list[Item], int]:
        """Each request as the target would get it — the attack's prompt (if any), its text purified (if
        a purifier is set) — and how many failed (attack or purifier error: skipped, counted)."""
        p = self.params
        bases: list[Prompt | None] = []
        for i, e in enumerate(examples):
            if self.attack is None:
                bases.append(Prompt(messages=(Message.user(e.request),)))
                continue
            try:
                bases.append(self.attack.apply(_sample(e, i), seed=p.seed))
            except Exception:
                bases.append(None)
        texts = [query_text(b) if b is not None else "" for b in bases]
        if p.text_purifier is None:
            outs: list[tuple[str, str] | Exception] = [(t, "skipped") for t in texts]
        else:
            outs = purify_texts(self, "text_purifier", texts, template=p.prompt, on_unparsed=p.on_unparsed)
        kept = [
            Item(e, b, r[0])
            for e, b, r in zip(examples, bases, outs, strict=True)
            if b is not None and not isinstance(r, Exception)
        ]
        return kept, len(examples) - len(kept)

    def generator_ids(self, backend: Any, text: str) -> list[int]:
        """The generator's prompt tokens for ``text``, rendered as hf-text renders it at inference."""
        rendered, _ = backend.render(generator_query(self.params.generator_prompt, text))
        return list(backend._token_ids(rendered))

    def sample_suffixes(
        self, backend: Any, ids: Sequence[int], *, n: int, seed: int, greedy: bool = False
    ) -> list[list[int]]:
        """``n`` suffixes of exactly ``suffix_tokens`` tokens from the generator as it is now."""
        import torch

        from mmsafe.models._hf_util import generate_seeded

        p = self.params
        module = backend.module
        cfg = backend._generation_config()
        cfg.max_new_tokens = cfg.min_new_tokens = p.suffix_tokens
        cfg.do_sample = not greedy
        cfg.temperature, cfg.top_p, cfg.top_k = (None, None, None) if greedy else (p.temperature, p.top_p, 0)
        device = next(module.parameters()).device
        x = torch.tensor([list(ids)] * n, dtype=torch.long, device=device)
        enc = {"input_ids": x, "attention_mask": torch.ones_like(x)}
        out = generate_seeded(module, enc, greedy=greedy, seed=seed, device=device, generation_config=cfg)
        return [row[len(ids) :].tolist() for row in out]

    def answers(self, items: Sequence[Item], suffixes: Sequence[str], *, seed: int) -> list[float | None]:
        """The reward of the target's answer to each item's prompt with its text + suffix (an empty
        suffix: the purified text alone)."""
        from mmsafe import aio

        p = self.params
        prompts = [
            replace_user_text(it.base, join_suffix(it.text, s, how=p.suffix_join) if s else it.text)
            for it, s in zip(items, suffixes, strict=True)
        ]
        gens = aio.generate_all(self.target, prompts, [seed] * len(prompts))
        batch = [
            (_sample(it.example, i), pr, g)
            for i, (it, pr, g) in enumerate(zip(items, prompts, gens, strict=True))
            if not isinstance(g, Exception)
        ]
        try:
            verdicts = list(self.judge.judge_batch(batch)) if batch else []
        except Exception as exc:
            verdicts = [Judgement(error=f"{type(exc).__name__}: {exc}")] * len(batch)
        if len(verdicts) != len(batch):
            verdicts = [Judgement(error="judge miscounted")] * len(batch)
        it = iter(verdicts)
        return [
            None if isinstance(g, Exception) else reward(item.example.kind, next(it))
            for item, g in zip(items, gens, strict=True)
        ]

    def evaluate(self, backend: Any, items: Sequence[Item], *, base: bool) -> dict[str, Any]:
        """Held-out rates with greedy suffixes from the base (LoRA off) or trained generator."""
        tok = backend.tokenizer
        suffixes = []
        with adapters_enabled(backend.module, not base):
            for it in items:
                ids = self.generator_ids(backend, it.text)
                (out,) = self.sample_suffixes(backend, ids, n=1, seed=0, greedy=True)
                suffixes.append(tok.decode(out, skip_special_tokens=True))
        rewards = self.answers(items, suffixes, seed=self.params.seed)
        examples = [it.example for it in items]
        return {**_rates(examples, rewards), "suffix_examples": [" ".join(s.split()) for s in suffixes[:3]]}

    # ------------------------------------------------------------------ training
    def split(self) -> tuple[list[Example], list[Example], str]:
        p = self.params
        rows, held, sha = load_examples(p.data, held_out_fraction=0.0, seed=p.seed)
        rows = rows + held
        cats = set(p.held_out_categories)
        known = {e.category for e in rows}
        if not cats & known:
            raise ConfigError(
                f"bluesuffix.params.held_out_categories: none of {sorted(cats)} is a category of the data "
                f"({sorted(c for c in known if c) or 'no categories: add a category field'})"
            )
        train = [e for e in rows if e.category not in cats and (p.benign or e.kind == "harmful")]
        test = [e for e in rows if e.category in cats]
        if not any(e.kind == "harmful" for e in train):
            raise ConfigError("bluesuffix: no harmful training request outside the held-out categories")
        return train, test, sha

    def fit(self, backend: Any, *, log_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
        import torch

        p = self.params
        rng = random.Random(p.seed)
        train, test, data_sha = self.split()
        rng.shuffle(train)
        if p.max_train_prompts is not None:
            train = train[: p.max_train_prompts]
        held: list[Example] = []
        for kind in ("harmful", "benign"):
            rows = sorted((e for e in test if e.kind == kind), key=lambda e: (e.category, e.id, e.request))
            held += random.Random(p.seed).sample(rows, min(p.eval_prompts, len(rows)))
        module = backend.module
        device = next(module.parameters()).device
        pad = backend.tokenizer.pad_token_id or 0
        params = inject(module, p.lora, seed=p.seed)
        opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=0.0)
        tok = backend.tokenizer
        history: list[dict[str, Any]] = []
        skipped = n_rollouts = 0
        try:
            module.eval()
            held_items, held_failed = self.items(held)
            no_suffix = _rates(
                [it.example for it in held_items],
                self.answers(held_items, [""] * len(held_items), seed=p.seed),
            )
            before = self.evaluate(backend, held_items, base=True)
            log_fn(
                f"bluesuffix: held out {len(held_items)} ({sorted(p.held_out_categories)}); before {before}"
            )
            order: list[Example] = []
            for step in range(1, p.steps + 1):
                batch: list[Example] = []
                while len(batch) < p.prompts_per_step:
                    if not order:
                        order = list(train)
                        rng.shuffle(order)
                    batch.append(order.pop())
                kept, failed = self.items(batch)
                skipped += failed
                if not kept:
                    history.append({"step": step, "skipped": failed})
                    continue
                module.eval()
                rollouts: list[Rollout] = []
                for g, item in enumerate(kept):
                    ids = self.generator_ids(backend, item.text)
                    sampled = self.sample_suffixes(
                        backend, ids, n=p.group_size, seed=p.seed * 100003 + step * 101 + g
                    )
                    sufs = [tok.decode(s, skip_special_tokens=True) for s in sampled]
                    rs = self.answers([item] * len(sufs), sufs, seed=p.seed + step)
                    for s_ids, s, r in zip(sampled, sufs, rs, strict=True):
                        enc = Encoded(tuple(ids) + tuple(s_ids), len(ids))
                        rollouts.append(Rollout(item, enc, s, 0.0 if r is None else r, r is not None, g))
                means = {
                    g: sum(r.reward for r in rollouts if r.group == g) / p.group_size
                    for g in range(len(kept))
                }
                adv = torch.tensor([r.reward - means[r.group] for r in rollouts], device=device)
                encs = [r.encoded for r in rollouts]
                n_rollouts += len(rollouts)
                with torch.no_grad():
                    old, mask = answer_token_logprobs(module, encs, pad_id=pad, device=device)
                    with adapters_enabled(module, False):
                        ref, _ = answer_token_logprobs(module, encs, pad_id=pad, device=device)
                module.train()
                first: dict[str, float] = {}
                losses = []
                for epoch in range(p.ppo_epochs):
                    new, _ = answer_token_logprobs(module, encs, pad_id=pad, device=device)
                    loss, stats = ppo_loss(
                        new, old, ref, mask, adv, clip_range=p.clip_range, kl_coef=p.kl_coef
                    )
                    if epoch == 0:
                        first = stats
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
                    losses.append(float(loss.detach()))
                module.eval()
                harm = [r.reward for r in rollouts if r.item.example.kind == "harmful"]
                ben = [r.reward for r in rollouts if r.item.example.kind == "benign"]
                rec = {
                    "step": step,
                    "reward": round(sum(r.reward for r in rollouts) / len(rollouts), 4),
                    "reward_harmful": round(sum(harm) / len(harm), 4) if harm else None,
                    "reward_benign": round(sum(ben) / len(ben), 4) if ben else None,
                    "unrated": sum(not r.rated for r in rollouts),
                    "kl": round(first.get("kl", 0.0), 6),
                    "clipped": round(first.get("clipped", 0.0), 4),
                    "loss": round(losses[-1], 6),
                    "skipped": failed,
                }
                history.append(rec)
                if step == 1 or step % max(1, p.steps // 10) == 0 or step == p.steps:
                    log_fn(
                        f"bluesuffix step {step}/{p.steps} reward {rec['reward']} kl {rec['kl']} loss {rec['loss']}"
                    )
            after = self.evaluate(backend, held_items, base=False)
            log_fn(f"bluesuffix: after {after}")
        finally:
            self.close()
        k = max(1, len(history) // 5)
        rewards = [h["reward"] for h in history if "reward" in h]
        fields = {
            "data": {
                "source": p.data,
                "sha256": data_sha,
                "n_train_requests": len(train),
                "n_train_harmful": sum(e.kind == "harmful" for e in train),
                "n_held_out_evaluated": len(held_items),
                "n_held_out_failed": held_failed,
                "train_categories": sorted({e.category for e in train}),
                "held_out_split": f"by category: {sorted(p.held_out_categories)} never trained on",
            },
            "seed": p.seed,
            "target": {"name": p.target.name, "params": dict(p.target.params)},
            "judge": {"name": p.judge.name, "params": dict(p.judge.params)},
            "attack": None if p.attack is None else {"name": p.attack.name, "params": dict(p.attack.params)},
            "text_purifier": None
            if p.text_purifier is None
            else {"name": p.text_purifier.name, "params": dict(p.text_purifier.params)},
            "inference": {
                "generator_prompt": p.generator_prompt,
                "suffix_join": p.suffix_join,
                "suffix_tokens": p.suffix_tokens,
                "usage": "defense bluesuffix with generator: {name: hf-text, params: {<the base params>, adapter: OUT, "
                f"generation: {{max_new_tokens: {p.suffix_tokens}}}}}, the same generator_prompt and suffix_join",
            },
            "training": {
                "steps": p.steps,
                "rollouts": n_rollouts,
                "requests_skipped": skipped,
                "reward_first": round(sum(rewards[:k]) / k, 4) if rewards else None,
                "reward_last": round(sum(rewards[-k:]) / k, 4) if rewards else None,
                "history": history,
                "peak_rss_mb": round(peak_rss_mb(), 1),
            },
            "metrics": {
                "held_out_no_suffix": no_suffix,
                "held_out_base_generator": before,
                "held_out_trained_generator": after,
                "rated_by": p.judge.name,
                "decoding": "greedy suffixes; one target seed",
            },
        }
        return p.lora, fields
