"""Shared fixtures. Real public data is read from ../shared/data, or $MMSAFE_SHARED_DATA (never copied into
the repo); a test that needs it FAILS with the reason when it is absent (the data is not optional).

Tiers: plain `pytest` runs the fast tier (`-m "not slow"` in pyproject.toml); `.ci/run` runs every tier with
MMSAFE_STRICT_SKIPS=1, which turns every skip into a failure: CI installs everything (the lock, Tesseract, the
fonts), so a skip there means a missing declaration or a broken install, not an optional extra.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MMSAFE_SHARED_DATA", REPO.parent / "shared" / "data"))


STRICT_SKIPS = os.environ.get("MMSAFE_STRICT_SKIPS", "") not in ("", "0")

# A pytest-xdist worker (CI runs `-n 2`) shares the cores with the others: torch's default of one thread per core
# in every worker would oversubscribe them. Set before any test module imports torch; an explicit value wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))

try:  # property-based tests (tests/test_properties.py): the same examples on every run, no saved database
    from hypothesis import HealthCheck, settings

    _PROPERTY = dict(
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("mmsafe", max_examples=50, **_PROPERTY)
    # HYPOTHESIS_PROFILE=mmsafe-thorough
    settings.register_profile("mmsafe-thorough", max_examples=500, **_PROPERTY)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mmsafe"))
except ImportError:
    pass  # hypothesis is in the dev extra; the property tests skip (fail under MMSAFE_STRICT_SKIPS)


def require_data(*parts: str) -> Path:
    """``SHARED_DATA/parts…``; fails the calling test, naming the path, when it does not exist."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.fail(
            f"public data not found at {p}: put the shared/ folder beside the checkout or set MMSAFE_SHARED_DATA",
            pytrace=False,
        )
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with figstep/, xstest/, harmbench/, … ; fails the test when it is absent."""
    return require_data()


def dataset_dir(name: str) -> Path:
    return require_data(name)


@pytest.fixture()
def jbb_artifacts() -> Path:
    """JailbreakBench's published attack artifacts (not its human-labelled judge set)."""
    return require_data("jailbreakbench", "artifacts")


#: the test files that take longest (summed test durations, `pytest -m "" --durations=0 -n 2`, 2026-12-05:
#: 689, 438, 344, 308 and 303 s under load). They run first, so that under `--dist loadfile` no worker is
#: left alone with one of them at the end while the other idles.
SLOW_FIRST = (
    "test_gemma.py",
    "test_judge_learned.py",
    "test_quickstart.py",
    "test_adversarial_embed_cropa.py",
    "test_defense_grid.py",
)


def pytest_collection_modifyitems(config, items):
    """Start the slowest files first (a stable sort: the order inside each file and of the rest stays)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under MMSAFE_STRICT_SKIPS (CI), a skipped test is a failed one, with the skip's reason."""
    outcome = yield
    rep = outcome.get_result()
    if STRICT_SKIPS and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under MMSAFE_STRICT_SKIPS (everything is installed in CI): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while it is collected (a module-level ``importorskip``): under
    MMSAFE_STRICT_SKIPS it is a collection error, so it cannot pass as one quiet "skipped" line."""
    outcome = yield
    rep = outcome.get_result()
    if STRICT_SKIPS and rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under MMSAFE_STRICT_SKIPS (everything is installed in CI): {reason}"


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """One model cache per test session (tiny builds, the Gemma conversion), unless the caller set one."""
    if os.environ.get("MMSAFE_CACHE_DIR"):
        yield os.environ["MMSAFE_CACHE_DIR"]
        return
    path = str(tmp_path_factory.mktemp("mmsafe-cache"))
    os.environ["MMSAFE_CACHE_DIR"] = path
    yield path
    os.environ.pop("MMSAFE_CACHE_DIR", None)
