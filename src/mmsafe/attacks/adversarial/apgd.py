"""APGD: the step-size rule of Auto-PGD, used by the engine when ``method: apgd``.

Paper: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690), Algorithm 1 and §3.2.

Threat model: the engine's ``linf`` and ``l2`` balls of radius ε around the clean image, in pixel
space [0, 1] (the patch and unconstrained modes have no radius to derive a step size from, so
:class:`~mmsafe.attacks.adversarial.engine.PGDConfig` rejects ``method: apgd`` for them).

Algorithm, as in the paper (only the direction is flipped — see below):

* the step size starts at η = 2ε (``step_size`` and ``schedule`` are ignored);
* the first step is a plain projected step ``x¹ = P(x⁰ − η·d(∇f(x⁰)))``; every later one is
  ``z = P(xᵏ − η·d(∇f(xᵏ)))``, ``xᵏ⁺¹ = P(xᵏ + α(z − xᵏ) + (1 − α)(xᵏ − xᵏ⁻¹))`` with α = 0.75,
  where ``d`` is the sign (L∞) or the L2-normalised gradient (L2) and ``P`` the projection onto
  the ball ∩ [0, 1];
* checkpoints ``w_j = ⌈p_j·N⌉`` with ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` (:func:`checkpoints`);
* at each checkpoint ``w_j`` (j ≥ 1), per image, η is halved and the iterate restarts from the
  best point so far if **condition 1** — fewer than ρ·(w_j − w_{j−1}) of the steps since the last
  checkpoint were successful, ρ = 0.75 — or **condition 2** — η was not halved at ``w_{j−1}`` and
  the best loss did not improve since ``w_{j−1}``. At ``w_0 = 0`` η counts as "not halved" (the
  paper's ``η^(w_0) ≡ η^(w_1)``), so condition 2 can fire at the first checkpoint;
* after a restart the next "successful step" is judged against the best loss (the restarted
  iterate's own loss), and its gradient is the one stored with the best point (no extra forward
  pass).

Where this differs: the engine *minimises* its loss (objectives are targeted), so a step is
successful when the loss went **down** (``f(xᵏ) < f(xᵏ⁻¹)``), the best point is the lowest loss
and the step goes against the gradient; the paper maximises. Each image of a batch has its own η,
counters and best point, and the checkpoints fall on the same iterations for all. With the
engine's 8-bit ``quantize`` every iterate is rounded to the pixel grid, so once α·η falls below
half a grey level the gradient part of a step rounds away (only the momentum part moves the
image). The reference implementation (auto-attack) spaces the checkpoints by ``int(0.22N)``,
``int(0.03N)`` and ``int(0.06N)`` instead of ``⌈p_j N⌉`` and uses ``≤`` in condition 1; we follow
the paper. No restarts or ensemble (AutoAttack's other parts): one run per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ALPHA", "RHO", "APGDState", "checkpoints"]

ALPHA = 0.75  # weight of the new gradient step against the previous displacement
RHO = 0.75  # condition 1: at least this fraction of the steps since the last checkpoint must succeed


def checkpoints(n_iter: int) -> list[int]:
    """``[w_0 = 0, w_1, …]``: the paper's checkpoints below ``n_iter`` (exact: ``p_j`` in hundredths)."""
    if n_iter < 1:
        raise ValueError(f"n_iter must be positive, got {n_iter}")
    out = [0]
    prev, p = 0, 22  # p_{j-1}, p_j in units of 0.01
    while True:
        w = -(-p * n_iter // 100)  # ⌈p·N / 100⌉ without floating point
        if w >= n_iter:
            return out
        if w > out[-1]:
            out.append(w)
        prev, p = p, p + max(p - prev - 3, 6)


@dataclass
class APGDState:
    """Per-image step-size bookkeeping (CPU tensors of length ``B``) plus the iterates it needs
    (tensors on the images' device). All of it goes into the engine's checkpoint."""

    eta: Any  # [B] float64: current step size
    n_success: Any  # [B] int64: successful steps since the last checkpoint
    prev_loss: Any  # [B] float64: loss of the previous iterate (what the next step is judged against)
    best_loss: Any  # [B] float64: lowest loss so far
    best_loss_last_check: Any  # [B] float64: lowest loss at the previous checkpoint
    halved_last_check: Any  # [B] bool: η was halved at the previous checkpoint
    prev: Any  # [B, ...] the previous iterate x^(k-1) (for the momentum term)
    x_best: Any  # [B, ...] the best iterate
    g_best: Any  # [B, ...] the loss gradient at the best iterate

    ARRAYS = ("eta", "n_success", "prev_loss", "best_loss", "best_loss_last_check", "halved_last_check")
    TENSORS = ("prev", "x_best", "g_best")

    @classmethod
    def start(cls, x: Any, eps: float) -> APGDState:
        import torch

        b = x.shape[0]
        return cls(
            eta=torch.full((b,), 2.0 * eps, dtype=torch.float64),
            n_success=torch.zeros(b, dtype=torch.int64),
            prev_loss=torch.full((b,), float("inf"), dtype=torch.float64),
            best_loss=torch.full((b,), float("inf"), dtype=torch.float64),
            best_loss_last_check=torch.full((b,), float("inf"), dtype=torch.float64),
            halved_last_check=torch.zeros(b, dtype=torch.bool),
            prev=x.clone(),
            x_best=x.clone(),
            g_best=torch.zeros_like(x),
        )

    # ------------------------------------------------------------- the rule

    def observe(self, t: int, losses: Any, schedule: list[int], rho: float = RHO) -> tuple[Any, Any]:
        """Record the losses ``f(x^(t))`` (``[B]``, lower is better) of iteration ``t``.

        Returns ``(improved, halve)``, two ``[B]`` bool masks: which images reached a new best
        (the caller stores the iterate and gradient), and which must halve η and restart from the
        best point now (``t`` is a checkpoint and condition 1 or 2 holds). η and the counters are
        updated here; the caller swaps the iterates."""
        import torch

        f = losses.detach().to(torch.float64).cpu().reshape(-1)
        if t == 0:
            improved = torch.ones_like(f, dtype=torch.bool)
            self.best_loss = f.clone()
            self.best_loss_last_check = f.clone()
        else:
            self.n_success += (f < self.prev_loss).to(torch.int64)
            improved = f < self.best_loss
            self.best_loss = torch.where(improved, f, self.best_loss)
        self.prev_loss = f.clone()
        halve = torch.zeros_like(improved)
        if t > 0 and t in schedule:
            j = schedule.index(t)
            span = t - schedule[j - 1]
            cond1 = self.n_success.to(torch.float64) < rho * span
            cond2 = ~self.halved_last_check & (self.best_loss >= self.best_loss_last_check)
            halve = cond1 | cond2
            self.eta = torch.where(halve, self.eta / 2, self.eta)
            self.halved_last_check = halve.clone()
            self.best_loss_last_check = self.best_loss.clone()
            self.n_success = torch.zeros_like(self.n_success)
            # the restarted iterate is the best point: the next step is judged against its loss
            self.prev_loss = torch.where(halve, self.best_loss, self.prev_loss)
        return improved, halve

    # --------------------------------------------------------- checkpointing

    def arrays(self) -> dict[str, Any]:
        out = {f"apgd_{k}": getattr(self, k).numpy() for k in self.ARRAYS}
        out.update({f"apgd_{k}": getattr(self, k).detach().cpu().numpy() for k in self.TENSORS})
        return out

    @classmethod
    def from_arrays(cls, z: Any, like: Any) -> APGDState:
        import torch

        kw = {k: torch.from_numpy(z[f"apgd_{k}"].copy()) for k in cls.ARRAYS}
        kw.update({k: torch.from_numpy(z[f"apgd_{k}"].copy()).to(like) for k in cls.TENSORS})
        return cls(**kw)

    @classmethod
    def in_archive(cls, z: Any) -> bool:
        return all(f"apgd_{k}" in z.files for k in (*cls.ARRAYS, *cls.TENSORS))
