"""Guards an image attack can descend (issue 21): the differentiable verdict of request guards
(``Judge.request_unsafe_margin``) and ``guard-filter.detection_margin``, on tiny random guards built from configs.

* ShieldGemma 2, classifier path: a tiny random ``ShieldGemma2ForImageClassification``; the margin is the verdict's
  log-odds (P(Yes) of the worst policy against the threshold), checked against ``probabilities()`` on the 8-bit PNG.
* Generate-mode guards (``shieldgemma2`` with a backend, ``guard`` with ``classify: request``, ``llavaguard``) on a
  tiny LLaVA whose output head can only write the two verdict words (``tests/_tiny_guards.py``): the teacher-forced
  margin's sign is the guard's real greedy verdict.
* Plain signed gradient descent on the margin alone (ε = 16/255 L∞, a local loop, not the attack engine) turns a
  flagged image into one the judge passes, read back from its PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _tiny_guards import build_tiny_shieldgemma2, build_verdict_llava  # noqa: E402
from mmsafe.defenses.base import Defense  # noqa: E402
from mmsafe.defenses.guard_filter import GuardFilter  # noqa: E402
from mmsafe.judges._gradients import whitebox_backend  # noqa: E402
from mmsafe.judges.guard import GuardJudge  # noqa: E402
from mmsafe.judges.llavaguard import RATING_PREFIX, LlavaGuardJudge  # noqa: E402
from mmsafe.judges.shieldgemma2 import ShieldGemma2Judge  # noqa: E402
from mmsafe.judges.target_string import TargetStringJudge  # noqa: E402
from mmsafe.models.base import WrappedModel  # noqa: E402
from mmsafe.models.scripted import ScriptedModel  # noqa: E402
from mmsafe.types import Generation, Image, Message, Prompt, Sample  # noqa: E402

EPS, STEP = 16 / 255, 2 / 255
SAMPLE = Sample(id="s", benchmark="test", text="What is shown?")


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, n, 3), dtype=np.uint8)


def _x(arr: np.ndarray) -> Any:
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float()[None] / 255


def _png(x: Any) -> Any:
    from PIL import Image as PILImage

    return PILImage.fromarray((x[0].detach().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _prompt(pil: Any) -> Prompt:
    return Prompt(messages=(Message.user("What is shown?", [Image.from_pil(pil)]),))


def _label(judge: Any, pil: Any) -> str | None:
    (j,) = judge.judge_batch([(SAMPLE, _prompt(pil), Generation(text=""))])
    assert j.error is None, j.error
    return j.label


def _descend(margin_of: Any, x0: Any, steps: int) -> tuple[Any, list[float]]:
    """Signed gradient descent on the margin alone, projected on the ε-ball and [0, 1]."""
    x, seen = x0.clone(), []
    for _ in range(steps):
        x.requires_grad_(True)
        m = margin_of(x)
        (g,) = torch.autograd.grad(m.sum(), x)
        seen.append(float(m.detach().sum()))
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - STEP * g.sign(), x0 - EPS), x0 + EPS).clamp(0, 1)
    return (x * 255).round() / 255, seen


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guards")
    return {
        "sg2": build_tiny_shieldgemma2(root / "sg2"),
        "yes-no": build_verdict_llava(root / "yes-no", unsafe="Yes", safe="No"),
        "unsafe-safe": build_verdict_llava(root / "unsafe-safe", unsafe="unsafe", safe="safe"),
        "Unsafe-Safe": build_verdict_llava(root / "Unsafe-Safe", unsafe="Unsafe", safe="Safe"),
    }


def _hf(path: Path) -> dict[str, Any]:
    return {"name": "hf", "params": {"path": str(path), "device": "cpu", "generation": {"max_new_tokens": 1}}}


# ---------------------------------------------------------------------------------------- ShieldGemma 2 classifier


@pytest.mark.parametrize("size", [32, 48, 24])
def test_classifier_margin_is_the_verdicts_log_odds(folders: dict[str, Path], size: int):
    """margin = logit(max P(Yes)) − logit(threshold), P from ``probabilities()`` on the same 8-bit image; exact when
    the processor does not resize (32 px), within the PIL-vs-torch resize difference when it does."""
    judge = ShieldGemma2Judge(path=str(folders["sg2"]), device="cpu", threshold=0.545)
    labels = []
    for seed in range(3):
        arr = _noise(size, seed)
        margin = float(judge.request_unsafe_margin(_x(arr), [_prompt(_png(_x(arr)))])[0])
        top = max(judge.probabilities([_png(_x(arr))])[0].values())
        p_from_margin = 1 / (1 + math.exp(-(margin + math.log(0.545 / 0.455))))
        print(f"size {size} seed {seed}: margin {margin:+.5f}, P {top:.6f} vs {p_from_margin:.6f}")
        assert abs(p_from_margin - top) < (1e-6 if size == 32 else 2e-3)
        label = _label(judge, _png(_x(arr)))
        assert (margin > 0) == (label == "unsafe")
        labels.append(label)
    if size == 32:
        assert set(labels) == {
            "safe",
            "unsafe",
        }  # the threshold splits these images: the sign is tested both ways


def test_classifier_margin_of_a_prompt_with_two_images_is_the_worst_pair(folders: dict[str, Path]):
    judge = ShieldGemma2Judge(path=str(folders["sg2"]), device="cpu", threshold=0.545)
    a, b = _png(_x(_noise(32, 2))), _png(_x(_noise(32, 1)))  # P(Yes) tops 0.541 and 0.549
    two = Prompt(messages=(Message.user("Compare", [Image.from_pil(a), Image.from_pil(b)]),))
    probs = judge.probabilities([a, b])
    top = max(v for d in probs for v in d.values())
    margin = float(judge.request_unsafe_margin(_x(np.asarray(a)), [two])[0])
    assert margin == pytest.approx(math.log(top / (1 - top)) - math.log(0.545 / 0.455), abs=1e-5)
    assert margin > 0 > float(judge.request_unsafe_margin(_x(np.asarray(a)), [_prompt(a)])[0])


def test_descent_on_the_classifier_margin_flips_the_verdict(folders: dict[str, Path]):
    judge = ShieldGemma2Judge(path=str(folders["sg2"]), device="cpu")
    x0 = _x(_noise(32, 0))
    prompt = _prompt(_png(x0))
    before = judge.probabilities([_png(x0)])[0]
    assert _label(judge, _png(x0)) == "unsafe"
    x, seen = _descend(lambda x: judge.request_unsafe_margin(x, [prompt]), x0, steps=20)
    after = judge.probabilities([_png(x)])[0]
    final = float(judge.request_unsafe_margin(x, [prompt])[0])
    print(f"classifier: margin {seen[0]:+.4f} → {final:+.4f}; P(Yes) {before} → {after}")
    assert float((x - x0).abs().max()) <= EPS + 1e-6
    assert seen[0] > 0 >= final
    assert max(after.values()) < 0.5 <= max(before.values())
    assert _label(judge, _png(x)) == "safe"


# ------------------------------------------------------------------------------------------ generate-mode guards


@pytest.fixture(scope="module")
def generate_guards(folders: dict[str, Path]) -> dict[str, Any]:
    return {
        "shieldgemma2": ShieldGemma2Judge(
            judge_model=_hf(folders["yes-no"]), policies=["dangerous", "violence"]
        ),
        "guard": GuardJudge(judge_model=_hf(folders["unsafe-safe"]), classify="request", show_images=True),
    }


@pytest.mark.parametrize("name", ["shieldgemma2", "guard"])
def test_generate_mode_margin_sign_is_the_greedy_verdict(generate_guards: dict[str, Any], name: str):
    judge = generate_guards[name]
    labels = []
    for seed in range(6):
        arr = _noise(32 if seed % 2 == 0 else 40, seed)  # 40 px: resized by the guard's processor
        x = _x(arr).requires_grad_(True)
        margin = judge.request_unsafe_margin(x, [_prompt(_png(x))])
        (g,) = torch.autograd.grad(margin.sum(), x)
        margin = margin.detach()
        label = _label(judge, _png(x))
        print(f"{name} seed {seed}: margin {float(margin.detach()):+.3f}, verdict {label}")
        assert (float(margin) > 0) == (label == "unsafe")
        assert float(g.abs().sum()) > 0
        labels.append(label)
    if name == "guard":
        assert set(labels) == {"safe", "unsafe"}


@pytest.mark.parametrize(("name", "seed"), [("guard", 4), ("shieldgemma2", 1)])
def test_descent_on_a_generate_mode_guard_flips_its_verdict(
    generate_guards: dict[str, Any], name: str, seed: int
):
    judge = generate_guards[name]
    x0 = _x(_noise(32 if seed % 2 == 0 else 40, seed))
    prompt = _prompt(_png(x0))
    assert _label(judge, _png(x0)) == "unsafe"
    x, seen = _descend(lambda x: judge.request_unsafe_margin(x, [prompt]), x0, steps=10)
    final = float(judge.request_unsafe_margin(x, [prompt])[0])
    print(f"{name}: margin {seen[0]:+.2f} → {final:+.2f}")
    assert float((x - x0).abs().max()) <= EPS + 1e-6
    assert seen[0] > 0 >= final
    assert _label(judge, _png(x)) == "safe"


def test_llavaguard_margin_is_the_ratings_log_odds_after_its_prefix(folders: dict[str, Path]):
    """Against the backend's own ``target_loss`` of the whole answer start (prefix + rating): the prefix's tokens
    are the same in both, so n·CE(safe) − n·CE(unsafe) is the rating's log-odds."""
    judge = LlavaGuardJudge(judge_model=_hf(folders["Unsafe-Safe"]))
    guard = judge.judge_model.inner if hasattr(judge.judge_model, "inner") else judge.judge_model
    x = _x(_noise(32, 3)).requires_grad_(True)
    margin = judge.request_unsafe_margin(x, [_prompt(_png(x))])
    (g,) = torch.autograd.grad(margin.sum(), x)
    margin = margin.detach()
    ask = judge.request(Image.from_pil(_png(x)))

    def logp(verdict: str) -> float:
        text = RATING_PREFIX + verdict
        n = len(guard.tokenizer(text, add_special_tokens=False)["input_ids"])
        return -float(guard.target_loss(ask, text)) * n

    assert float(margin) == pytest.approx(logp("Unsafe") - logp("Safe"), abs=1e-3)
    assert float(g.abs().sum()) > 0


# --------------------------------------------------------------------------------------------------- guard-filter


def test_guard_filter_detection_margin_is_its_input_judges_and_decides_its_blocks(folders: dict[str, Path]):
    sg2 = {
        "name": "shieldgemma2",
        "params": {"path": str(folders["sg2"]), "device": "cpu", "threshold": 0.545},
    }
    defense = GuardFilter(input_judge=sg2)
    assert GuardFilter.evadable is True and Defense.evadable is False
    pils = [_png(_x(_noise(32, seed))) for seed in range(3)]
    x = torch.cat([_x(np.asarray(p)) for p in pils])
    prompts = [_prompt(p) for p in pils]
    margins = defense.detection_margin(None, x, prompts)
    assert margins.shape == (3,)
    assert torch.allclose(margins, defense.input_judge.request_unsafe_margin(x, prompts))
    model = ScriptedModel(default="an answer")
    out = defense.defend(prompts, [0, 1, 2], model)
    actions = [g.metadata["defense"]["action"] for g in out]
    assert actions == ["blocked" if float(m) > 0 else "passed" for m in margins]
    assert set(actions) == {"blocked", "passed"}


def test_nothing_to_descend_is_a_clear_type_error(folders: dict[str, Path], generate_guards: dict[str, Any]):
    x = _x(_noise(32, 0))
    prompts = [_prompt(_png(x))]
    vision = {"classify": "request", "family": "llama-guard-3-vision", "judge_model": "scripted"}
    scripted = GuardFilter(input_judge={"name": "guard", "params": vision})  # answers, but gives no gradients
    with pytest.raises(TypeError, match="gives no gradients"):
        scripted.detection_margin(None, x, prompts)
    with pytest.raises(TypeError, match="rates the answer's text"):
        GuardFilter(
            output_judge={"name": "target-string", "params": {"preset": "instructions"}}
        ).detection_margin(None, x, prompts)
    sg2 = {"name": "shieldgemma2", "params": {"path": str(folders["sg2"]), "device": "cpu"}}
    with pytest.raises(TypeError, match="not-refused"):
        GuardFilter(input_judge=sg2, unsafe_when="not-refused").detection_margin(None, x, prompts)
    with pytest.raises(TypeError, match="cannot give a differentiable verdict"):
        TargetStringJudge(preset="instructions").request_unsafe_margin(x, prompts)
    with pytest.raises(TypeError, match="gives no gradients"):
        ShieldGemma2Judge(judge_model="scripted").request_unsafe_margin(x, prompts)
    tiny = generate_guards["guard"].judge_model
    assert whitebox_backend(WrappedModel(WrappedModel(tiny)), who="test") is tiny  # under the store's cache
    with pytest.raises(TypeError, match="rates answers"):
        GuardJudge(judge_model=_hf(folders["unsafe-safe"])).request_unsafe_margin(x, prompts)
    with pytest.raises(TypeError, match="not shown the request's images"):
        GuardJudge(judge_model=_hf(folders["unsafe-safe"]), classify="request").request_unsafe_margin(
            x, prompts
        )
