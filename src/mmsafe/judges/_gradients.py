"""Differentiable request verdicts: the margin an adaptive image attack descends to get past a guard.

A guard that screens requests (:meth:`Judge.request_unsafe_margin <mmsafe.judges.base.Judge.request_unsafe_margin>`)
decides from a score it computes on the image; when that score comes from weights running in this process, an
attacker who knows the guard (white-box, Athalye et al. ICML 2018; Tramèr et al. NeurIPS 2020) can follow its
gradient. This module holds what every such guard shares:

* :func:`processor_view` — the attacker's pixels (``[B, 3, H, W]`` in [0, 1], any size) mapped *differentiably* to
  the guard's own pixel space, as its Hugging Face image processor maps the 8-bit PNG it is given: resize (height ×
  width, or shortest edge) with the processor's filter — torch's antialiased bilinear/bicubic, whose kernels are
  PIL's — then the centre crop. :func:`normalise` applies its rescale and mean/std. The processor resizes an 8-bit
  image with PIL and rounds the result to 8 bits again; torch does not round, so the two agree exactly when no resize
  happens and to within about one grey level otherwise (measured in ``tests/test_guard_evade.py``).
* :func:`verdict_margins` — for a guard that *writes* its verdict (a generator served by a
  :class:`~mmsafe.models.base.WhiteBoxModel`): teacher-forced ``log P(unsafe verdict) − log P(safe verdict)`` of the
  guard model on each request it would be sent, the verdict's tokens scored after a fixed prefix the checkpoint writes
  first (LlavaGuard's ``{"rating": "``). > 0 means the unsafe verdict is the more likely of the two.
* :func:`whitebox_backend` — the guard's backend behind any response cache, or a ``TypeError`` naming why it gives no
  gradients.

Everything imports torch lazily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmsafe.types import Image, ImagePart, Message, Prompt, TextPart

if TYPE_CHECKING:
    from mmsafe.models.base import WhiteBoxModel

__all__ = [
    "check_batch",
    "first_image_replaced",
    "log_odds",
    "max_by_owner",
    "normalise",
    "placeholder",
    "processor_view",
    "verdict_margins",
    "whitebox_backend",
]

#: PIL resampling filters (``PIL.Image.Resampling`` values) that torch's antialiased interpolation reproduces
_TORCH_MODE = {2: "bilinear", 3: "bicubic"}


def check_batch(x: Any, prompts: Sequence[Any]) -> None:
    """``x`` must be ``[B, 3, H, W]`` with one prompt per image (``ValueError`` otherwise)."""
    if x.dim() != 4 or x.shape[0] != len(prompts):
        raise ValueError(f"x must be [B, 3, H, W] with B = {len(prompts)} prompts, got {tuple(x.shape)}")


def log_odds(p: float) -> float:
    """``log(p / (1 − p))``: a probability threshold in the units of a margin."""
    return math.log(p) - math.log1p(-p)


def first_image_replaced(prompt: Prompt, image: Image) -> Prompt:
    """``prompt`` with ``image`` in place of its first image (an adversarial attack's slot: the sample's first image),
    or, for a prompt without images, put before the text of its last user turn."""
    messages = list(prompt.messages)
    for m, msg in enumerate(messages):
        for c, part in enumerate(msg.content):
            if isinstance(part, ImagePart):
                content = (*msg.content[:c], ImagePart(image=image), *msg.content[c + 1 :])
                messages[m] = msg.model_copy(update={"content": content})
                return prompt.model_copy(update={"messages": tuple(messages)})
    for m in range(len(messages) - 1, -1, -1):
        if messages[m].role == "user":
            msg = messages[m]
            messages[m] = msg.model_copy(update={"content": (ImagePart(image=image), *msg.content)})
            return prompt.model_copy(update={"messages": tuple(messages)})
    return prompt.model_copy(
        update={
            "messages": (*messages, Message(role="user", content=(ImagePart(image=image), TextPart(text=""))))
        }
    )


def whitebox_backend(model: Any, *, who: str) -> WhiteBoxModel:
    """The backend under any wrappers (the run store's response cache), if it runs in this process and gives
    gradients to its pixels; else ``TypeError`` saying why ``who`` cannot give a differentiable verdict."""
    from mmsafe.models.base import WhiteBoxModel, WrappedModel

    inner = model
    while isinstance(inner, WrappedModel):
        inner = inner.inner
    if not isinstance(inner, WhiteBoxModel) or "gradients" not in inner.capabilities:
        raise TypeError(
            f"{who}: its guard model '{getattr(inner, 'name', type(inner).__name__)}' gives no gradients (not a "
            "local white-box backend such as hf or tiny), so its verdict cannot be differentiated wrt the image; "
            "an attacker against it must use queries (black-box), not gradients"
        )
    if not hasattr(inner, "whitebox_view"):
        raise TypeError(f"{who}: backend '{inner.name}' exposes no image processor to map pixels through")
    return inner


def _size(spec: Any, key: str) -> int | None:
    value = spec.get(key) if isinstance(spec, dict) else getattr(spec, key, None)
    return None if value is None else int(value)


def processor_view(x: Any, image_processor: Any) -> Any:
    """``x`` (``[B, 3, H, W]`` in [0, 1]) as ``image_processor`` resizes and crops an image of that size, before its
    rescale and normalisation: ``[B, 3, h, w]`` in [0, 1], differentiable in ``x``.

    Follows the processor's own settings: ``size`` ``{height, width}`` or ``{shortest_edge}`` (the long edge scaled
    in proportion, rounded down, as ``transformers`` does), then ``crop_size`` when ``do_center_crop``; the filter is
    its ``resample`` (bilinear or bicubic — torch's antialiased kernels, PIL's; anything else raises ``TypeError``).
    Processors that tile or resize to a patch grid (LLaVA-NeXT's any-resolution, Qwen2-VL, Idefics3) raise ``TypeError``.
    """
    import torch.nn.functional as F

    ip = image_processor
    name = type(ip).__name__
    _, _, h, w = x.shape
    out = x
    if getattr(ip, "do_resize", True):
        size = getattr(ip, "size", None)
        height, width, short = _size(size, "height"), _size(size, "width"), _size(size, "shortest_edge")
        if any(
            _size(size, k) is not None for k in ("longest_edge", "max_height", "min_pixels", "max_pixels")
        ):
            raise TypeError(f"{name}: a size bounded by its longest edge or pixel count is not mapped here")
        if height is not None and width is not None:
            new = (height, width)
        elif short is not None:
            new = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        else:
            raise TypeError(
                f"{name}: size {size!r} is not one this mapping knows (height/width or shortest_edge)"
            )
        given = getattr(ip, "resample", None)
        resample = 2 if given is None else int(given)  # transformers' default is bilinear
        mode = _TORCH_MODE.get(resample)
        if mode is None:
            raise TypeError(f"{name}: resample filter {resample} has no antialiased torch equivalent")
        if new != (h, w):
            out = F.interpolate(out, size=new, mode=mode, antialias=True, align_corners=False).clamp(0.0, 1.0)
    if getattr(ip, "do_center_crop", False):
        crop = getattr(ip, "crop_size", None)
        ch, cw = _size(crop, "height"), _size(crop, "width")
        if ch is None or cw is None:
            raise TypeError(f"{name}: crop_size {crop!r} has no height and width")
        oh, ow = out.shape[-2:]
        if ch > oh or cw > ow:
            raise TypeError(f"{name}: a crop larger than the resized image (padding) is not mapped here")
        top, left = (oh - ch) // 2, (ow - cw) // 2
        out = out[..., top : top + ch, left : left + cw]
    if getattr(ip, "do_pad", None):
        raise TypeError(f"{name}: padding is not mapped differentiably here")
    return out


def normalise(view: Any, image_processor: Any) -> Any:
    """``view`` (``[B, 3, h, w]`` in [0, 1]) rescaled and normalised as ``image_processor`` does an 8-bit image."""
    import torch

    ip = image_processor
    out = view
    if getattr(ip, "do_rescale", True):
        out = out * (255.0 * float(getattr(ip, "rescale_factor", 1 / 255)))
    if getattr(ip, "do_normalize", True):
        mean, std = ip.image_mean, ip.image_std
        mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(v) for v in mean]
        std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(v) for v in std]
        m = torch.tensor(mean, dtype=out.dtype, device=out.device)[:, None, None]
        s = torch.tensor(std, dtype=out.dtype, device=out.device)[:, None, None]
        out = (out - m) / s
    return out


def verdict_margins(
    guard: WhiteBoxModel,
    asks: Sequence[Prompt],
    slots: Sequence[int | None],
    views: Sequence[Any],
    *,
    unsafe: str,
    safe: str,
    prefix: str = "",
) -> Any:
    """``log P(unsafe) − log P(safe)`` (``[len(asks)]``, float32) of ``guard`` answering each of ``asks``, the verdict
    teacher-forced after ``prefix``. Image ``slots[k]`` of ask ``k`` (None: none) is replaced by ``views[k]``: the
    attacker's ``[3, H, W]`` pixels, mapped differentiably to the guard's pixel space (:func:`processor_view`); the
    other images stay as the guard's processor sees them."""
    import torch

    view = guard.whitebox_view()  # type: ignore[attr-defined]
    ip = view.family.image_processor
    pixels: list[list[Any]] = []
    for ask, slot, x in zip(asks, slots, views, strict=True):
        row = []
        for j, image in enumerate(ask.images):
            seen = guard.to_pixels(image)
            if j == slot:
                mapped = processor_view(x[None].to(seen.device), ip)[0]
                if tuple(mapped.shape) != tuple(seen.shape):
                    raise TypeError(
                        f"the guard model's processor ({type(ip).__name__}) lays a {tuple(x.shape[-2:])} image out as "
                        f"{tuple(seen.shape)}, not as the mapped {tuple(mapped.shape)}: its geometry is not mapped here"
                    )
                seen = mapped
            row.append(seen)
        pixels.append(row)
    tok = view.tokenizer

    def target(verdict: str) -> list[tuple[str, float]]:
        return ([(prefix, 0.0)] if prefix else []) + [(verdict, 1.0)]

    n_unsafe = len(tok(unsafe, add_special_tokens=False)["input_ids"])
    n_safe = len(tok(safe, add_special_tokens=False)["input_ids"])
    objective = guard.teacher_forced(
        [a for a in asks for _ in (0, 1)], [t for _ in asks for t in (target(unsafe), target(safe))]
    )
    ce = objective([row for row in pixels for _ in (0, 1)]).reshape(len(asks), 2)  # mean CE of each verdict
    return (ce[:, 1] * n_safe - ce[:, 0] * n_unsafe).to(torch.float32)


def max_by_owner(values: Any, owners: Sequence[int], n: int) -> Any:
    """``[n]``: the largest of ``values`` that belong to each owner (an item is unsafe when any of its rated
    (image, policy) pairs is); every owner must have at least one value."""
    import torch

    idx = torch.as_tensor(list(owners), device=values.device)
    return torch.stack([values[idx == i].max() for i in range(n)])


def placeholder(x: Any) -> Image:
    """The 8-bit PNG of one ``[3, H, W]`` image in [0, 1]: what the guard would be sent, used for the layout of its
    request (the processor's token count, the template); its pixels are replaced differentiably."""
    from mmsafe.models.families import pil_from_pixels

    return Image.from_pil(pil_from_pixels(x), source="adversarial.png")
