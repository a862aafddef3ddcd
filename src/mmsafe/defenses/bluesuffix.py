"""BlueSuffix: purify the image and the text, then append a suffix written by an RL-trained blue-team generator.

Paper: Yunhan Zhao, Xiang Zheng, Lin Luo, Yige Li, Xingjun Ma, Yu-Gang Jiang, "BlueSuffix: Reinforced
Blue Teaming for Vision-Language Models Against Jailbreak Attacks", ICLR 2025, arXiv:2410.20971; code
github.com/Vinsonzyh/BlueSuffix (it ships the image purifier, a GPT-4o text purifier and
``ppo_blue_team.py``; the fine-tuned generator is not released).

Threat model: the attacker writes the request (text and image) against a black-box target VLM and
sees only its answer; the defender sits in front of the target and uses only its generation (no
weights, no gradients). The defender owns three parts: a visual purifier, a textual purifier (an LLM)
and a small suffix generator; all three are hidden from the attacker here (an adaptive attacker who
knows them is out of scope, as in the paper).

Per item, as implemented:

1. *Visual purifier* — every input image is denoised (``image_purifier``): ``diffusion`` is the
   paper's DiffPure: a local diffusers DDPM folder (``diffusion_path``), the image noised to timestep
   ``diffusion_t`` (authors' default 400 of 1000) and denoised by the reverse DDPM chain
   (``diffusion_mode: ddpm``, ``diffusion_t`` UNet calls) or, cheaper, by one x_0 prediction
   (``one-shot``) (:class:`mmsafe.render.denoise.DiffusionDenoiser`, shared with ``cider``). ``gaussian``
   (default), ``median`` and ``jpeg`` are offline classical stand-ins (no diffusion weights ship
   here), recorded as ``stand_in`` in the details; ``none`` skips it (recorded).
2. *Textual purifier* — ``text_purifier`` (any model backend, a declared sub-model; answers cached in
   the run store) reads :data:`~mmsafe.defenses._bluesuffix.PURIFIER_PROMPT` (our wording of the
   authors' template's structure: decide whether the question hides a risk; copy it if not; else
   rewrite it so the intent is plain and a model can decline; the final question between ``@@``
   marks) with the user's text neutralised; ``prompt`` replaces the template (``{query}`` marks the
   text) so a user can supply the authors' exact text. The last ``@@…@@`` span replaces the last
   user turn's text. An answer without one fails the item (``on_unparsed: fail``) or keeps the
   original text (``keep``, recorded as ``text_purified: unparsed``). ``text_purifier: null`` skips this part
   (recorded: ``text_purifier: null``, ``text_purified: skipped``).
3. *Blue-team suffix* — ``generator`` (a model backend; the method's generator is ``hf-text`` with
   ``adapter:`` set to the adapter written by ``mmsafe train bluesuffix``) continues
   ``generator_prompt`` (``{query}`` = the purified text), decoded as its spec says (greedy or
   sampled with the item's seed). The suffix (one line, at most ``max_suffix_chars``) joins the
   purified text as the authors' code joins it (``suffix_join: question``: the trailing ``?``
   dropped, ``" " + suffix + "?"``; ``append``: after a space). An empty suffix fails the item.
4. The target answers the purified image(s) and the joined text (1 model call).

Record: action ``modified-input``, ``calls`` 1, details ``image_purifier`` (and ``stand_in``),
``images`` (how many purified), ``text_purifier`` (its name or None), ``text_purified``
(``rewritten``, ``unchanged``, ``unparsed`` (kept), ``empty`` (no text, not asked), ``skipped`` (no purifier)),
``purified_text`` (first 500 characters), ``suffix``, ``aux_calls`` (purifier + generator calls).
A broken sub-model fails its items with an error naming the part.

Parameters (default; paper's value): ``generator`` (required; GPT-2 fine-tuned by PPO),
``text_purifier`` (None; GPT-4o), ``prompt`` (ours; the authors' template), ``on_unparsed`` (fail),
``image_purifier`` (gaussian stand-in; DiffPure), ``diffusion_path`` (None; the 256×256 unconditional
guided-diffusion ImageNet model), ``diffusion_t`` (400; 400), ``diffusion_mode`` (ddpm; ddpm reverse
chain), ``diffusion_device`` (cpu), ``blur_radius`` (1.0), ``median_size`` (3), ``jpeg_quality`` (50),
``generator_prompt`` ("{query}": the purified text itself, as the authors feed GPT-2),
``suffix_join`` (question; the authors' code), ``max_suffix_chars`` (300).

Departures: the default image purifier is a classical stand-in (no diffusion weights offline); the
diffusion path takes a diffusers DDPM folder rather than the authors' guided-diffusion checkpoint and
resizes to the UNet's size; the text purifier's prompt is ours (structure kept); an hf-text
generator renders ``generator_prompt`` through its chat template (the authors feed raw text to base
GPT-2: give hf-text a plain ``chat_template`` to do the same), and cannot force the authors' minimum of
10 new tokens at inference (its ``max_new_tokens`` caps the suffix).
Confirmed from the authors' code (``ppo_blue_team.py``, ``text_purifier.py``,
``Image_Purifier/image_purifier.py``): t = 400, one purification run, the reverse DDPM chain; the
suffix join; the @@-marked purifier answer. Not confirmed (paper text not read here): anything beyond
those files.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmsafe import papers
from mmsafe.components import SubModel
from mmsafe.config import ComponentField
from mmsafe.defenses._bluesuffix import (
    PURIFIER_PROMPT,
    SuffixJoin,
    clean_suffix,
    generator_query,
    join_suffix,
    purify_texts,
)
from mmsafe.defenses.base import Defense, mark
from mmsafe.defenses.edit import map_images, replace_user_text
from mmsafe.defenses.output_guard import query_text
from mmsafe.models.base import ModelBackend
from mmsafe.plugin_meta import Paper
from mmsafe.render.denoise import MedianSize
from mmsafe.types import Generation, Image, Prompt, stable_hash

__all__ = ["BlueSuffix", "BlueSuffixParams"]

ImagePurifier = Literal["diffusion", "gaussian", "median", "jpeg", "none"]
STAND_INS = frozenset({"gaussian", "median", "jpeg"})


def _template(v: str) -> str:
    if "{query}" not in v:
        raise ValueError("the template must contain {query} (where the user's text goes)")
    return v


class BlueSuffixParams(BaseModel):
    """Parameters of :class:`BlueSuffix`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generator: ComponentField = Field(
        description="the suffix generator: {name, params} of a backend (the method: hf-text with adapter: "
        "the output of `mmsafe train bluesuffix`)"
    )
    text_purifier: ComponentField | None = Field(
        None, description="the text purifier: {name, params} of any model backend (None: skipped, recorded)"
    )
    prompt: str = Field(
        PURIFIER_PROMPT,
        min_length=8,
        max_length=20000,
        description="the purifier's template ({query}: the text)",
    )
    on_unparsed: Literal["fail", "keep"] = Field(
        "fail", description="purifier answer without an @@ question: fail the item, or keep the original text"
    )
    image_purifier: ImagePurifier = Field(
        "gaussian", description="diffusion (DiffPure) | gaussian, median, jpeg (stand-ins) | none"
    )
    diffusion_path: str | None = Field(None, description="diffusion: local diffusers DDPM pipeline folder")
    diffusion_t: int = Field(
        400, ge=1, le=1000, description="diffusion: noise timestep (authors: 400 of 1000)"
    )
    diffusion_mode: Literal["ddpm", "one-shot"] = Field(
        "ddpm", description="diffusion: reverse DDPM chain (t UNet calls; DiffPure) or one x0 prediction"
    )
    diffusion_device: str = Field("cpu", pattern=r"^(cpu|mps|cuda(:\d+)?)$")
    blur_radius: float = Field(1.0, gt=0.0, le=20.0, description="gaussian stand-in: blur radius, px")
    median_size: MedianSize = Field(3, description="median stand-in: window (odd)")
    jpeg_quality: int = Field(50, ge=1, le=95, description="jpeg stand-in: quality")
    generator_prompt: str = Field(
        "{query}", min_length=7, max_length=5000, description="the generator's input ({query}: purified text)"
    )
    suffix_join: SuffixJoin = Field(
        "question", description="question: text minus trailing '?' + ' ' + suffix + '?' (authors); append"
    )
    max_suffix_chars: int = Field(300, ge=1, le=5000, description="the suffix is cut to this many characters")

    @field_validator("prompt", "generator_prompt")
    @classmethod
    def _has_query(cls, v: str) -> str:
        return _template(v)


    @model_validator(mode="after")
    def _diffusion(self) -> BlueSuffixParams:
        if self.image_purifier == "diffusion" and not self.diffusion_path:
            raise ValueError(
                "image_purifier 'diffusion' needs diffusion_path (a local diffusers DDPM folder)"
            )
        return self


class BlueSuffix(Defense):
    """BlueSuffix (Zhao et al., ICLR 2025): image + text purifiers and an RL-trained blue-team suffix."""

    name: ClassVar[str] = "bluesuffix"
    version: ClassVar[str] = "1"
    paper: ClassVar[Paper | None] = papers.BLUESUFFIX.threat(
        "black-box target VLM; the attacker writes text and image; the defender purifies both and appends a "
        "suffix from an RL-trained generator, using only the target's answers"
    )
    #: offline: a scripted purifier, and the tiny random LLaVA writing (random) 6-token suffixes
    example_params: ClassVar[dict[str, Any]] = {
        "generator": {"name": "tiny-llava", "params": {"generation": {"max_new_tokens": 6}}},
        "text_purifier": {
            "name": "scripted",
            "params": {"default": "Checked. @@What does the picture show?@@"},
        },
    }
    Params: ClassVar[type[BaseModel]] = BlueSuffixParams
    params: BlueSuffixParams
    transforms_images: ClassVar[bool] = True
    #: the suffix generator (answers cached in the run store: same text and seed, same suffix)
    generator: ModelBackend = SubModel("generator", early=True)  # type: ignore[assignment]
    #: the text purifier (None when not configured)
    text_purifier: ModelBackend | None = SubModel("text_purifier", early=True)  # type: ignore[assignment]

    def __init__(self, params: Any = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._denoiser: Any = None
        if self.params.image_purifier == "diffusion":  # a missing package fails here, naming the extra
            from mmsafe.errors import require
            from mmsafe.render.denoise import DiffusionDenoiser

            require("diffusers", extra="diffusion", purpose="the bluesuffix image purifier")
            self._denoiser = DiffusionDenoiser(
                str(self.params.diffusion_path),
                device=self.params.diffusion_device,
                purpose="the bluesuffix image purifier",
            )

    # ------------------------------------------------------------------ visual purifier
    def transform_image(self, image: Image, *, seed: int) -> Image:
        """``image`` purified (PNG), or unchanged with ``image_purifier: none``."""
        from mmsafe.render.denoise import classical_denoise

        p = self.params
        if p.image_purifier == "none":
            return image
        pil = image.to_pil("RGB")
        if p.image_purifier == "diffusion":
            noise_seed = int(stable_hash([seed, "bluesuffix-diffpure"])[:8], 16)
            if p.diffusion_mode == "ddpm":
                out = self._denoiser.purify(pil, t=p.diffusion_t, seed=noise_seed)
            else:
                out = self._denoiser.one_shot(pil, t=p.diffusion_t - 1, seed=noise_seed)
        else:
            out = classical_denoise(
                pil,
                p.image_purifier,
                blur_radius=p.blur_radius,
                median_size=p.median_size,
                jpeg_quality=p.jpeg_quality,
            )
        return Image.from_pil(out, source=f"{image.source or 'image'}#bluesuffix-purified")

    # ------------------------------------------------------------------ the pipeline
    def suffixes(self, texts: Sequence[str], seeds: Sequence[int]) -> list[str | Exception]:
        """One suffix (or the exception) per purified text, from the generator, seeded per item."""
        from mmsafe import aio

        p = self.params
        try:
            gen = self.generator
        except Exception as exc:  # the generator could not be created or loaded
            err = RuntimeError(f"bluesuffix: suffix generator failed: {type(exc).__name__}: {exc}")
            return [err for _ in texts]
        asks = [generator_query(p.generator_prompt, t) for t in texts]
        out: list[str | Exception] = []
        for g in aio.generate_all(gen, asks, list(seeds)):
            if isinstance(g, Exception):
                out.append(RuntimeError(f"bluesuffix: suffix generator failed: {type(g).__name__}: {g}"))
                continue
            suffix = clean_suffix(g.text, max_chars=p.max_suffix_chars)
            out.append(
                suffix if suffix else ValueError("bluesuffix: the suffix generator wrote an empty suffix")
            )
        return out

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        n = len(prompts)
        results: list[Generation | Exception | None] = [None] * n
        cleaned: dict[int, Prompt] = {}
        for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            try:
                cleaned[i] = map_images(prompt, partial(self.transform_image, seed=seed))
            except Exception as exc:
                results[i] = RuntimeError(f"bluesuffix: image purifier failed: {type(exc).__name__}: {exc}")
        live = sorted(cleaned)
        texts = {i: query_text(cleaned[i]) for i in live}
        purified: dict[int, tuple[str, str]] = {}
        if p.text_purifier is not None:
            outs = purify_texts(self, "text_purifier", [texts[i] for i in live], template=p.prompt,
                                on_unparsed=p.on_unparsed)  # fmt: skip
            for i, r in zip(live, outs, strict=True):
                if isinstance(r, Exception):
                    results[i] = RuntimeError(f"bluesuffix: {r}")
                else:
                    purified[i] = r
        else:
            purified = {i: (texts[i], "skipped") for i in live}
        live = [i for i in live if i in purified]
        sufs = self.suffixes([purified[i][0] for i in live], [seeds[i] for i in live])
        final: dict[int, Prompt] = {}
        info: dict[int, dict[str, Any]] = {}
        for i, s in zip(live, sufs, strict=True):
            if isinstance(s, Exception):
                results[i] = s
                continue
            text, status = purified[i]
            final[i] = replace_user_text(cleaned[i], join_suffix(text, s, how=p.suffix_join))
            asked = status not in ("skipped", "empty")
            details: dict[str, Any] = {
                "image_purifier": p.image_purifier,
                "images": len(prompts[i].images),
                "text_purifier": p.text_purifier.name if p.text_purifier is not None else None,
                "text_purified": status,
                "purified_text": text[:500],
                "suffix": s,
                "aux_calls": int(asked) + 1,
            }
            if p.image_purifier in STAND_INS:
                details["stand_in"] = p.image_purifier
            info[i] = details
        todo = sorted(final)
        if todo:
            gens = model.generate([final[i] for i in todo], seeds=[seeds[i] for i in todo])
            for i, g in zip(todo, gens, strict=True):
                results[i] = g if isinstance(g, Exception) else mark(g, "modified-input", calls=1, **info[i])
        return [r if r is not None else RuntimeError("bluesuffix: no result") for r in results]

    def close(self) -> None:
        super().close()
        if self._denoiser is not None:
            self._denoiser.close()
