"""MM-SafetyBench with its published images: each variant paired with its rephrased question, read
from the shared tiny set, a missing image as an errored item, and the tiny set end to end on tiny-llava."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image as PILImage

from conftest import dataset_dir
from mmsafe.config import RunConfig
from mmsafe.datasets.mm_safetybench import MMSafetyBench
from mmsafe.runner import run
from mmsafe.store import Store

#: upstream README "Evaluation": the question each image kind is paired with, and the image's size
PAIRING = {
    "SD": ("Rephrased Question(SD)", (1024, 1024)),
    "TYPO": ("Rephrased Question", (1024, 180)),
    "SD_TYPO": ("Rephrased Question", (1024, 1204)),
}


@pytest.mark.parametrize("variant", sorted(PAIRING))
def test_tiny_set_with_each_image_variant(variant):
    root = dataset_dir("mm-safetybench")
    samples = list(MMSafetyBench(path=str(root), tiny=True, image_variant=variant).load())
    assert len(samples) == 168 and all(s.error is None and len(s.images) == 1 for s in samples)
    assert Counter(s.category for s in samples)["HateSpeech"] == 16
    field, size = PAIRING[variant]
    for s in samples:
        scenario, qid = s.metadata["scenario"], str(s.metadata["question_id"])
        record = json.loads((root / "processed_questions" / f"{scenario}.json").read_text(encoding="utf-8"))
        assert s.text == record[qid][field] and s.metadata["image_variant"] == variant
        assert list(record)[s.metadata["source"]["row"]] == qid
        image = s.images[0]
        path = root / "imgs" / scenario / variant / f"{qid}.jpg"
        assert image.source == f"{scenario}/{variant}/{qid}.jpg"
        assert image.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert PILImage.open(io.BytesIO(samples[0].images[0].data)).size == size
    s = next(s for s in samples if s.id == "mm-safetybench/01-Illegal_Activitiy/5")
    opening = "The image shows" if variant == "SD" else "The bottom of the image shows"
    assert s.text.startswith(opening) and s.metadata["key_phrase"]


def test_without_images_the_text_is_the_original_question():
    root = str(dataset_dir("mm-safetybench"))
    plain = {s.id: s for s in MMSafetyBench(path=root, tiny=True).load()}
    typo = {s.id: s for s in MMSafetyBench(path=root, tiny=True, image_variant="TYPO").load()}
    assert plain.keys() == typo.keys()
    for sid, s in plain.items():
        assert not s.images and s.metadata["image_variant"] == "none"
        assert s.metadata["source"] == typo[sid].metadata["source"] and s.text != typo[sid].text


def test_full_set_items_without_a_staged_image_fail_naming_the_path():
    root = dataset_dir("mm-safetybench")
    samples = list(MMSafetyBench(path=str(root), image_variant="SD").load())
    assert len(samples) == 1680
    failed = [s for s in samples if s.error]
    assert len(failed) == 1680 - 168 and all(not s.images and s.text for s in failed)
    s = next(s for s in failed if s.id == "mm-safetybench/01-Illegal_Activitiy/0")
    assert s.error.startswith("image not found: 01-Illegal_Activitiy/SD/0.jpg")
    assert str(root / "imgs" / "01-Illegal_Activitiy" / "SD" / "0.jpg") in s.error


def _fixture(tmp_path: Path) -> Path:
    """A folder in the published layout: two questions of one scenario, an image for the first only."""
    records = {
        qid: {
            "Question": f"question {qid}",
            "Key Phrase": "a phrase",
            "Phrase Type": "activity",
            "Rephrased Question": f"bottom {qid}",
            "Rephrased Question(SD)": f"sd {qid}",
        }
        for qid in ("1", "0")  # the file's order, not the id order, is the row
    }
    (tmp_path / "processed_questions").mkdir()
    (tmp_path / "processed_questions" / "02-HateSpeech.json").write_text(
        json.dumps(records), encoding="utf-8"
    )
    images = tmp_path / "elsewhere" / "02-HateSpeech" / "SD_TYPO"
    images.mkdir(parents=True)
    PILImage.new("RGB", (32, 38), (10, 20, 30)).save(images / "0.jpg")
    return tmp_path


def test_image_folder_param_and_a_missing_image(tmp_path):
    root = _fixture(tmp_path)
    bench = MMSafetyBench(
        path=str(root), scenarios=["HateSpeech"], image_variant="SD_TYPO", image_dir=str(root / "elsewhere")
    )
    first, second = bench.load()
    assert first.id.endswith("/0") and first.error is None and first.text == "bottom 0" and first.images
    assert first.metadata["source"] == {"file": "processed_questions/02-HateSpeech.json", "row": 1}
    assert second.metadata["source"]["row"] == 0 and second.text == "bottom 1" and not second.images
    assert second.error == (
        "image not found: 02-HateSpeech/SD_TYPO/1.jpg "
        f"(looked for {root / 'elsewhere' / '02-HateSpeech' / 'SD_TYPO' / '1.jpg'})"
    )
    # the default folder is <path>/imgs, where this fixture has none
    default = MMSafetyBench(path=str(root), scenarios=["HateSpeech"], image_variant="SD_TYPO")
    assert all(str(root / "imgs") in s.error for s in default.load())


def test_an_image_folder_without_an_image_variant_is_a_config_error():
    from mmsafe.errors import ConfigError
    from mmsafe.registry import Registry

    with pytest.raises(ConfigError, match="image_dir is read only with an image_variant"):
        Registry(entry_points=False).create("benchmark", "mm-safetybench", {"image_dir": "/x"})


def test_tiny_variants_end_to_end_on_tiny_llava(tmp_path):
    """SD+TYPO, TYPO and SD of the tiny set through the runner: the model receives the published image
    and the rephrased question; the records of each variant sit under their own benchmark spec key."""
    root = str(dataset_dir("mm-safetybench"))
    variants = ("SD_TYPO", "TYPO", "SD")
    cfg = RunConfig.model_validate(
        {
            "name": "mmsb-tiny-llava",
            "models": [{"name": "tiny-llava", "params": {"generation": {"max_new_tokens": 4}}}],
            "benchmarks": [
                {"name": "mm-safetybench", "params": {"path": root, "tiny": True, "image_variant": v}}
                for v in variants
            ],
            "attacks": ["none"],
            "defenses": ["none"],
            "judges": ["refusal"],
            "limit": 3,
        }
    )
    res = run(cfg, tmp_path / "out", progress=False)
    assert res.errors == 0
    with Store(tmp_path / "out") as store:
        records = list(store.iter_records())
    assert len(records) == 9 and all(r.error is None and r.response is not None for r in records)
    by_variant: dict[str, list] = {}
    for r in records:
        by_variant.setdefault(r.benchmark_spec.params["image_variant"], []).append(r)
    assert sorted(by_variant) == sorted(variants)
    assert len({r.benchmark_spec.key for r in records}) == 3
    for variant, recs in by_variant.items():
        for r in recs:
            scenario, qid = r.sample_id.split("/")[1:]
            path = Path(root) / "imgs" / scenario / variant / f"{qid}.jpg"
            assert r.image_hashes == (hashlib.sha256(path.read_bytes()).hexdigest(),)
