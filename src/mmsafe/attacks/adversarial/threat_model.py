"""The engine's threat model: the set an adversarial image may lie in, and how an iterate gets back into it.

Every set is a subset of the valid pixel range [0, 1] (pixel space, see
:mod:`mmsafe.attacks.adversarial.engine`):

* ``linf`` — ‖x − clean‖∞ ≤ ε; ``l2`` — ‖x − clean‖₂ ≤ ε per image (over all ``3·H·W`` values);
* ``none`` — any image;
* ``patch`` / ``moving-patch`` — only a square patch differs from the clean image; the optimised
  variable is then the patch itself (``[B, 3, side, side]``), pasted onto the clean image by
  :meth:`ThreatModel.compose`. The moving patch lands somewhere new every step.

With ``quantize`` every iterate is also on the 8-bit grid (:meth:`ThreatModel.round`), so the
saved PNG is exactly the tensor that was optimised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsafe.attacks.adversarial.engine import PGDConfig

__all__ = ["Box", "ThreatModel"]

Box = tuple[int, int, int, int]  # (top, left, height, width)


class ThreatModel:
    """The constraint set of one :class:`~mmsafe.attacks.adversarial.engine.PGDConfig` (``norm``,
    ``eps``, ``patch_size``, ``patch_xy``, ``random_start``, ``quantize``): where the attack starts,
    how an iterate is projected and rounded, and how a patch becomes an image."""

    def __init__(self, config: PGDConfig) -> None:
        self.config = config

    @property
    def patch_mode(self) -> bool:
        """True when the optimised variable is a patch, not the whole image."""
        return self.config.norm in ("patch", "moving-patch")

    # ------------------------------------------------------------- the set

    def project(self, clean: Any, x: Any) -> Any:
        """``x`` moved back into the ε-ball around ``clean`` (``linf``: clipped per value; ``l2``:
        each image's δ scaled down to length ε) and into [0, 1]. Other norms only clip to [0, 1]."""
        import torch

        c = self.config
        if c.norm == "linf":
            x = torch.max(torch.min(x, clean + c.eps), clean - c.eps)
        elif c.norm == "l2":
            delta = x - clean
            norms = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
            factor = (c.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)
            x = clean + delta * factor
        return x.clamp(0.0, 1.0)

    def feasible(self, clean: Any, x: Any) -> Any:
        """The optimised variable ``x`` after a step, back in the set: a patch is only clipped to
        [0, 1] (its place is fixed by :meth:`compose`), a whole image is :meth:`project`-ed."""
        return x.clamp(0, 1) if self.patch_mode else self.project(clean, x)

    def quantize(self, clean: Any, x: Any) -> Any:
        """``x`` rounded to the 8-bit grid, still in the set: under ``l2`` an image that rounding
        pushed out of the ball has its δ truncated toward the (rounded) clean image instead, which
        never increases any value's |δ|."""
        import torch

        q = torch.round(x * 255) / 255
        if self.config.norm == "l2":
            base = torch.round(clean * 255) / 255
            over = (q - base).flatten(1).norm(dim=1) > self.config.eps
            if bool(over.any()):
                trunc = base + torch.trunc((x - base) * 255) / 255
                q = torch.where(over.view(-1, 1, 1, 1), trunc, q)
        return q.clamp(0.0, 1.0)

    def round(self, clean: Any, x: Any) -> Any:
        """The iterate as it is kept: :meth:`quantize`-d (a patch simply rounded) when the config
        quantises, else ``x`` unchanged."""
        import torch

        if not self.config.quantize:
            return x
        return torch.round(x * 255) / 255 if self.patch_mode else self.quantize(clean, x)

    # ------------------------------------------------------- the variable

    def prepare(self, clean: Any) -> Any:
        """The clean images ``[B, 3, H, W]`` as the engine uses them: detached float32, rounded to
        8 bits when quantising (the attack's reference point is then a real image)."""
        import torch

        clean = clean.detach().float()
        return torch.round(clean * 255) / 255 if self.config.quantize else clean

    def patch_box(self, shape: tuple[int, ...], generator: Any | None = None) -> Box:
        """The patch's ``(top, left, side, side)`` in an image of ``shape``: at ``patch_xy`` without
        a ``generator``, else uniformly at random among the positions where it fits."""
        import torch

        h, w = shape[-2], shape[-1]
        side = max(1, round(self.config.patch_size * min(h, w)))
        if generator is None:
            top = min(h - side, round(self.config.patch_xy[1] * h))
            left = min(w - side, round(self.config.patch_xy[0] * w))
        else:
            top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
        return top, left, side, side

    def first_box(self, shape: tuple[int, ...]) -> Box | None:
        """The patch's place before the first step (None when there is no patch)."""
        return self.patch_box(shape, None) if self.patch_mode else None

    def box_at(self, t: int, seed: int, shape: tuple[int, ...], box: Box | None) -> Box | None:
        """Where the patch is at step ``t``: a moving patch draws a place from ``(seed, t)`` alone
        (so a resumed run draws the same ones); any other mode keeps ``box``."""
        import torch

        if self.config.norm != "moving-patch":
            return box
        return self.patch_box(shape, torch.Generator().manual_seed(int(seed) * 1_000_003 + t))

    def start(self, clean: Any, generator: Any) -> Any:
        """The optimised variable at step 0: the clean image (or its patch), or with ``random_start``
        a point drawn from ``generator``: uniform in the L∞ ball, a uniform radius in a random
        direction for L2, a uniform image for ``none``, a uniform patch for the patch modes."""
        import torch

        c = self.config
        if self.patch_mode:
            top, left, ph, pw = self.patch_box(clean.shape, None)
            if c.random_start:
                return torch.rand((clean.shape[0], 3, ph, pw), generator=generator).to(clean.device)
            return clean[:, :, top : top + ph, left : left + pw].clone()
        var = clean.clone()
        if c.random_start and c.norm == "linf":
            noise = torch.rand(clean.shape, generator=generator).to(clean) * 2 - 1
            var = self.project(clean, clean + noise * c.eps)
        elif c.random_start and c.norm == "l2":
            noise = torch.randn(clean.shape, generator=generator).to(clean)
            noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            radius = torch.rand((clean.shape[0], 1, 1, 1), generator=generator).to(clean) * c.eps
            var = self.project(clean, clean + noise * radius)
        elif c.random_start:
            var = torch.rand(clean.shape, generator=generator).to(clean)
        return self.quantize(clean, var) if c.quantize else var

    def compose(self, clean: Any, v: Any, box: Box | None) -> Any:
        """The images the model sees: ``v`` itself, or the patch ``v`` pasted onto ``clean`` at ``box``."""
        if not self.patch_mode:
            return v
        assert box is not None
        top, left, h, w = box
        x = clean.clone()
        x[:, :, top : top + h, left : left + w] = v
        return x
