"""tests/conftest.py under the two ways CI may run the suite (one process, or pytest-xdist ``-n 2``):
MMSAFE_STRICT_SKIPS fails the run on every kind of skip, and an xdist worker takes its share of the cores."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPPING = """
import pytest

def test_passes():
    pass

def test_skips_inside():
    pytest.skip("inside the test")

@pytest.mark.skip(reason="by a mark")
def test_skipped_by_a_mark():
    pass

@pytest.mark.xfail(reason="expected", strict=True)
def test_expected_failure():
    assert False
"""

SKIPPED_MODULE = """
import pytest

pytest.importorskip("mmsafe_no_such_module")

def test_never_collected():
    pass
"""


THREADS = """
import os
from pathlib import Path

def test_threads():  # an xdist worker's output does not reach the terminal: a file does
    Path(__file__).with_name("threads.txt").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
"""


def _run(tmp_path: Path, *args: str, strict: str = "0", tests: dict[str, str] | None = None, **env_: str):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    tests = tests or {"test_skipping.py": SKIPPING, "test_skipped_module.py": SKIPPED_MODULE}
    for name, text in tests.items():
        (tmp_path / name).write_text(text)
    drop = ("PYTEST_", "MMSAFE_STRICT_SKIPS", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(MMSAFE_STRICT_SKIPS=strict, MMSAFE_CACHE_DIR=str(tmp_path / "cache"), **env_)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def _distributed() -> list[str]:
    pytest.importorskip("xdist")  # in the dev lock; CI runs the suite with it
    return ["-n", "2", "--dist", "loadfile"]


@pytest.mark.parametrize("workers", ["one process", "two xdist workers"])
def test_every_skip_fails_under_strict_skips(tmp_path, workers):
    # one process would stop at the collection error before running a test: let it go on, to see every outcome
    args = _distributed() if workers == "two xdist workers" else ["--continue-on-collection-errors"]
    code, out = _run(tmp_path, *args, strict="1")
    assert code != 0, out
    reason = "skipped under MMSAFE_STRICT_SKIPS (everything is installed in CI): Skipped: "
    for why in ("inside the test", "by a mark", "could not import 'mmsafe_no_such_module'"):
        assert reason + why in out, out
    for outcome in (
        "FAILED test_skipping.py::test_skips_inside",
        "ERROR test_skipping.py::test_skipped_by_a_mark",
    ):
        assert outcome in out, out
    assert re.search(r"^ERROR test_skipped_module.py ", out, re.M), out
    assert re.search(r"1 failed, 1 passed, 1 xfailed, 2 errors", out), out
    assert "PASSED test_skipping.py::test_passes" in out
    assert not re.search(r"\d+ skipped", out), out


def test_without_strict_skips_a_skip_is_a_skip(tmp_path):
    code, out = _run(tmp_path, strict="0")
    assert code == 0, out
    assert re.search(r"1 passed, 3 skipped, 1 xfailed", out), out


@pytest.mark.parametrize("explicit", [None, "3"])
def test_an_xdist_worker_takes_its_share_of_the_cores(tmp_path, explicit):
    env = {"OMP_NUM_THREADS": explicit} if explicit else {}
    code, out = _run(tmp_path, *_distributed(), tests={"test_threads.py": THREADS}, **env)
    assert code == 0, out
    share = str(max(1, (os.cpu_count() or 1) // 2))
    assert (tmp_path / "threads.txt").read_text() == (explicit or share)
    code, out = _run(tmp_path, tests={"test_threads.py": THREADS})  # one process: left alone
    assert code == 0, out
    assert (tmp_path / "threads.txt").read_text() == "unset"
