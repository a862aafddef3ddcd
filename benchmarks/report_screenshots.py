"""Screenshots of a real run's HTML report, its sample browser, ``mmsafe view`` and the annotation form.

    python benchmarks/report_screenshots.py [--run RUN_DIR] [--out DIR]

Without ``--run`` it first runs the README's quickstart (``mmsafe run``, the embedded default model on the starter
suite; a few minutes on 2 cores) into a temporary folder. Then, with this checkout's mmsafe in subprocesses:
``mmsafe report RUN`` (rewrites ``report.html``), ``mmsafe annotate RUN --n 20 --seed 0`` (the form), and
``mmsafe view RUN --port 0``; and opens each page in headless Chromium (Debian's, through ChromeDriver, as the
browser tests do) and writes PNGs into ``--out``:

* ``report-top.png`` — the first screen and more of ``report.html`` (overview, matrices, charts);
* ``report-browser.png`` — the sample browser in ``report.html`` filtered to the first attack that sends images,
  and ``lightbox.png`` — a thumbnail clicked open;
* ``view.png`` — the same report served by ``mmsafe view`` (items paged from the server);
* ``annotate.png`` — the annotation form with an annotator name typed and one label chosen (nothing is saved
  or imported: no human labels are made up).

It prints each file with its size and the report's own size. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the browser helper the tests use

from _browser import browser  # noqa: E402


def _mmsafe(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mmsafe", *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
        sys.exit(f"mmsafe {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def _full_page(b, path: Path, *, max_height: int = 5000) -> None:
    height = min(max_height, int(b.js("return document.documentElement.scrollHeight")))
    b.driver.set_window_size(1400, max(900, height))
    time.sleep(0.3)
    b.driver.save_screenshot(str(path))
    b.driver.set_window_size(1400, 1000)


def _element(b, css: str, path: Path) -> None:
    el = b.driver.find_element("css selector", css)
    b.js("arguments[0].scrollIntoView()", el)
    time.sleep(0.2)
    el.screenshot(str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished run folder (default: run the quickstart first)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mmsafe-screens")
    args = ap.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.run
    if run is None:
        run = Path(tempfile.mkdtemp(prefix="mmsafe-screens-run-")) / "quickstart"
        t = time.perf_counter()
        _mmsafe("run", "--out", str(run), "--quiet", env=env)
        print(f"quickstart run: {time.perf_counter() - t:.0f} s -> {run}")
    t = time.perf_counter()
    _mmsafe("report", str(run), env=env)
    report = run / "report.html"
    print(
        f"mmsafe report: {time.perf_counter() - t:.1f} s (process start included); "
        f"report.html {report.stat().st_size / 1e3:,.0f} kB"
    )
    ann = run / "annotate-screens"
    _mmsafe("annotate", str(run), "--n", "20", "--seed", "0", "--out", str(ann), env=env)
    written: list[Path] = []
    with browser() as b:
        b.open(report)
        b.wait(lambda: b.js("return document.querySelectorAll('#mb-list > li').length"), what="browser items")
        _full_page(b, args.out / "report-top.png", max_height=3200)
        written.append(args.out / "report-top.png")
        # an attack that sends images (the first whose items show a thumbnail), so the browser shows them
        for attack in b.js("return [...document.getElementById('mb-f-attack').options].map(o => o.value)")[
            1:
        ]:
            b.js(
                "const s = document.getElementById('mb-f-attack'); s.value = arguments[0];"
                "s.dispatchEvent(new Event('change'))",
                attack,
            )
            if b.js("return document.querySelectorAll('#mb-list img').length"):
                break
        _element(b, "#browser", args.out / "report-browser.png")
        written.append(args.out / "report-browser.png")
        thumbs = b.driver.find_elements("css selector", "#mb-list img")
        if thumbs:
            thumbs[0].click()
            b.wait(
                lambda: not b.js("return document.getElementById('mb-lightbox').hidden"), what="the lightbox"
            )
            b.driver.save_screenshot(str(args.out / "lightbox.png"))
            written.append(args.out / "lightbox.png")
        assert not [e for e in b.console() if e["level"] == "SEVERE"], "the report logged errors"

        view = subprocess.Popen(
            [sys.executable, "-m", "mmsafe", "view", str(run), "--port", "0"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = view.stdout.readline() if view.stdout else ""
            m = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if not m:
                sys.exit(f"mmsafe view did not start: {line!r}")
            b.open(m.group(0) + "#browser")
            b.wait(
                lambda: b.js("return document.querySelectorAll('#mb-list > li').length"), what="served items"
            )
            _element(b, "#browser", args.out / "view.png")
            written.append(args.out / "view.png")
        finally:
            view.terminate()
            view.wait(10)

        b.open(ann / "annotate.html")
        name = b.driver.find_element("css selector", "#annotator")
        name.send_keys("screenshot")
        radios = b.driver.find_elements("css selector", "input[type=radio]")
        if radios:
            radios[1].click()
        b.driver.save_screenshot(str(args.out / "annotate.png"))
        written.append(args.out / "annotate.png")
    for p in written:
        print(f"{p}  {p.stat().st_size / 1e3:,.0f} kB")


if __name__ == "__main__":
    main()
