"""``mmsafe merge OUT SHARD_DIRS…``: the stores of a run's shards joined into one, checked unit by unit.

Each folder must hold one shard of one run (``mmsafe run CONFIG --shard i/N``, :mod:`mmsafe.runner.shard`). Before
anything is written, the merge checks:

- every folder is a shard, all of the same N and of the same config (the fields that change how a run goes, not
  what it computes, may differ: :data:`~mmsafe.runner.shard.RUNTIME_FIELDS`); a config that differs is refused,
  naming the fields;
- each shard index is given once, and all N are there (``allow_missing``: a partial merge, said so);
- the grid is expanded from the config, as the runner expands it (the benchmarks' data must be readable here), and
  each unit (record key) must be in the shard that owns it and in no other: a unit in two shards, or in a shard
  that does not own it, is refused; a unit that no shard has is missing (refused unless ``allow_missing``; failed
  units are there: they are recorded, and a rerun of their shard, or of the merged folder, retries them);
- when ``out`` already holds a merge (merging again is how the results of resumed shards come in), a unit it
  holds is kept when the shard's is the same record, replaced when the one held had failed, and refused when both
  completed with different records (a shard run again with other settings).

Then every shard's records (as stored), images, cached responses, human labels and judge evaluations are copied in,
``out`` gets one run entry (the config, the earliest start, the latest finish, the shards), and its outputs are
written: the report of the merged store is the report of a one-process run of the config (tested on a grid of
scripted models, timings aside). Merging the same shards again changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from mmsafe.config import RunConfig
from mmsafe.errors import ConfigError
from mmsafe.registry import Registry
from mmsafe.runner.run import Runner, record_key
from mmsafe.runner.shard import Shard, config_for_comparison, shard_of
from mmsafe.store.lock import RunLock
from mmsafe.store.sqlite import Store

__all__ = ["MergeResult", "merge"]

log = logging.getLogger(__name__)


@dataclass
class MergeResult:
    out_dir: Path
    shards: int
    #: units of the grid, and how many of them are in the merged store
    planned: int = 0
    present: int = 0
    #: records written now; records already in ``out`` and the same; failed ones there replaced
    written: int = 0
    unchanged: int = 0
    replaced: int = 0
    #: units no shard has (only with ``allow_missing``), and shards not given
    missing: int = 0
    missing_shards: list[str] = field(default_factory=list)
    #: records of no unit of the grid (rows of samples since dropped from a benchmark's data), merged as they are
    outside: int = 0
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _Part:
    path: Path
    store: Store
    shard: Shard
    run: dict[str, Any]


def _part(path: Path) -> _Part:
    store = Store.open_existing(path)
    try:
        runs = [r for r in store.runs() if r.get("shard")]
        held = store.get_meta("shard")
        if not runs or held in (None, "all", "merged"):
            raise ConfigError(
                f"{path} holds no shard of a run (a shard is made by `mmsafe run CONFIG --shard I/N`)"
            )
        if len(runs) > 1:
            raise ConfigError(f"{path} holds {len(runs)} shard runs; a shard folder holds one")
        shard = Shard.parse(str(runs[0]["shard"]))
        if str(shard) != held:
            raise ConfigError(f"{path}: its run says shard {shard}, its store {held}")
        return _Part(path, store, shard, runs[0])
    except BaseException:
        store.close()
        raise


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def merge(
    out_dir: str | Path,
    shard_dirs: Sequence[str | Path],
    *,
    registry: Registry | None = None,
    allow_missing: bool = False,
) -> MergeResult:
    """Merge the run folders ``shard_dirs`` (the shards of one run) into ``out_dir``; see the module docstring."""
    from mmsafe.report import write_outputs

    if not shard_dirs:
        raise ConfigError("merge needs the shard folders to merge")
    out = Path(out_dir)
    parts: list[_Part] = []
    try:
        for d in shard_dirs:
            if Path(d).resolve() == out.resolve():
                raise ConfigError(f"{d} is the output folder; merge into another folder")
            parts.append(_part(Path(d)))
        first = parts[0]
        count = first.shard.count
        config = config_for_comparison(first.run.get("config") or {})
        by_index: dict[int, _Part] = {}
        for p in parts:
            if p.shard.count != count:
                raise ConfigError(
                    f"{p.path} is shard {p.shard}, {first.path} is shard {first.shard}: not one split"
                )
            diff = _differences(config, config_for_comparison(p.run.get("config") or {}))
            if diff:
                raise ConfigError(
                    f"{p.path} and {first.path} are shards of different configs (they differ in "
                    f"{', '.join(diff)}); merge the shards of one config"
                )
            if p.shard.index in by_index:
                raise ConfigError(f"shard {p.shard} given twice: {by_index[p.shard.index].path} and {p.path}")
            by_index[p.shard.index] = p
        result = MergeResult(out_dir=out, shards=count)
        result.missing_shards = [f"{i}/{count}" for i in range(count) if i not in by_index]
        if result.missing_shards and not allow_missing:
            raise ConfigError(
                f"shard(s) {', '.join(result.missing_shards)} not given; give every shard, or --allow-missing "
                "for a partial merge"
            )
        run_config = RunConfig.model_validate(first.run["config"])
        owner = _plan(run_config, count, registry)
        result.planned = len(owner)
        held: dict[str, int] = {}
        for p in parts:
            for key in p.store.record_keys():
                if key in held:
                    raise ConfigError(
                        f"unit {key[:16]}… is in two shards ({by_index[held[key]].path} and {p.path}): "
                        "one run's shards never share a unit; were these folders copied?"
                    )
                held[key] = p.shard.index
                want = owner.get(key)
                if want is None:
                    result.outside += 1
                elif want != p.shard.index:
                    raise ConfigError(
                        f"unit {key[:16]}… is in {p.path} (shard {p.shard}) but belongs to shard {want}/{count}"
                    )
        missing = [key for key, i in owner.items() if key not in held]
        result.missing = len(missing)
        result.present = result.planned - result.missing
        if missing and not allow_missing:
            by_shard: dict[int, int] = {}
            for key in missing:
                by_shard[owner[key]] = by_shard.get(owner[key], 0) + 1
            what = ", ".join(f"{n} of shard {i}/{count}" for i, n in sorted(by_shard.items()))
            raise ConfigError(
                f"{len(missing)} unit(s) of the grid are in no shard ({what}): finish those shards (rerun them), "
                "or --allow-missing for a partial merge"
            )
        out.mkdir(parents=True, exist_ok=True)
        with RunLock(out, holder="mmsafe merge"), Store(out) as store:
            _check_out(store, out, config)
            skip: set[str] = set()
            for p in parts:
                ours = store.record_versions(p.store.record_keys())
                if not ours:
                    continue
                theirs = p.store.record_versions(ours)
                for key, (failed, text) in ours.items():
                    their_failed, their_text = theirs[key]
                    if text == their_text:
                        skip.add(key)
                        result.unchanged += 1
                    elif failed:
                        result.replaced += 1
                    elif not their_failed:
                        raise ConfigError(
                            f"{out} holds unit {key[:16]}… completed, and {p.path} a different completed record of "
                            "it: merge into a new folder"
                        )
                    else:
                        skip.add(key)  # ours completed, theirs failed: keep the completed one
                        result.unchanged += 1
            store.set_meta("shard", "merged")
            for p in parts:
                result.written += store.copy_from(p.store, skip=skip)
            runs = [p.run for p in parts]
            store.add_run(
                {
                    "name": run_config.name,
                    "config": first.run["config"],
                    "started": min(float(r.get("started") or 0) for r in runs),
                    "finished": max(float(r.get("finished") or 0) for r in runs),
                    "merged": {"shards": count, "given": sorted(str(p.shard) for p in parts)},
                }
            )
            result.files = write_outputs(store, out)
        return result
    finally:
        for p in parts:
            p.store.close()


def _plan(config: RunConfig, count: int, registry: Registry | None) -> dict[str, int]:
    """Every unit (record key) of ``config``'s grid and the shard (of ``count``) that owns it, expanded as the
    runner expands it (the same samples, the same keys)."""
    runner = Runner(config, Path("."), registry=registry, progress=False)
    grid = runner.grid
    owner: dict[str, int] = {}
    for bench in grid.benchmarks:
        bkey = bench.spec.key
        for sample_id in runner._index(bench):
            shard = shard_of(bkey, sample_id, count)
            for model, attack, defense, judge in product(
                grid.models, grid.attacks, grid.defenses, grid.judges
            ):
                owner[record_key(model, bench, sample_id, attack, defense, judge)] = shard
    return owner


def _check_out(store: Store, out: Path, config: dict[str, Any]) -> None:
    """``out`` is new, or holds a merge of the same config."""
    held = store.get_meta("shard")
    if held is None and store.count_records():
        held = "all"
    if held not in (None, "merged"):
        what = "the whole grid of a run" if held == "all" else f"shard {held} of a run"
        raise ConfigError(f"{out} holds {what}; merge into a new folder")
    for r in store.runs():
        diff = _differences(config, config_for_comparison(r.get("config") or {}))
        if diff:
            raise ConfigError(f"{out} holds a merge of another config (differing in {', '.join(diff)})")
