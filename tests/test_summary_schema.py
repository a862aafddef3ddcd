"""The typed summary (``mmsafe.report.Summary`` / ``mmsafe.metrics.summary.SummaryRow``) describes what
``summary.json`` really holds: mypy checks every reader against the types, this checks the types against
real summaries (the golden one, and one built here with the optional row fields)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_type_hints

from mmsafe.metrics.summary import SummaryRow
from mmsafe.report import Summary

GOLDEN = Path(__file__).parent / "golden"


def _check(summary: dict, *, golden: bool = False) -> None:
    top = set(get_type_hints(Summary))
    required = Summary.__required_keys__ - ({"generated"} if golden else set())  # golden files drop the time
    assert required <= set(summary) <= top, set(summary) ^ top
    fields = set(get_type_hints(SummaryRow))
    for row in summary["rows"]:
        assert SummaryRow.__required_keys__ <= set(row), row
        assert set(row) <= fields, set(row) - fields


def test_the_golden_summary_fits_the_types():
    files = sorted(GOLDEN.glob("*summary*.json"))
    assert files, "no golden summary"
    for f in files:
        _check(json.loads(f.read_text(encoding="utf-8")), golden=True)


def test_a_summary_with_detection_utility_and_protection_rows_fits_the_types(tmp_path):
    import mmsafe

    result = mmsafe.evaluate(
        models="scripted",
        benchmarks=["starter", "vqa-starter"],
        attacks="none",
        judges=["refusal", {"name": "utility", "params": {"metric": "f1"}}],
        out=tmp_path / "run",
        limit=6,
    )
    _check(dict(result.summary))
    assert any("utility" in r for r in result.rows)
