"""The build-once helper every cached model folder goes through (tiny models, Gemma, Gemma LLaVA)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mmsafe.models._build import build_lock, build_once, ensure_built


def _writer(calls: list[Path], *, marker: str = "done.json", pause: float = 0.0):
    def build(folder: Path, **_: object) -> Path:
        calls.append(folder)
        time.sleep(pause)
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"w")
        (folder / marker).write_text("{}")
        return folder

    return build


def test_a_half_written_folder_left_by_a_killed_build_is_rebuilt_not_loaded(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "m"
    dest.mkdir(parents=True)
    (dest / "weights.bin").write_bytes(b"half")  # no marker: the writer died
    leftover = tmp_path / "models" / ".m.abc123"  # a killed build's temporary folder
    (leftover / "model").mkdir(parents=True)
    calls: list[Path] = []
    assert build_once(dest, _writer(calls), marker="done.json") == dest
    assert len(calls) == 1
    assert (dest / "weights.bin").read_bytes() == b"w" and (dest / "done.json").is_file()
    assert not leftover.exists()
    assert [p.name for p in dest.parent.iterdir() if p.is_dir()] == ["m"]


def test_a_complete_folder_is_returned_without_building(tmp_path: Path) -> None:
    calls: list[Path] = []
    first = ensure_built("m", _writer(calls, marker="mark"), tmp_path, marker="mark")
    second = ensure_built("m", _writer(calls, marker="mark"), tmp_path, marker="mark")
    assert first == second == tmp_path / "models" / "m" and len(calls) == 1


def test_a_build_without_its_marker_fails_and_leaves_nothing(tmp_path: Path) -> None:
    def no_marker(folder: Path) -> None:
        folder.mkdir()

    with pytest.raises(RuntimeError, match=r"wrote no done\.json"):
        build_once(tmp_path / "m", no_marker, marker="done.json")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary, no lock file


def test_concurrent_callers_build_once(tmp_path: Path) -> None:
    calls: list[Path] = []
    build = _writer(calls, pause=0.2)
    out: list[Path] = []
    threads = [
        threading.Thread(target=lambda: out.append(build_once(tmp_path / "m", build, marker="done.json")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [tmp_path / "m"] * 3 and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_waiter_relocks_when_the_holder_removed_the_lock_file(tmp_path: Path) -> None:
    """The holder unlinks the lock file on exit; a process that waited on the old file must not
    run alongside one that locked the new file."""
    lock = tmp_path / ".m.lock"
    inside: list[str] = []
    overlap: list[bool] = []

    def hold(tag: str, pause: float) -> None:
        with build_lock(lock):
            overlap.append(bool(inside))
            inside.append(tag)
            time.sleep(pause)
            inside.remove(tag)

    threads = [threading.Thread(target=hold, args=(str(i), 0.05)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == [False] * 6 and not lock.exists()


def test_gemma_conversion_goes_through_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ensure_gemma3_270m converts into a temporary folder (its scratch space beside it) that becomes
    the cache folder, and replaces a folder an interrupted conversion left (the real conversion is
    in tests/test_gemma.py, marked slow)."""
    from mmsafe.models import gemma

    seen: list[tuple[Path, Path | None]] = []

    def fake_convert(dest: Path, *, dtype: str, workdir: Path | None = None) -> Path:
        seen.append((dest, workdir))
        assert workdir is not None and workdir.is_dir() and not dest.exists()
        dest.mkdir()
        (dest / gemma.CONVERSION_MARKER).write_text("{}")
        return dest

    monkeypatch.setattr(gemma, "_require_gguf_package", lambda: None)
    monkeypatch.setattr(gemma, "require", lambda *a, **k: None)
    monkeypatch.setattr(gemma, "build_gemma3_270m", fake_convert)
    folder = gemma.gemma3_270m_folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # no marker: an interrupted conversion
    assert gemma.ensure_gemma3_270m(tmp_path) == folder
    assert (folder / gemma.CONVERSION_MARKER).is_file() and not (folder / "config.json").exists()
    assert len(seen) == 1 and seen[0][0].parent == seen[0][1]
    assert gemma.ensure_gemma3_270m(tmp_path) == folder and len(seen) == 1
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
