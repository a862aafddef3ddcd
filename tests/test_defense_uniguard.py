"""UniGuard on the tiny LLaVA: the fitted noise raises the harmful corpus's cross-entropy well above the
clean image's (and above random noise of the same size), stays in its ε-ball on the 8-bit grid, is
fitted once and cached (a second instance loads it, no refit), and the defended generate sends every
image with the noise added in the model's pixel space and the safety text appended."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mmsafe.defenses import uniguard as ug  # noqa: E402
from mmsafe.defenses.uniguard import BUILTIN_HARMFUL_CORPUS, DEFAULT_TEXT_GUARDRAIL, UniGuard  # noqa: E402
from mmsafe.models.scripted import ScriptedModel  # noqa: E402
from mmsafe.models.tiny_llava import TinyLlava  # noqa: E402
from mmsafe.types import Image, Message, Prompt  # noqa: E402

EPS = 32 / 255
FIT = {"steps": 10, "eps": EPS, "step_size": 4 / 255}


@pytest.fixture(scope="module")
def model() -> TinyLlava:
    m = TinyLlava(init_std=0.1)  # peakier outputs than the default, so the image matters
    m.load()
    return m


@pytest.fixture(scope="module")
def fitted(model):
    return UniGuard(**FIT).fit(model)


def _photo(w: int = 50, h: int = 40, seed: int = 1) -> Image:
    import numpy as np
    from PIL import Image as PILImage

    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.from_pil(PILImage.fromarray(arr), source="photo.png")


def _corpus_ce(model, pixels) -> float:
    """Mean teacher-forced CE of the built-in corpus with ``pixels`` as the image, computed afresh."""
    d = UniGuard(**FIT)
    batches = d.objectives(model, d.start_image())
    return d.corpus_loss(batches, pixels.unsqueeze(0))


def test_the_noise_makes_the_harmful_corpus_unlikely_within_eps(model, fitted):
    noise, meta = fitted
    clean = torch.round(model.to_pixels(UniGuard(**FIT).start_image()).float().cpu() * 255) / 255
    assert noise.shape == clean.shape
    assert float(noise.abs().max()) <= EPS + 1e-6  # in the ε-ball
    assert torch.allclose(noise * 255, torch.round(noise * 255), atol=1e-4)  # on the 8-bit grid
    ce_clean = _corpus_ce(model, clean)
    ce_guarded = _corpus_ce(model, (clean + noise).clamp(0, 1))
    signs = torch.sign(torch.randn(noise.shape, generator=torch.Generator().manual_seed(0)))
    ce_random = _corpus_ce(model, (clean + EPS * signs).clamp(0, 1))
    assert ce_guarded > ce_clean + 0.3, (ce_clean, ce_guarded)  # the corpus became much less likely
    assert ce_guarded > ce_random + 0.2, (ce_random, ce_guarded)  # not any noise: the fitted one
    assert meta["corpus_loss_clean"] == pytest.approx(ce_clean, abs=1e-3)
    assert meta["corpus_loss_fitted"] == pytest.approx(ce_guarded, abs=1e-3)
    assert meta["corpus"] == "builtin" and meta["corpus_size"] == len(BUILTIN_HARMFUL_CORPUS)


def test_the_noise_is_cached_and_a_second_instance_never_refits(model, fitted, monkeypatch):
    noise, _ = fitted

    def refit(*_a, **_k):
        raise AssertionError("refitted")

    monkeypatch.setattr(UniGuard, "_optimise", refit)
    again, meta = UniGuard(**FIT).fit(model)
    assert meta["reused"] is True and torch.equal(again, noise)  # the PNG form is lossless
    with pytest.raises(AssertionError, match="refitted"):  # another corpus is another key
        UniGuard(**FIT, prompt="Describe the image.").fit(model)


def test_defended_generate_adds_the_noise_to_every_image_and_the_text(model, fitted, monkeypatch):
    noise, _ = fitted
    seen: list[Prompt] = []
    inner_generate = model.generate

    def spy(prompts, *, seeds):
        seen.extend(prompts)
        return inner_generate(prompts, seeds=seeds)

    monkeypatch.setattr(model, "generate", spy)
    photo = _photo()
    prompts = [Prompt(messages=(Message.user("What is in the picture?", [photo]),))]
    (out,) = UniGuard(**FIT).wrap(model).generate(prompts, seeds=[0])
    (sent,) = seen
    (image,) = sent.images
    assert image.sha256 != photo.sha256 and image.to_pil().format == "PNG"
    want = (torch.round(model.to_pixels(photo).float().cpu() * 255) / 255 + noise).clamp(0, 1)
    got = model.to_pixels(image).float().cpu()  # what the model sees of the guarded image
    assert float((got - want).abs().max()) <= 0.5 / 255 + 1e-6
    assert sent.messages[-1].text.endswith(DEFAULT_TEXT_GUARDRAIL)
    info = out.metadata["defense"]
    assert info["action"] == "modified-input" and info["images"] == 1 and info["reused"] is True
    assert info["eps"] == pytest.approx(EPS) and info["corpus_loss_fitted"] > info["corpus_loss_clean"]
    assert info["text_guardrail"] == "after"


class _Recorder(ScriptedModel):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen: list[Prompt] = []

    def generate(self, prompts, *, seeds):
        self.seen.extend(prompts)
        return super().generate(prompts, seeds=seeds)


def test_a_black_box_backend_is_defended_with_a_noise_fitted_on_fit_model(model, fitted):
    import numpy as np

    rec = _Recorder()
    photo = _photo(seed=2)
    d = UniGuard(**FIT, fit_model={"name": "tiny-llava", "params": {"init_std": 0.1}}, text_guardrail=None)
    (out,) = d.wrap(rec).generate([Prompt(messages=(Message.user("hi", [photo]),))], seeds=[0])
    (image,) = rec.seen[0].images
    want = (torch.round(model.to_pixels(photo).float().cpu() * 255) / 255 + fitted[0]).clamp(0, 1)
    got = torch.from_numpy(np.asarray(image.to_pil("RGB"), dtype="float32") / 255).permute(2, 0, 1)
    assert float((got - want).abs().max()) <= 0.5 / 255 + 1e-6  # same fit (same key), applied as is
    assert rec.seen[0].messages[-1].text == "hi" and out.metadata["defense"]["text_guardrail"] is None
    d.close()


def test_without_a_white_box_model_an_image_item_fails_and_text_only_items_need_no_fit():
    rec = _Recorder()
    d = UniGuard(**FIT)
    (err,) = d.wrap(rec).generate([Prompt(messages=(Message.user("hi", [_photo()]),))], seeds=[0])
    assert isinstance(err, ValueError) and "fit_model" in str(err)
    (ok,) = d.wrap(rec).generate([Prompt(messages=(Message.user("hi"),))], seeds=[0])
    assert ok.metadata["defense"]["images"] == 0 and rec.seen[-1].messages[-1].text.endswith(
        DEFAULT_TEXT_GUARDRAIL
    )


def test_a_size_mismatch_fails_unless_the_noise_may_be_resized(model, fitted):
    noise = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="resize_noise"):
        UniGuard(**FIT).guard_image(_photo(), noise, model)
    image, resized = UniGuard(**FIT, resize_noise=True).guard_image(_photo(), noise + 2 / 255, model)
    assert resized and model.to_pixels(image).shape == model.to_pixels(_photo()).shape


def test_params_read_fractions_and_bound_eps():
    assert UniGuard(eps="16/255").p.eps == pytest.approx(16 / 255)
    with pytest.raises(Exception, match="eps"):
        UniGuard(eps="128/255")


def test_png_form_round_trips():
    v = torch.round((torch.rand(3, 5, 7) * 2 - 1) * 127) / 255
    assert torch.equal(ug._decode(ug._encode(v)), v.float())


def test_an_adaptive_attack_sees_the_guarded_image_through_it(model, fitted):
    from mmsafe.attacks.adversarial.through import transformed

    d = UniGuard(**FIT, fit_model={"name": "tiny-llava", "params": {"init_std": 0.1}})
    x = torch.round(model.to_pixels(_photo(seed=3)).float().cpu().unsqueeze(0) * 255) / 255
    seen = transformed(d, x, seed=0)  # what `through: uniguard` hands the attack's loss
    assert float((seen - (x + fitted[0]).clamp(0, 1)).abs().max()) <= 0.5 / 255 + 1e-6
    d.close()
    with pytest.raises(ValueError, match="fit_model"):
        UniGuard(**FIT).transform_image(_photo(), seed=0)
