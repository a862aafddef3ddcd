"""Optimising past a detector: the attack's loss plus a hinge on the detector's margin (white-box adaptive attack).

A detector defense (CIDER, HiddenDetect, a white-box guard) does not change the image; it decides whether the model
may see it. An attacker who knows the detector optimises both at once, as Carlini & Wagner, "Adversarial Examples
Are Not Easily Detected: Bypassing Ten Detection Methods" (AISec 2017, arXiv:1705.07263), did against ten detectors
(the classifier and the detector folded into one model whose loss is minimised), and as Tramèr, Carlini, Brendel,
Madry, "On Adaptive Attacks to Adversarial Example Defenses" (NeurIPS 2020, arXiv:2002.08347) — the methodology
reference — do for the detectors they re-evaluate: one differentiable loss covering the task and the detector:

    loss(x) = task_loss(x) + λ · mean_p relu(margin_p(x) + κ)

``margin_p(x)`` is the detector's own decision statistic for image ``x`` shown with prompt ``p`` minus its threshold
(``> 0``: the defense would flag or block it; ``≤ 0``: it passes), averaged over the prompts the image is optimised
for (one for a per-sample attack; the step's minibatch for a universal one). The hinge is Carlini & Wagner's
``max(·, −κ)`` (objective f₆ of "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017,
arXiv:1608.04644): once the detector passes the image with margin κ the term is zero and stops pulling, so the task
loss has the whole budget again. Where the detector's statistic is not differentiable (a denoiser, a re-encoding),
the defense uses BPDA (Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018,
§4.1) inside its own :meth:`Detector.detection_margin` — the attack only sees a differentiable margin. λ
(``evade_weight``) converts the defense's units into the task loss's: a cosine drop of 0.005 (CIDER) needs a much
larger λ than a refusal area of 0.1 (HiddenDetect) against a cross-entropy of a few nats.

Success (when the attack has a success test) additionally requires ``max_p margin_p ≤ 0``: the image counts only if
the detector passes it with every prompt. With ``through`` (an input transform in front of the model) the margin
and the success test see the transformed image, as the defended model would. The attack records ``evade`` (the
defense's name) and ``final_margin`` (per image, the max over its prompts) in ``attack_metadata``. The margin is
the detector's reading of the *crafting* model (or of its own encoder, e.g. CIDER's ``encoder``): with ``source``
set, the detector is evaded on the source model and the result transfers, or not, to the evaluated one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mmsafe.models.base import WhiteBoxModel
    from mmsafe.types import Prompt

__all__ = ["Detector", "EvadePrompts", "evading", "margins", "unique_prompts"]


class Detector(Protocol):
    """What this module needs of a detector defense (the attack stage does not import the defense stage).

    :meth:`detection_margin` takes ``x`` (``[B, 3, H, W]`` in [0, 1], the crafting model's pixel space, as the
    engine optimises it) and ``prompts`` (``prompts[i]`` is the prompt image ``i`` is shown with; its image slot
    holds the clean image) and returns ``[B]``, differentiable in ``x``: ``> 0`` the defense would flag or block
    the input, ``≤ 0`` it passes, in the defense's own units (its score minus its threshold)."""

    name: str

    def detection_margin(self, model: WhiteBoxModel, x: Any, prompts: Sequence[Prompt]) -> Any: ...


@dataclass(frozen=True)
class EvadePrompts:
    """The prompts each image row is shown with: ``rows[b]`` for row ``b`` of the engine's variable (at least one
    each), or, for a universal attack whose minibatch changes with the step, ``at(step)`` while optimising and
    ``rows`` (every prompt it was fitted on) for the final margin."""

    rows: Sequence[Sequence[Prompt]]
    at: Callable[[int], Sequence[Sequence[Prompt]]] | None = None

    def step(self, step: int) -> Sequence[Sequence[Prompt]]:
        return self.at(step) if self.at is not None else self.rows


def unique_prompts(prompts: Sequence[Prompt]) -> list[Prompt]:
    """``prompts`` without repeats (a universal attack's corpus often sends one text with every target)."""
    seen: dict[str, Prompt] = {}
    for p in prompts:
        seen.setdefault(p.model_dump_json(), p)
    return list(seen.values())


def margins(detector: Detector, model: WhiteBoxModel, x: Any, rows: Sequence[Sequence[Prompt]]) -> list[Any]:
    """One ``[n_b]`` tensor of margins per image row ``b`` of ``x``: the detector on ``x[b]`` with each of its
    prompts (one call for the whole batch)."""
    if len(rows) != x.shape[0] or any(not r for r in rows):
        raise ValueError(f"evade: {x.shape[0]} image(s) need one non-empty prompt list each, got {len(rows)}")
    counts = [len(r) for r in rows]
    index = [b for b, n in enumerate(counts) for _ in range(n)]
    flat = detector.detection_margin(model, x[index], [p for r in rows for p in r])
    if tuple(flat.shape) != (len(index),):
        raise ValueError(
            f"defense '{detector.name}': detection_margin returned shape {tuple(flat.shape)}, wanted ({len(index)},)"
        )
    out, k = [], 0
    for n in counts:
        out.append(flat[k : k + n])
        k += n
    return out


def evading(
    detector: Detector,
    model: WhiteBoxModel,
    prompts: EvadePrompts,
    loss_fn: Callable[..., Any],
    success_fn: Callable[[Any], list[bool]] | None,
    *,
    weight: float = 1.0,
    kappa: float = 0.0,
) -> tuple[Callable[..., Any], Callable[[Any], list[bool]] | None]:
    """``loss_fn`` plus ``weight · mean relu(margin + kappa)`` per image, and ``success_fn`` that also needs every
    margin ``≤ 0`` (None stays None: an objective without a success test gets none). The returned loss takes the
    engine's ``step`` (a universal attack's minibatch) and passes it on when ``loss_fn`` takes it."""
    import inspect

    import torch

    wants_step = "step" in inspect.signature(loss_fn).parameters

    def loss(x: Any, step: int = 0) -> Any:
        task = loss_fn(x, step=step) if wants_step else loss_fn(x)
        hinge = torch.stack(
            [torch.relu(m + kappa).mean() for m in margins(detector, model, x, prompts.step(step))]
        )
        return task + weight * hinge.to(task.dtype).reshape(task.shape)

    if success_fn is None:
        return loss, None
    inner = success_fn

    def success(x: Any) -> list[bool]:
        passed = [bool(m.max() <= 0) for m in margins(detector, model, x, prompts.rows)]
        return [bool(a) and b for a, b in zip(inner(x), passed, strict=True)]

    return loss, success
