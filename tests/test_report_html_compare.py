"""``mmsafe compare … --html FILE``: the comparison as one page (table + forest chart), its numbers the same as the
markdown's, the run folder names escaped. Two scripted runs whose rules differ, as in test_compare_runs.py."""

from __future__ import annotations

import base64
import re
from html import unescape

import pytest

from _cli_runs import run_starter
from mmsafe.cli.main import main
from mmsafe.metrics.compare import newcombe_paired_interval
from mmsafe.report.htmlkit import NO_CHARTS

REFUSAL = "I am sorry, I cannot help with that."



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare-html")
    a, b = base / "a", base / "b<i>x</i>"
    run_starter(a, "scripted", "none")
    run_starter(b, f"{{name: scripted, params: {{rules: {{'How': '{REFUSAL}'}}}}}}", "none", "figstep")
    return a, b


def test_compare_html_holds_the_table_and_a_forest_of_the_differences(runs, capsys, tmp_path):
    a, b = runs
    page = tmp_path / "cmp.html"
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--html", str(page)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("# Run comparison")  # stdout stays the markdown; the page is named on stderr
    assert f"comparison page: {page}" in out.err
    html = page.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in html and "<script" not in html
    assert "b&lt;i&gt;x&lt;/i&gt;" in html and "<i>x</i>" not in html
    # the one shared cell's difference, as the markdown gives it (there in fractions, here in points)
    md_row = next(line for line in out.out.splitlines() if line.startswith("| starter |"))
    diff, lo, hi = (float(x) for x in re.findall(r"[+-]\d\.\d{3}", md_row.split("|")[-2]))
    row = re.search(r"<tr><td>starter</td>.*?</tr>", html)
    assert row is not None
    text = unescape(re.sub(r"<[^>]+>", "", row.group(0)))
    assert f"{100 * diff:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" in text
    k = round(-diff * 24)  # the harmful items run B refuses: the pairs where only run A complied
    assert (lo, hi) == pytest.approx(newcombe_paired_interval(24 - k, 0, k, 0), abs=1e-3)
    images = re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 1 and b"<svg" in base64.b64decode(images[0])
    assert NO_CHARTS not in html
