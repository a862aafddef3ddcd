"""The "Human evaluation" section of ``report.md``, from ``summary["human"]`` (:mod:`mmsafe.report.human`).

Annotator names, judge and component labels are user- or run-supplied text: every one goes through :func:`md_cell`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmsafe.report.escape import md_cell

__all__ = ["human_section"]


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _rate(r: dict[str, Any] | None) -> str:
    if not r or r.get("value") is None:
        return "–"
    return f"{100 * r['value']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] ({r['k']}/{r['n']})"


def _ci(est: dict[str, Any] | None) -> str:
    if not est:
        return "undefined"
    lo, hi = est.get("lo"), est.get("hi")
    return f"{est['value']:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def human_section(human: dict[str, Any] | None) -> list[str]:
    """The markdown lines of the section (none when no human label is stored)."""
    if not human:
        return []
    lines = [
        "",
        "## Human evaluation",
        "",
        "Labels imported with `mmsafe annotate --import` on a sample of the run's answers. The human majority of "
        "an item is the label most of its annotators gave (a tie is no majority and is compared with nothing). "
        "Judges are compared with it on the items both decided: agreement (95% Wilson interval) and Cohen's κ "
        "(bootstrap interval). See docs/human-evaluation.md.",
    ]
    for part in [human, *(human.get("others") or [])]:
        lines += _part(part)
    return lines


def _part(h: dict[str, Any]) -> list[str]:
    title = h["scheme"] + (f" · {h['field']}" if h.get("field") else "")
    ir = h["interrater"]
    lines = [
        "",
        f"### Scheme {md_cell(title)}",
        "",
        f"{h['n_items']} items, {h['n_labels']} labels by {len(h['annotators'])} annotator(s) "
        f"({', '.join(md_cell(a) for a in h['annotators'])}); majority on {h['n_majority']}, "
        f"ties (no majority) on {h['n_ties']}, a majority that is no verdict (e.g. unsure) on {h['n_undecided']}.",
        "",
    ]
    if ir["n"]:
        lines.append(
            f"Between annotators ({ir['n']} items with ≥ 2 labels): Fleiss' κ {_num(ir['fleiss_kappa'])} "
            f"(on the {ir['fleiss_n']} items every annotator labelled), Krippendorff's α "
            f"{_num(ir['krippendorff_alpha'])} ({md_cell(ir['alpha_metric'])})."
        )
        lines.append("")
        lines += _table(
            ["annotator A", "annotator B", "n", "agreement", "Cohen's κ"],
            [
                [md_cell(p["a"]), md_cell(p["b"]), str(p["n"]), f"{p['agreement']:.3f}", _num(p["kappa"])]
                for p in ir["pairs"]
            ],
        )
        lines.append("")
    else:
        lines += ["No item has labels from two annotators: no agreement between annotators to report.", ""]
    if h["judges"]:
        lines += _table(
            ["judge", "n", "agreement with human majority", "Cohen's κ"],
            [[md_cell(j["judge"]), str(j["n"]), _rate(j["agreement"]), _ci(j["kappa"])] for j in h["judges"]],
        )
        lines.append("")
    for s in h.get("skipped_judges") or []:
        lines.append(f"- judge {md_cell(s['judge'])} not compared: {md_cell(s['why'])}")
    if h.get("skipped_judges"):
        lines.append("")
    if h["rows"]:
        judges = sorted({j for r in h["rows"] for j in r["judges"]})
        lines.append(
            f"Per cell, {md_cell(h['rate_name'])} on the annotated sample, beside each judge on the same items:"
        )
        lines.append("")
        lines += _table(
            [
                "model",
                "benchmark",
                "attack",
                "defense",
                "expected",
                "n",
                "human majority",
                *map(md_cell, judges),
            ],
            [
                [md_cell(r[c]) for c in ("model", "benchmark", "attack", "defense", "expected")]
                + [str(r["n"]), _rate(r["human"])]
                + [_rate(r["judges"].get(j)) for j in judges]
                for r in h["rows"]
            ],
        )
    return lines
