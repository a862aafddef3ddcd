"""The charts of ``report.html`` and ``compare.html``: static SVG drawn by matplotlib, each returned as an
``<img src="data:image/svg+xml;base64,…">`` element.

Why matplotlib: the charts are rendered here, server-side, so the page needs no plotting script — its
``script-src`` stays a list of hashes, it stays small and it works offline; Plotly, Bokeh or Vega would inline
megabytes of JavaScript into every report. An SVG loaded as an image cannot run script or fetch anything, so a
label that holds markup is inert even inside the chart.

Rendering is thread-safe and leaves no global state behind: figures are :class:`matplotlib.figure.Figure`
objects drawn by the SVG/Agg canvases (never ``pyplot``), inside an ``rc_context`` that turns mathtext off
(``$`` in a category name stays a dollar sign), pins ``svg.hashsalt`` (the same summary gives the same bytes)
and keeps text as text (``svg.fonttype: none``: smaller files, selectable labels).

matplotlib is the ``report`` extra. Without it every function raises :class:`ChartsUnavailable` (an
``ImportError``), and the page shows a sentence in the chart's place (:func:`mmsafe.report.html.chart`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from mmsafe.report.page import esc

__all__ = ["Bar", "ChartsUnavailable", "Interval", "Point", "bars", "forest", "plane"]

#: Okabe & Ito's colour-blind-safe palette (their order, black left out)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")
_RC: dict[str, Any] = {
    "text.parse_math": False,
    "svg.hashsalt": "mmsafe-report",
    "svg.fonttype": "none",
    "font.size": 9,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
    "legend.frameon": False,
}


class ChartsUnavailable(ImportError):
    """matplotlib (the ``report`` extra) is not installed."""


@dataclass(frozen=True)
class Interval:
    """A value with its 95% interval (``lo``/``hi`` None when there is none)."""

    value: float
    lo: float | None = None
    hi: float | None = None

    @classmethod
    def of(cls, rate: dict[str, Any] | None) -> Interval | None:
        """From a ``Rate.as_dict()`` / difference dict (``value`` or ``diff``); None when it has no value."""
        if not rate:
            return None
        value = rate.get("value", rate.get("diff"))
        if value is None:
            return None
        return cls(float(value), _num(rate.get("lo")), _num(rate.get("hi")))

    def flipped(self) -> Interval:
        """1 − this (a rate of the complement: the interval's ends swap)."""
        return Interval(
            1 - self.value, None if self.hi is None else 1 - self.hi, None if self.lo is None else 1 - self.lo
        )

    def err(self) -> tuple[float, float]:
        """Distances below and above the value, for ``errorbar`` (0 where an end is missing)."""
        lo = self.value if self.lo is None else self.lo
        hi = self.value if self.hi is None else self.hi
        return max(0.0, self.value - lo), max(0.0, hi - self.value)


class ChartStore:
    """Charts drawn before, by what they were drawn from: a chart is a pure function of its arguments, so one
    whose arguments are the same (the same repr: strings, floats written exactly, the dataclasses above) is
    its ``<img>`` from last time. :func:`kept` makes one current; :attr:`used` is what this report drew or reused,
    the set to keep for the next one."""

    def __init__(self, known: dict[str, str] | None = None) -> None:
        self.known = dict(known or {})
        self.used: dict[str, str] = {}
        self._version: str | None = None

    def matplotlib(self) -> str:
        """The installed matplotlib's version (part of every key), read from its metadata: importing it costs
        half a second that a report whose charts are all known does not spend. ``ImportError`` without it."""
        if self._version is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                self._version = version("matplotlib")
            except PackageNotFoundError as exc:
                raise ImportError("matplotlib is not installed") from exc
        return self._version


_CHARTS: ContextVar[ChartStore | None] = ContextVar("mmsafe_charts", default=None)
_F = TypeVar("_F", bound=Callable[..., str])


@contextmanager
def kept(store: ChartStore) -> Iterator[ChartStore]:
    """Within the block, the charts below are looked up in ``store`` before they are drawn."""
    token = _CHARTS.set(store)
    try:
        yield store
    finally:
        _CHARTS.reset(token)


def _kept(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        store = _CHARTS.get()
        if store is None:
            return fn(*args, **kwargs)
        try:
            version = store.matplotlib()
        except ImportError:
            return fn(*args, **kwargs)  # raises ChartsUnavailable
        from mmsafe.report import code_version

        what = (fn.__name__, version, code_version(), args, sorted(kwargs.items()))
        key = hashlib.sha256(repr(what).encode()).hexdigest()
        img = store.known.get(key)
        if img is None:
            img = fn(*args, **kwargs)
        store.used[key] = img
        return img

    return cast("_F", wrapper)


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class Bar:
    """One series of a grouped bar chart: its name and one interval (or None) per group."""

    name: str
    values: Sequence[Interval | None]


@dataclass(frozen=True)
class Point:
    """One labelled point of the safety–utility plane."""

    label: str
    x: Interval
    y: Interval
    baseline: bool = False
    #: index into the palette, so one defense has one colour in every panel
    colour: int = 0


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ChartsUnavailable("charts need matplotlib: pip install 'mmsafe[report]'") from e
    return Figure(figsize=(width, height), layout="constrained")


def _rc() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise ChartsUnavailable("charts need matplotlib: pip install 'mmsafe[report]'") from e
    return matplotlib.rc_context(cast(Any, _RC))


def _img(fig: Any, alt: str, css: str = "chart") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "mmsafe"})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="{esc(css)}" src="data:image/svg+xml;base64,{data}" alt="{esc(alt)}">'


def short(label: str, limit: int = 44) -> str:
    """A tick or legend label cut to ``limit`` characters (the page's caption and tables hold the full text)."""
    label = " ".join(str(label).split())
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _title(ax: Any, title: str) -> None:
    """A chart title, left out when empty (the page's caption names the panel)."""
    if title:
        ax.set_title(title, loc="left")


def _pct_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


@_kept
def bars(title: str, groups: Sequence[str], series: Sequence[Bar], *, xlabel: str, alt: str) -> str:
    """Horizontal grouped bars: one row per group (e.g. category, read top to bottom), one bar per series
    (e.g. attack) with its interval as an error bar; a missing value is left blank. x runs 0–100%."""
    with _rc():
        k = max(1, len(series))
        height = 0.9 + len(groups) * (0.1 * k + 0.12)
        fig = _figure(7.2, height)
        ax = fig.add_subplot()
        step = 0.8 / k
        for i, s in enumerate(series):
            ys: list[float] = []
            xs: list[float] = []
            errs: tuple[list[float], list[float]] = ([], [])
            for g, iv in enumerate(s.values):
                if iv is None:
                    continue
                ys.append(g - 0.4 + step * (i + 0.5))
                xs.append(iv.value)
                lo, hi = iv.err()
                errs[0].append(lo)
                errs[1].append(hi)
            colour = PALETTE[i % len(PALETTE)]
            ax.barh(ys, xs, height=step * 0.9, color=colour, label=short(s.name, 28))
            ax.errorbar(
                xs,
                ys,
                xerr=errs,
                fmt="o",
                ms=3,
                mfc=colour,
                mec="#333333",
                mew=0.5,
                ecolor="#333333",
                elinewidth=0.8,
                capsize=2,
            )
        ax.set_yticks(range(len(groups)), [short(g) for g in groups])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        _pct_axis(ax.xaxis)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(short(xlabel, 80))
        _title(ax, title)
        if len(series) > 1:
            fig.legend(loc="outside upper center", ncols=min(4, len(series)), fontsize=8)
        return _img(fig, alt)


@_kept
def plane(title: str, points: Sequence[Point], *, xlabel: str, ylabel: str, alt: str) -> str:
    """Safety (y) against its price (x), both 0–100% with interval error bars, one labelled point each;
    the undefended baseline drawn as a hollow square."""
    with _rc():
        fig = _figure(4.6, 3.9)
        ax = fig.add_subplot()
        for p in points:
            colour = "#444444" if p.baseline else PALETTE[p.colour % len(PALETTE)]
            xe, ye = p.x.err(), p.y.err()
            ax.errorbar(
                [p.x.value],
                [p.y.value],
                xerr=[[xe[0]], [xe[1]]],
                yerr=[[ye[0]], [ye[1]]],
                fmt="s" if p.baseline else "o",
                color=colour,
                mfc="white" if p.baseline else colour,
                ms=7,
                elinewidth=1,
                capsize=3,
                label=short(p.label, 28),
            )
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        _pct_axis(ax.xaxis)
        _pct_axis(ax.yaxis)
        ax.set_xlabel(short(xlabel, 80))
        ax.set_ylabel(short(ylabel, 50))
        _title(ax, title)
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)
        return _img(fig, alt, "chart small")


@_kept
def forest(
    title: str, rows: Sequence[tuple[str, Interval]], *, xlabel: str, alt: str, pct: bool = True
) -> str:
    """A forest plot: one difference per row with its interval, and a line at zero (no change)."""
    with _rc():
        fig = _figure(7.2, 0.9 + 0.3 * len(rows))
        ax = fig.add_subplot()
        for y, (_, iv) in enumerate(rows):
            lo, hi = iv.err()
            crosses = (iv.lo is None or iv.lo <= 0) and (iv.hi is None or iv.hi >= 0)
            colour = "#777777" if crosses else (PALETTE[5] if iv.value > 0 else PALETTE[0])
            ax.errorbar([iv.value], [y], xerr=[[lo], [hi]], fmt="D", color=colour, ms=5, capsize=3)
        ax.axvline(0, color="#333333", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [short(label, 64) for label, _ in rows])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        if pct:
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{100 * v:+.0f} pp"))
        ax.set_xlabel(short(xlabel, 80))
        _title(ax, title)
        return _img(fig, alt)


@_kept
def cost(
    title: str,
    labels: Sequence[str],
    seconds: Sequence[float | None],
    calls: Sequence[float | None],
    *,
    alt: str,
) -> str:
    """Two side-by-side horizontal bar panels: seconds per item and model calls per item, one row per label."""
    with _rc():
        from matplotlib.ticker import MaxNLocator

        fig = _figure(7.2, 0.9 + 0.28 * len(labels))
        left, right = fig.subplots(1, 2, sharey=True)
        ys = list(range(len(labels)))
        for ax, values, name, colour in (
            (left, seconds, "seconds per item", PALETTE[0]),
            (right, calls, "model calls per item", PALETTE[1]),
        ):
            ax.barh(ys, [0.0 if v is None else v for v in values], color=colour, height=0.6)
            ax.set_xlabel(name)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.grid(axis="y", visible=False)
        left.set_yticks(ys, [short(label) for label in labels])
        left.invert_yaxis()
        _title(left, title)
        return _img(fig, alt)
