"""``mmsafe compare RUN_A RUN_B …``: the cells several run folders share, side by side, from their stores.

Each run folder's store is read (read-only, as ``mmsafe report`` does) into the same tally
:func:`~mmsafe.report.build_summary` uses, so the rates are the report's own rows.

Cells are matched by their labels: (benchmark, model, attack, defense, judge) as the run's report
names them, category ``ALL`` only. A label is the component's name, or ``name#abcdef`` (the first
six hex digits of its spec key) when one run holds two specs of that name. So the ``scripted``
model of run A and the ``scripted`` model of run B are one cell even when their params differ:
that is what comparing two runs means. Two runs that each hold two specs of one name match only
where the spec keys agree.

Per shared cell: the rate of each run (named by the judge's construct, as the report's
``rate_name``) with its Wilson 95% interval, and the difference run − first run with Newcombe's
paired interval (:func:`~mmsafe.metrics.compare.compare_rates` with ``paired=True``) over the
sample ids judged in both runs; samples judged in only one run are counted, not paired.

Rendered as markdown (:func:`render_compare`) or as one self-contained page (:func:`render_compare_html`:
the same table and a forest chart of the differences, under the report's strict policy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmsafe.metrics.compare import compare_rates
from mmsafe.metrics.rates import Outcome
from mmsafe.metrics.summary import ALL, SummaryRow
from mmsafe.report.escape import md_cell
from mmsafe.report.tally import AXES, Tally
from mmsafe.store.sqlite import Store

__all__ = ["RunCells", "compare_runs", "load_run", "render_compare", "render_compare_html"]

#: a cell's labels: (benchmark, model, attack, defense, judge)
Label = tuple[str, str, str, str, str]
_ORDER = ("benchmark", "model", "attack", "defense", "judge")


@dataclass
class RunCells:
    """One run folder's overall rows and outcomes, by cell label."""

    name: str
    rows: dict[Label, SummaryRow]
    outcomes: Mapping[Label, Sequence[Outcome]]


def load_run(path: str | Path) -> RunCells:
    """The overall (category ``ALL``) cells of the run folder ``path``; a missing folder or store
    raises :class:`~mmsafe.errors.StoreError`."""
    from mmsafe.metrics import labels_of
    from mmsafe.report import summarise_tally

    with Store.open_existing(path) as store:
        tally = Tally()
        for record in store.iter_records(slim=True, by_cell=True):
            tally.add(record)
        summary = summarise_tally(tally, runs=[r["name"] for r in store.runs()], unreadable=store.unreadable)
    labels = labels_of({axis: specs.values() for axis, specs in tally.specs.items()})
    rows: dict[Label, SummaryRow] = {}
    for row in summary["rows"]:
        if row["category"] == ALL:
            rows[_label(row)] = row
    outcomes: dict[Label, list[Outcome]] = {}
    for cell, group in tally.cells.items():
        named = {axis: labels[(axis, key)] for axis, key in zip(AXES, cell, strict=True)}
        outcomes.setdefault(_label(named), []).extend(group)
    return RunCells(name=str(path), rows=rows, outcomes=outcomes)


def _label(row: Any) -> Label:
    b, m, a, d, j = (str(row[k]) for k in _ORDER)
    return (b, m, a, d, j)


def compare_runs(runs: Sequence[RunCells]) -> dict[str, Any]:
    """The shared cells of ``runs`` (at least two) with each run's rate and its difference from the
    first run; and, per run, how many of its cells are in no other run."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    shared = [c for c in runs[0].rows if all(c in r.rows for r in runs[1:])]
    cells = []
    for cell in shared:
        first = runs[0]
        entries = []
        for i, run in enumerate(runs):
            row = run.rows[cell]
            entry: dict[str, Any] = {"rate": row["asr"], "rate_name": row.get("rate_name", "success rate")}
            if i:
                entry["diff"] = compare_rates(run.outcomes[cell], first.outcomes[cell], paired=True)
            entries.append(entry)
        cells.append({"cell": dict(zip(_ORDER, cell, strict=True)), "runs": entries})
    only = []
    for i, run in enumerate(runs):
        others = set().union(*(r.rows.keys() for j, r in enumerate(runs) if j != i))
        only.append(sum(1 for c in run.rows if c not in others))
    return {"runs": [r.name for r in runs], "cells": cells, "only": only}


def _rate(r: dict[str, Any]) -> str:
    if not r.get("n") or r.get("value") is None:
        return "n/a"
    return f"{r['value']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] ({r['k']}/{r['n']})"


def _diff(d: dict[str, Any]) -> str:
    if d["diff"] is None:
        return "n/a (no shared sample)"
    return (
        f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] ({d['n_a']} paired, {d['n_unmatched']} unpaired)"
    )


def render_compare(result: dict[str, Any]) -> str:
    """Markdown for :func:`compare_runs`: every label and run name escaped with ``md_cell``."""
    names = [md_cell(n) for n in result["runs"]]
    lines = ["# Run comparison", ""]
    lines += [f"- run {i + 1}: {n}" for i, n in enumerate(names)]
    lines += [
        "",
        f"{len(result['cells'])} shared cells (category ALL); difference = run − run 1, "
        "Newcombe paired 95% interval over the sample ids judged in both.",
        "",
    ]
    head = ["benchmark", "model", "attack", "defense", "judge", "rate"]
    head += [f"run {i + 1}" for i in range(len(names))]
    head += [f"run {i + 1} − run 1" for i in range(1, len(names))]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for c in result["cells"]:
        labels = [md_cell(c["cell"][k]) for k in _ORDER]
        rate_name = md_cell(c["runs"][0]["rate_name"])
        rates = [_rate(e["rate"]) for e in c["runs"]]
        diffs = [_diff(e["diff"]) for e in c["runs"][1:]]
        lines.append("| " + " | ".join([*labels, rate_name, *rates, *diffs]) + " |")
    lines.append("")
    for i, n in enumerate(result["only"]):
        lines.append(f"- cells only in run {i + 1}: {n}")
    return "\n".join(lines) + "\n"


def render_compare_html(result: dict[str, Any]) -> str:
    """One self-contained page for :func:`compare_runs`: the table of :func:`render_compare` (every label
    escaped) and a forest chart of each difference with its interval (no chart without matplotlib)."""
    from mmsafe.report import charts, htmlkit
    from mmsafe.report.page import esc, page

    names = result["runs"]
    runs = "".join(f"<li>run {i + 1}: <code>{esc(n)}</code></li>" for i, n in enumerate(names))
    head = [*_ORDER, "rate", *(f"run {i + 1}" for i in range(len(names)))]
    head += [f"run {i + 1} − run 1 (pp)" for i in range(1, len(names))]
    rows, forest = [], []
    for c in result["cells"]:
        labels = [esc(c["cell"][k]) for k in _ORDER]
        rates = [htmlkit.pct(e["rate"]) for e in c["runs"]]
        diffs = []
        for i, e in enumerate(c["runs"][1:], start=2):
            d = e["diff"]
            pairs = (
                f' <span class="n">{d["n_a"]} paired, {d["n_unmatched"]} unpaired</span>'
                if d["diff"] is not None
                else ""
            )
            diffs.append(htmlkit.diff(d) + pairs)
            iv = charts.Interval.of(d)
            if iv is not None:
                forest.append((f"run {i}: " + " · ".join(str(c["cell"][k]) for k in _ORDER), iv))
        rows.append([*labels, esc(c["runs"][0]["rate_name"]), *rates, *diffs])
    shown = forest[: 4 * htmlkit.MAX_PANELS]

    def draw() -> str:
        return charts.forest(
            "", shown, xlabel="run − run 1 (percentage points)", alt="differences against run 1"
        )

    only = "".join(f"<li>cells only in run {i + 1}: {n}</li>" for i, n in enumerate(result["only"]))
    body = (
        '<header><h1>Run comparison</h1></header><main><section id="runs"><h2>Runs</h2>'
        f"<ul>{runs}</ul><p>{len(result['cells'])} shared cells (category ALL); difference = run − run 1 in "
        "percentage points, Newcombe's paired 95% interval over the sample ids judged in both.</p>"
        f"<ul>{only}</ul></section>"
        f'<section id="cells"><h2>Shared cells</h2>{htmlkit.table(head, rows)}</section>'
        '<section id="differences"><h2>Differences</h2>'
        + (
            htmlkit.panel("run − run 1, per cell", htmlkit.chart(draw))
            if shown
            else "<p>No paired difference.</p>"
        )
        + htmlkit.left_out(len(forest) - len(shown))
        + "</section></main>"
    )
    return page("mmsafe run comparison", body, css=htmlkit.css())
