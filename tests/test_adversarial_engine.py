"""The PGD engine on closed-form objectives: every threat model stays in its set, steps are 8-bit,
early stop freezes, checkpoints resume to the same result, and the image-quality numbers are right."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mmsafe.attacks.adversarial import quality  # noqa: E402
from mmsafe.attacks.adversarial.engine import PGD, PGDConfig, parse_eps  # noqa: E402


def _setup(b: int = 2, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.round(torch.rand((b, 3, size, size), generator=g) * 255) / 255
    goal = torch.rand((b, 3, size, size), generator=g)
    return clean, goal


def _quadratic(goal: torch.Tensor):
    return lambda x: ((x - goal) ** 2).flatten(1).sum(1)


def _on_grid(x: torch.Tensor) -> bool:
    return bool(torch.allclose(x * 255, torch.round(x * 255), atol=1e-4))


def test_parse_eps() -> None:
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps(0.5) == 0.5 and parse_eps("unconstrained") == 1.0
    assert PGDConfig(eps="4/255").eps == pytest.approx(4 / 255)
    with pytest.raises(ValueError):
        parse_eps("-1/255")


@pytest.mark.parametrize("eps", ["1/255", "4/255", "8/255", "16/255"])
def test_linf_stays_in_ball_on_the_8bit_grid_and_descends(eps: str) -> None:
    clean, goal = _setup()
    pgd = PGD(norm="linf", eps=eps, steps=30, step_size=1 / 255, random_start=True, early_stop=False)
    res = pgd.run(clean, _quadratic(goal), seed=3)
    adv = res.adversarial
    assert float((adv - clean).abs().max()) <= parse_eps(eps) + 1e-6
    assert _on_grid(adv) and float(adv.min()) >= 0 and float(adv.max()) <= 1
    start = _quadratic(goal)(clean)
    assert all(f < float(s) for f, s in zip(res.final_loss, start, strict=True))
    assert res.steps_run == 30 and len(res.losses) == 30 and len(res.losses[0]) == 2


def test_l2_stays_in_ball() -> None:
    clean, goal = _setup()
    eps = 0.5
    res = PGD(norm="l2", eps=eps, steps=40, step_size=0.05, random_start=True, early_stop=False).run(
        clean, _quadratic(goal)
    )
    norms = quality.l2(clean, res.adversarial)
    assert float(norms.max()) <= eps + 1e-5
    assert float(norms.min()) > 0.4  # it used the budget: the goal is far outside the ball
    assert _on_grid(res.adversarial)


def test_unconstrained_reaches_the_goal() -> None:
    clean, goal = _setup(b=1)
    res = PGD(norm="none", steps=300, step_size=2 / 255, schedule="linear", early_stop=False).run(
        clean, _quadratic(goal)
    )
    assert float((res.adversarial - goal).abs().max()) < 3 / 255


def test_patch_changes_only_the_patch() -> None:
    clean, goal = _setup()
    res = PGD(
        norm="patch", patch_size=0.25, patch_xy=(0.5, 0.25), steps=20, step_size=4 / 255, early_stop=False
    ).run(clean, _quadratic(goal))
    top, left, h, w = res.patch_boxes[0]
    assert (top, left, h, w) == (4, 8, 4, 4)
    diff = (res.adversarial - clean).abs().sum(1) > 0
    assert bool(diff[:, top : top + h, left : left + w].any())
    diff[:, top : top + h, left : left + w] = False
    assert not bool(diff.any())


def test_moving_patch_moves_and_is_optimised_for_every_location() -> None:
    clean = torch.full((1, 3, 16, 16), 128 / 255)
    seen: list[tuple[int, int]] = []

    def loss(x: torch.Tensor) -> torch.Tensor:
        where = (x - 128 / 255).abs().sum(1)[0] > 1e-6
        idx = where.nonzero()
        if len(idx):
            seen.append((int(idx[:, 0].min()), int(idx[:, 1].min())))
        return ((x - 1.0) ** 2).flatten(1).sum(1)  # brighter is better, wherever the patch lands

    res = PGD(norm="moving-patch", patch_size=0.25, steps=20, step_size=8 / 255, early_stop=False).run(
        clean, loss, seed=1
    )
    assert len(set(seen)) > 5  # many locations were tried
    top, left, h, w = res.patch_boxes[0]
    assert float(res.adversarial[0, :, top : top + h, left : left + w].mean()) > 0.9


def test_momentum_and_schedules() -> None:
    clean, goal = _setup()
    for kwargs in ({"momentum": 0.9}, {"schedule": "cosine"}, {"schedule": "linear"}):
        res = PGD(norm="linf", eps=16 / 255, steps=20, step_size=2 / 255, early_stop=False, **kwargs).run(
            clean, _quadratic(goal)
        )
        assert res.final_loss[0] < float(_quadratic(goal)(clean)[0])
    pgd = PGD(step_size=1.0, steps=10, schedule="cosine")
    assert (
        pgd.step_size(0) == 1.0
        and pgd.step_size(5) == pytest.approx(0.5)
        and pgd.step_size(10) == pytest.approx(0.0)
    )


def test_early_stop_freezes_each_image_once_it_succeeds() -> None:
    clean, goal = _setup()
    goal[1] = clean[1]  # image 1 is already at its goal: succeeds at the first check
    loss = _quadratic(goal)
    res = PGD(norm="none", steps=200, step_size=1 / 255, check_every=5).run(
        clean, loss, success_fn=lambda x: [bool(v < 1.0) for v in loss(x)]
    )
    assert res.success == [True, True]
    assert res.steps_run < 200
    assert float(loss(res.adversarial)[0]) < 1.0


def test_checkpoint_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    clean, goal = _setup()
    cfg = {
        "norm": "linf",
        "eps": 8 / 255,
        "steps": 25,
        "step_size": 1 / 255,
        "momentum": 0.5,
        "random_start": True,
        "checkpoint_every": 5,
        "early_stop": False,
    }
    whole = PGD(**cfg).run(clean, _quadratic(goal), seed=7)

    calls = {"n": 0}

    def crashing(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 13:
            raise RuntimeError("simulated crash")
        return _quadratic(goal)(x)

    ckpt = tmp_path / "attack.npz"
    with pytest.raises(RuntimeError, match="simulated"):
        PGD(**cfg).run(clean, crashing, seed=7, checkpoint=ckpt)
    assert ckpt.exists()
    resumed = PGD(**cfg).run(clean, _quadratic(goal), seed=7, checkpoint=ckpt)
    assert resumed.resumed_from == 10
    assert torch.equal(resumed.adversarial, whole.adversarial)
    assert len(resumed.losses) == len(whole.losses) == 25
    flat = [[v for row in r.losses for v in row] for r in (resumed, whole)]
    assert flat[0] == pytest.approx(flat[1])
    assert not ckpt.exists()  # a finished attack leaves no checkpoint behind


def test_quality_numbers() -> None:
    clean, _ = _setup(b=1, size=32)
    assert float(quality.ssim(clean, clean)[0]) == pytest.approx(1.0)
    assert math.isinf(float(quality.psnr(clean, clean)[0]))
    shifted = (clean + 1 / 255).clamp(0, 1)
    shifted[clean > 254 / 255] = clean[clean > 254 / 255] - 1 / 255
    assert float(quality.psnr(clean, shifted)[0]) == pytest.approx(20 * math.log10(255), abs=0.01)
    noisy = (clean + 0.2 * torch.randn_like(clean)).clamp(0, 1)
    assert float(quality.ssim(clean, noisy)[0]) < float(quality.ssim(clean, shifted)[0]) < 1.0


def test_ssim_agrees_with_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    clean, _ = _setup(b=1, size=48, seed=4)
    noisy = (clean + 0.1 * torch.randn_like(clean)).clamp(0, 1)
    want = metrics.structural_similarity(
        clean[0].permute(1, 2, 0).double().numpy(),
        noisy[0].permute(1, 2, 0).double().numpy(),
        channel_axis=2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(quality.ssim(clean, noisy)[0]) == pytest.approx(want, abs=1e-3)


def test_keep_best_returns_the_lowest_loss_seen() -> None:
    """A step far too large makes PGD oscillate: the result is still the best iterate, not the last
    (the loop's frozen-image mask once shadowed ``keep``, turning "best" into "last" after step 1)."""
    clean, goal = _setup()
    loss = _quadratic(goal)
    res = PGD(norm="none", steps=12, step_size=96 / 255, early_stop=False).run(clean, loss)
    for i in range(2):
        seen = min(row[i] for row in res.losses)
        assert res.final_loss[i] == pytest.approx(min(seen, float(loss(res.adversarial)[i])))
        assert float(loss(res.adversarial)[i]) <= seen + 1e-5
    last = PGD(norm="none", steps=12, step_size=96 / 255, early_stop=False).run(clean, loss, keep="last")
    assert float(loss(last.adversarial).sum()) > float(loss(res.adversarial).sum())
