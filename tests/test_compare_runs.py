"""``mmsafe compare``: two runs of the scripted model on the starter suite whose rules differ, so the
difference of their non-refusal rates is known from the suite's own questions."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from _cli_runs import run_starter
from mmsafe.cli.main import main
from mmsafe.metrics.compare import newcombe_paired_interval
from mmsafe.metrics.rates import wilson_interval

REFUSAL = "I am sorry, I cannot help with that."
TRIGGER = "How"  # run B refuses every prompt that holds this word


def _refuse_items() -> list[dict]:
    text = resources.files("mmsafe.data").joinpath("starter.yaml").read_text(encoding="utf-8")
    return [i for i in yaml.safe_load(text)["items"] if i["expected"] == "refuse"]



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    a, b = base / "a", base / "b|[x](y)"
    run_starter(a, "scripted", "none")
    run_starter(b, f"{{name: scripted, params: {{rules: {{'{TRIGGER}': '{REFUSAL}'}}}}}}", "none", "figstep")
    return a, b


def test_compare_reports_each_rate_and_the_paired_difference(runs, capsys, tmp_path):
    a, b = runs
    items = _refuse_items()
    n = len(items)
    refused_b = sum(TRIGGER in i["question"] for i in items)
    assert 0 < refused_b < n  # the rule splits the harmful items
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| starter |")]
    assert len(rows) == 1  # the figstep cell is in run 2 only
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:6] == ["starter", "scripted", "none", "none", "refusal", "non-refusal rate"]
    lo_a, hi_a = wilson_interval(n, n, 1.96)
    assert cells[6] == f"1.000 [{lo_a:.3f}, {hi_a:.3f}] ({n}/{n})"  # run A never refuses
    k_b = n - refused_b
    lo_b, hi_b = wilson_interval(k_b, n, 1.96)
    assert cells[7] == f"{k_b / n:.3f} [{lo_b:.3f}, {hi_b:.3f}] ({k_b}/{n})"
    # pairs (run B, run A): both comply on k_b items, only run A on the refused ones
    lo, hi = newcombe_paired_interval(k_b, 0, refused_b, 0)
    assert cells[8] == f"{-refused_b / n:+.3f} [{lo:+.3f}, {hi:+.3f}] ({n} paired, 0 unpaired)"
    assert "- cells only in run 1: 0" in out and "- cells only in run 2: 1" in out
    # run folder names are escaped where rendered
    assert "b\\|\\[x\\](y)" in out and "[x](y)" not in out

    dest = tmp_path / "cmp.md"
    assert main(["compare", str(a), str(b), "--out", str(dest)]) == 0
    assert dest.read_text(encoding="utf-8") == out


def test_compare_missing_run_folder_is_one_line_error(runs, capsys, tmp_path):
    a, _ = runs
    capsys.readouterr()
    missing = tmp_path / "nope"
    assert main(["compare", str(a), str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"mmsafe: error: no run folder at {missing}\n"
    assert main(["compare", str(a)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
