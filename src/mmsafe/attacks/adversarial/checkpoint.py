"""The engine's loop state and its checkpoint: exact resume of an interrupted optimisation.

:class:`Progress` is everything the loop carries from one step to the next apart from the step
rule's own state: the iterate, the best iterate per image and its loss, which images already
succeeded, the loss history and the patch's place. :class:`Checkpoint` writes it, with the step
rule's arrays (:meth:`~mmsafe.attacks.adversarial.step_rule.StepRule.arrays`), every
``checkpoint_every`` steps to one ``.npz`` file (numpy arrays only, read with
``allow_pickle=False``; written to a temporary name and renamed, so a crash mid-write leaves the
previous checkpoint), and a rerun with the same path continues from it: the same iterates, losses
and result as a run that was never interrupted. A checkpoint saved by the other step rule, or for
images of another shape, is ignored with a warning. A finished run deletes its checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mmsafe.attacks.adversarial.step_rule import StepRule
    from mmsafe.attacks.adversarial.threat_model import Box

__all__ = ["Checkpoint", "Progress", "save_archive"]

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """The loop's state (tensors ``[B, …]`` on the variable's device; ``best_loss`` and ``done``
    on the CPU). ``step`` is the next step to run."""

    var: Any
    best: Any
    best_loss: Any
    done: Any
    history: list[list[float]]
    step: int
    box: Box | None

    @classmethod
    def start(cls, var: Any, box: Box | None) -> Progress:
        """Step 0 at ``var``: no loss seen yet (best loss +∞), nothing succeeded."""
        import torch

        b = var.shape[0]
        return cls(
            var=var,
            best=var.clone(),
            best_loss=torch.full((b,), float("inf")),
            done=torch.zeros(b, dtype=torch.bool),
            history=[],
            step=0,
            box=box,
        )

    def keep_better(self, losses: Any, keep: Literal["best", "last"]) -> None:
        """Make the current iterate the best of each image still running whose ``losses`` (``[B]``,
        CPU) are lower than its best so far (``keep="last"``: of every image still running)."""
        import torch

        improved = ((losses < self.best_loss) if keep == "best" else torch.ones_like(self.done)) & ~self.done
        if bool(improved.any()):
            self.best[improved.to(self.best.device)] = self.var[improved.to(self.var.device)]
            self.best_loss = torch.where(improved, losses, self.best_loss)

    def record(self, losses: Any, keep: Literal["best", "last"]) -> None:
        """The losses of the current iterate (before its update): into the history, and :meth:`keep_better`."""
        self.history.append([float(x) for x in losses])
        self.keep_better(losses, keep)

    def advance(self, new: Any) -> None:
        """Move every image that has not succeeded to ``new``; succeeded ones stay frozen."""
        import torch

        frozen = self.done.to(self.var.device).view(-1, 1, 1, 1)
        self.var = torch.where(frozen, self.var, new)

    def succeed(self, ok: Any) -> None:
        """Images newly succeeded (``ok``: ``[B]`` bool) keep their current iterate as the result
        and are frozen from now on."""
        newly = ok & ~self.done
        if bool(newly.any()):
            self.best[newly.to(self.best.device)] = self.var[newly.to(self.var.device)]
            self.done |= newly

    def load(self, archive: Any) -> None:
        """Take the state saved in ``archive`` (tensors to the current variable's device and dtype)."""
        import torch

        self.var = torch.from_numpy(archive["var"]).to(self.var)
        self.best = torch.from_numpy(archive["best"]).to(self.var)
        self.best_loss = torch.from_numpy(archive["best_loss"])
        self.done = torch.from_numpy(archive["done"])
        self.history = archive["history"].tolist()
        self.step = int(archive["step"])
        if self.box is not None:
            top, left, height, width = (int(v) for v in archive["box"])
            self.box = (top, left, height, width)


class Checkpoint:
    """Where a run saves its :class:`Progress` and step-rule state (``path`` None: nowhere)."""

    def __init__(self, path: Path | str | None, *, every: int, steps: int) -> None:
        self.path = Path(path) if path is not None else None
        self.every = every
        self.steps = steps

    def due(self, step_no: int) -> bool:
        """Whether to save after ``step_no`` steps (every ``every`` steps, never after the last)."""
        return self.path is not None and step_no % self.every == 0 and step_no < self.steps

    def resume(self, progress: Progress, rule: StepRule) -> bool:
        """Load a saved state into ``progress`` and ``rule`` if there is one that fits; True if so."""
        import numpy as np

        if self.path is None or not self.path.exists():
            return False
        with np.load(self.path, allow_pickle=False) as z:
            if not rule.owns(z):
                log.warning("ignoring checkpoint %s: it was not saved by method '%s'", self.path, rule.method)
                return False
            if tuple(z["var"].shape) != tuple(progress.var.shape):
                log.warning(
                    "ignoring checkpoint %s: shape %s != %s",
                    self.path,
                    z["var"].shape,
                    tuple(progress.var.shape),
                )
                return False
            progress.load(z)
            rule.restore(z, progress.var)
        log.info("resuming the attack from step %d (%s)", progress.step, self.path)
        return True

    def save(self, progress: Progress, rule: StepRule) -> None:
        """Write ``progress`` and ``rule``'s arrays (atomically: a temporary file, then a rename)."""
        assert self.path is not None
        save_archive(
            self.path,
            var=progress.var,
            best=progress.best,
            best_loss=progress.best_loss,
            done=progress.done,
            history=progress.history,
            step=progress.step,
            box=progress.box,
            arrays=rule.arrays(),
        )

    def discard(self) -> None:
        """Delete the checkpoint (the run finished: nothing is left to resume)."""
        if self.path is not None and self.path.exists():
            self.path.unlink()


def save_archive(
    path: Path,
    *,
    var: Any,
    best: Any,
    best_loss: Any,
    done: Any,
    history: list[list[float]],
    step: int,
    box: Box | None,
    arrays: dict[str, Any],
) -> None:
    """One checkpoint file: the loop state plus the step rule's ``arrays`` (``velocity``, …)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        var=var.detach().cpu().numpy(),
        best=best.detach().cpu().numpy(),
        best_loss=best_loss.numpy(),
        done=done.numpy(),
        history=np.asarray(history, dtype=np.float64).reshape(len(history), -1),
        step=np.asarray(step),
        box=np.asarray(box if box is not None else (0, 0, 0, 0)),
        **arrays,
    )
    tmp.replace(path)
