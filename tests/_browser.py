"""Headless Chromium for the browser tests: Debian's ``chromium`` driven through its matching ``chromedriver``
(both installed by ``scripts/install.sh --dev``) with Selenium, which is in the dev lock.

``browser()`` yields a :class:`Browser`: a WebDriver with the page's console kept (``console()``), so a test can
assert that nothing attacker-controlled executed (no ``alert``, no script error, no Content-Security-Policy
violation beyond the ones it expects). Chromium runs with no network features (the machine's network is closed and
a page under test must not reach it anyway), a fresh profile per browser, and a download folder for tests that
save a file from the page.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


def require_browser() -> None:
    """Skip (which MMSAFE_STRICT_SKIPS, as in CI, turns into a failure) when Chromium, ChromeDriver or Selenium is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (dev lock)")
    if missing:
        pytest.skip(f"browser tests need {', '.join(missing)}: bash scripts/install.sh --dev installs them")


class Browser:
    """A Selenium Chrome driver plus the helpers the tests share."""

    def __init__(self, driver: Any, downloads: Path) -> None:
        self.driver = driver
        self.downloads = downloads

    def open(self, url_or_path: str | Path) -> None:
        url = url_or_path if isinstance(url_or_path, str) else url_or_path.resolve().as_uri()
        self.driver.get(url)

    def console(self) -> list[dict[str, Any]]:
        """The console entries since the last call (errors, CSP violations, ``console.log``)."""
        return list(self.driver.get_log("browser"))

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        end = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    def wait_download(self, name_suffix: str, timeout: float = 10.0) -> Path:
        def done() -> Path | None:
            files = [p for p in self.downloads.iterdir() if p.name.endswith(name_suffix)]
            return files[0] if files else None

        return self.wait(done, timeout, f"a downloaded *{name_suffix}")


@contextmanager
def browser() -> Iterator[Browser]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="mmsafe-chromium-"))
    downloads = profile / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in _FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile / 'profile'}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    # an explicit driver path: Selenium Manager (which would download a driver) is never asked
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield Browser(driver, downloads)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
