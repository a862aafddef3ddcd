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

Parts: :mod:`~mmsafe.attacks.adversarial.threat_model` (the set, projection, rounding, patches),
:mod:`~mmsafe.attacks.adversarial.step_rule` (PGD's and APGD's updates) and
:mod:`~mmsafe.attacks.adversarial.checkpoint` (the loop state and its exact resume); :meth:`PGD.run`
only orchestrates them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmsafe.attacks.adversarial.checkpoint import Checkpoint, Progress, save_archive
from mmsafe.attacks.adversarial.step_rule import StepRule, make_step_rule, scheduled_step_size
from mmsafe.attacks.adversarial.threat_model import ThreatModel

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
    """Projected gradient descent over ``B`` images (see the module docstring).

    :meth:`run` orchestrates three parts, each its own unit: the threat model
    (:class:`~mmsafe.attacks.adversarial.threat_model.ThreatModel`: start point, projection onto the
    ε-ball ∩ [0, 1], 8-bit rounding, patches), the step rule
    (:mod:`~mmsafe.attacks.adversarial.step_rule`: signed-gradient PGD with momentum, or APGD) and
    the checkpoint (:mod:`~mmsafe.attacks.adversarial.checkpoint`: the loop state and its exact
    resume)."""

    def __init__(self, config: PGDConfig | None = None, **kwargs: Any) -> None:
        self.config = config or PGDConfig(**kwargs)
        self.threat = ThreatModel(self.config)

    def step_size(self, t: int) -> float:
        """α at step ``t`` under the ``schedule`` (``method: pgd``)."""
        return scheduled_step_size(self.config, t)

    def project(self, clean: Any, x: Any) -> Any:
        """``x`` moved back into the threat model's set around ``clean`` and into [0, 1]."""
        return self.threat.project(clean, x)

    # --------------------------------------------------------------------- run

    def run(
        self,
        clean: Any,
        loss_fn: Callable[..., Any],  # loss(x) or loss(x, step): see _loss_caller
        *,
        success_fn: Callable[[Any], list[bool]] | None = None,
        seed: int = 0,
        checkpoint: Path | str | None = None,
        on_step: Callable[[int, Any, Any], None] | None = None,
        keep: Literal["best", "last"] = "best",
        start: Any | None = None,
    ) -> PGDResult:
        """Minimise ``loss_fn(x)`` (``[B]`` losses of ``[B, 3, H, W]`` images) from ``clean``.

        ``success_fn(x)`` → one bool per image (checked every ``check_every`` steps when
        ``early_stop``); ``on_step(t, x, losses)`` runs after every update (CroPA's inner player uses
        it). A ``loss_fn`` with a ``step`` parameter is called as ``loss_fn(x, step=t)`` (minibatch
        objectives pick their batch from it, so a resumed run continues the same sequence).
        Returns the best iterate per image (``keep="last"``: the last one — for stochastic
        objectives, whose minibatch losses are not comparable across steps). ``start`` (images like
        ``clean``; not for the patch norms) continues from an earlier iterate instead of ``clean`` /
        the random start: it is projected into ``clean``'s ball and rounded as any iterate.
        """
        import torch

        c, threat = self.config, self.threat
        evaluate = _loss_caller(loss_fn)
        clean = threat.prepare(clean)
        var = threat.start(clean, torch.Generator().manual_seed(int(seed)))
        if start is not None:
            if threat.patch_mode:
                raise ValueError("start: not supported for the patch norms")
            var = threat.round(clean, threat.project(clean, start.detach().float().to(clean)))
        rule = make_step_rule(c, threat, var)
        progress = Progress.start(var, threat.first_box(clean.shape))
        store = Checkpoint(checkpoint, every=c.checkpoint_every, steps=c.steps)
        store.resume(progress, rule)
        start = progress.step
        t0 = time.perf_counter()
        for t in range(start, c.steps):
            if bool(progress.done.all()):
                break
            losses = self._step(t, clean, progress, rule, evaluate, seed=seed, keep=keep)
            if on_step is not None:
                on_step(t, threat.compose(clean, progress.var, progress.box), losses)
            progress.step = t + 1
            if self._check_due(progress.step, success_fn):
                assert success_fn is not None
                with torch.no_grad():
                    progress.succeed(_verdicts(success_fn, threat.compose(clean, progress.var, progress.box)))
            if store.due(progress.step):
                store.save(progress, rule)
        self._finish(clean, progress, evaluate, success_fn, keep=keep)
        store.discard()
        boxes = [progress.box] * clean.shape[0] if progress.box is not None else None
        return PGDResult(
            adversarial=threat.compose(clean, progress.best, progress.box).detach(),
            losses=progress.history,
            final_loss=[float(x) for x in progress.best_loss],
            success=[bool(x) for x in progress.done],
            steps_run=len(progress.history),
            seconds=time.perf_counter() - t0,
            resumed_from=start,
            patch_boxes=boxes,
            extra=rule.extra(),
        )

    def _step(
        self,
        t: int,
        clean: Any,
        progress: Progress,
        rule: StepRule,
        evaluate: Callable[[Any, int], Any],
        *,
        seed: int,
        keep: Literal["best", "last"],
    ) -> Any:
        """One iteration: place the patch, take the loss and its gradient, record the loss, let the
        step rule move the images still running, round. Returns the (detached) losses."""
        import torch

        threat = self.threat
        progress.box = threat.box_at(t, seed, clean.shape, progress.box)
        v = progress.var.detach().requires_grad_(True)
        losses = evaluate(threat.compose(clean, v, progress.box), t)
        if losses.dim() == 0:
            losses = losses.reshape(1)
        (grad,) = torch.autograd.grad(losses.sum(), v)
        with torch.no_grad():
            lvals = losses.detach().float().cpu()
            progress.record(lvals, keep)
            new = rule.step(t, clean, progress.var, grad, lvals, progress.done)
            progress.advance(threat.round(clean, new))
        return losses.detach()

    def _check_due(self, step_no: int, success_fn: Callable[[Any], list[bool]] | None) -> bool:
        """Whether to ask ``success_fn`` after ``step_no`` steps (early stop: every ``check_every``
        steps and after the last)."""
        c = self.config
        return (
            c.early_stop and success_fn is not None and (step_no % c.check_every == 0 or step_no == c.steps)
        )

    def _finish(
        self,
        clean: Any,
        progress: Progress,
        evaluate: Callable[[Any, int], Any],
        success_fn: Callable[[Any], list[bool]] | None,
        *,
        keep: Literal["best", "last"],
    ) -> None:
        """A final evaluation (the last iterate may beat every one seen before its update), then
        one success check of the result for the images not yet known to succeed."""
        import torch

        threat = self.threat
        with torch.no_grad():
            final = evaluate(threat.compose(clean, progress.var, progress.box), self.config.steps)
            progress.keep_better(final.detach().float().cpu().reshape(-1), keep)
            if success_fn is not None and not bool(progress.done.all()):
                progress.done |= _verdicts(success_fn, threat.compose(clean, progress.best, progress.box))

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
        """A checkpoint file written from loose parts (the layout of
        :class:`~mmsafe.attacks.adversarial.checkpoint.Checkpoint`; tests use it to plant one)."""
        arrays = {"velocity": velocity.detach().cpu().numpy(), **(extra or {})}
        save_archive(
            path,
            var=var,
            best=best,
            best_loss=best_loss,
            done=done,
            history=history,
            step=step,
            box=box,
            arrays=arrays,
        )


def _loss_caller(loss_fn: Callable[..., Any]) -> Callable[[Any, int], Any]:
    """``loss_fn`` as ``f(x, t)``: passes ``step=t`` when ``loss_fn`` takes a ``step`` parameter."""
    import inspect

    if "step" in inspect.signature(loss_fn).parameters:
        return lambda x, t: loss_fn(x, step=t)
    return lambda x, t: loss_fn(x)


def _verdicts(success_fn: Callable[[Any], list[bool]], x: Any) -> Any:
    """``success_fn(x)`` as a ``[B]`` bool tensor."""
    import torch

    return torch.tensor([bool(s) for s in success_fn(x)])
