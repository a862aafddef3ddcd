"""APGD (Croce & Hein 2020) in the PGD engine: the paper's checkpoints, the per-image step-size
halving rule on scripted losses, convergence to the projection on a convex toy, exact resume of the
extra state, config errors, and a real (tiny LLaVA) targeted attack against PGD."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from mmsafe.attacks.adversarial.apgd import APGDState, checkpoints  # noqa: E402
from mmsafe.attacks.adversarial.engine import PGD, PGDConfig  # noqa: E402

EPS = 8 / 255


def _toy(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clean 8-bit images, a goal up to 3ε away per pixel (mostly outside the L∞ ball), and the
    goal's projection onto the ball ∩ [0, 1] (the minimiser of ‖x − goal‖² there)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.round(torch.rand((b, 3, 16, 16), generator=g) * 255) / 255
    goal = clean + (torch.rand(clean.shape, generator=g) * 6 - 3) * EPS
    proj = torch.clamp(torch.clamp(goal, clean - EPS, clean + EPS), 0, 1)
    return clean, goal, proj


def _quadratic(goal: torch.Tensor):
    return lambda x: ((x - goal) ** 2).flatten(1).sum(1)


def test_checkpoints_match_the_paper() -> None:
    # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (then 1.05): interval shrinks by .03 down to .06
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(300) == [0, 66, 123, 171, 210, 240, 261, 279, 297]
    assert checkpoints(10) == [0, 3, 5, 6, 7, 8, 9]  # ⌈2.2⌉, ⌈4.1⌉, ⌈5.7⌉, 7, 8, ⌈8.7⌉ (⌈9.3⌉ = N)
    assert checkpoints(1) == [0]


def test_step_size_halving_on_scripted_losses_per_image() -> None:
    """Three images, N = 100 (checkpoints 22, 41, 57):
    0 — the loss falls every step: never halved;
    1 — it falls on only half the steps up to 22 (but reaches new bests): condition 1 at 22;
    2 — the best is f(x⁰) = 0 and never beaten, though the loss falls on most steps: condition 2 at
        22; not at 41 (η was halved at 22); again at 57 (η kept at 41, best still unchanged)."""

    def f(t: int) -> list[float]:
        one = (100 - t + (5 if t % 2 else 0)) if t <= 22 else 50 - t
        two = 0.0 if t == 0 else 1000.0 - t
        return [100.0 - t, float(one), two]

    sched = checkpoints(100)
    state = APGDState.start(torch.zeros(3, 1, 1, 1), EPS)
    halvings: dict[int, list[bool]] = {}
    for t in range(60):
        improved, halve = state.observe(t, torch.tensor(f(t)), sched)
        if t == 0:
            assert improved.tolist() == [True, True, True]
        if bool(halve.any()) or t in sched[1:]:
            halvings[t] = halve.tolist()
        if t == 22:
            assert state.n_success.tolist() == [0, 0, 0]  # counters restart at every checkpoint
    assert halvings == {22: [False, True, True], 41: [False, False, False], 57: [False, False, True]}
    assert state.eta.tolist() == pytest.approx([2 * EPS, EPS, EPS / 2])
    assert state.best_loss.tolist() == [100.0 - 59, 50.0 - 59, 0.0]


def test_linf_reaches_the_projection_and_stays_in_the_ball() -> None:
    clean, goal, proj = _toy()
    res = PGD(method="apgd", norm="linf", eps=EPS, steps=200, quantize=False, early_stop=False).run(
        clean, _quadratic(goal)
    )
    adv = res.adversarial
    assert float((adv - clean).abs().max()) <= EPS + 1e-6 and 0 <= float(adv.min()) <= float(adv.max()) <= 1
    assert float((adv - proj).abs().max()) < 0.25 / 255  # the halved steps home in
    assert all(e < 2 * EPS / 16 for e in res.extra["apgd_eta"])
    # fixed-step PGD with the same budget keeps oscillating a grey level around it
    pgd = PGD(norm="linf", eps=EPS, steps=200, step_size=1 / 255, quantize=False, early_stop=False)
    assert float((pgd.run(clean, _quadratic(goal)).adversarial - proj).abs().max()) > 0.5 / 255

    # with 8-bit rounding (the default) it ends on the grid, in the ball, within a grey level
    res = PGD(method="apgd", norm="linf", eps=EPS, steps=100, early_stop=False).run(clean, _quadratic(goal))
    adv = res.adversarial
    assert torch.allclose(adv * 255, torch.round(adv * 255), atol=1e-4)
    assert float((adv - clean).abs().max()) <= EPS + 1e-6
    assert float((adv - proj).abs().max()) <= 1 / 255 + 1e-6


def test_l2_reaches_the_projection() -> None:
    g = torch.Generator().manual_seed(1)
    clean = torch.full((2, 3, 16, 16), 128 / 255)  # on the 8-bit grid (quantize rounds the clean image)
    direction = torch.randn(clean.shape, generator=g)
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    eps = 0.5  # far from the [0, 1] box: the projection of clean + 2ε·d is clean + ε·d
    goal, proj = clean + 2 * eps * direction, clean + eps * direction
    res = PGD(method="apgd", norm="l2", eps=eps, steps=100, quantize=False, early_stop=False).run(
        clean, _quadratic(goal)
    )
    assert float((res.adversarial - clean).flatten(1).norm(dim=1).max()) <= eps + 1e-5
    assert float((res.adversarial - proj).abs().max()) < 1e-3
    quantised = PGD(method="apgd", norm="l2", eps=eps, steps=100, early_stop=False).run(
        clean, _quadratic(goal)
    )
    assert float((quantised.adversarial - clean).flatten(1).norm(dim=1).max()) <= eps + 1e-5


def test_resume_from_a_mid_run_checkpoint_is_exact(tmp_path: Path) -> None:
    clean, goal, _ = _toy(b=2, seed=5)
    cfg = {
        "method": "apgd",
        "norm": "linf",
        "eps": EPS,
        "steps": 50,  # checkpoints 11, 21, 29, 35, 40, 44, 47
        "random_start": True,
        "checkpoint_every": 10,
        "early_stop": False,
    }
    whole = PGD(**cfg).run(clean, _quadratic(goal), seed=7)
    assert any(e < 2 * EPS for e in whole.extra["apgd_eta"])

    calls = {"n": 0}

    def crashing(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 33:
            raise RuntimeError("simulated crash")
        return _quadratic(goal)(x)

    ckpt = tmp_path / "apgd.npz"
    with pytest.raises(RuntimeError, match="simulated"):
        PGD(**cfg).run(clean, crashing, seed=7, checkpoint=ckpt)
    with np.load(ckpt) as z:
        assert int(z["step"]) == 30
        saved_eta = z["apgd_eta"].tolist()
    assert any(e < 2 * EPS for e in saved_eta)  # the step sizes had changed before the crash
    resumed = PGD(**cfg).run(clean, _quadratic(goal), seed=7, checkpoint=ckpt)
    assert resumed.resumed_from == 30
    assert torch.equal(resumed.adversarial, whole.adversarial)
    assert resumed.losses == whole.losses and resumed.final_loss == whole.final_loss
    assert resumed.extra == whole.extra
    assert not ckpt.exists()


def test_a_pgd_checkpoint_is_not_resumed_by_apgd(tmp_path: Path) -> None:
    clean, goal, _ = _toy(b=1)
    ckpt = tmp_path / "x.npz"
    PGD._save(ckpt, clean, clean, clean, torch.zeros(1), torch.zeros(1, dtype=torch.bool), [[1.0]], 1, None)
    res = PGD(method="apgd", eps=EPS, steps=5, early_stop=False).run(clean, _quadratic(goal), checkpoint=ckpt)
    assert res.resumed_from == 0 and res.steps_run == 5


def test_early_stop_freezes_a_succeeded_image_under_apgd() -> None:
    clean, goal, proj = _toy(b=2)
    goal[1] = clean[1] + 3 * EPS  # image 1's optimum is far: it never meets the bar below
    loss = _quadratic(goal)
    limit = float(loss(proj[:1])[0]) + 0.5
    res = PGD(method="apgd", eps=EPS, steps=100, check_every=5).run(
        clean, loss, success_fn=lambda x: [bool(v < limit) for v in loss(x)]
    )
    assert res.success == [True, False] and res.steps_run == 100
    finals = loss(res.adversarial)
    assert float(finals[0]) < limit
    # image 1 returns its best iterate: the lowest loss seen (history and the final evaluation)
    assert res.final_loss[1] <= min(row[1] for row in res.losses) + 1e-6
    assert float(finals[1]) == pytest.approx(res.final_loss[1], rel=1e-6)
    frozen = [row[0] for row in res.losses[-10:]]
    assert len(set(frozen)) == 1  # image 0 no longer moves once it succeeded


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm": "patch"}, "needs norm 'linf' or 'l2'"),
        ({"norm": "moving-patch"}, "needs norm 'linf' or 'l2'"),
        ({"norm": "none"}, "needs norm 'linf' or 'l2'"),
        ({"momentum": 0.9}, "own momentum"),
        ({"schedule": "cosine"}, "schedule"),
    ],
)
def test_apgd_rejects_what_it_cannot_do(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PGDConfig(method="apgd", **kwargs)
    PGDConfig(**kwargs)  # the same settings are fine for PGD


def test_attack_config_error_names_the_problem() -> None:
    from mmsafe.errors import ConfigError
    from mmsafe.registry import registry_or_default

    with pytest.raises(ConfigError, match="apgd"):
        registry_or_default(None).create("attack", "adv-target", {"method": "apgd", "norm": "patch"})


# ------------------------------------------------------------ a real model


def test_apgd_beats_pgd_on_the_tiny_llava_in_the_same_budget() -> None:
    """adv-target, ε = 16/255, 100 steps, no early stop, two noise images (measured: PGD final
    losses 2.519 / 2.298, APGD 2.025 / 1.855; see benchmarks/adversarial_step.py --compare-apgd)."""
    pytest.importorskip("transformers")
    pil = pytest.importorskip("PIL.Image")
    from mmsafe.attacks.adversarial.adv_target import TargetedString
    from mmsafe.models.tiny_llava import TinyLlava
    from mmsafe.types import Image, Sample

    model = TinyLlava(init_std=0.1)
    model.load()
    samples = [
        Sample(
            id=f"s{i}",
            benchmark="t",
            text="What is in this image?",
            images=(
                Image.from_pil(
                    pil.fromarray(np.random.default_rng(i).integers(0, 256, (48, 48, 3), dtype=np.uint8)),
                    source=f"noise{i}.png",
                ),
            ),
        )
        for i in (1, 2)
    ]
    losses = {}
    for method in ("pgd", "apgd"):
        attack = TargetedString(
            target="Visit example dot com now",
            eps=16 / 255,
            steps=100,
            step_size=1 / 255,
            method=method,
            early_stop=False,
            batch_size=2,
        )
        out = attack.apply_batch(samples, seeds=[1, 2], target=model)
        assert all(not isinstance(o, Exception) for o in out), out
        losses[method] = [o.attack_metadata["final_loss"] for o in out]
        assert all(o.attack_metadata["linf"] <= 16 / 255 + 1e-6 for o in out)
    for pgd_loss, apgd_loss in zip(losses["pgd"], losses["apgd"], strict=True):
        assert apgd_loss < pgd_loss - 0.1, losses
