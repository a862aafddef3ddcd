"""Provenance contract over every built-in benchmark: each Sample names its source file and row, each
image carries the sha256 of its bytes, and a dataset's variant is part of the benchmark's spec key."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from conftest import dataset_dir
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.registry import BUILTINS, Registry
from test_datasets_newer2 import write_holi, write_moss, write_mss, write_msts, write_vlsu
from test_datasets_table1 import write_auto_bench, write_rtvlm
from test_goat_bench import write_fixture as write_goat_bench

REG = Registry(entry_points=False)
BENCHMARKS = sorted(BUILTINS["benchmark"])

#: built-ins whose example params cannot load offline here (no data in ../shared/data and no fixture
#: in their published format yet), each with the reason; every other built-in is loaded below
NOT_OFFLINE: dict[str, str] = {}


def _jsonl_fixture(tmp_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """A user's JSONL file: a text row, an image row, a row without text and a row naming a missing image."""
    PILImage.new("RGB", (16, 12), (200, 40, 40)).save(tmp_path / "red.png")
    rows = [
        {"id": "a", "text": "hello"},
        {"id": "b", "text": "what is shown?", "image": "red.png", "source": "user column"},
        {"id": "c"},
        {"id": "d", "text": "and here?", "image": "missing.png"},
    ]
    (tmp_path / params["file"]).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {**params, "file": str(tmp_path / params["file"])}


def _in_folder(write: Callable[[Path], Path]) -> Callable[[Path, dict[str, Any]], dict[str, Any]]:
    """The example params reading the folder ``write`` fills (a loader's own test fixture)."""
    return lambda tmp_path, params: {**params, "path": str(write(tmp_path))}


def _goat_bench(tmp_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "path": str(tmp_path), "images": str(write_goat_bench(tmp_path))}


def _auto_bench(tmp_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "path": str(tmp_path / "ab"), "image_dir": str(write_auto_bench(tmp_path))}


#: built-ins whose example params name a file the test writes (in the dataset's published format),
#: with the fixture builders of the loaders' own tests
FIXTURES: dict[str, Callable[[Path, dict[str, Any]], dict[str, Any]]] = {
    "jsonl": _jsonl_fixture,
    "auto-bench": _auto_bench,
    "goat-bench": _goat_bench,
    "holisafe": _in_folder(write_holi),
    "mossbench": _in_folder(write_moss),
    "msts": _in_folder(write_msts),
    "mssbench": _in_folder(write_mss),
    "rtvlm": _in_folder(write_rtvlm),
    "vlsu": _in_folder(write_vlsu),
}


def _offline_params(name: str, cls: type[Benchmark], tmp_path: Path) -> dict[str, Any]:
    """``example_params``; a fixture's file written by the test; a loader that reads a data folder
    and was given none reads its copy in ../shared/data."""
    params = dict(cls.example_params)
    if name in FIXTURES:
        return FIXTURES[name](tmp_path, params)
    if "path" in cls.Params.model_fields and not params.get("path") and cls.default_folder:
        params["path"] = str(dataset_dir(cls.default_folder))
    return params


def test_every_exception_is_a_builtin_with_a_reason():
    assert set(NOT_OFFLINE) <= set(BENCHMARKS)
    assert all(len(reason) > 20 for reason in NOT_OFFLINE.values())
    assert set(FIXTURES) <= set(BENCHMARKS) and not set(FIXTURES) & set(NOT_OFFLINE)


#: variants with images beyond the example params (each loader's images come from the shared copy)
IMAGE_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("figstep", {"with_images": True}),
    ("figstep", {"with_images": True, "image_variant": "FigStep-Pro"}),
    ("harmbench", {"subset": "multimodal"}),
    ("mm-safetybench", {"tiny": True, "image_variant": "SD_TYPO", "scenarios": ["Fraud"]}),
]
CASES = [(n, {}) for n in BENCHMARKS if n not in NOT_OFFLINE] + IMAGE_VARIANTS


@pytest.mark.parametrize(("name", "extra"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_every_sample_records_its_source_and_every_image_its_sha256(name, extra, tmp_path):
    cls = REG.get("benchmark", name)
    bench = REG.create("benchmark", name, {**_offline_params(name, cls, tmp_path), **extra})
    try:
        root: Path | None = bench.root()
    except ConfigError:  # package data: no folder
        root = None
    samples = list(bench.load())
    assert samples, f"{name}: the example params load no sample"
    files: set[str] = set()
    for s in samples:
        source = s.metadata.get("source")
        assert isinstance(source, dict) and set(source) == {"file", "row"}, (s.id, source)
        file, row = source["file"], source["row"]
        assert isinstance(file, str) and file and not Path(file).is_absolute(), (s.id, file)
        assert isinstance(row, int) and not isinstance(row, bool) and row >= 0, (s.id, row)
        files.add(file)
        for image in s.images:
            assert image.sha256 == hashlib.sha256(image.data).hexdigest(), s.id
    if extra:  # the image variants load their images
        assert sum(len(s.images) for s in samples) >= len(samples) // 2, name
    if root is not None:  # the named files are the ones read, relative to the dataset root
        assert all((root / f).is_file() for f in files), (name, files)


def test_a_fixture_row_error_and_a_user_source_column_keep_provenance(tmp_path):
    bench = REG.create("benchmark", "jsonl", _jsonl_fixture(tmp_path, {"file": "items.jsonl"}))
    got = {s.id: s for s in bench.load()}
    rows = {sid: s.metadata["source"] for sid, s in got.items()}
    assert rows == {sid: {"file": "items.jsonl", "row": i} for i, sid in enumerate("abcd")}
    assert got["b"].metadata["source_column"] == "user column" and got["b"].images
    assert got["c"].error and got["d"].error and "missing.png" in got["d"].error


# -- a dataset's variant is a param, hence part of the spec key -----------------------------------------

VARIANTS = [
    ("mm-safetybench", {"tiny": True, "image_variant": "TYPO"}, {"tiny": True, "image_variant": "SD_TYPO"}),
    ("mm-safetybench", {"image_variant": "SD"}, {"image_variant": "none"}),
    ("mm-safetybench", {"tiny": True}, {"tiny": False}),
    ("figstep", {"split": "tiny"}, {"split": "full"}),
    ("figstep", {"with_images": True}, {"with_images": True, "image_variant": "FigStep-Pro"}),
    ("harmbench", {"subset": "text"}, {"subset": "multimodal"}),
    ("jailbreakbench", {"subset": "harmful"}, {"subset": "benign"}),
]


@pytest.mark.parametrize(
    ("name", "one", "other"), VARIANTS, ids=[f"{v[0]}-{i}" for i, v in enumerate(VARIANTS)]
)
def test_a_variant_is_part_of_the_spec_key(name, one, other):
    path = {"path": "/data/x"}
    key = REG.create("benchmark", name, {**path, **one}).spec.key
    assert REG.create("benchmark", name, {**path, **one}).spec.key == key  # the same variant: the same key
    assert REG.create("benchmark", name, {**path, **other}).spec.key != key


def test_a_default_spelled_out_gives_the_same_key():
    a = REG.create("benchmark", "mm-safetybench", {"path": "/d", "tiny": True})
    b = REG.create("benchmark", "mm-safetybench", {"path": "/d", "tiny": True, "image_variant": "none"})
    assert a.spec.key == b.spec.key
