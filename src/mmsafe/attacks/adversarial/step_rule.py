"""The engine's step rules: how one iterate and its loss gradient become the next iterate.

* :class:`SignedGradient` (``method: pgd``) — ``x − α_t·d`` with ``d`` the sign of the gradient
  (L∞ and the patch / unconstrained modes) or the unit-L2 gradient (L2); α_t is ``step_size``
  under its ``schedule``; with ``momentum`` μ > 0 the direction is taken from a velocity that
  accumulates L1-normalised gradients (MI-FGSM, Dong et al. 2018).
* :class:`AutoPGD` (``method: apgd``) — Croce & Hein's per-image step size and momentum on the
  step (the rule's bookkeeping lives in :mod:`mmsafe.attacks.adversarial.apgd`).

A rule returns the new iterate already back in the threat model's set, before 8-bit rounding (the
engine rounds and leaves images that already succeeded where they are). Its state goes into the
engine's checkpoint (:meth:`StepRule.arrays`) and comes back from it (:meth:`StepRule.restore`),
so a resumed run continues the same sequence of steps.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsafe.attacks.adversarial.engine import PGDConfig
    from mmsafe.attacks.adversarial.threat_model import ThreatModel

__all__ = ["AutoPGD", "SignedGradient", "StepRule", "direction", "make_step_rule", "scheduled_step_size"]


def scheduled_step_size(config: PGDConfig, t: int) -> float:
    """α at step ``t``: ``step_size`` (``constant``), decayed to 0 at ``steps`` along half a cosine
    (``cosine``) or a line (``linear``)."""
    if config.schedule == "cosine":
        return config.step_size * 0.5 * (1 + math.cos(math.pi * t / config.steps))
    if config.schedule == "linear":
        return config.step_size * (1 - t / config.steps)
    return config.step_size


def direction(grad: Any, norm: str) -> Any:
    """The unit step of steepest ascent for ``norm``: the unit-L2 gradient per image for ``l2``,
    the sign of the gradient otherwise."""
    if norm == "l2":
        return grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
    return grad.sign()


class StepRule:
    """One update of the iterate from its gradient (see the module docstring)."""

    #: the archive key that tells this rule's checkpoints from another's
    method: str = ""

    def step(self, t: int, clean: Any, x: Any, grad: Any, losses: Any, done: Any) -> Any:
        """The next iterate after ``x`` (``[B, …]``) at step ``t``; ``grad`` is the loss gradient
        at ``x``, ``losses`` its ``[B]`` losses (CPU), ``done`` the images that already succeeded."""
        raise NotImplementedError

    def arrays(self) -> dict[str, Any]:
        """The rule's state as numpy arrays for the checkpoint archive."""
        raise NotImplementedError

    def owns(self, archive: Any) -> bool:
        """Whether ``archive`` (an ``np.load`` result) was saved by this kind of rule."""
        raise NotImplementedError

    def restore(self, archive: Any, like: Any) -> None:
        """Take the state saved in ``archive``; tensors go to ``like``'s device and dtype."""
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        """What the rule adds to :attr:`PGDResult.extra`."""
        return {}


class SignedGradient(StepRule):
    """PGD's fixed-size step (``method: pgd``), with MI-FGSM momentum when ``momentum`` > 0."""

    method = "pgd"

    def __init__(self, config: PGDConfig, threat: ThreatModel, like: Any) -> None:
        import torch

        self.config = config
        self.threat = threat
        self.velocity = torch.zeros_like(like)

    def move(self, x: Any, grad: Any, alpha: float) -> Any:
        """``x − α·d`` (not projected); updates the velocity when there is momentum."""
        c = self.config
        g = grad
        if c.momentum > 0:
            g = g / g.flatten(1).abs().sum(1).clamp(min=1e-12).view(-1, 1, 1, 1)
            self.velocity = c.momentum * self.velocity + g
            g = self.velocity
        return x - alpha * direction(g, c.norm)

    def step(self, t: int, clean: Any, x: Any, grad: Any, losses: Any, done: Any) -> Any:
        new = self.move(x, grad.float(), scheduled_step_size(self.config, t))
        return self.threat.feasible(clean, new)

    def arrays(self) -> dict[str, Any]:
        return {"velocity": self.velocity.detach().cpu().numpy()}

    def owns(self, archive: Any) -> bool:
        from mmsafe.attacks.adversarial.apgd import APGDState

        return not APGDState.in_archive(archive)

    def restore(self, archive: Any, like: Any) -> None:
        import torch

        self.velocity = torch.from_numpy(archive["velocity"]).to(like)


class AutoPGD(StepRule):
    """Auto-PGD's step (``method: apgd``; L∞ / L2 only): ``z = P(x − η·d)``, then
    ``P(x + α(z − x) + (1 − α)(x − prev))`` (the first step is ``z`` itself), with a per-image η
    that is halved at the paper's checkpoints when progress stalls — the image then restarts from
    its best point with the gradient stored there."""

    method = "apgd"

    def __init__(self, config: PGDConfig, threat: ThreatModel, like: Any) -> None:
        from mmsafe.attacks.adversarial.apgd import APGDState, checkpoints

        self.config = config
        self.threat = threat
        self.state = APGDState.start(like, config.eps)
        self.schedule = checkpoints(config.steps)
        self._like = like

    def update(self, clean: Any, x: Any, prev: Any, grad: Any, eta: Any, first: bool) -> Any:
        """Croce & Hein's update (descent) of ``x`` given the previous iterate and η per image."""
        from mmsafe.attacks.adversarial.apgd import ALPHA

        d = direction(grad, self.config.norm)
        z = self.threat.project(clean, x - eta.to(x).view(-1, 1, 1, 1) * d)
        if first:
            return z
        return self.threat.project(clean, x + ALPHA * (z - x) + (1 - ALPHA) * (x - prev))

    def step(self, t: int, clean: Any, x: Any, grad: Any, losses: Any, done: Any) -> Any:
        import torch

        state = self.state
        grad = grad.float()
        better, halve = state.observe(t, losses, self.schedule)
        if bool(better.any()):
            m = better.to(x.device)
            state.x_best[m] = x[m]
            state.g_best[m] = grad[m]
        halve &= ~done
        if bool(halve.any()):
            m = halve.to(x.device).view(-1, 1, 1, 1)
            x = torch.where(m, state.x_best, x)
            grad = torch.where(m, state.g_best, grad)
        new = self.update(clean, x, state.prev, grad, state.eta, first=t == 0)
        state.prev = x.clone()
        return new

    def arrays(self) -> dict[str, Any]:
        import torch

        # the archive keeps one layout for both rules: APGD's velocity is always zero
        return {"velocity": torch.zeros_like(self._like).cpu().numpy(), **self.state.arrays()}

    def owns(self, archive: Any) -> bool:
        from mmsafe.attacks.adversarial.apgd import APGDState

        return APGDState.in_archive(archive)

    def restore(self, archive: Any, like: Any) -> None:
        from mmsafe.attacks.adversarial.apgd import APGDState

        self.state = APGDState.from_arrays(archive, like)

    def extra(self) -> dict[str, Any]:
        return {"apgd_eta": [float(v) for v in self.state.eta]}


def make_step_rule(config: PGDConfig, threat: ThreatModel, like: Any) -> StepRule:
    """The rule ``config.method`` names, starting at the variable ``like``."""
    return AutoPGD(config, threat, like) if config.method == "apgd" else SignedGradient(config, threat, like)
