"""InferAligner on the tiny LLaVA: steering vectors are the calibration mean difference, the gate
separates harmful from harmless calibration prompts, only gated inputs are steered, hooks do not
leak, and steered answers never enter the response cache."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmsafe.defenses.inferaligner import HARMFUL_CALIBRATION, HARMLESS_CALIBRATION, InferAligner  # noqa: E402
from mmsafe.errors import GridError  # noqa: E402
from mmsafe.models.cached import CachedModel, request_key  # noqa: E402
from mmsafe.models.tiny_llava import TinyLlava  # noqa: E402
from mmsafe.store import Store  # noqa: E402
from mmsafe.types import Message, Prompt  # noqa: E402


def _p(text: str) -> Prompt:
    return Prompt(messages=(Message.user(text),))


@pytest.fixture(scope="module")
def model() -> TinyLlava:
    m = TinyLlava(init_std=0.1)
    m.load()
    return m


def test_vectors_are_the_mean_difference_and_the_gate_separates_the_means(model):
    d = InferAligner(alpha=8.0)
    f = d.fit(model)
    k = f["gate"]
    harm = torch.stack([model.hidden_states(_p(t), layers=[k])[k][-1] for t in HARMFUL_CALIBRATION])
    safe = torch.stack([model.hidden_states(_p(t), layers=[k])[k][-1] for t in HARMLESS_CALIBRATION])
    assert torch.allclose(f["ssv"][k], harm.mean(0) - safe.mean(0), atol=1e-5)
    assert f["calibration"]["harmful_mean"] > f["threshold"] > f["calibration"]["harmless_mean"]
    above_h = sum(d.score(model, _p(t)) > f["threshold"] for t in HARMFUL_CALIBRATION)
    above_s = sum(d.score(model, _p(t)) > f["threshold"] for t in HARMLESS_CALIBRATION)
    assert above_h > above_s  # in-sample separation on the calibration prompts


def test_only_gated_inputs_are_steered_and_hooks_do_not_leak(model):
    d = InferAligner(alpha=8.0)
    prompts = [_p(HARMFUL_CALIBRATION[0]), _p(HARMLESS_CALIBRATION[0])]
    plain = model.generate(prompts, seeds=[0, 0])
    out = d.wrap(model).generate(prompts, seeds=[0, 0])
    info = [g.metadata["defense"] for g in out]
    assert [i["action"] for i in info] == ["steered", "passed"]
    assert out[0].text != plain[0].text and out[1].text == plain[1].text
    assert model.generate(prompts, seeds=[0, 0])[0].text == plain[0].text  # hooks removed
    assert InferAligner(alpha=0.0).wrap(model).generate(prompts[:1], seeds=[0])[0].text == plain[0].text


def test_steered_answers_bypass_the_response_cache(model, tmp_path):
    prompts = [_p(HARMFUL_CALIBRATION[1]), _p(HARMLESS_CALIBRATION[1])]
    with Store(tmp_path) as store:
        cached = CachedModel(model, store)
        out = InferAligner(alpha=8.0).wrap(cached).generate(prompts, seeds=[0, 0])
        assert [g.metadata["defense"]["action"] for g in out] == ["steered", "passed"]
        keys = [request_key(model, p, 0) for p in prompts]
        hits = store.get_responses(keys)
    assert keys[0] not in hits and keys[1] in hits


def test_needs_hidden_states(tmp_path):
    from mmsafe.config import load_config
    from mmsafe.runner import run

    cfg = load_config(
        None,
        overrides={
            "name": "x",
            "models": ["scripted"],
            "benchmarks": ["starter"],
            "defenses": ["inferaligner"],
        },
    )
    with pytest.raises(GridError, match="hidden_states"):
        run(cfg, tmp_path, progress=False)
