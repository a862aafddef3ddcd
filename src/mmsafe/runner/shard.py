"""Deterministic shards of a run's grid: ``mmsafe run CONFIG --shard i/N`` runs one part into its own folder.

A run's work units are its records: model × benchmark × sample × attack × defense × judge, each named by a hash
of its specs and sample id (:func:`~mmsafe.runner.run.record_key`). A shard takes the units of the samples whose
(benchmark spec key, sample id) hash falls to it (:meth:`Shard.owns`): a sample's every model, attack, defense and
judge stay together, so a shard makes each of its generations once, judges it with every judge (as one process
does), and the N shards partition the grid whatever the machine, the order or the resume point. The cut is made
after ``limit`` (the same first samples as one process, partitioned). :func:`mmsafe.runner.merge.merge` joins the
shards' stores into one and checks that every unit of the grid is there once.

What a shard changes: batches of a local model hold other samples than in one process (a padded batch moves a
model's logits in their last bits, as another ``batch_size`` would, and can flip a greedy near-tie: 8 of 96 records
of the tiny random model differed in ``benchmarks/scaling.py``); an attack that fits something once per run
(a universal adversarial image) fits it in every shard (the same fit: its corpus and seed do not depend on the
samples).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from mmsafe.errors import ConfigError

__all__ = ["Shard", "config_for_comparison"]

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: give i/N with 0 <= i < N (e.g. 0/4 … 3/4)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` (e.g. ``"2/8"``, as ``--shard`` takes it)."""
        m = _SPEC.match(text)
        if m is None:
            raise ConfigError(
                f"--shard {text!r}: give i/N, the shard's index from 0 and the number of shards"
            )
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, bench_key: str, sample_id: str) -> bool:
        """Whether the units of this benchmark's sample are this shard's."""
        return shard_of(bench_key, sample_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(bench_key: str, sample_id: str, count: int) -> int:
    """The shard (of ``count``) that holds the units of this benchmark's sample: a hash, never the order."""
    digest = hashlib.sha256(f"{bench_key}\x1f{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


#: config fields that change how a run goes, not what it computes (they may differ between shards)
RUNTIME_FIELDS = ("window",)


def config_for_comparison(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config (as stored: ``RunConfig.model_dump(mode="json")``) without the fields shards may differ in."""
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}
