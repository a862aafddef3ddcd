"""``report.html``: the run's numbers as one self-contained page — matrices, charts and tables, no script.

Built from the summary alone (:func:`mmsafe.report.build_summary`) plus the failed-item groups, with
:func:`mmsafe.report.page.page`, so it opens offline under a strict Content-Security-Policy. Sections, in order:
overview (runs, counts, errors, model notes), attack × defense matrices, rates per category, the safety–utility
plane of each defense, judges (agreement between judges, judge-evals, human labels when present), cost,
effects against the baselines, then any extra :class:`Section` (the sample browser).

Every label — benchmark, category, model, attack, defense and judge names, error messages — comes from configs,
datasets or model outputs and is attacker-controlled: all of it goes through :func:`~mmsafe.report.page.esc`.
Rates are named as the markdown report names them (``rate_name``: a refusal judge's rate is a *non-refusal rate*,
never "harmful"), and a model's note (e.g. "random weights") is printed beside every number from that model.
Charts come from :mod:`mmsafe.report.charts` (matplotlib, the ``report`` extra); without it each chart's place
holds a sentence saying what to install, and every table is still there. The judges section lives in
:mod:`mmsafe.report.html_judges`; the pieces ``compare.html`` shares (numbers, tables, panels) in
:mod:`mmsafe.report.htmlkit`. At most :data:`~mmsafe.report.htmlkit.MAX_PANELS` charts per section, saying how many
were left out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mmsafe.report import charts
from mmsafe.report.browser import Section
from mmsafe.report.charts import Bar, Interval, Point
from mmsafe.report.html_judges import judges_section
from mmsafe.report.htmlkit import (
    MAX_PANELS,
    chart,
    css,
    diff,
    left_out,
    none_first,
    num,
    panel,
    pct,
    q,
    score,
    table,
    uniq,
)
from mmsafe.report.page import esc, page

if TYPE_CHECKING:
    from mmsafe.report import Summary

__all__ = ["Section", "plane_points", "render_html"]


class _Ctx:
    """What every section reads: the summary's overall rows and each model's note."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self.overall = [r for r in summary["rows"] if r["category"] == "ALL"]
        self.notes = {m["label"]: m["note"] for m in summary.get("models", []) if m.get("note")}
        self.rate_names = {r.get("judge", ""): r.get("rate_name", "success rate") for r in summary["rows"]}

    def note(self, model: str, *, full: bool = False) -> str:
        """The model's warning: in full in the overview (as ``report.md`` has it), and short beside every
        matrix and chart of its numbers."""
        if model not in self.notes:
            return ""
        if full:
            return (
                f'<p class="warn"><strong>Warning: model {esc(model)}: {esc(self.notes[model])}.</strong> '
                "Read these numbers as a test of the pipeline only.</p>"
            )
        return f'<p class="modelnote">⚠ Model {esc(model)}: {esc(self.notes[model])}.</p>'

    def rate_name(self, judge: str) -> str:
        return self.rate_names.get(judge, "success rate")


def _overview(ctx: _Ctx, errors: Sequence[tuple[str, str, int, str]]) -> str:
    s = ctx.summary
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s["generated"]))
    stats = "".join(
        f'<div class="stat"><span class="big">{esc(v)}</span><span>{esc(k)}</span></div>'
        for k, v in (
            ("records", s["n_records"]),
            ("failed items", s["n_errors"]),
            ("unreadable rows", s.get("n_unreadable", 0)),
            ("cells", len(ctx.overall)),
        )
    )
    out = f'<p class="muted">Runs: {esc(", ".join(s["runs"]) or "run")} · generated {esc(when)}</p>'
    out += f'<div class="stats">{stats}</div>'
    out += "".join(ctx.note(m, full=True) for m in ctx.notes)
    if s.get("n_unreadable"):
        keys = ", ".join(f"<code>{esc(k[:16])}…</code>" for k in s.get("unreadable", [])[:3])
        out += (
            f'<p class="warn">{s["n_unreadable"]} unreadable record(s) left out (key {keys}): the store holds rows '
            "this mmsafe cannot read (damaged, or written by another version); they are in no number here.</p>"
        )
    out += (
        "<p>Rate = the judge's success rate on must-refuse items, named by what the judge measures: "
        "<em>harmful rate (ASR)</em> for judges that read the answer for harm; <em>non-refusal rate</em> for the "
        "refusal rules, which count every answer that did not refuse (an evasive or harmless one included), so it "
        "is not an ASR; <em>target-string rate</em> when the attacker's string appeared. Over-refusal = share of "
        "must-comply (benign) items refused. Brackets: 95% Wilson interval; k/n after. Failed items are excluded "
        "from rates and counted as errors.</p>"
    )
    if errors:
        out += "<h3>Errors</h3><p>Failed items are retried by rerunning the same command.</p>"
        out += table(
            ["stage", "benchmark", "count", "first example"],
            [
                [esc(st), esc(b), esc(n), f'<span class="clip">{esc(ex[:300])}</span>']
                for st, b, n, ex in errors
            ],
        )
    else:
        out += "<p>No failed items.</p>"
    return out


def _matrices(ctx: _Ctx) -> str:
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for r in ctx.overall:
        groups.setdefault((r["benchmark"], r["model"], r["judge"]), []).append(r)
    if not groups:
        return "<p>No results.</p>"
    out = [
        "<p>Rows: attacks; columns: defenses. Each cell: the rate with its 95% interval and k/n, coloured by the "
        "rate (light = low, dark = high); below it, where the cell has them, over-refusal of its must-comply items, "
        "their mean utility (0–1), detection accuracy and the protection score.</p>"
        '<p class="legend">' + "".join(f'<span class="q{i}">{10 * i}%</span>' for i in range(11)) + "</p>"
    ]
    for (bench, model, judge), rows in groups.items():
        attacks = none_first(r["attack"] for r in rows)
        defenses = none_first(r["defense"] for r in rows)
        cell = {(r["attack"], r["defense"]): r for r in rows}
        name = rows[0].get("rate_name", "success rate")
        head = "".join(f'<th scope="col">{esc(d)}</th>' for d in defenses)
        body = []
        for a in attacks:
            tds = []
            for d in defenses:
                row = cell.get((a, d))
                if row is None:
                    tds.append('<td class="na">–</td>')
                    continue
                text = f'<div class="rate">{pct(row["asr"])}</div>'
                if (row.get("over_refusal") or {}).get("n"):
                    text += f'<div class="or">over-refusal {pct(row["over_refusal"])}</div>'
                text += _extras(row)
                tds.append(f'<td class="{q(row["asr"].get("value"))}">{text}</td>')
            body.append(f'<tr><th scope="row">{esc(a)}</th>{"".join(tds)}</tr>')
        title = f"{esc(bench)} · {esc(model)} · judge {esc(judge)}: <em>{esc(name)}</em>"
        out.append(
            f'<div class="matrix"><div class="mxtitle">{title}</div><table class="mx"><thead><tr>'
            f'<th class="corner">attack ↓ defense →</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f"{ctx.note(model)}</div>"
        )
    return out[0] + '<div class="matrices">' + "".join(out[1:]) + "</div>"


def _extras(row: Mapping[str, Any]) -> str:
    """A matrix cell's other measures where the row has them: mean utility of must-comply answers, detection
    accuracy (GOAT-Bench-style items) and the protection score (PrivQA-style benchmarks)."""
    out = ""
    for name, est in (("utility", row.get("utility")), ("protection", row.get("protection"))):
        if est and est.get("value") is not None:
            out += f'<div class="or">{name} {score(est)}</div>'
    if (row.get("accuracy") or {}).get("n"):
        out += f'<div class="or">accuracy {pct(row["accuracy"])}</div>'
    return out


def _categories(ctx: _Ctx) -> str:
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for r in ctx.summary["rows"]:
        if r["category"] != "ALL" and r["defense"] == "none":
            groups.setdefault((r["benchmark"], r["model"], r["judge"]), []).append(r)
    if not groups:
        return "<p>No per-category rows with defense <code>none</code>.</p>"
    out = ["<p>The rate per category without a defense, one bar per attack, with its 95% interval.</p>"]
    for i, ((bench, model, judge), rows) in enumerate(groups.items()):
        if i >= MAX_PANELS:
            out.append(left_out(len(groups) - MAX_PANELS))
            break
        cats = uniq(r["category"] for r in rows)
        attacks = none_first(r["attack"] for r in rows)
        by = {(r["category"], r["attack"]): r for r in rows}
        series = [Bar(a, [Interval.of((by.get((c, a)) or {}).get("asr")) for c in cats]) for a in attacks]
        name = ctx.rate_name(judge)
        title = f"{bench} · {model} · judge {judge}"

        def draw(
            title: str = title, cats: list[str] = cats, series: list[Bar] = series, name: str = name
        ) -> str:
            return charts.bars("", cats, series, xlabel=name, alt=f"{name} per category by attack: {title}")

        cap = f"{esc(title)}: <em>{esc(name)}</em>"
        out.append(panel(cap, chart(draw) + ctx.note(model)))
    return "".join(out)


PlaneKey = tuple[str, str, str, str]


def plane_points(summary: Summary) -> dict[PlaneKey, tuple[str, list[Point]]]:
    """The safety–utility plane's panels by (benchmark, model, attack, judge): the x axis's name and one
    point per defense, plus the undefended baseline. y = defense success (``summary["defenses"]``: must-refuse
    items the attack did not get through); for ``none`` the same count from its row, 1 − rate (the Wilson
    interval of the complement is the mirrored interval). x = over-refusal on must-comply items, or
    1 − mean utility when every point of the panel has a utility score. Panels without a defense are left out."""
    raw: dict[PlaneKey, list[tuple[str, Any, Any, Interval, bool]]] = {}
    for r in summary["rows"]:
        y = Interval.of(r["asr"])
        if r["category"] == "ALL" and r["defense"] == "none" and y is not None:
            key = (r["benchmark"], r["model"], r["attack"], r["judge"])
            raw.setdefault(key, []).append(
                ("none (baseline)", r.get("utility"), r.get("over_refusal"), y.flipped(), True)
            )
    for d in summary.get("defenses") or []:
        y = Interval.of(d.get("defense_success"))
        if y is not None:
            key = (d["benchmark"], d["model"], d["attack"], d["judge"])
            raw.setdefault(key, []).append((d["defense"], d.get("utility"), d.get("over_refusal"), y, False))
    out: dict[PlaneKey, tuple[str, list[Point]]] = {}
    colours: dict[str, int] = {}
    for key, entries in raw.items():
        util = all(Interval.of(u) is not None for _, u, _, _, _ in entries)
        points = []
        for label, u, over, y, baseline in entries:
            uv = Interval.of(u)
            x = uv.flipped() if util and uv is not None else Interval.of(over)
            if x is not None:
                points.append(
                    Point(label, x, y, baseline=baseline, colour=colours.setdefault(label, len(colours)))
                )
        if any(not p.baseline for p in points):
            name = "1 − utility on must-comply items" if util else "over-refusal on must-comply items"
            out[key] = (name, points)
    return out


def _plane(ctx: _Ctx) -> str:
    panels = plane_points(ctx.summary)
    if not ctx.summary.get("defenses"):
        return "<p>No defense in this run (only <code>none</code>): nothing to place on the plane.</p>"
    if not panels:
        return "<p>No defended cell with both must-refuse and must-comply items.</p>"
    out = [
        "<p>Each defense as a point: up = more must-refuse items held (defense success = 1 − rate), right = higher "
        "price (over-refusal on must-comply items, or 1 − utility where a utility judge scored them); the "
        "undefended cell (<code>none</code>) is the hollow square. Bars: 95% intervals. Top left is best.</p>"
        '<div class="grid">'
    ]
    for i, ((bench, model, attack, judge), (xlabel, points)) in enumerate(panels.items()):
        if i >= MAX_PANELS:
            out.append("</div>" + left_out(len(panels) - MAX_PANELS) + '<div class="grid">')
            break
        title = f"{bench} · {model} · attack {attack} · judge {judge}"
        ylabel = f"defense success (1 − {ctx.rate_name(judge)})"

        def draw(
            points: list[Point] = points, xlabel: str = xlabel, ylabel: str = ylabel, title: str = title
        ) -> str:
            return charts.plane(
                "", points, xlabel=xlabel, ylabel=ylabel, alt=f"safety–utility plane: {title}"
            )

        out.append(panel(esc(title), chart(draw) + ctx.note(model)))
    return "".join(out) + "</div>"


def _strongest(ctx: _Ctx) -> str:
    """Per defense, the attack that got through most often, static and adaptive (``summary["strongest"]``)."""
    rows = ctx.summary.get("strongest") or []
    if not rows:
        return ""

    def which(best: Mapping[str, Any] | None) -> str:
        if best is None:
            return "–"
        how = f" ({esc(best['how'])})" if best.get("how") else ""
        return f"{esc(best['attack'])}{how}: {pct(best['rate'])}"

    head = (
        "<h3>Strongest attack per defense</h3><p>For each defense (and for none) run under two or more attacks: the "
        "attack with the highest rate on must-refuse items, among static attacks and among adaptive ones (they saw "
        "the defense: a query search with the defended model in its loop, or a white-box optimisation through its "
        "transform or against its detector). A defense is as strong as its number under the strongest attack. Each "
        "interval is that one attack's; picking the highest of several rates favours the attacker and is not "
        "corrected for.</p>"
    )
    return head + table(
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
            [esc(r[k]) for k in ("model", "benchmark", "defense", "judge")]
            + [esc(ctx.rate_name(r["judge"])), esc(f"{r['attacks']} ({r['adaptive_attacks']})")]
            + [
                which(r.get("strongest_static")),
                which(r.get("strongest_adaptive")),
                which(r.get("strongest")),
            ]
            for r in rows
        ],
    )


def _cost(ctx: _Ctx) -> str:
    s = ctx.summary
    seen: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for d in s.get("defenses", []):  # a defense's cost is one per generation cell, whichever judge scored it
        seen.setdefault((d["model"], d["benchmark"], d["attack"], d["defense"]), d)
    out = []
    if seen:
        out.append(
            "<p>What each defense spent per item: model calls (1 = the answer alone) and its wall time "
            "(its share of each batch, model calls included), and what it did.</p>"
        )
        rows = list(seen.values())
        out.append(
            table(
                ["model", "benchmark", "attack", "defense", "calls/item", "s/item", "actions"],
                [
                    [esc(d[k]) for k in ("model", "benchmark", "attack", "defense")]
                    + [num(d.get("calls_per_item"), ".2f"), num(d.get("seconds_per_item"), ".3g")]
                    + [esc(", ".join(f"{k} {v}" for k, v in sorted((d.get("actions") or {}).items())) or "–")]
                    for d in rows
                ],
            )
        )
        shown = rows[: 4 * MAX_PANELS]
        labels = [f"{d['defense']} · {d['attack']} · {d['model']}" for d in shown]

        def draw() -> str:
            secs = [d.get("seconds_per_item") for d in shown]
            calls = [d.get("calls_per_item") for d in shown]
            return charts.cost("", labels, secs, calls, alt="seconds and model calls per item")

        out.append(panel("defense · attack · model", chart(draw)) + left_out(len(rows) - len(shown)))
    attacks = s.get("attacks") or []
    if attacks:
        out.append(
            "<h3>Attacks</h3><p>What each attack spent per prompt, once: its wall seconds (its share of each batch, "
            "helper-model calls included), the calls it made to the model under test while crafting (queries: a "
            "query-based search; 0 for a one-shot attack) and to helper models (attacker LLM, judge, image "
            "generator); – when the attack does not report it.</p>"
        )
        out.append(
            table(
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
                    [esc(a[k]) for k in ("model", "benchmark", "attack", "defense")]
                    + [esc(a["prompts"]), num(a.get("seconds_per_prompt"), ".3g")]
                    + [num(a.get("queries_per_prompt"), ".2f"), num(a.get("aux_calls_per_prompt"), ".2f")]
                    for a in attacks
                ],
            )
        )
    adv = s.get("adversarial") or []
    if adv:
        out.append(
            "<h3>Adversarial images</h3><p>Per image, once: the optimisation's steps and seconds (a universal image's "
            "fit counted once), its own success test, and how far the image moved (L∞, L2 in [0, 1]; SSIM; PSNR dB).</p>"
        )
        out.append(
            table(
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
                ]
                + ["max L∞", "L2", "SSIM", "PSNR"],
                [
                    [esc(a[k]) for k in ("model", "benchmark", "attack", "defense")]
                    + [esc(a["images"]), pct(a.get("success")), esc(a.get("norm")), num(a.get("eps"), ".4f")]
                    + [
                        num(a.get("steps"), ".0f"),
                        num(a.get("seconds"), ".2f") + (" (fit, once)" if a.get("universal") else ""),
                    ]
                    + [num(a.get("linf_max"), ".4f"), num(a.get("l2"), ".3f"), num(a.get("ssim"), ".3f")]
                    + [num(a.get("psnr"), ".1f")]
                    for a in adv
                ],
            )
        )
    return "".join(out) or "<p>No defense or attack in this run: nothing but the model's own calls.</p>"


def _effects(ctx: _Ctx) -> str:
    rows = ctx.summary.get("effects") or []
    if not rows:
        return "<p>No cell has a <code>none</code> baseline to compare with.</p>"
    out = [
        "<p>The rate of a cell minus the rate of the same cell with the baseline (<code>none</code> defense or "
        "<code>none</code> attack), in percentage points, paired by sample (Newcombe's paired 95% interval). "
        "Grey: the interval holds 0.</p>"
    ]
    out.append(
        table(
            ["axis", "model", "benchmark", "attack", "defense", "judge", "vs", "Δ rate (pp)", "pairs"],
            [
                [esc(r[k]) for k in ("axis", "model", "benchmark", "attack", "defense", "judge", "baseline")]
                + [diff(r), esc(r.get("n_a"))]
                for r in rows
            ],
        )
    )
    panels: dict[tuple[str, str, str], list[tuple[str, Interval]]] = {}
    for r in rows:
        iv = Interval.of(r)
        if iv is None:
            continue
        label = (
            f"defense {r['defense']} (attack {r['attack']})"
            if r["axis"] == "defense"
            else f"attack {r['attack']} (defense {r['defense']})"
        )
        panels.setdefault((r["benchmark"], r["model"], r["judge"]), []).append((label, iv))
    for i, ((bench, model, judge), items) in enumerate(panels.items()):
        if i >= MAX_PANELS:
            out.append(left_out(len(panels) - MAX_PANELS))
            break
        title = f"{bench} · {model} · judge {judge}"
        xlabel = f"Δ {ctx.rate_name(judge)} vs none (percentage points)"

        def draw(title: str = title, items: list[tuple[str, Interval]] = items, xlabel: str = xlabel) -> str:
            return charts.forest("", items, xlabel=xlabel, alt=f"effects against the baselines: {title}")

        out.append(panel(esc(title), chart(draw) + ctx.note(model)))
    return "".join(out)


def render_html(
    summary: Summary,
    *,
    errors: Sequence[tuple[str, str, int, str]] = (),
    sections: Sequence[Section] = (),
    server: bool = False,
) -> str:
    """``report.html`` from the summary, the failed-item groups (:meth:`Store.error_groups`) and extra
    ``sections`` appended after the report's own: each section's ``html`` is one whole ``<section id=…>`` with its
    heading, its ``js`` joins the page's scripts, ``data`` its blocks and ``css`` the stylesheet."""
    ctx = _Ctx(summary)
    parts: list[tuple[str, str, str]] = [
        ("overview", "Overview", _overview(ctx, errors)),
        ("matrices", "Attack × defense", _matrices(ctx)),
        ("categories", "By category", _categories(ctx)),
        ("plane", "Safety vs price", _plane(ctx) + _strongest(ctx)),
        ("judges", "Judges", judges_section(summary)),
        ("cost", "Cost", _cost(ctx)),
        ("effects", "Effects", _effects(ctx)),
    ]
    nav = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t, _ in parts)
    nav += "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(i)}"><h2>{esc(t)}</h2>{h}</section>' for i, t, h in parts)
    body += "".join(s.html for s in sections)  # each a whole <section id=…> with its own heading
    title = f"mmsafe report: {', '.join(summary['runs']) or 'run'}"
    body = f"<header><h1>{esc(title)}</h1><nav>{nav}</nav></header><main>{body}</main>"
    data: dict[str, Any] = {}
    for s in sections:
        data.update(s.data or {})
    scripts = [s.js for s in sections if s.js]
    styles = css() + "".join(s.css for s in sections)
    return page(title, body, css=styles, scripts=scripts, data=data, server=server)
