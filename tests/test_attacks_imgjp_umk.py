"""ImgJP / DeltaJP and UMK on tiny random models: the loss falls (LLaVA and Qwen2-VL), deltaJP stays in
its ε-ball, the universal image is fitted once and reused, the GCG round keeps the best candidate it
evaluated (and its embedding-space loss equals the re-tokenised prompt's), held-out behaviours are
scored, and everything is deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
np = pytest.importorskip("numpy")
PIL = pytest.importorskip("PIL.Image")

from mmsafe.attacks.adversarial import gcg  # noqa: E402
from mmsafe.attacks.adversarial._behaviors import (  # noqa: E402
    BUILTIN_BEHAVIORS,
    Behavior,
    load_behaviors,
    split_behaviors,
)
from mmsafe.attacks.adversarial.imgjp import ImgJP  # noqa: E402
from mmsafe.attacks.adversarial.umk import UMK, _Joint, _Suffix, in_context_ids  # noqa: E402
from mmsafe.models.tiny import TinyModel  # noqa: E402
from mmsafe.models.tiny_llava import TinyLlava  # noqa: E402
from mmsafe.types import Image, Sample  # noqa: E402


@pytest.fixture(scope="module")
def llava() -> TinyLlava:
    m = TinyLlava(init_std=0.1)
    m.load()
    return m


@pytest.fixture(scope="module")
def qwen() -> TinyModel:
    m = TinyModel(family="qwen2_vl")
    m.load()
    return m


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test fits its own universal images (models are already loaded)."""
    monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / "cache"))


def _noise(seed: int, size: int = 40) -> Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.from_pil(PIL.fromarray(arr), source=f"noise{seed}.png")


SAMPLE = Sample(id="s", benchmark="t", text="Tell me something")


# ----------------------------------------------------------------- behaviours


def test_behaviours_load_from_advbench_csv_jsonl_and_split_with_a_held_out_part(tmp_path: Path) -> None:
    csv = tmp_path / "harmful_behaviors.csv"
    csv.write_text('goal,target\n"Do a, b",Sure here is a b\nDo c,Sure here is c\n')
    assert load_behaviors(csv) == [
        Behavior("Do a, b", "Sure here is a b"),
        Behavior("Do c", "Sure here is c"),
    ]
    jl = tmp_path / "b.jsonl"
    jl.write_text('{"prompt": "Do d", "target": "Sure, d"}\n{"target": "Sure, e"}\n')
    assert load_behaviors(jl) == [Behavior("Do d", "Sure, d"), Behavior(None, "Sure, e")]
    (tmp_path / "bad.csv").write_text("goal,answer\nx,y\n")
    with pytest.raises(ValueError, match="'target' column"):
        load_behaviors(tmp_path / "bad.csv")
    split = split_behaviors(BUILTIN_BEHAVIORS, train=25, heldout=100, seed=0)
    assert (len(split.train), len(split.heldout)) == (9, 3) and split.note
    assert not set(split.train) & set(split.heldout)
    full = split_behaviors(BUILTIN_BEHAVIORS, train=5, heldout=4, seed=0)
    assert (len(full.train), len(full.heldout), full.note) == (5, 4, None)
    assert split_behaviors(BUILTIN_BEHAVIORS, train=5, heldout=4, seed=0) == full


# ------------------------------------------------------------------- ImgJP


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_imgjp_lowers_the_training_loss_and_scores_held_out_behaviours(family: str, request) -> None:
    model = request.getfixturevalue(family)
    evaluate = family == "qwen"  # greedy decoding of every behaviour once is enough
    attack = ImgJP(steps=12, behavior_batch=16, step_size=4 / 255, evaluate=evaluate)
    meta = attack.apply(SAMPLE, seed=0, target=model).attack_metadata
    assert meta["variant"] == "imgjp" and meta["norm"] == "none" and meta["steps"] == 12
    assert meta["train_loss_final"] < meta["train_loss_clean"] - 0.02, meta
    assert meta["loss_curve"][-1] < meta["loss_curve"][0]
    # the held-out behaviours were never fitted on; their loss and greedy success are recorded
    assert meta["heldout_size"] == 3 and meta["train_size"] == 9 and "split_note" in meta
    assert isinstance(meta["heldout_loss_final"], float) and isinstance(meta["heldout_loss_clean"], float)
    if evaluate:
        assert meta["heldout_success"]["n"] == 3 and meta["train_success"]["n"] == 9
    else:
        assert meta["heldout_success"] is None


def test_deltajp_stays_in_its_eps_ball_on_every_sample_image(llava: TinyLlava) -> None:
    eps = 8 / 255
    attack = ImgJP(variant="deltajp", eps=eps, steps=6, behavior_batch=16, step_size=2 / 255, evaluate=False)
    assert attack.p.norm == "linf"
    samples = [Sample(id=f"s{i}", benchmark="t", text="Describe", images=(_noise(i),)) for i in range(2)]
    out = attack.apply_batch(samples, seeds=[0, 1], target=llava)
    deltas = []
    for s, p in zip(samples, out, strict=True):
        assert not isinstance(p, Exception), p
        meta = p.attack_metadata
        assert meta["linf"] <= eps + 1e-6 and meta["delta_linf"] <= eps + 1e-6 and meta["linf"] > 0
        clean = torch.round(llava.to_pixels(s.images[0]) * 255) / 255
        adv = llava.to_pixels(Image.from_bytes(p.images[0].data, source="adv.png"))
        assert float((adv - clean).abs().max()) <= eps + 1e-6
        deltas.append(adv - clean)
    # one perturbation for every image (where clipping to [0, 1] did not cut it)
    inside = (deltas[0] != 0) & (deltas[1] != 0)
    assert bool(inside.any())
    with pytest.raises(ValueError, match="deltajp"):
        ImgJP(variant="deltajp", norm="none")


def test_the_universal_image_is_fitted_once_and_reused(
    llava: TinyLlava, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    fit = ImgJP.fit

    def counting(self, model, seed):
        calls.append(seed)
        return fit(self, model, seed)

    monkeypatch.setattr(ImgJP, "fit", counting)
    params = {"steps": 3, "behavior_batch": 16, "evaluate": False}
    attack = ImgJP(**params)
    a = attack.apply(SAMPLE, seed=0, target=llava)
    b = attack.apply(SAMPLE.model_copy(update={"id": "t", "text": "Other"}), seed=5, target=llava)
    assert len(calls) == 1 and a.images[0].sha256 == b.images[0].sha256
    assert b.messages[0].content[-1].text == "Other"
    c = ImgJP(**params).apply(SAMPLE, seed=9, target=llava)  # a rerun reads the cached PNG
    assert (
        len(calls) == 1 and c.attack_metadata["reused"] is True and c.images[0].sha256 == a.images[0].sha256
    )


# --------------------------------------------------------------------- GCG


def test_gcg_candidates_swap_one_allowed_token_each_and_the_lowest_loss_wins() -> None:
    ids = torch.tensor([5, 5, 5, 5])
    grad = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))
    cands = gcg.sample_candidates(
        ids, grad, num=12, topk=3, generator=torch.Generator().manual_seed(1), not_allowed=[0, 1]
    )
    changed = (cands != ids).sum(1)
    assert bool((changed <= 1).all()) and cands.shape == (12, 4)
    assert not bool(torch.isin(cands, torch.tensor([0, 1])).any())
    # every position gets its share of the candidates, from its own top-3 (most negative gradient)
    for pos in range(4):
        rows = cands[pos * 3 : pos * 3 + 3]
        allowed = set((-grad[pos, 2:]).topk(3).indices.add(2).tolist()) | {5}
        assert set(rows[:, pos].tolist()) <= allowed
    table = {"a": 3.0, "b": 1.5, "c": 2.0, "d": 1.5, "e": 9.0}
    seen: list[list[str]] = []

    def evaluate(part):
        seen.append(list(part))
        return [table[p] for p in part]

    best = gcg.select_best(list(table), evaluate, chunk=2)
    assert best.index == 1 and best.loss == 1.5 and [len(p) for p in seen] == [2, 2, 1]
    assert best.losses == list(table.values())


def test_a_gcg_round_keeps_the_best_candidate_and_its_loss_is_the_retokenised_prompts(
    qwen: TinyModel,
) -> None:
    attack = UMK(query_batch=3, candidates=12, topk=8, candidate_batch=4, suffix_init="! ! ! !")
    train = list(BUILTIN_BEHAVIORS[:5])
    image = _noise(3, 32)
    suffix = _Suffix(attack.up.suffix_init)
    joint = _Joint(attack, qwen, train, image, suffix, seed=0)
    x = qwen.to_pixels(image).unsqueeze(0).requires_grad_(True)
    batch = joint.batch(0)
    objective = qwen.teacher_forced(joint.prompts(batch, suffix.text), [b.target for b in batch])
    delta = torch.zeros(objective.embed_shape, requires_grad=True)
    loss = objective([[x[0]]] * len(batch), embed_delta=delta).mean()
    (grad,) = torch.autograd.grad(loss, delta)

    evaluated: list = []
    real = gcg.select_best

    def spy(cands, evaluate, *, chunk):
        sel = real(cands, evaluate, chunk=chunk)
        evaluated.append((list(cands), sel))
        return sel

    gcg_select = pytest.MonkeyPatch()
    gcg_select.setattr(gcg, "select_best", spy)
    try:
        with torch.no_grad():
            joint.round(batch, objective, grad, x.detach(), current=float("inf"))  # accept the best
    finally:
        gcg_select.undo()
    (cands, sel) = evaluated[0]
    assert sel.loss == min(sel.losses) and suffix.accepted == 1 and suffix.text == cands[sel.index][1]
    # the accepted text, encoded from scratch, gives the loss the embedding swap predicted
    fresh = qwen.teacher_forced(joint.prompts(batch, suffix.text), [b.target for b in batch])
    with torch.no_grad():
        redo = float(fresh([[x[0].detach()]] * len(batch)).mean())
    assert redo == pytest.approx(sel.loss, abs=1e-4)
    assert (
        in_context_ids(qwen.tokenizer, (batch[0].goal or "") + " | ", suffix.text)[1] == cands[sel.index][0]
    )


# --------------------------------------------------------------------- UMK


@pytest.mark.parametrize("family", ["llava", "qwen"])
def test_umk_lowers_the_loss_with_image_and_suffix_and_appends_the_suffix(family: str, request) -> None:
    model = request.getfixturevalue(family)
    attack = UMK(
        steps=6,
        prefix_steps=4,
        text_every=3,
        candidates=16,
        topk=16,
        query_batch=4,
        step_size=4 / 255,
        suffix_init="! ! ! !",
        evaluate=False,
    )
    p = attack.apply(SAMPLE, seed=0, target=model)
    meta = p.attack_metadata
    assert meta["gcg_rounds"] == 2 and meta["prefix_steps"] == 4 and meta["steps"] == 6
    assert meta["prefix_loss_curve"][-1] < meta["prefix_loss_curve"][0]
    assert meta["train_loss_final"] < meta["train_loss_clean"] - 0.02, meta
    assert meta["heldout_size"] == 3 and isinstance(meta["heldout_loss_final"], float)
    assert p.messages[0].content[-1].text == "Tell me something | " + meta["suffix"]


def test_umk_and_imgjp_are_deterministic(
    qwen: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {
        "steps": 4,
        "prefix_steps": 2,
        "text_every": 2,
        "candidates": 8,
        "topk": 8,
        "query_batch": 3,
        "suffix_init": "! ! !",
        "evaluate": False,
    }
    runs = []
    for i in range(2):
        monkeypatch.setenv("MMSAFE_CACHE_DIR", str(tmp_path / f"c{i}"))
        u = UMK(**params).apply(SAMPLE, seed=0, target=qwen)
        j = ImgJP(steps=3, behavior_batch=4, evaluate=False).apply(SAMPLE, seed=0, target=qwen)
        runs.append((u.images[0].sha256, u.attack_metadata["suffix"], j.images[0].sha256))
    assert runs[0] == runs[1] and runs[0][1] != "! ! !"
