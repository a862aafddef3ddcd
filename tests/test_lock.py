"""The lock (requirements/*.txt, written by scripts/lock.sh) agrees with pyproject.toml."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lockcheck", REPO / "scripts" / "lockcheck.py")
lockcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lockcheck)

EXPECTED_FILES = {"all.txt", "dev.txt", "core.txt"} | {
    f"extra-{e}.txt" for e in ("hf", "ocr", "api", "diffusion", "gemma", "llamacpp", "judges", "train", "detoxify", "report", "ray")
}


def test_every_lock_file_agrees_with_pyproject():
    assert lockcheck.check_all() == []


def test_there_is_a_lock_file_per_extra_and_one_for_install_and_ci():
    names = {p.name for p in (REPO / "requirements").glob("*.txt")}
    assert names == EXPECTED_FILES
    extras = set(lockcheck.pyproject()["optional-dependencies"]) - {"all", "dev"}
    assert {f"extra-{e}.txt" for e in extras} <= names


def test_every_pin_carries_hashes_and_torch_and_cuda_packages_are_not_locked():
    for path in (REPO / "requirements").glob("*.txt"):
        text = path.read_text()
        blocks = re.split(r"\n(?=[a-z0-9])", text)
        for block in blocks[1:]:
            assert "--hash=sha256:" in block, f"{path.name}: {block.splitlines()[0]} has no hash"
        names = {name for name, _, _ in lockcheck.read_lock(path)[1]}
        assert "torch" not in names
        assert not {n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"}, path.name


def _project_copy(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    return tmp_path / "pyproject.toml", tmp_path / "requirements"


def test_a_dependency_added_without_relocking_is_caught(tmp_path):
    pyproject, locks = _project_copy(tmp_path)
    text = pyproject.read_text()
    assert "\napi = [" in text
    pyproject.write_text(text.replace("\napi = [", '\napi = ["brand-new-package>=1", '))
    problems = lockcheck.check_all(locks, pyproject_path=pyproject)
    assert any("written for another pyproject.toml" in p for p in problems)
    assert any("brand-new-package>=1 is required but not pinned" in p for p in problems)


def test_a_range_that_excludes_the_pin_is_caught(tmp_path):
    pyproject, locks = _project_copy(tmp_path)
    text = pyproject.read_text()
    (spec,) = [d for d in lockcheck.pyproject()["dependencies"] if d.startswith("pyyaml")]
    pyproject.write_text(text.replace(f'"{spec}"', '"pyyaml>=99"'))
    problems = lockcheck.check_all(locks, pyproject_path=pyproject)
    assert any("pins pyyaml==" in p and "outside pyproject's pyyaml>=99" in p for p in problems)


@pytest.mark.parametrize("line", ["torch==2.13.0 \\", "nvidia-cublas==13.4.1.3 ; sys_platform == 'linux' \\"])
def test_the_lock_reader_sees_pins_with_markers(line):
    name = line.split("==")[0]
    m = lockcheck._PIN.match(line)
    assert m is not None and m.group(1) == name


def test_every_third_party_import_in_the_code_is_declared_in_pyproject():
    spec = importlib.util.spec_from_file_location("extra_smoke", REPO / "scripts" / "extra_smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    found = smoke.third_party_imports()
    assert {"torch", "transformers", "PIL", "pydantic", "httpx", "gguf"} <= set(found)  # the scan sees them
    assert smoke.undeclared() == {}
