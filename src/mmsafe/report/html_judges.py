"""The *Judges* section of ``report.html`` (:mod:`mmsafe.report.html`): every rate is a judge's verdict, so how
far to trust the judges — agreement between them, their judge-evals on record (``mmsafe judge-eval --record``),
rates corrected for their measured errors, and, when the store holds human labels, the human evaluation
(``summary["human"]``, docs/human-evaluation.md). Every label is escaped (:func:`~mmsafe.report.page.esc`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from mmsafe.report.htmlkit import kappa, num, pct, table, uniq
from mmsafe.report.page import esc

if TYPE_CHECKING:
    from mmsafe.report import Summary

__all__ = ["human_part", "judges_section"]


def judges_section(summary: Summary) -> str:
    """How far to trust the judges: agreement between them, their judge-evals on record, rates corrected for
    their measured errors, and the human evaluation when ``summary["human"]`` is present."""
    s = summary
    out = []
    agreement = s.get("judge_agreement") or []
    if agreement:
        out.append(
            "<h3>Agreement between judges</h3><p>On the same responses, success verdicts; κ with its interval.</p>"
        )
        out.append(
            table(
                ["judge A", "judge B", "n", "agree", "κ", "only A says success", "only B says success"],
                [
                    [esc(a["a"]), esc(a["b"]), esc(a["n"]), pct(a["agreement"]), kappa(a.get("kappa"))]
                    + [esc(a.get("only_a", "–")), esc(a.get("only_b", "–"))]
                    for a in agreement
                ],
            )
        )
    notes = s.get("judges") or []
    if notes:
        out.append(
            "<h3>Judge-evals on record</h3><p>Each judge's agreement with labelled data, where "
            "<code>mmsafe judge-eval --record</code> had measured this exact configuration.</p>"
        )
        rows = []
        for n in notes:
            evals = n.get("evals") or []
            head = [esc(n["label"]), esc(n.get("version", "")), esc(n.get("rate_name", ""))]
            if not evals:
                rows.append([*head, '<span class="muted">no judge-eval on record</span>', "–", "–", "–"])
            for e in evals:
                construct = "refusal labels" if e.get("construct") == "refusal" else "harm labels"
                rows.append(
                    [*head, esc(e.get("data_name", "labelled data")), esc(construct), esc(e.get("n", "?"))]
                    + [pct(e.get("accuracy"), n=False) + " · κ " + kappa(e.get("kappa"))]
                )
        out.append(table(["judge", "version", "rate", "labelled data", "labels", "n", "accuracy · κ"], rows))
    calibrated = s.get("calibrated") or []
    if calibrated:
        out.append(
            "<h3>Corrected for the judge's measured errors</h3><p>Rogan–Gladen estimate of the true harmful rate from "
            "the observed rate and the judge's sensitivity and specificity on the named labelled data.</p>"
        )
        out.append(
            table(
                [
                    "benchmark",
                    "model",
                    "attack",
                    "defense",
                    "judge",
                    "observed",
                    "sens. / spec. (data, n)",
                    "corrected",
                ],
                [
                    [esc(c[k]) for k in ("benchmark", "model", "attack", "defense", "judge")]
                    + [f"{100 * c['observed']:.1f}%"]
                    + [
                        f"{c['sensitivity']:.2f} / {c['specificity']:.2f} ({esc(c.get('data_name'))}, n={esc(c.get('data_n'))})"
                    ]
                    + [pct(c, n=False)]
                    for c in calibrated
                ],
            )
        )
    human = cast(Mapping[str, Any], s).get("human")  # added by the human-evaluation part when labels exist
    if human:
        out.append(human_part(human))
    return "".join(out) or "<p>No judges.</p>"


def human_part(h: Mapping[str, Any]) -> str:
    """``summary["human"]`` (human labels, see docs/human-evaluation.md): agreement among the annotators,
    each judge against their majority, and the rate by human majority beside the judges' on the same items."""
    ir = h.get("interrater") or {}
    alpha, fleiss = ir.get("krippendorff_alpha"), ir.get("fleiss_kappa")
    out = [
        f"<h3>Human evaluation</h3><p>Scheme <code>{esc(h.get('scheme', ''))}</code>: {esc(h.get('n_items', 0))} "
        f"items labelled by {esc(', '.join(h.get('annotators') or []))}. Between annotators (n={esc(ir.get('n', 0))}): "
        f"Fleiss κ {num(fleiss, '.2f')}, Krippendorff α {num(alpha, '.2f')}.</p>"
    ]
    pairs = ir.get("pairs") or []
    if pairs:
        out.append(
            table(
                ["annotator A", "annotator B", "n", "agreement", "Cohen κ"],
                [
                    [
                        esc(p["a"]),
                        esc(p["b"]),
                        esc(p["n"]),
                        num(p.get("agreement"), ".1%"),
                        num(p.get("kappa"), ".2f"),
                    ]
                    for p in pairs
                ],
            )
        )
    judges = h.get("judges") or []
    if judges:
        out.append("<p>Each judge against the human majority label:</p>")
        out.append(
            table(
                ["judge", "n", "agreement", "κ"],
                [
                    [esc(j["judge"]), esc(j["n"]), pct(j.get("agreement")), kappa(j.get("kappa"))]
                    for j in judges
                ],
            )
        )
    rows = h.get("rows") or []
    if rows:
        names = uniq(name for r in rows for name in (r.get("judges") or {}))
        out.append("<p>The rate by human majority beside each judge's rate on the same items:</p>")
        out.append(
            table(
                ["model", "benchmark", "attack", "defense", "n", "human majority", *names],
                [
                    [esc(r[k]) for k in ("model", "benchmark", "attack", "defense")]
                    + [esc(r["n"]), pct(r.get("human"))]
                    + [pct((r.get("judges") or {}).get(name)) for name in names]
                    for r in rows
                ],
            )
        )
    return "".join(out)
