"""Shared pieces of the metric families: the :class:`Estimate` result, an index bootstrap and the
percentile they read their intervals from. Imports no other metrics module.

Private to :mod:`mmsafe.metrics`; :class:`Estimate` is re-exported from the package.
"""

from __future__ import annotations

import functools
import math
import random
import sys
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from operator import itemgetter
from typing import Any

__all__ = ["Estimate", "bootstrap_cell_counts", "bootstrap_indices", "check_bootstrap_args", "percentile"]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval.

    ``n`` is the number of items the estimate was computed from and ``method`` names how the
    interval was obtained (for example ``"percentile bootstrap, 2000 resamples, seed 0"``), so a
    reader of a report can tell a Wilson interval from a bootstrap one.
    """

    value: float
    lo: float
    hi: float
    n: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_vals: list[float], q: float) -> float:
    """The ``q`` quantile of ``sorted_vals`` (ascending), interpolating linearly between order statistics."""
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError("n_resamples must be ≥ 1")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")


def bootstrap_indices(
    strata: Sequence[Sequence[int]],
    stat: Callable[[list[int]], float | None],
    *,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> tuple[float, float, int]:
    """Percentile bootstrap of ``stat`` over item indices, resampling each stratum separately.

    Each resample draws ``len(s)`` indices with replacement from every stratum ``s`` (one stratum =
    ordinary bootstrap; several = stratified bootstrap, which keeps each group's size fixed) and
    passes their concatenation to ``stat``. Resamples where ``stat`` returns ``None`` (the statistic
    is undefined there, e.g. a class vanished) are dropped. Returns ``(lo, hi, n_used)``; raises
    ``ValueError`` when no resample gives a defined statistic. Deterministic for a given ``seed``
    (a private :class:`random.Random`; global state untouched); percentiles interpolate linearly
    between order statistics, as :func:`~mmsafe.metrics.bootstrap_interval` does.
    """
    check_bootstrap_args(n_resamples, confidence)
    rng = random.Random(seed)
    draws = _Draws(rng) if _draws_match() and all(len(s) < 2**32 for s in strata) else None
    values: list[float] = []
    for _ in range(n_resamples):
        idx: list[int] = []
        for s in strata:
            m = len(s)
            if draws is None:  # the readable form of what _Draws computes, draw for draw
                idx.extend(s[rng.randrange(m)] for _ in range(m))
            elif isinstance(s, range) and s.start == 0 and s.step == 1:
                idx.extend(draws.below(m, m))
            else:
                idx.extend(map(s.__getitem__, draws.below(m, m)))
        _keep(values, stat(idx))
    return _interval(values, confidence)


def bootstrap_cell_counts(
    cells: Sequence[int],
    n_cells: int,
    stat: Callable[[list[int]], float | None],
    *,
    n_resamples: int,
    seed: int,
    confidence: float,
) -> tuple[float, float, int]:
    """:func:`bootstrap_indices` over one stratum ``range(len(cells))`` for a statistic of category counts.

    ``cells[i]`` is item ``i``'s category, in ``range(n_cells)`` with ``n_cells <= 256`` (a cell of a confusion
    matrix of up to 16 labels, say; a category is a byte on the path without NumPy); ``stat`` gets a
    resample's count of each category, ``[#{i drawn : cells[i] == c} for c in range(n_cells)]``. The resamples,
    the dropped undefined ones, the percentiles, the error and the return value are those of
    ``bootstrap_indices([range(len(cells))], lambda idx: stat(<counts of idx>), ...)``, bit for bit: with NumPy
    the drawn indices stay a NumPy array (:meth:`_Draws.below_array`) and ``np.bincount`` counts their cells;
    without NumPy, or where :func:`_draws_match` fails, it is that very call.

    Speed: Cohen's κ (:func:`~mmsafe.metrics.cohen_kappa`) of 25,000 random binary pairs, 500 resamples, took
    0.73 s the way it was made before (``bootstrap_indices``, a bytes object of each resample's cells and
    ``bytes.count`` per cell; the old ``classification`` module loaded beside the new one) and 0.16 s through
    this function (4.5x), best of 3 each, the two timed alternately in one Python run on a 2-core machine shared
    with another job. About a third of what is left is MT19937 itself (``random_raw``); most of the rest is
    keeping the draws below ``m`` and gathering their cells.
    """
    check_bootstrap_args(n_resamples, confidence)
    if not 0 < n_cells <= 256:
        raise ValueError(f"n_cells must be in [1, 256]; got {n_cells}")
    n = len(cells)
    np = _numpy()
    if np is None or not _draws_match() or n >= 2**32:
        count = _cell_counter(cells, n_cells)
        return bootstrap_indices(
            [range(n)], lambda idx: stat(count(idx)),
            n_resamples=n_resamples, seed=seed, confidence=confidence,
        )  # fmt: skip
    codes = np.asarray(cells, dtype=np.uint8)
    draws = _Draws(random.Random(seed))
    values: list[float] = []
    block = max(1, _CELL_BLOCK // max(n, 1))  # resamples drawn at once: their draws follow one another
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        picked = codes[draws.below_array(n, n * b)].reshape(b, n)  # row r: the cells of resample start + r
        for row in picked:
            _keep(values, stat(np.bincount(row, minlength=n_cells).tolist()))
    return _interval(values, confidence)


_CELL_BLOCK = 1 << 14  # drawn indices bootstrap_cell_counts holds at once, at most (more only for one resample of more items): a report's peak memory does not grow with the items of a small cell


def _cell_counter(cells: Sequence[int], n_cells: int) -> Callable[[Sequence[int]], list[int]]:
    """``idx -> [#{i in idx : cells[i] == c} for c in range(n_cells)]`` (``n_cells <= 256``): each item's
    category is one byte, a resample's bytes are gathered by ``itemgetter`` and each category is counted by
    ``bytes.count`` (C loops: no Python step per item)."""
    table = bytes(cells)
    probes = [bytes([c]) for c in range(n_cells)]

    def count(idx: Sequence[int]) -> list[int]:
        picked = bytes(itemgetter(*idx)(table)) if len(idx) > 1 else bytes(map(table.__getitem__, idx))
        return [picked.count(c) for c in probes]

    return count


def _keep(values: list[float], v: float | None) -> None:
    if v is not None and not math.isnan(v):
        values.append(v)


def _interval(values: list[float], confidence: float) -> tuple[float, float, int]:
    if not values:
        raise ValueError("the statistic is undefined in every bootstrap resample")
    values.sort()
    alpha = (1 - confidence) / 2
    return percentile(values, alpha), percentile(values, 1 - alpha), len(values)


def _numpy() -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np


class _Draws:
    """The values ``rng.randrange(m)`` returns, ``count`` at a time, without a Python call per value.

    CPython's ``randrange(m)`` (``Random._randbelow_with_getrandbits``) takes ``k = m.bit_length()`` and draws
    ``getrandbits(k)`` until the value is below ``m``; for ``k <= 32`` each ``getrandbits(k)`` is the next 32-bit
    Mersenne Twister output shifted right by ``32 - k`` (``Modules/_randommodule.c``, ``random.py``). So the
    accepted values are the outputs, shifted, that are below ``m``, in order: this class reads the outputs in
    blocks and filters them. The outputs come from NumPy's MT19937 started from ``rng``'s state when NumPy is
    installed (the same generator; ``random_raw`` gives its 32-bit outputs), else from ``rng.getrandbits(32 * B)``
    (the next ``B`` outputs, least significant first). Exact only while ``rng`` is used through it alone (it
    reads ahead); :func:`_draws_match` checks the equivalence on this interpreter before it is relied on."""

    _BLOCK = 4096  # words read ahead at least: the buffer stays the size of one stratum

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._pos = 0
        try:
            import numpy as np
        except ImportError:
            self._np: Any = None
            self._words: Any = array("I")
            return
        state = rng.getstate()[1]
        self._np = np
        self._gen = np.random.MT19937()
        self._gen.state = {
            "bit_generator": "MT19937",
            "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": int(state[624])},
        }
        self._words = np.zeros(0, dtype=np.uint32)

    def _fill(self, need: int) -> None:
        """Replace the spent buffer by the next ``max(need, _BLOCK)`` outputs."""
        n = max(need, self._BLOCK)
        if self._np is not None:  # 32-bit words: half the memory traffic of random_raw's uint64
            self._words = self._gen.random_raw(n).astype(self._np.uint32)
        else:
            self._words = array("I", self._rng.getrandbits(32 * n).to_bytes(4 * n, "little"))
            if sys.byteorder == "big":
                self._words.byteswap()
        self._pos = 0

    def below(self, m: int, count: int) -> list[int]:
        """The next ``count`` values of ``randrange(m)`` (``0 < m < 2**32``)."""
        parts = self._parts(m, count)
        if self._np is not None:
            return self._np.concatenate(parts).tolist() if parts else []
        return [v for part in parts for v in part]

    def below_array(self, m: int, count: int) -> Any:
        """:meth:`below` as a NumPy array of unsigned integers, without a Python int per value (NumPy only)."""
        parts = self._parts(m, count)
        return self._np.concatenate(parts) if parts else self._np.zeros(0, dtype=self._np.uint32)

    def _parts(self, m: int, count: int) -> list[Any]:
        shift = 32 - m.bit_length()
        parts: list[Any] = []
        need = count
        while need:  # at most `need` outputs consumed, whatever they are: no read past the last value
            if self._pos == len(self._words):
                self._fill(need)
            end = min(self._pos + need, len(self._words))
            if self._np is not None:
                cand = self._words[self._pos : end] >> shift
                got = cand[cand < m]
            else:
                got = [c for c in [w >> shift for w in self._words[self._pos : end]] if c < m]
            self._pos = end
            parts.append(got)
            need -= len(got)
        return parts


@functools.cache
def _draws_match() -> bool:
    """Whether :class:`_Draws` gives what ``Random.randrange`` gives on this interpreter (checked once)."""
    if array("I").itemsize != 4:
        return False
    sizes = (1, 2, 3, 5, 8, 100, 1000, 4097, 65_536, 1_000_003, 2**31 + 11)
    ref, fast = random.Random(12345), _Draws(random.Random(12345))
    return all([ref.randrange(m) for _ in range(40)] == fast.below(m, 40) for m in sizes)


def bootstrap_method(n_resamples: int, seed: int, n_used: int, *, stratified: bool = False) -> str:
    kind = "stratified percentile bootstrap" if stratified else "percentile bootstrap"
    dropped = n_resamples - n_used
    note = f", {dropped} undefined resamples dropped" if dropped else ""
    return f"{kind}, {n_resamples} resamples, seed {seed}{note}"
