"""The one optimisation engine behind every white-box image attack: projected gradient descent in pixel space.

Pixel space is the model's view of the image after resizing and before normalisation, values in
[0, 1] (:meth:`~mmsafe.models.base.WhiteBoxModel.to_pixels`), so ε means what the papers mean:
``8/255`` is eight grey levels. The engine minimises a loss (objectives that maximise one negate
it) over ``B`` independent images at once; a universal attack is ``B = 1`` with a loss averaged
over many (prompt, target) pairs.

Threat models (``norm``):

* ``linf`` — ‖δ‖∞ ≤ ε, signed-gradient steps (PGD, Madry et al. 2018), the default of Qi et al.
  2023, Carlini et al. 2023 and Schlarmann & Hein 2023;
* ``l2`` — ‖δ‖₂ ≤ ε (ε in the same [0, 1] units over all ``3·H·W`` values), normalised-gradient steps;
* ``none`` — any image in [0, 1] (Qi et al.'s "unconstrained" attack, Bailey et al.'s image hijacks
  at ε = 1);
* ``patch`` — a square patch of side ``patch_size`` (fraction of the shorter side) at a fixed
  location replaces those pixels; the rest of the image is untouched;
* ``moving-patch`` — the same patch pasted at a random location every step (an expectation over
  placements, so it works wherever it lands; the output uses the last sampled location).

Options: step size ``step_size`` with a ``constant``, ``cosine`` or ``linear`` decay schedule;
``random_start`` (uniform in the ball); ``momentum`` μ > 0 accumulates L1-normalised gradients
(MI-FGSM, Dong et al. 2018); ``quantize`` rounds the image to 8 bits after every step, so the PNG
that is saved attacks exactly as the tensor did; ``early_stop`` asks ``success_fn`` every
``check_every`` steps and freezes each image once it succeeds; ``checkpoint`` saves the state
every ``checkpoint_every`` steps (``.npz``, no pickle) and a rerun resumes from it. The result
holds the best iterate per image (a succeeded one, else the lowest loss seen).

Methods (``method``): ``pgd`` (the default: the fixed step ``step_size`` and its ``schedule``) or
``apgd`` — Auto-PGD (Croce & Hein, ICML 2020), for ``linf`` and ``l2`` only: the step size starts
at 2ε and is halved per image at the paper's checkpoints when progress stalls, with the paper's
momentum α = 0.75 on the step (see :mod:`mmsafe.attacks.adversarial.apgd`; ``step_size``,
``schedule`` and ``momentum`` do not apply). Quantisation, early stop, checkpoints (the APGD state
included) and best-iterate selection work the same for both.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ENGINE_VERSION", "PGD", "PGDConfig", "PGDResult", "parse_eps"]

#: bumped when a fix changes what the engine produces (2: ``keep="best"`` really keeps the best
#: iterate; before, a loop variable shadowed it and the last iterate was kept)
ENGINE_VERSION = 2

log = logging.getLogger(__name__)

Norm = Literal["linf", "l2", "none", "patch", "moving-patch"]


def parse_eps(value: Any) -> float:
    """``8/255``, ``"8/255"``, ``0.03`` or ``"unconstrained"`` (= 1.0) → a float in (0, ∞)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("unconstrained", "inf", "none"):
            return 1.0
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    value = float(value)
    if not value > 0:
        raise ValueError(f"eps must be positive, got {value}")
    return value


class PGDConfig(BaseModel):
    """Settings of one optimisation (part of every adversarial attack's params)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["pgd", "apgd"] = Field(
        "pgd", description="pgd (fixed step_size/schedule) or apgd (Auto-PGD step-size rule; linf/l2 only)"
    )
    norm: Norm = Field("linf", description="threat model: linf, l2, none, patch, moving-patch")
    eps: float = Field(8 / 255, description="radius of the ball, e.g. 8/255 (string or number)")
    steps: int = Field(100, ge=1, le=100_000)
    step_size: float = Field(1 / 255, gt=0, description="α per step (pixel units; L2: length of the step)")
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    random_start: bool = False
    momentum: float = Field(0.0, ge=0.0, le=1.0, description="MI-FGSM decay μ (0 = plain PGD)")
    quantize: bool = Field(True, description="round to 8-bit after every step (saved PNG == optimised image)")
    patch_size: float = Field(0.25, gt=0, le=1.0, description="patch side as a fraction of the shorter side")
    patch_xy: tuple[float, float] = Field((0.0, 0.0), description="stationary patch's top-left (fractions)")
    early_stop: bool = True
    check_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> float:
        return parse_eps(value)

    @model_validator(mode="after")
    def _method(self) -> PGDConfig:
        if self.method == "apgd":
            if self.norm not in ("linf", "l2"):
                raise ValueError(
                    f"method 'apgd' needs norm 'linf' or 'l2', not '{self.norm}': its step size starts "
                    "at 2*eps, and patch / unconstrained attacks have no eps ball (use method 'pgd')"
                )
            if self.momentum > 0:
                raise ValueError(
                    "method 'apgd' has its own momentum (alpha = 0.75 on the step): set momentum to 0"
                )
            if self.schedule != "constant":
                raise ValueError("method 'apgd' adapts its step size itself: leave schedule at 'constant'")
        return self


@dataclass
class PGDResult:
    """What one optimisation produced (tensors ``[B, 3, H, W]`` on the input's device)."""

    adversarial: Any
    losses: list[list[float]]  # per step, per image (the loss *before* that step's update)
    final_loss: list[float]
    success: list[bool]
    steps_run: int
    seconds: float
    resumed_from: int = 0
    patch_boxes: list[tuple[int, int, int, int]] | None = None  # (top, left, height, width) per image
    extra: dict[str, Any] = field(default_factory=dict)


class PGD:
    """Projected gradient descent over ``B`` images (see the module docstring)."""

    def __init__(self, config: PGDConfig | None = None, **kwargs: Any) -> None:
        self.config = config or PGDConfig(**kwargs)

    # ------------------------------------------------------------------ pieces

    def step_size(self, t: int) -> float:
        c = self.config
        if c.schedule == "cosine":
            return c.step_size * 0.5 * (1 + math.cos(math.pi * t / c.steps))
        if c.schedule == "linear":
            return c.step_size * (1 - t / c.steps)
        return c.step_size

    def _patch_box(self, shape: tuple[int, ...], generator: Any | None) -> tuple[int, int, int, int]:
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

    def project(self, clean: Any, x: Any) -> Any:
        """``x`` moved back into the threat model's set around ``clean`` and into [0, 1]."""
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

    def _quantize(self, clean: Any, x: Any) -> Any:
        import torch

        q = torch.round(x * 255) / 255
        if self.config.norm == "l2":
            # rounding may leave the L2 ball: truncate the offending rows' deltas toward the clean
            # image instead (never increases any coordinate's |δ|); clean is rounded too
            base = torch.round(clean * 255) / 255
            over = (q - base).flatten(1).norm(dim=1) > self.config.eps
            if bool(over.any()):
                trunc = base + torch.trunc((x - base) * 255) / 255
                q = torch.where(over.view(-1, 1, 1, 1), trunc, q)
        return q.clamp(0.0, 1.0)

    def _gradient_step(self, x: Any, grad: Any, alpha: float, velocity: Any) -> tuple[Any, Any]:
        c = self.config
        g = grad
        if c.momentum > 0:
            g = g / g.flatten(1).abs().sum(1).clamp(min=1e-12).view(-1, 1, 1, 1)
            velocity = c.momentum * velocity + g
            g = velocity
        if c.norm == "l2":
            step = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        else:
            step = g.sign()
        return x - alpha * step, velocity

    def _apgd_step(self, clean: Any, x: Any, prev: Any, grad: Any, eta: Any, first: bool) -> Any:
        """Croce & Hein's update (descent): ``z = P(x − η·d)``, then ``P(x + α(z − x) + (1 − α)(x − prev))``
        (the first step is ``z`` itself); ``d`` = sign (L∞) or unit-L2 gradient, η per image."""
        from mmsafe.attacks.adversarial.apgd import ALPHA

        if self.config.norm == "l2":
            d = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        else:
            d = grad.sign()
        z = self.project(clean, x - eta.to(x).view(-1, 1, 1, 1) * d)
        if first:
            return z
        return self.project(clean, x + ALPHA * (z - x) + (1 - ALPHA) * (x - prev))

    # --------------------------------------------------------------------- run

    def run(
        self,
        clean: Any,
        loss_fn: Callable[[Any], Any],
        *,
        success_fn: Callable[[Any], list[bool]] | None = None,
        seed: int = 0,
        checkpoint: Path | str | None = None,
        on_step: Callable[[int, Any, Any], None] | None = None,
        keep: Literal["best", "last"] = "best",
    ) -> PGDResult:
        """Minimise ``loss_fn(x)`` (``[B]`` losses of ``[B, 3, H, W]`` images) from ``clean``.

        ``success_fn(x)`` → one bool per image (checked every ``check_every`` steps when
        ``early_stop``); ``on_step(t, x, losses)`` runs after every update (CroPA's inner player uses
        it). A ``loss_fn`` with a ``step`` parameter is called as ``loss_fn(x, step=t)`` (minibatch
        objectives pick their batch from it, so a resumed run continues the same sequence).
        Returns the best iterate per image (``keep="last"``: the last one — for stochastic
        objectives, whose minibatch losses are not comparable across steps).
        """
        import inspect

        import numpy as np
        import torch

        from mmsafe.attacks.adversarial.apgd import APGDState, checkpoints

        c = self.config
        apgd = c.method == "apgd"
        with_step = "step" in inspect.signature(loss_fn).parameters

        def evaluate(x: Any, t: int) -> Any:
            return loss_fn(x, step=t) if with_step else loss_fn(x)

        clean = clean.detach().float()
        if c.quantize:
            clean = torch.round(clean * 255) / 255
        b = clean.shape[0]
        gen = torch.Generator().manual_seed(int(seed))
        patch_mode = c.norm in ("patch", "moving-patch")
        if patch_mode:
            # the optimised variable is the patch itself, pasted onto the clean image
            top, left, ph, pw = self._patch_box(clean.shape, None)
            if c.random_start:
                var = torch.rand((b, 3, ph, pw), generator=gen).to(clean.device)
            else:
                var = clean[:, :, top : top + ph, left : left + pw].clone()
        else:
            var = clean.clone()
            if c.random_start and c.norm == "linf":
                var = self.project(
                    clean, clean + (torch.rand(clean.shape, generator=gen).to(clean) * 2 - 1) * c.eps
                )
            elif c.random_start and c.norm == "l2":
                noise = torch.randn(clean.shape, generator=gen).to(clean)
                noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
                radius = torch.rand((b, 1, 1, 1), generator=gen).to(clean) * c.eps
                var = self.project(clean, clean + noise * radius)
            elif c.random_start:
                var = torch.rand(clean.shape, generator=gen).to(clean)
            if c.quantize:
                var = self._quantize(clean, var)
        velocity = torch.zeros_like(var)
        best = var.clone()
        best_loss = torch.full((b,), float("inf"))
        done = torch.zeros(b, dtype=torch.bool)
        history: list[list[float]] = []
        start = 0
        box = self._patch_box(clean.shape, None) if patch_mode else None
        state = APGDState.start(var, c.eps) if apgd else None
        schedule = checkpoints(c.steps) if apgd else []
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and ckpt.exists():
            with np.load(ckpt, allow_pickle=False) as z:
                if APGDState.in_archive(z) != apgd:
                    log.warning("ignoring checkpoint %s: it was not saved by method '%s'", ckpt, c.method)
                elif tuple(z["var"].shape) == tuple(var.shape):
                    var = torch.from_numpy(z["var"]).to(var)
                    velocity = torch.from_numpy(z["velocity"]).to(var)
                    best = torch.from_numpy(z["best"]).to(var)
                    best_loss = torch.from_numpy(z["best_loss"])
                    done = torch.from_numpy(z["done"])
                    history = z["history"].tolist()
                    start = int(z["step"])
                    if patch_mode:
                        box = tuple(int(v) for v in z["box"])  # type: ignore[assignment]
                    if apgd:
                        state = APGDState.from_arrays(z, var)
                    log.info("resuming the attack from step %d (%s)", start, ckpt)
                else:
                    log.warning(
                        "ignoring checkpoint %s: shape %s != %s", ckpt, z["var"].shape, tuple(var.shape)
                    )

        def compose(v: Any, where: tuple[int, int, int, int] | None) -> Any:
            if not patch_mode:
                return v
            assert where is not None
            t, left_, h, w = where
            x = clean.clone()
            x[:, :, t : t + h, left_ : left_ + w] = v
            return x

        t0 = time.perf_counter()
        t = start
        for t in range(start, c.steps):
            if bool(done.all()):
                break
            if c.norm == "moving-patch":
                box = self._patch_box(clean.shape, torch.Generator().manual_seed(int(seed) * 1_000_003 + t))
            v = var.detach().requires_grad_(True)
            losses = evaluate(compose(v, box), t)
            if losses.dim() == 0:
                losses = losses.reshape(1)
            (grad,) = torch.autograd.grad(losses.sum(), v)
            with torch.no_grad():
                lvals = losses.detach().float().cpu()
                history.append([float(x) for x in lvals])
                improved = ((lvals < best_loss) if keep == "best" else torch.ones_like(done)) & ~done
                if bool(improved.any()):
                    best[improved.to(best.device)] = var[improved.to(var.device)]
                    best_loss = torch.where(improved, lvals, best_loss)
                if state is not None:
                    # APGD: per-image step size; at a checkpoint a stalled image halves it and
                    # restarts from its best point (with the gradient stored there)
                    grad = grad.float()
                    better, halve = state.observe(t, lvals, schedule)
                    if bool(better.any()):
                        m = better.to(var.device)
                        state.x_best[m] = var[m]
                        state.g_best[m] = grad[m]
                    halve &= ~done
                    if bool(halve.any()):
                        m = halve.to(var.device).view(-1, 1, 1, 1)
                        var = torch.where(m, state.x_best, var)
                        grad = torch.where(m, state.g_best, grad)
                    new = self._apgd_step(clean, var, state.prev, grad, state.eta, first=t == 0)
                    state.prev = var.clone()
                else:
                    new, velocity = self._gradient_step(var, grad.float(), self.step_size(t), velocity)
                    new = new.clamp(0, 1) if patch_mode else self.project(clean, new)
                if c.quantize:
                    new = self._quantize(clean, new) if not patch_mode else torch.round(new * 255) / 255
                frozen = done.to(var.device).view(-1, 1, 1, 1)
                var = torch.where(frozen, var, new)
            if on_step is not None:
                on_step(t, compose(var, box), losses.detach())
            step_no = t + 1
            if (
                c.early_stop
                and success_fn is not None
                and (step_no % c.check_every == 0 or step_no == c.steps)
            ):
                with torch.no_grad():
                    ok = torch.tensor([bool(s) for s in success_fn(compose(var, box))])
                newly = ok & ~done
                if bool(newly.any()):
                    best[newly.to(best.device)] = var[newly.to(var.device)]
                    done |= newly
            if ckpt is not None and (step_no % c.checkpoint_every == 0) and step_no < c.steps:
                extra = state.arrays() if state is not None else None
                self._save(ckpt, var, velocity, best, best_loss, done, history, step_no, box, extra)
        steps_run = len(history)
        # a final evaluation: the last iterate may be better than any seen before its update
        with torch.no_grad():
            final = evaluate(compose(var, box), c.steps).detach().float().cpu().reshape(-1)
            better = ((final < best_loss) if keep == "best" else torch.ones_like(done)) & ~done
            best[better.to(best.device)] = var[better.to(var.device)]
            best_loss = torch.where(better, final, best_loss)
            if success_fn is not None and not bool(done.all()):
                ok = torch.tensor([bool(s) for s in success_fn(compose(best, box))])
                done |= ok
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
        adv = compose(best, box).detach()
        boxes = [tuple(box)] * b if (patch_mode and box is not None) else None  # type: ignore[misc]
        return PGDResult(
            adversarial=adv,
            losses=history,
            final_loss=[float(x) for x in best_loss],
            success=[bool(x) for x in done],
            steps_run=steps_run,
            seconds=time.perf_counter() - t0,
            resumed_from=start,
            patch_boxes=boxes,  # type: ignore[arg-type]
            extra={"apgd_eta": [float(v) for v in state.eta]} if state is not None else {},
        )

    @staticmethod
    def _save(
        path: Path,
        var: Any,
        velocity: Any,
        best: Any,
        best_loss: Any,
        done: Any,
        history: list[list[float]],
        step: int,
        box: Any,
        extra: dict[str, Any] | None = None,
    ) -> None:
        import numpy as np

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(
            tmp,
            var=var.detach().cpu().numpy(),
            velocity=velocity.detach().cpu().numpy(),
            best=best.detach().cpu().numpy(),
            best_loss=best_loss.numpy(),
            done=done.numpy(),
            history=np.asarray(history, dtype=np.float64).reshape(len(history), -1),
            step=np.asarray(step),
            box=np.asarray(box if box is not None else (0, 0, 0, 0)),
            **(extra or {}),
        )
        tmp.replace(path)
