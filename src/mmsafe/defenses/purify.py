"""Image purification: transform every input image to wash out a small adversarial perturbation.

The "input purification" family of defenses against adversarial images: a cheap, model-agnostic
transform applied to the image before the model sees it, which keeps what a person sees but
destroys much of a crafted L∞ perturbation. Steps, applied in the order given by ``methods``:

* ``jpeg`` — JPEG compression at ``jpeg_quality``. Dziugaite, Ghahramani, Roy, "A study of the
  effect of JPG compression on adversarial images", arXiv:1608.00853, 2016; Das et al., "Keeping
  the Bad Guys Out: Protecting and Vaccinating Deep Learning with JPEG Compression",
  arXiv:1705.02900, 2017.
* ``bits`` — bit-depth reduction to ``bits`` bits per channel (2^bits levels), one of the
  "feature squeezing" transforms of Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial
  Examples in Deep Neural Networks", NDSS 2018.
* ``resize`` — scale down by ``resize_factor`` and back up to the original size (bilinear both
  ways); a deterministic form of the resizing of Xie, Wang, Zhang, Ren, Yuille, "Mitigating
  Adversarial Effects Through Randomization", ICLR 2018.
* ``noise`` — additive Gaussian noise of std ``noise_std`` (in [0, 1] pixel units), seeded by the
  item's seed so a rerun sees the same image.
* ``median`` — a ``median_size`` × ``median_size`` median filter (the local smoothing squeezer of
  Feature Squeezing).

What it needs: nothing from the model; prompts without images (or a text-only model) pass
unchanged. No extra model calls. The text is never touched. Each purified image is re-encoded as
a lossless PNG, so the only loss is the purification itself. Every item is marked
``modified-input`` with ``methods`` and ``images`` (how many were purified) in its details.

A purification is no guarantee: an attacker who knows the transform can optimise through it (the
"adaptive attack" critique of Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense
of Security", ICML 2018), and it also degrades benign images — report both effects.

Parameters: ``methods`` (ordered list among ``jpeg``, ``resize``, ``bits``, ``noise``,
``median``; default ``[jpeg]``), ``jpeg_quality`` (75), ``resize_factor`` (0.5), ``bits`` (4),
``noise_std`` (4/255), ``median_size`` (3, odd).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe.defenses.base import Defense, mark
from mmsafe.defenses.edit import map_images
from mmsafe.models.base import ModelBackend
from mmsafe.plugin_meta import Paper
from mmsafe.render.denoise import MedianSize
from mmsafe.types import Generation, Image, Prompt

__all__ = [
    "ImagePurification",
    "ImagePurificationParams",
    "map_images",
    "purify_pil",
    "reduce_bits",
]

Method = Literal["jpeg", "resize", "bits", "noise", "median"]


class ImagePurificationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: tuple[Method, ...] = Field(
        default=("jpeg",), min_length=1, max_length=10, description="purification steps, applied in order"
    )
    jpeg_quality: int = Field(75, ge=1, le=95, description="JPEG quality of the jpeg step")
    resize_factor: float = Field(0.5, gt=0.0, lt=1.0, description="down-scale factor of the resize step")
    bits: int = Field(4, ge=1, le=7, description="bits per channel kept by the bits step")
    noise_std: float = Field(4 / 255, ge=0.0, le=1.0, description="Gaussian noise std, [0, 1] pixel units")
    median_size: MedianSize = Field(3, description="median filter window (odd)")

    @field_validator("noise_std", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        """Accept ``"4/255"`` as written in a YAML config."""
        if isinstance(v, str) and "/" in v:
            num, _, den = v.partition("/")
            return float(num) / float(den)
        return v



def reduce_bits(pil: Any, bits: int) -> Any:
    """``pil`` (RGB) with each channel quantised to ``2**bits`` evenly spaced levels in [0, 255]."""
    import numpy as np
    from PIL import Image as PILImage

    levels = 2**bits - 1
    x = np.asarray(pil, dtype=np.float64) / 255.0
    q = np.round(x * levels) / levels
    return PILImage.fromarray(np.round(q * 255.0).astype(np.uint8), mode="RGB")


def _jpeg(pil: Any, quality: int) -> Any:
    from mmsafe.render.denoise import jpeg_roundtrip

    return jpeg_roundtrip(pil, quality)


def _resize(pil: Any, factor: float) -> Any:
    from PIL import Image as PILImage

    w, h = pil.size
    small = pil.resize((max(1, round(w * factor)), max(1, round(h * factor))), PILImage.Resampling.BILINEAR)
    return small.resize((w, h), PILImage.Resampling.BILINEAR)


def _noise(pil: Any, std: float, seed: int) -> Any:
    import numpy as np
    from PIL import Image as PILImage

    x = np.asarray(pil, dtype=np.float64) / 255.0
    x = x + np.random.default_rng(seed).normal(0.0, std, size=x.shape)
    return PILImage.fromarray(np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8), mode="RGB")


def _median(pil: Any, size: int) -> Any:
    from PIL import ImageFilter

    return pil.filter(ImageFilter.MedianFilter(size))


def purify_pil(pil: Any, params: ImagePurificationParams, *, seed: int) -> Any:
    """``pil`` converted to RGB and passed through ``params.methods`` in order (same size out)."""
    out = pil.convert("RGB")
    for method in params.methods:
        if method == "jpeg":
            out = _jpeg(out, params.jpeg_quality)
        elif method == "resize":
            out = _resize(out, params.resize_factor)
        elif method == "bits":
            out = reduce_bits(out, params.bits)
        elif method == "noise":
            out = _noise(out, params.noise_std, seed)
        elif method == "median":
            out = _median(out, params.median_size)
        else:  # pragma: no cover - the params validator rejects anything else
            raise ValueError(f"unknown purification method {method!r}")
    return out


class ImagePurification(Defense):
    """Image purification (JPEG / bit depth / resize / noise / median) of every input image."""

    name: ClassVar[str] = "purify"
    paper: ClassVar[Paper | None] = Paper(
        title="Keeping the Bad Guys Out: Protecting and Vaccinating Deep Learning with JPEG Compression",
        authors="Das et al.",
        year=2017,
        url="https://arxiv.org/abs/1705.02900",
        threat_model="input images are transformed to wash out small L∞ perturbations; no model access",
    )
    Params: ClassVar[type[BaseModel]] = ImagePurificationParams

    def purify(self, image: Image, *, seed: int) -> Image:
        """``image`` purified and re-encoded as a lossless PNG."""
        p = self.params
        assert isinstance(p, ImagePurificationParams)
        src = image.source or "image"
        return Image.from_pil(purify_pil(image.to_pil("RGB"), p, seed=seed), source=f"{src}#purified")

    transforms_images: ClassVar[bool] = True

    def transform_image(self, image: Image, *, seed: int) -> Image:
        return self.purify(image, seed=seed)

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        assert isinstance(p, ImagePurificationParams)
        cleaned: list[Prompt] = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            cleaned.append(map_images(prompt, partial(self.purify, seed=seed)))
        out: list[Generation | Exception] = []
        for prompt, r in zip(prompts, model.generate(cleaned, seeds=seeds), strict=True):
            if isinstance(r, Exception):
                out.append(r)
            else:
                out.append(
                    mark(r, "modified-input", calls=1, methods=list(p.methods), images=len(prompt.images))
                )
        return out
