"""Markup pieces shared by ``report.html`` (:mod:`mmsafe.report.html`) and ``compare.html``
(:mod:`mmsafe.report.compare`): the stylesheet, numbers with their intervals, tables, chart panels.

Labels are escaped here with :func:`~mmsafe.report.page.esc`; a function that takes ``markup`` takes it already
built. A chart is drawn through :func:`chart`, which puts a sentence in its place when matplotlib (the ``report``
extra) is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from mmsafe.report.charts import ChartsUnavailable
from mmsafe.report.page import esc

__all__ = [
    "MAX_PANELS",
    "NO_CHARTS",
    "chart",
    "css",
    "diff",
    "kappa",
    "left_out",
    "none_first",
    "num",
    "panel",
    "pct",
    "q",
    "score",
    "table",
    "uniq",
]

MAX_PANELS = 12
NO_CHARTS = "charts need <code>pip install 'mmsafe[report]'</code>"


def css() -> str:
    """The report stylesheet (``report/assets/report.css``)."""
    return (resources.files("mmsafe.report") / "assets" / "report.css").read_text(encoding="utf-8")


def chart(draw: Callable[[], str]) -> str:
    """``draw()``'s ``<img>``, or the sentence that says how to get charts when matplotlib is missing."""
    try:
        return draw()
    except ChartsUnavailable:
        return f'<p class="nochart">{NO_CHARTS}</p>'


def q(value: float | None) -> str:
    """The colour class of a rate in [0, 1]: ``q0`` … ``q10`` (tenths, rounded half up), ``na`` without a value."""
    if value is None:
        return "na"
    return f"q{min(10, max(0, int(10 * value + 0.5)))}"


def pct(rate: Mapping[str, Any] | None, *, n: bool = True) -> str:
    """A rate as ``12.5% [3.1, 40.2] n=24`` markup (value, 95% interval, n), or a dash."""
    if not rate or rate.get("value") is None:
        return '<span class="na">–</span>'
    out = f'<span class="v">{100 * rate["value"]:.1f}%</span>'
    if rate.get("lo") is not None and rate.get("hi") is not None:
        out += f' <span class="ci">[{100 * rate["lo"]:.1f}, {100 * rate["hi"]:.1f}]</span>'
    if n and rate.get("n") is not None:
        k = f"{rate['k']}/" if rate.get("k") is not None else "n="
        out += f' <span class="n">{k}{rate["n"]}</span>'
    return out


def diff(d: Mapping[str, Any] | None, *, pp: bool = True) -> str:
    """A difference with its interval (percentage points, or plain numbers), or a dash."""
    value = None if not d else d.get("diff", d.get("value"))
    if value is None or d is None:
        return '<span class="na">–</span>'
    f = (lambda x: f"{100 * x:+.1f}") if pp else (lambda x: f"{x:+.2f}")
    out = f'<span class="v">{f(value)}</span>'
    if d.get("lo") is not None and d.get("hi") is not None:
        out += f' <span class="ci">[{f(d["lo"])}, {f(d["hi"])}]</span>'
    return out


def score(est: Mapping[str, Any] | None) -> str:
    """A score in [0, 1] (mean utility, protection score) with its interval, or a dash."""
    if not est or est.get("value") is None:
        return '<span class="na">–</span>'
    out = f'<span class="v">{est["value"]:.2f}</span>'
    if est.get("lo") is not None and est.get("hi") is not None:
        out += f' <span class="ci">[{est["lo"]:.2f}, {est["hi"]:.2f}]</span>'
    return out


def num(value: Any, fmt: str) -> str:
    return "–" if value is None else esc(format(value, fmt))


def table(head: Sequence[str], rows: Iterable[Sequence[str]], *, cls: str = "") -> str:
    """A table; ``head`` is escaped here, cells are markup already built with :func:`esc`."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table class="{esc(cls)}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def uniq(values: Iterable[str]) -> list[str]:
    """``values`` without repeats, in first-seen order."""
    return list(dict.fromkeys(values))


def none_first(values: Iterable[str]) -> list[str]:
    """:func:`uniq`, with the baseline ``none`` (no attack, no defense) moved to the front."""
    out = uniq(values)
    return sorted(out, key=lambda v: v != "none")


def left_out(n: int) -> str:
    return f'<p class="muted">{n} more chart(s) left out; the tables hold every number.</p>' if n > 0 else ""


def panel(title: str, body: str) -> str:
    return f'<figure class="panel"><figcaption>{title}</figcaption>{body}</figure>'


def kappa(k: Mapping[str, Any] | None) -> str:
    if not k or k.get("value") is None:
        return '<span class="na">– (undefined)</span>'
    out = f'<span class="v">{k["value"]:.2f}</span>'
    if k.get("lo") is not None and k.get("hi") is not None:
        out += f' <span class="ci">[{k["lo"]:.2f}, {k["hi"]:.2f}]</span>'
    return out
