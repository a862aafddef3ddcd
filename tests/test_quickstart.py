"""`mmsafe run` with no arguments: the built-in quickstart, end to end in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quickstart_writes_summary_and_report(tmp_path):
    # a fresh cache: the first-time Gemma conversion is part of the run (its time: benchmarks/quickstart_time.py)
    env = {**os.environ, "MMSAFE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "mmsafe", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "mmsafe-out" / "quickstart"
    summary = json.loads((out / "summary.json").read_text())
    attacks = {r["attack"] for r in summary["rows"]}
    assert attacks == {"figstep", "text-only"}
    assert summary["n_errors"] == 0
    # the embedded default is a small demo model safety-tuned by mmsafe: every report says so
    assert [m["label"] for m in summary["models"]] == ["gemma-ocr-safe"]
    assert "safety-tuned by mmsafe" in summary["models"][0]["note"]
    overall = [r for r in summary["rows"] if r["category"] == "ALL"]
    assert len(overall) == 4 and all(r["n"] == 40 for r in overall)  # 2 attacks x 2 judges
    # both constructs, named apart: did the model decline, and did the answer give harmful help
    assert {(r["judge"], r["rate_name"]) for r in overall} == {
        ("refusal", "non-refusal rate"),
        ("harm", "harmful rate (ASR)"),
    }
    report = (out / "report.md").read_text()
    assert "safety-tuned by mmsafe" in report and "figstep" in report
    assert "| non-refusal rate |" in report and "| harmful rate (ASR) |" in report
