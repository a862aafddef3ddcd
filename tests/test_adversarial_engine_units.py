"""The PGD engine's parts on their own: the threat model keeps every pixel in its ε-ball and in
[0, 1], each step rule takes the step its formula gives on a known gradient, and the checkpoint
brings back exactly the state it saved."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mmsafe.attacks.adversarial.checkpoint import Checkpoint, Progress  # noqa: E402
from mmsafe.attacks.adversarial.engine import PGDConfig  # noqa: E402
from mmsafe.attacks.adversarial.step_rule import AutoPGD, SignedGradient, make_step_rule  # noqa: E402
from mmsafe.attacks.adversarial.threat_model import ThreatModel  # noqa: E402


def _images(b: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.rand((b, 3, size, size), generator=g) * 255) / 255


# ------------------------------------------------------------------ threat model


@pytest.mark.parametrize("eps", [1 / 255, 8 / 255, 0.2])
def test_linf_projection_keeps_every_pixel_within_eps_and_in_range(eps: float) -> None:
    clean = _images()
    far = clean + 3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    threat = ThreatModel(PGDConfig(norm="linf", eps=eps))
    x = threat.project(clean, far)
    assert float((x - clean).abs().max()) <= eps + 1e-7
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(threat.project(clean, x), x)  # a point in the set stays where it is
    inside = (clean + 0.5 * eps * torch.sign(far - clean)).clamp(0, 1)
    assert torch.allclose(threat.project(clean, inside), inside)


def test_l2_projection_scales_each_image_back_to_the_sphere_and_clips_to_range() -> None:
    clean = torch.full((2, 3, 4, 4), 0.5)
    delta = torch.zeros_like(clean)
    delta[0, 0, 0, 0], delta[1] = 0.4, 0.01  # image 0: length 0.4, outside; image 1: inside
    threat = ThreatModel(PGDConfig(norm="l2", eps=0.2))
    x = threat.project(clean, clean + delta)
    assert float(x[0, 0, 0, 0]) == pytest.approx(0.7)
    assert float((x[0] - clean[0]).norm()) == pytest.approx(0.2)
    assert torch.allclose(x[1], clean[1] + 0.01)
    big = ThreatModel(PGDConfig(norm="l2", eps=10.0)).project(clean, clean + 2.0)
    assert float(big.max()) == 1.0  # the valid range binds even when the ball does not


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_and_8bit_rounding_stay_in_the_ball(norm: str) -> None:
    clean = _images(b=4)
    eps = 4 / 255 if norm == "linf" else 0.05
    threat = ThreatModel(PGDConfig(norm=norm, eps=eps, random_start=True))
    x = threat.start(threat.prepare(clean), torch.Generator().manual_seed(2))
    dist = (x - clean).abs().flatten(1).amax(1) if norm == "linf" else (x - clean).flatten(1).norm(dim=1)
    assert float(dist.max()) <= eps + 1e-6 and float(dist.min()) > 0
    assert torch.allclose(x * 255, torch.round(x * 255), atol=1e-4)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_patch_is_pasted_only_inside_its_box_and_a_moving_patch_is_a_function_of_seed_and_step() -> None:
    clean = _images(b=2, size=16)
    threat = ThreatModel(PGDConfig(norm="patch", patch_size=0.25, patch_xy=(0.5, 0.25)))
    box = threat.first_box(clean.shape)
    assert box == (4, 8, 4, 4)
    assert threat.box_at(7, 0, clean.shape, box) == box  # a stationary patch never moves
    x = threat.compose(clean, torch.ones((2, 3, 4, 4)), box)
    assert bool((x[:, :, 4:8, 8:12] == 1).all())
    x[:, :, 4:8, 8:12] = clean[:, :, 4:8, 8:12]
    assert torch.equal(x, clean)
    moving = ThreatModel(PGDConfig(norm="moving-patch", patch_size=0.25))
    places = [moving.box_at(t, 3, clean.shape, box) for t in range(10)]
    assert places == [moving.box_at(t, 3, clean.shape, None) for t in range(10)]
    assert len(set(places)) > 3


# --------------------------------------------------------------------- step rules


def test_signed_gradient_step_on_a_known_gradient() -> None:
    clean = torch.full((1, 3, 2, 2), 0.5)
    grad = torch.zeros_like(clean)
    grad[0, 0, 0, 0], grad[0, 1, 1, 1] = 2.0, -0.001  # the sign, not the size, sets the step
    cfg = PGDConfig(norm="linf", eps=8 / 255, step_size=1 / 255)
    rule = SignedGradient(cfg, ThreatModel(cfg), clean)
    new = rule.step(0, clean, clean, grad, None, None)
    want = clean.clone()
    want[0, 0, 0, 0], want[0, 1, 1, 1] = 0.5 - 1 / 255, 0.5 + 1 / 255
    assert torch.allclose(new, want)
    # ten steps the same way end on the ball's face, not beyond it
    x = clean
    for t in range(10):
        x = rule.step(t, clean, x, grad, None, None)
    assert float(x[0, 0, 0, 0]) == pytest.approx(0.5 - 8 / 255)


def test_l2_step_has_length_alpha_and_momentum_accumulates_l1_normalised_gradients() -> None:
    clean = torch.full((1, 1, 1, 4), 0.5)
    grad = torch.tensor([[[[3.0, 4.0, 0.0, 0.0]]]])
    cfg = PGDConfig(norm="l2", eps=1.0, step_size=0.1)
    new = SignedGradient(cfg, ThreatModel(cfg), clean).step(0, clean, clean, grad, None, None)
    assert torch.allclose(new - clean, torch.tensor([[[[-0.06, -0.08, 0.0, 0.0]]]]))
    cfg = PGDConfig(norm="none", step_size=0.1, momentum=0.5)
    rule = SignedGradient(cfg, ThreatModel(cfg), clean)
    rule.step(0, clean, clean, grad, None, None)
    assert torch.allclose(rule.velocity, grad / 7)
    rule.step(1, clean, clean, -grad, None, None)
    assert torch.allclose(rule.velocity, 0.5 * grad / 7 - grad / 7)


def test_apgd_first_step_is_a_projected_2eps_step_and_later_ones_carry_momentum() -> None:
    eps = 4 / 255
    clean = torch.full((1, 1, 1, 2), 0.5)
    grad = torch.tensor([[[[1.0, -1.0]]]])
    cfg = PGDConfig(method="apgd", norm="linf", eps=eps, steps=10)
    rule = AutoPGD(cfg, ThreatModel(cfg), clean)
    done = torch.zeros(1, dtype=torch.bool)
    first = rule.step(0, clean, clean, grad, torch.tensor([1.0]), done)
    assert torch.allclose(first, torch.tensor([[[[0.5 - eps, 0.5 + eps]]]]))  # 2ε, cut back to ε
    x = torch.tensor([[[[0.5, 0.5 + eps / 2]]]])
    second = rule.step(1, clean, x, grad, torch.tensor([0.5]), done)
    # z = P(x − 2ε·sign g) = (0.5 − ε, 0.5 + ε); x + 0.75 (z − x) + 0.25 (x − prev), prev = clean
    z = torch.tensor([[[[0.5 - eps, 0.5 + eps]]]])
    assert torch.allclose(second, ThreatModel(cfg).project(clean, x + 0.75 * (z - x) + 0.25 * (x - clean)))
    assert rule.extra() == {"apgd_eta": [pytest.approx(2 * eps)]}


# --------------------------------------------------------------------- checkpoint


def test_progress_keeps_the_best_iterate_and_freezes_succeeded_images() -> None:
    var = torch.zeros((2, 1, 1, 1))
    p = Progress.start(var, None)
    p.record(torch.tensor([1.0, 1.0]), "best")
    p.advance(torch.ones_like(var))
    p.record(torch.tensor([2.0, 0.5]), "best")  # image 0 got worse: its best stays at step 0
    assert p.best.flatten().tolist() == [0.0, 1.0] and p.best_loss.tolist() == [1.0, 0.5]
    p.succeed(torch.tensor([True, False]))
    p.advance(torch.full_like(var, 0.25))
    assert p.var.flatten().tolist() == [1.0, 0.25]  # image 0 no longer moves
    assert p.best.flatten().tolist() == [1.0, 1.0]  # and its result is the iterate that succeeded
    assert p.history == [[1.0, 1.0], [2.0, 0.5]]


@pytest.mark.parametrize("method", ["pgd", "apgd"])
def test_checkpoint_brings_back_exactly_what_it_saved(tmp_path: Path, method: str) -> None:
    momentum = 0.5 if method == "pgd" else 0.0  # so the PGD rule has state (its velocity) to lose
    cfg = PGDConfig(method=method, norm="linf", steps=20, checkpoint_every=5, momentum=momentum)
    threat = ThreatModel(cfg)
    var = _images(b=2, size=4)
    rule = make_step_rule(cfg, threat, var)
    grad = torch.randn(var.shape, generator=torch.Generator().manual_seed(4))
    progress = Progress.start(var, None)
    for t in range(3):
        progress.record(torch.tensor([3.0 - t, 1.0 + t]), "best")
        progress.advance(
            threat.round(var, rule.step(t, var, progress.var, grad, progress.best_loss, progress.done))
        )
    progress.succeed(torch.tensor([False, True]))
    progress.step = 3
    store = Checkpoint(tmp_path / "sub" / "run.npz", every=5, steps=20)
    assert [s for s in range(1, 21) if store.due(s)] == [5, 10, 15]  # never after the last step
    store.save(progress, rule)

    fresh = Progress.start(var.clone(), None)
    fresh_rule = make_step_rule(cfg, threat, var)
    assert store.resume(fresh, fresh_rule)
    for name in ("var", "best", "best_loss", "done"):
        assert torch.equal(getattr(fresh, name), getattr(progress, name)), name
    assert fresh.history == progress.history and fresh.step == 3
    assert fresh_rule.extra() == rule.extra()
    for key, value in rule.arrays().items():
        assert (fresh_rule.arrays()[key] == value).all(), key
    # the resumed rule takes the very step the saved one takes next (a new gradient direction, so
    # a lost velocity would change the signs)
    turn = torch.randn(var.shape, generator=torch.Generator().manual_seed(5))
    for r, p in ((rule, progress), (fresh_rule, fresh)):
        p.advance(r.step(3, var, p.var, turn, torch.tensor([0.5, 0.5]), p.done))
    assert torch.equal(fresh.var, progress.var)

    other = PGDConfig(method="pgd" if method == "apgd" else "apgd", norm="linf", steps=20)
    assert not store.resume(Progress.start(var, None), make_step_rule(other, threat, var))
    assert not store.resume(Progress.start(var[:1], None), make_step_rule(cfg, threat, var[:1]))
    store.discard()
    assert not store.path.exists() and not Checkpoint(None, every=5, steps=20).due(5)
