"""ImgJP / DeltaJP: one jailbreaking image (or image perturbation) fitted over many harmful behaviours at once.

Paper: Zhenxing Niu, Haodong Ren et al., "Jailbreaking Attack against Multimodal Large Language
Model", arXiv:2402.02309 (2024); code: github.com/abc03570128/
Jailbreaking-Attack-against-Multimodal-Large-Language-Model. An image jailbreaking prompt
(**imgJP**) is found by maximising, over a set of AdvBench behaviours ``(goal_i, target_i)``, the
likelihood of each affirmative target ("Sure, here is …") as the model's answer to the goal shown
with the image: ``min_x Σ_i −log p(target_i | goal_i, x)``. One image serves every behaviour
(prompt-universal); the paper reports it also jailbreaks behaviours it was not fitted on, and
transfers to other models (crafted on MiniGPT-4, run on MiniGPT-v2, LLaVA, InstructBLIP,
mPLUG-Owl2 — use ``source`` for that setting). **deltaJP** optimises the same objective over an
ε-bounded perturbation δ that is *added* to images (``clamp(image + δ)``): fitted over one or
more ``fit_images`` and then added to each sample's own image (image-universal as well).

Threat model: white-box on the crafting model (gradients to the pixels); the attacker controls
the image (imgJP) or a bounded perturbation of the user's image (deltaJP), fitted once, offline,
and reused with every request — zero queries to the evaluated model while attacking.

Algorithm as implemented: the shared PGD engine (signed steps α, 8-bit rounding) minimises the
mean teacher-forced loss of the targets; the training behaviours are shuffled once with ``seed``
and cut into fixed minibatches of ``behavior_batch`` visited in turn (one minibatch per step; one
batch of all of them keeps the best iterate, minibatches keep the last). imgJP optimises the
image itself from ``init_image`` (default a mid-grey ``init`` image), ``norm: none``; deltaJP
optimises δ (stored as the mid-grey image + δ, so the engine's ε-ball is δ's) with every step
averaging over all ``fit_images``. After fitting, the held-out behaviours (never seen while
fitting) are scored: mean target loss with the start image and with the fitted one, and greedy
decoding's success (the answer starts with the target), for the training split too.

Parameters (plus the engine's): ``variant`` (``imgjp`` | ``deltajp``); ``behaviors_file``
(AdvBench/HarmBench ``goal,target`` ``.csv``/``.jsonl``; default: our own 12 low-harm pairs,
:data:`~mmsafe.attacks.adversarial._behaviors.BUILTIN_BEHAVIORS` — not the paper's data);
``train_behaviors`` 25 and ``test_behaviors`` 100 (the release's split of AdvBench: 25 fitted,
100 held out); ``behavior_batch`` 1 (the release takes one signed step per behaviour, cycling);
``steps`` 5000 (imgJP: the release's 200 passes × 25 behaviours) or 12500 (deltaJP: 500 × 25);
``step_size`` 1/255; ``norm`` ``none`` (imgJP) / ``linf`` with ``eps`` 16/255 (deltaJP);
``fit_images`` (deltaJP: image paths δ is fitted over; default the start image);
``init_image``; ``evaluate`` (greedy success on both splits, on by default); ``seed``.

Recorded (``attack_metadata``): ``variant``, ``train_size``, ``heldout_size``,
``train_loss_clean/final``, ``heldout_loss_clean/final``, ``train_success`` and
``heldout_success`` (``{"k", "n"}``), ``loss_curve`` (≤ 100 points), ``split_note`` when the file
had too few behaviours; deltaJP adds ``delta_linf`` and the distances to each sample's image.

Where we depart from the paper / the authors' release (one variant each, both built):
(1) the release's ε and α act on CLIP-*normalised* tensors (std ≈ 0.27), so its imgJP budget
"16" is ≈ 4/255 in pixels around the CLIP-mean image and its deltaJP "64" ≈ 17/255; we work in
pixel space (the paper's meaning of ε): imgJP unconstrained (``norm: none``, as the paper
describes imgJP), deltaJP 16/255 — set ``norm``/``eps`` to reproduce another budget. (2) The
release's deltaJP fits over 10 category images and scores 10 others; we fit over ``fit_images``
and record the held-out *behaviours*, not held-out images. (3) Success here is a greedy prefix
match of the target; the release samples (top-p 0.9) and counts refusal-prefix-free answers and
exact target matches — judge the answers with a judge for the jailbreak rate. (4) deltaJP applies
δ to images the size δ was fitted at; a sample whose image maps to another pixel size gets δ
resized bilinearly (recorded as ``delta_resized``; the ε bound still holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from mmsafe.attacks.adversarial._behaviors import (
    Behavior,
    BehaviorSplit,
    behavior_prompt,
    behavior_split,
    downsample,
    split_scores,
)
from mmsafe.attacks.adversarial.base import AdversarialParams, UniversalAttack
from mmsafe.plugin_meta import Paper
from mmsafe.types import Image, Prompt, Sample

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend

__all__ = ["ImgJP", "ImgJPParams"]

#: deltaJP's perturbation is stored as this grey level + δ (on the 8-bit grid, so δ is too)
GREY = 128 / 255


class ImgJPParams(AdversarialParams):
    model_config = ConfigDict(extra="forbid", frozen=True)

    variant: Literal["imgjp", "deltajp"] = Field(
        "imgjp", description="imgjp: the image; deltajp: an added ε-bounded δ"
    )
    norm: Literal["linf", "l2", "none", "patch", "moving-patch"] = Field(
        "none", description="imgjp: none (unconstrained); deltajp default: linf"
    )
    eps: float = Field(16 / 255, description="deltajp's radius (pixel units)")
    steps: int = Field(5000, ge=1, le=1_000_000, description="imgjp 5000, deltajp 12500 (release)")
    early_stop: bool = Field(False, description="a fixed budget, as in the paper")
    behaviors_file: str | None = Field(
        None, description="AdvBench/HarmBench goal,target .csv/.jsonl (default: built-in)"
    )
    train_behaviors: int = Field(25, ge=1, le=100_000, description="behaviours fitted on (release: 25)")
    test_behaviors: int = Field(
        100, ge=0, le=100_000, description="held-out behaviours scored (release: 100)"
    )
    behavior_batch: int = Field(1, ge=1, le=4096, description="behaviours per step (release: 1)")
    fit_images: tuple[str, ...] = Field(
        (), description="deltajp: images δ is fitted over (default: the start image)"
    )
    init_image: str | None = Field(None, description="start image path (default: the init colour image)")
    evaluate: bool = Field(True, description="greedy success on the training and held-out behaviours")
    seed: int = Field(0, description="behaviour shuffle/split and random start")

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("variant") == "deltajp":
            data = dict(data)
            data.setdefault("norm", "linf")
            data.setdefault("steps", 12500)
        return data

    @model_validator(mode="after")
    def _deltajp_norm(self) -> ImgJPParams:
        if self.variant == "deltajp" and self.norm not in ("linf", "l2"):
            raise ValueError("variant 'deltajp' is an ε-bounded perturbation: norm must be 'linf' or 'l2'")
        if self.variant == "deltajp" and self.evade is not None:
            raise ValueError(
                "variant 'deltajp' cannot evade a detector: its optimised variable is δ, not the image the "
                "detector sees (use variant 'imgjp')"
            )
        return self


class ImgJP(UniversalAttack):
    """ImgJP / DeltaJP (Niu et al. 2024): one image (or bounded perturbation) maximising affirmative
    targets over many harmful behaviours, scored on held-out behaviours."""

    name: ClassVar[str] = "imgjp"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[ImgJPParams]] = ImgJPParams
    paper: ClassVar[Paper] = Paper(
        title="Jailbreaking Attack against Multimodal Large Language Model",
        authors="Niu et al.",
        year=2024,
        url="https://arxiv.org/abs/2402.02309",
        threat_model="white-box gradients of the crafting model; one image (or ε-bounded perturbation) fitted offline, reused",
    )
    example_params: ClassVar[dict[str, Any]] = {"steps": 2, "test_behaviors": 2, "evaluate": False}

    @property
    def ip(self) -> ImgJPParams:
        assert isinstance(self.params, ImgJPParams)
        return self.params

    def fit_seed(self) -> int:
        return self.ip.seed

    # ---------------------------------------------------------------- data

    def behaviors(self) -> BehaviorSplit:
        p = self.ip
        return behavior_split(
            p.behaviors_file, train=p.train_behaviors, heldout=p.test_behaviors, seed=p.seed
        )

    def start(self) -> Image:
        if self.ip.init_image:
            return Image.from_path(self.ip.init_image)
        return self.start_image(Sample(id="init", benchmark="", text=""), self.ip.seed)

    def fit_images(self) -> list[Image]:
        return [Image.from_path(p) for p in self.ip.fit_images] or [self.start()]

    # ----------------------------------------------------------------- fit

    def fit(self, model: Any, seed: int) -> tuple[Image, dict[str, Any]]:
        import torch

        split = self.behaviors()
        delta = self.ip.variant == "deltajp"
        images = self.fit_images() if delta else [self.start()]
        bases = [model.to_pixels(im) for im in images]
        if len({tuple(b.shape) for b in bases}) > 1:
            raise ValueError("deltajp: every fit image must map to the same pixel size in the crafting model")
        base = torch.round(torch.stack(bases).float() * 255) / 255  # [K, 3, H, W]
        clean = torch.full_like(base[:1], GREY) if delta else base[:1]

        def pixels_of(x: Any) -> Any:  # the engine's variable → the K images the model sees
            return (base + (x[0] - GREY)).clamp(0, 1) if delta else x[:1]

        order = list(split.train)
        size = self.ip.behavior_batch
        chunks = [order[k : k + size] for k in range(0, len(order), size)]
        objectives = [self._objective(model, images, chunk) for chunk in chunks]

        def loss(x: Any, step: int) -> Any:
            objective, n = objectives[step % len(objectives)]
            px = pixels_of(x)
            return objective([[px[k]] for k in range(px.shape[0]) for _ in range(n)]).mean().reshape(1)

        keep: Literal["best", "last"] = "best" if len(objectives) == 1 else "last"
        key = "imgjp-ckpt-" + self.cache_key(model)[:24]
        evade = None
        if self.evade is not None:  # imgjp only (checked at construction): the detector sees x itself
            from mmsafe.attacks.adversarial.evade import EvadePrompts

            rows = [[behavior_prompt(b, images[0]) for b in chunk] for chunk in chunks]
            evade = EvadePrompts(
                rows=[[p for r in rows for p in r]], at=lambda step: [rows[step % len(rows)]]
            )
        result = self.run_engine(
            model, clean, loss, success_fn=None, seed=seed, key=key, keep=keep, evade_prompts=evade
        )
        adv = result.adversarial
        meta_image, meta = self.output(clean, adv, result, 0, model, tested=False)
        meta.pop("final_loss", None)
        with torch.no_grad():
            meta.update(self._scores(model, images, split, pixels_of(clean), pixels_of(adv)))
        meta.update(
            {
                "universal": True,
                "variant": self.ip.variant,
                "loss_curve": downsample([sum(r) / len(r) for r in result.losses]),
                "fit_images": len(images),
            }
        )
        if delta:
            meta["delta_linf"] = meta.pop("linf")
            meta["delta_l2"] = meta.pop("l2")
            for k in ("psnr", "ssim"):
                meta.pop(k, None)
        if split.note:
            meta["split_note"] = split.note
        return meta_image, meta

    def _objective(self, model: Any, images: list[Image], chunk: Sequence[Behavior]) -> tuple[Any, int]:
        prompts = [behavior_prompt(b, im) for im in images for b in chunk]
        targets = [b.target for _ in images for b in chunk]
        return model.teacher_forced(prompts, targets), len(chunk)

    def _scores(
        self, model: Any, images: list[Image], split: BehaviorSplit, clean: Any, adv: Any
    ) -> dict[str, Any]:
        """Mean target loss (start vs fitted) and greedy success on the training and held-out splits."""

        def shown(part: Sequence[Behavior], label: str) -> tuple[list[Prompt], list[Any], list[str]]:
            px = clean if label == "clean" else adv
            prompts = [behavior_prompt(b, im) for im in images for b in part]
            pixels = [px[k] for k in range(px.shape[0]) for _ in part]
            return prompts, pixels, [b.target for _ in images for b in part]

        return split_scores(model, split, shown, evaluate=self.ip.evaluate)

    # --------------------------------------------------------------- apply

    def prompt_for(
        self,
        sample: Sample,
        *,
        seed: int,
        image: Image,
        meta: dict[str, Any],
        model: Any,
        target: ModelBackend | None,
    ) -> Prompt:
        if self.ip.variant == "imgjp":
            return super().prompt_for(sample, seed=seed, image=image, meta=meta, model=model, target=target)
        return self._with_delta(model, sample, seed, _exact_pixels(image) - GREY, meta)

    def _with_delta(self, model: Any, sample: Sample, seed: int, delta: Any, meta: dict[str, Any]) -> Prompt:
        """The sample's own image (or the start image) plus the fitted δ, within the ε-ball."""
        import torch

        from mmsafe.attacks.adversarial.engine import PGDResult
        from mmsafe.attacks.adversarial.threat_model import ThreatModel

        clean = model.to_pixels(self.start_image(sample, seed)).float().cpu().unsqueeze(0)
        resized = tuple(delta.shape[-2:]) != tuple(clean.shape[-2:])
        d = delta.unsqueeze(0)
        if resized:
            d = torch.nn.functional.interpolate(
                d, size=clean.shape[-2:], mode="bilinear", align_corners=False
            )
        threat = ThreatModel(self.p.pgd())
        clean = threat.prepare(clean)
        adv = threat.round(clean, threat.project(clean, clean + d))
        result = PGDResult(
            adversarial=adv,
            losses=[],
            final_loss=[float("nan")],
            success=[False],
            steps_run=int(meta.get("steps", 0)),
            seconds=0.0,
        )
        image, own = self.output(clean, adv, result, 0, model, tested=False)
        for k in ("final_loss", "steps", "seconds", "batch", "resumed_from"):
            own.pop(k, None)
        prompt = self.with_image(sample, image)
        return prompt.model_copy(
            update={"attack_metadata": {**prompt.attack_metadata, **meta, **own, "delta_resized": resized}}
        )


def _exact_pixels(image: Image) -> Any:
    """``[3, H, W]`` float tensor of a PNG's 8-bit values (no resizing: δ is read back exactly)."""
    import numpy as np
    import torch

    arr = np.asarray(image.to_pil("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
