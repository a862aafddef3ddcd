"""report.md: the tables a person reads, rendered from the store alone.

Every piece of model output or dataset text passes through :func:`md_cell`, so a response that
contains Markdown, HTML or a link renders as inert text.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mmsafe.metrics.summary import CellKey, SummaryRow
from mmsafe.report.escape import md_cell
from mmsafe.report.human_md import human_section

if TYPE_CHECKING:
    from mmsafe.report import Summary

CELL: tuple[CellKey, ...] = ("benchmark", "model", "attack", "defense", "judge")


def _pct(rate: dict[str, Any] | None) -> str:
    if not rate or rate.get("value") is None:
        return "–"
    return f"{100 * rate['value']:.1f}% [{100 * rate['lo']:.1f}, {100 * rate['hi']:.1f}] ({rate['k']}/{rate['n']})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render(
    summary: Summary,
    *,
    errors: Sequence[tuple[str, str, int, str]] = (),
    examples: Sequence[dict[str, Any]] = (),
) -> str:
    """``report.md`` from the summary, the failed-item groups (:meth:`Store.error_groups`) and example
    answers (:meth:`Store.examples`)."""
    rows = summary["rows"]
    lines: list[str] = [f"# mmsafe report: {md_cell(', '.join(summary['runs']) or 'run')}", ""]
    lines.append(
        f"{summary['n_records']} records, {summary['n_errors']} failed items; "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(summary['generated']))}."
    )
    lines.append("")
    if summary.get("n_unreadable"):
        keys = ", ".join(f"`{md_cell(k[:16])}…`" for k in summary["unreadable"][:3])
        lines.append(
            f"> **{summary['n_unreadable']} unreadable record(s) left out** (key {keys}): the store holds rows "
            "this mmsafe cannot read (damaged, or written by another version); they are in no number below."
        )
        lines.append("")
    for m in summary["models"]:
        if m.get("note"):
            lines.append(
                f"> **Warning: model {md_cell(m['label'])}: {md_cell(m['note'])}.** "
                "Read these numbers as a test of the pipeline only."
            )
            lines.append("")
    lines += [
        "Rate = the judge's success rate on must-refuse items, named by what the judge measures: "
        "*harmful rate (ASR)* for judges that read the answer for harm (`harm`, `llm`, `learned`); "
        "*non-refusal rate* for the refusal rules, which count every answer that did not refuse — an "
        "evasive or harmless answer included — so it is not an ASR and usually overstates harm; "
        "*target-string rate* when the attacker's string appeared. "
        "Refusal = share of must-refuse items refused; over-refusal = share of must-comply (benign) items "
        "refused; utility (when a utility judge ran) = mean score of must-comply answers against reference "
        "answers, 0–1, bootstrap interval. Brackets: 95% Wilson interval; parentheses: k/n. Failed items "
        "are excluded from rates and counted under *errors*.",
        "",
        "## Results",
        "",
    ]
    overall = [r for r in rows if r["category"] == "ALL"]
    with_utility = any(r.get("utility") for r in overall)
    header = [
        *CELL,
        "n",
        "errors",
        "rate measured",
        "rate",
        "refusal",
        "over-refusal",
        *(["utility"] if with_utility else []),
    ]
    lines += _table(
        header,
        [
            [md_cell(str(r[c])) for c in CELL]
            + [str(r["n"]), str(r["n_errors"]), md_cell(r.get("rate_name", "success rate"))]
            + [_pct(r["asr"]), _pct(r["refusal"]), _pct(r["over_refusal"])]
            + ([_mean(r.get("utility"))] if with_utility else [])
            for r in overall
        ],
    )
    detection = [r for r in overall if r.get("accuracy")]
    if detection:
        lines += ["", "Detection-style items (the judge's label vs the ground truth):", ""]
        lines += _table(
            [*CELL, "accuracy", "macro-F1"],
            [[md_cell(str(r[c])) for c in CELL] + _detection_cells(r) for r in detection],
        )
    lines += _privacy(overall, summary["components"].get("judge", []))
    lines += _calibrated(summary.get("calibrated") or [])
    lines += _effects(summary.get("effects") or [])
    lines += _defenses(summary.get("defenses") or [])
    lines += _strongest(summary.get("strongest") or [])
    lines += _judges(summary.get("judges") or [], summary.get("judge_agreement") or [])
    lines += _attack_costs(summary.get("attacks") or [])
    lines += _adversarial(summary.get("adversarial") or [])
    lines += human_section(summary.get("human"))
    lines += ["", "## Per category", ""]
    by_cell: dict[tuple[str, ...], list[SummaryRow]] = defaultdict(list)
    for r in rows:
        if r["category"] != "ALL":
            by_cell[tuple(r[c] for c in CELL)].append(r)
    for cell, cat_rows in by_cell.items():
        lines.append("### " + " · ".join(md_cell(str(x)) for x in cell))
        lines.append("")
        cat_utility = any(r.get("utility") for r in cat_rows)
        cat_detection = any(r.get("accuracy") for r in cat_rows)  # a detection set's tasks (GOAT-Bench)
        lines += _table(
            [
                "category",
                "n",
                "errors",
                md_cell(cat_rows[0].get("rate_name", "success rate")),
                "refusal",
                "over-refusal",
                *(["utility"] if cat_utility else []),
                *(["accuracy", "macro-F1"] if cat_detection else []),
            ],
            [
                [md_cell(r["category"]), str(r["n"]), str(r["n_errors"])]
                + [_pct(r["asr"]), _pct(r["refusal"]), _pct(r["over_refusal"])]
                + ([_mean(r.get("utility"))] if cat_utility else [])
                + (_detection_cells(r) if cat_detection else [])
                for r in cat_rows
            ],
        )
        lines.append("")
    lines += _errors(errors)
    lines += _examples(examples)
    lines += ["## Components", ""]
    for kind, specs in summary["components"].items():
        for s in specs:
            params = json.dumps(s["params"], sort_keys=True)
            lines.append(
                f"- {kind} **{md_cell(s['label'])}** (v{md_cell(s['version'])}): {md_cell(params, limit=400)}"
            )
    lines.append("")
    return "\n".join(lines)


def _detection_cells(row: SummaryRow) -> list[str]:
    """Accuracy (Wilson interval, k/n) and macro-F1 (bootstrap interval) of a detection row, or dashes."""
    f1 = row.get("macro_f1")
    return [
        _pct(row.get("accuracy")),
        _interval(f1["value"], f1["lo"], f1["hi"], pct=False) if f1 else "–",
    ]


def _privacy(rows: Sequence[SummaryRow], judges: Sequence[dict[str, Any]]) -> list[str]:
    """PrivQA-style rows: protection score, its two rates, and the response F1 when the judge is the
    utility judge with ``metric: f1`` (its mean score on the control items)."""
    rows = [r for r in rows if "protection" in r]
    if not rows:
        return []
    f1_judges = {j["label"] for j in judges if (j.get("params") or {}).get("metric") == "f1"}
    lines = [
        "",
        "## Privacy protection",
        "",
        "Protection score = harmonic mean of sensitivity (protected items declined) and specificity "
        "(control items answered), stratified bootstrap interval; response F1 = mean token F1 of the "
        "control answers against the gold answers (utility judge with `metric: f1`), bootstrap interval.",
        "",
    ]
    body = []
    for r in rows:
        p = r["protection"]
        score = _interval(p["value"], p["lo"], p["hi"], pct=False) if p else "–"
        sens = _pct(p["sensitivity"]) if p else "–"
        spec = _pct(p["specificity"]) if p else "–"
        f1 = _mean(r.get("utility")) if r.get("judge") in f1_judges else "–"
        body.append([md_cell(str(r[c])) for c in CELL] + [score, sens, spec, f1])
    return lines + _table([*CELL, "protection score", "sensitivity", "specificity", "response F1"], body)


def _calibrated(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Harmful rates corrected for the judge's own measured errors, labelled as such."""
    if not rows:
        return []
    lines = [
        "",
        "### Corrected for the judge's measured errors",
        "",
        "Rogan–Gladen estimate of the true harmful rate from the observed rate and the judge's sensitivity "
        "and specificity as `mmsafe judge-eval --record` measured them on the named labelled data (95% "
        "bootstrap interval). It holds only if the judge errs on these answers as it did on that data.",
        "",
    ]
    lines += _table(
        [*CELL, "observed", "judge sensitivity / specificity (data, n)", "corrected"],
        [
            [md_cell(str(r[c])) for c in CELL]
            + [
                f"{100 * r['observed']:.1f}%",
                f"{r['sensitivity']:.2f} / {r['specificity']:.2f} ({md_cell(str(r.get('data_name')))}, n={r.get('data_n')})",
                f"{100 * r['value']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]"
                if r.get("lo") is not None
                else f"{100 * r['value']:.1f}%",
            ]
            for r in rows
        ],
    )
    return lines


def _mean(est: dict[str, Any] | None) -> str:
    """A mean score in [0, 1] with its interval and n, or a dash."""
    if not est:
        return "–"
    return f"{est['value']:.2f} [{est['lo']:.2f}, {est['hi']:.2f}] (n={est['n']})"


def _interval(value: float | None, lo: float | None, hi: float | None, *, pct: bool = True) -> str:
    if value is None:
        return "–"
    f = (lambda x: f"{100 * x:+.1f}") if pct else (lambda x: f"{x:.2f}")
    if lo is None or hi is None:
        return f(value)
    return f"{f(value)} [{f(lo)}, {f(hi)}]"


def _effects(rows: Sequence[dict[str, Any]]) -> list[str]:
    """ASR differences against the ``none`` defense / ``none`` attack of the same cell, paired."""
    if not rows:
        return []
    lines = [
        "",
        "## Effects",
        "",
        "The rate of a cell (as named in Results: ASR for harm judges, non-refusal rate for the refusal rules) "
        "minus the rate of the same cell with the baseline defense or attack (`none`), in "
        "percentage points, paired by sample (Newcombe's paired 95% interval); *n* = pairs.",
        "",
    ]
    lines += _table(
        ["axis", "model", "benchmark", "attack", "defense", "judge", "vs", "Δ rate (pp)", "n"],
        [
            [
                md_cell(str(r[c]))
                for c in ("axis", "model", "benchmark", "attack", "defense", "judge", "baseline")
            ]
            + [_interval(r["diff"], r["lo"], r["hi"]), str(r["n_a"])]
            for r in rows
        ],
    )
    return lines


def _utility_cells(row: dict[str, Any]) -> list[str]:
    u, d = row.get("utility"), row.get("utility_price")
    return [
        _interval(u["value"], u["lo"], u["hi"], pct=False) + f" (n={u['n']})" if u else "–",
        _interval(d["diff"], d["lo"], d["hi"], pct=False) if d else "–",
    ]


def _defenses(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The safety–utility balance of each defended cell."""
    if not rows:
        return []
    lines = [
        "",
        "## Defenses",
        "",
        "Defense success = must-refuse items the attack did not get through (1 − ASR). Price = "
        "over-refusal of must-comply items, and its change against the same cell without the defense "
        "(paired, percentage points). Calls = model calls per item (1 = the answer alone); seconds = "
        "the defense's wall time per item (its share of each batch, model calls included). Utility "
        "(cells judged by a utility judge) = mean score of must-comply answers against their reference "
        "answers (0–1), and its paired change against the same cell without the defense "
        "(bootstrap intervals).",
        "",
    ]
    with_utility = any(r.get("utility") for r in rows)
    lines += _table(
        [
            "model",
            "benchmark",
            "attack",
            "defense",
            "judge",
            "defense success",
            "over-refusal",
            "Δ over-refusal (pp)",
            *(["utility", "Δ utility"] if with_utility else []),
            "actions",
            "calls/item",
            "s/item",
        ],
        [
            [md_cell(str(r[c])) for c in ("model", "benchmark", "attack", "defense", "judge")]
            + [
                _pct(r["defense_success"]),
                _pct(r["over_refusal"]),
                _interval(
                    r["over_refusal_price"]["diff"],
                    r["over_refusal_price"]["lo"],
                    r["over_refusal_price"]["hi"],
                )
                if r.get("over_refusal_price")
                else "–",
                *(_utility_cells(r) if with_utility else []),
                md_cell(", ".join(f"{k} {v}" for k, v in sorted(r["actions"].items())) or "–"),
                "–" if r["calls_per_item"] is None else f"{r['calls_per_item']:.2f}",
                "–" if r["seconds_per_item"] is None else f"{r['seconds_per_item']:.3f}",
            ]
            for r in rows
        ],
    )
    return lines


def _judges(notes: Sequence[dict[str, Any]], agreement: Sequence[dict[str, Any]]) -> list[str]:
    """Which judges scored this run, how they agree with each other, and — where the run's store
    holds an evaluation by ``mmsafe judge-eval`` — with human labels."""
    if not notes:
        return []
    lines = ["", "## Judges", ""]
    lines.append(
        "Every rate above is a judge's verdict. Agreement with labelled data (human labels, or a "
        "reference judge's — the data file is named) is shown where `mmsafe judge-eval --record` had "
        "measured this exact judge configuration when the run ran (recorded in the run's store)."
    )
    lines.append("")
    for n in notes:
        evals = n.get("evals") or []
        if not evals:
            lines.append(
                f"- **{md_cell(n['label'])}** (v{md_cell(str(n['version']))}): no judge-eval on record."
            )
            continue
        parts = []
        for e in evals:
            acc = e.get("accuracy") or {}
            kappa = e.get("kappa") or {}
            acc_txt = f"{100 * acc['value']:.1f}%" if acc.get("value") is not None else "–"
            kappa_txt = f"{kappa['value']:.2f}" if kappa.get("value") is not None else "–"
            construct = "refusal labels" if e.get("construct") == "refusal" else "harm labels"
            parts.append(
                f"accuracy {acc_txt}, κ {kappa_txt} on {md_cell(str(e.get('data_name', 'labelled data')))} "
                f"({construct}, n={e.get('n', '?')})"
            )
        lines.append(f"- **{md_cell(n['label'])}** (v{md_cell(str(n['version']))}): " + "; ".join(parts))
    if agreement:
        lines += ["", "Agreement between judges on the same responses (success verdicts):", ""]
        lines += _table(
            ["judge A", "judge B", "n", "agree", "κ", "only A says success", "only B says success"],
            [
                [md_cell(a["a"]), md_cell(a["b"]), str(a["n"]), _pct(a["agreement"])]
                + [
                    _interval(a["kappa"]["value"], a["kappa"]["lo"], a["kappa"]["hi"], pct=False)
                    if a.get("kappa")
                    else "– (undefined)",
                    str(a["only_a"]),
                    str(a["only_b"]),
                ]
                for a in agreement
            ],
        )
    return lines


def _strongest(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per defense (and for no defense), the attack that got through most often: static, adaptive, overall."""
    if not rows:
        return []

    def which(best: dict[str, Any] | None) -> str:
        if best is None:
            return "–"
        how = f" ({md_cell(best['how'])})" if best.get("how") else ""
        return f"{md_cell(best['attack'])}{how}: {_pct(best['rate'])}"

    lines = [
        "",
        "## Strongest attack per defense",
        "",
        "For each defense (and for none) run under two or more attacks: the attack with the highest rate on "
        "must-refuse items, among the static attacks and among the adaptive ones (they saw the defense: a query "
        "search with the defended model in its loop, or a white-box optimisation through its transform or "
        "against its detector). A defense is as strong as its number in the last column. Each interval is that "
        "one attack's; picking the highest of several rates favours the attacker and is not corrected for.",
        "",
    ]
    lines += _table(
        [
            "model",
            "benchmark",
            "defense",
            "judge",
            "rate",
            "attacks (adaptive)",
            "strongest static",
            "strongest adaptive",
            "strongest",
        ],
        [
            [md_cell(str(r[c])) for c in ("model", "benchmark", "defense", "judge")]
            + [md_cell(r.get("rate_name", "success rate")), f"{r['attacks']} ({r['adaptive_attacks']})"]
            + [
                which(r.get("strongest_static")),
                which(r.get("strongest_adaptive")),
                which(r.get("strongest")),
            ]
            for r in rows
        ],
    )
    return lines


def _attack_costs(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What each attack spent building its prompts (once per prompt)."""
    if not rows:
        return []

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    lines = [
        "",
        "## Attack cost",
        "",
        "Per prompt, once: the attack's wall seconds (its share of each batch, helper-model calls included), the "
        "calls it made to the model under test while crafting (*queries*: a query-based search; 0 for a one-shot "
        "attack) and to helper models (*aux calls*: attacker LLM, judge, image generator); – when the attack does "
        "not report it.",
        "",
    ]
    lines += _table(
        [
            "model",
            "benchmark",
            "attack",
            "defense",
            "prompts",
            "s/prompt",
            "queries/prompt",
            "aux calls/prompt",
        ],
        [
            [md_cell(str(r[c])) for c in ("model", "benchmark", "attack", "defense")]
            + [str(r["prompts"]), num(r.get("seconds_per_prompt"), ".3f")]
            + [num(r.get("queries_per_prompt"), ".2f"), num(r.get("aux_calls_per_prompt"), ".2f")]
            for r in rows
        ],
    )
    return lines


def _adversarial(rows: Sequence[dict[str, Any]]) -> list[str]:
    """White-box optimisation per cell: the attack's own success test and how visible the change is."""
    if not rows:
        return []

    def num(v: Any, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    lines = [
        "",
        "## Adversarial images",
        "",
        "Per image, once: *success* is the attack's own test during optimisation (e.g. greedy decoding "
        "emitted the target; – when the objective has none), L∞/L2 are pixel distances in [0, 1] to the "
        "clean image as the model sees it, SSIM and PSNR (dB) compare the two (SSIM is low for any change "
        "to a flat image, such as the grey start image of a text-only sample).",
        "",
    ]
    lines += _table(
        [
            "model",
            "benchmark",
            "attack",
            "defense",
            "images",
            "success",
            "norm",
            "ε",
            "steps",
            "s/image",
            "max L∞",
            "L2",
            "SSIM",
            "PSNR",
            "crafted on",
        ],
        [
            [md_cell(str(r[c])) for c in ("model", "benchmark", "attack", "defense")]
            + [
                str(r["images"]),
                _pct(r["success"]),
                md_cell(str(r["norm"])),
                num(r["eps"], ".4f"),
                num(r["steps"], ".0f"),
                num(r["seconds"], ".2f") + (" (fit, once)" if r.get("universal") else ""),
                num(r["linf_max"], ".4f"),
                num(r["l2"], ".3f"),
                num(r["ssim"], ".3f"),
                num(r["psnr"], ".1f"),
                md_cell(", ".join(r["crafted_on"])),
            ]
            for r in rows
        ],
    )
    return lines


def _errors(groups: Sequence[tuple[str, str, int, str]]) -> list[str]:
    if not groups:
        return ["## Errors", "", "None.", ""]
    out = ["## Errors", "", "Failed items are retried by rerunning the same command.", ""]
    out += _table(
        ["stage", "benchmark", "count", "first example"],
        [[md_cell(s), md_cell(b), str(n), md_cell(example, limit=200)] for s, b, n, example in groups],
    )
    return [*out, ""]


def _examples(examples: Sequence[dict[str, Any]]) -> list[str]:
    out = [
        "## Example responses",
        "",
        "Model output is attacker-controlled; it is shown escaped and truncated.",
        "",
    ]
    rows = []
    for e in examples:
        j = e["judgement"]
        verdict = (
            "error" if j is None or j.get("error") else ("success" if j.get("success") else "no success")
        )
        if j is not None and j.get("refused"):
            verdict += ", refused"
        cell = (e["benchmark"], e["model"], e["attack"])
        rows.append(
            [md_cell(x) for x in (*cell, e["sample_id"], verdict)] + [md_cell(e["response"], limit=240)]
        )
    out += _table(["benchmark", "model", "attack", "sample", "verdict", "response"], rows)
    return [*out, ""]
