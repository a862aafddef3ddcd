"""Optimising through an input-transforming defense: BPDA for its transform, EOT for its randomness.

Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security: Circumventing Defenses to
Adversarial Examples", ICML 2018: a defense that transforms the input before the model (JPEG, bit-depth reduction,
resizing, noise, median filtering — :mod:`mmsafe.defenses.purify`) breaks or hides the gradient, and is beaten by an
attacker who knows the transform. Two of their tools, used here:

* **BPDA** (Backward Pass Differentiable Approximation), with the identity as the approximation (their §4.1, the
  "straight-through" case for transforms ``g`` with ``g(x) ≈ x``): the forward pass applies the defense's *real*
  transform to the 8-bit image, ``x̂ = g(x)``; the backward pass treats ``g`` as the identity
  (``x + (g(x) − x).detach()``). The loss the optimisation sees is the loss of the image the defended model will see.
* **EOT** (Expectation over Transformation, Athalye et al., ICML 2018, "Synthesizing Robust Adversarial Examples")
  for a random transform: the loss is the mean over ``samples`` draws of the transform (seeded per step and draw,
  so a resumed optimisation sees the same draws).

The success test (greedy decoding starts with the target) runs on the transformed image too: an image counts as a
success only if it still works after the defense. The defense is any mmsafe defense that exposes its image transform
(:meth:`Defense.transform_image <mmsafe.defenses.base.Defense.transform_image>`); ``purify`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from mmsafe.types import Image, stable_hash


class Defense(Protocol):
    """What this module needs of a defense (the attack stage does not import the defense stage): its name and its
    image transform (:meth:`mmsafe.defenses.base.Defense.transform_image`)."""

    name: str

    def transform_image(self, image: Image, *, seed: int) -> Image | None: ...


__all__ = ["success_view", "through_defense", "transformed"]


def transformed(defense: Defense, x: Any, *, seed: int) -> Any:
    """``x`` (``[B, 3, H, W]`` in [0, 1]) after the defense's image transform, image by image, as a detached tensor
    of the same shape on the same device (the transform works on the 8-bit image, as the defended model gets it)."""
    import numpy as np
    import torch

    from mmsafe.models.families import pil_from_pixels

    out = []
    for i in range(x.shape[0]):
        image = Image.from_pil(pil_from_pixels(x[i]), source="adversarial.png")
        seen = defense.transform_image(image, seed=int(stable_hash([seed, i])[:8], 16))
        if seen is None:
            raise TypeError(f"defense '{defense.name}' has no image transform to optimise through")
        arr = np.asarray(seen.to_pil("RGB"), dtype=np.float32) / 255.0
        if arr.shape[:2] != tuple(x.shape[-2:]):
            raise ValueError(
                f"defense '{defense.name}' changed the image size {tuple(x.shape[-2:])} → {arr.shape[:2]}: "
                "optimising through it needs a size-preserving transform"
            )
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


def through_defense(
    defense: Defense,
    loss_fn: Callable[..., Any],
    success_fn: Callable[[Any], list[bool]] | None,
    *,
    samples: int = 1,
    seed: int = 0,
) -> tuple[Callable[..., Any], Callable[[Any], list[bool]] | None]:
    """``loss_fn`` and ``success_fn`` evaluated on the defended view of the image: BPDA (identity backward) over the
    defense's transform, averaged over ``samples`` seeded draws (EOT). The wrapper takes the engine's ``step`` (which
    seeds the draws, so a resumed optimisation sees the same ones) and passes it on when ``loss_fn`` takes it."""
    import inspect

    wants_step = "step" in inspect.signature(loss_fn).parameters

    def loss(x: Any, step: int = 0) -> Any:
        total: Any = 0.0
        for k in range(samples):
            g = transformed(defense, x.detach(), seed=int(stable_hash([seed, "eot", step, k])[:8], 16))
            seen = x + (g - x).detach()  # forward: g(x); backward: the identity
            value = loss_fn(seen, step=step) if wants_step else loss_fn(seen)
            total = total + value
        return total / samples

    if success_fn is None:
        return loss, None
    inner = success_fn

    def success(x: Any) -> list[bool]:
        return inner(success_view(defense, x, seed=seed))

    return loss, success


def success_view(defense: Defense, x: Any, *, seed: int = 0) -> Any:
    """The transformed ``x`` the success test judges (one fixed draw per optimisation ``seed``)."""
    return transformed(defense, x.detach(), seed=int(stable_hash([seed, "success"])[:8], 16))
