"""Small real runs through the CLI, shared by the tests that compare two runs (markdown and HTML)."""

from __future__ import annotations

from pathlib import Path

from mmsafe.cli.main import main


def run_starter(out: Path, model: str, *attacks: str) -> None:
    """``mmsafe run`` of ``model`` (a name or an inline YAML component) on the built-in ``starter`` suite, judged
    by the refusal rules, with each of ``attacks``, into ``out``; fails the test unless it exits 0."""
    argv = [
        "run",
        "--model",
        model,
        "--benchmark",
        "starter",
        "--judge",
        "refusal",
        "--out",
        str(out),
        "--quiet",
    ]
    for a in attacks:
        argv += ["--attack", a]
    assert main(argv) == 0
