"""benchmarks/README.md lists every benchmark script, and names only scripts that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_script_has_a_row_and_every_row_a_script():
    page = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    named = set(re.findall(r"benchmarks/([a-z0-9_]+\.py)", page))
    assert scripts - named == set(), "scripts without a row in benchmarks/README.md"
    assert named - scripts == set(), "rows naming a script that does not exist"
    assert "(filled at merge)" not in page
