"""The pipeline: expand the grid, skip what the store has, attack → defend → generate → judge → store.

Data flows one way. For each model (loaded once), benchmark, attack and defense, the samples still
missing a completed record are processed in chunks: the attack builds each prompt, the (defended,
cached) model answers the chunk — one padded batch for local models, bounded concurrency for I/O
backends — every judge rules on every answer, and the chunk's records are written in one
transaction. A failure in any stage fails that item only, with its stage and reason recorded; a
rerun retries failed items and skips completed ones, so killing the process at any moment loses at
most the chunk in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from mmsafe.attacks.base import Attack
from mmsafe.config import RunConfig
from mmsafe.datasets.base import Benchmark
from mmsafe.defenses.base import Defense
from mmsafe.errors import ConfigError, MmsafeError, describe
from mmsafe.judges.base import Judge
from mmsafe.models.base import ModelBackend
from mmsafe.registry import Registry
from mmsafe.runner.cache import CachedModel
from mmsafe.runner.grid import Grid, resolve
from mmsafe.runner.progress import Progress
from mmsafe.runner.records import UNSERIALISABLE, storable
from mmsafe.store.lock import RunLock
from mmsafe.store.sqlite import Store
from mmsafe.types import Generation, Judgement, Prompt, Record, Sample, stable_hash

log = logging.getLogger("mmsafe.runner")


@dataclass
class RunResult:
    out_dir: Path
    written: int = 0
    skipped: int = 0
    errors: int = 0
    files: dict[str, Path] = field(default_factory=dict)


def record_key(
    model: ModelBackend, bench: Benchmark, sample_id: str, attack: Attack, defense: Defense, judge: Judge
) -> str:
    return stable_hash(
        [model.spec.key, bench.spec.key, sample_id, attack.spec.key, defense.spec.key, judge.spec.key]
    )


def item_seed(run_seed: int, sample_id: str, attack: Attack) -> int:
    """Per-item seed: the same whatever the batching, order or resume point."""
    return int(stable_hash([run_seed, sample_id, attack.spec.key])[:8], 16)


def _err(exc: BaseException) -> str:
    return describe(exc, limit=500)


@dataclass
class _Item:
    sample: Sample
    judges: list[Judge]  # judges still missing a completed record for this sample
    seed: int
    prompt: Prompt | None = None
    generation: Generation | None = None
    error: str | None = None
    stage: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Runner:
    """Runs one :class:`RunConfig` into one output folder."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | Path,
        *,
        registry: Registry | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.registry = registry or Registry()
        self.show_progress = progress
        self.grid: Grid = resolve(config, self.registry)  # every config / grid error surfaces here

    # -- planning ----------------------------------------------------------------------------------
    def _load_samples(self) -> dict[str, list[Sample]]:
        out = {}
        for b in self.grid.benchmarks:
            samples = self._read_benchmark(b)
            out[b.spec.key] = samples
            log.info("benchmark %s: %d samples", b.name, len(samples))
        return out

    def _read_benchmark(self, bench: Benchmark) -> list[Sample]:
        """The first ``limit`` samples of ``bench``. A loader that fails outright (a malformed copy of
        built-in data, a bug) or repeats an id is a :class:`ConfigError` naming the benchmark and its data;
        rows it can read only in part are its own errored Samples and do not come here."""
        try:
            samples = list(islice(bench.load(), self.config.limit))
        except MmsafeError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"benchmark '{bench.name}': cannot read its data at {bench.location()}: {_err(exc)}"
            ) from exc
        counts = Counter(s.id for s in samples)
        repeated = sorted(i for i, c in counts.items() if c > 1)
        if repeated:
            shown = ", ".join(repr(i) for i in repeated[:5]) + (" …" if len(repeated) > 5 else "")
            raise ConfigError(
                f"benchmark '{bench.name}' yields {len(repeated)} repeated sample id(s) from "
                f"{bench.location()}: {shown} (ids must be unique: a record is keyed by its sample id)"
            )
        return samples

    def _pending(
        self, model: ModelBackend, samples: dict[str, list[Sample]], status: dict[str, bool]
    ) -> list[tuple[Benchmark, Attack, Defense, list[_Item]]]:
        plan = []
        for b in self.grid.benchmarks:
            for a in self.grid.attacks:
                for d in self.grid.defenses:
                    items = []
                    for s in samples[b.spec.key]:
                        js = [
                            j for j in self.grid.judges if not status.get(record_key(model, b, s.id, a, d, j))
                        ]
                        if js:
                            items.append(
                                _Item(sample=s, judges=js, seed=item_seed(self.config.seed, s.id, a))
                            )
                    if items:
                        plan.append((b, a, d, items))
        return plan

    # -- execution ----------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run the grid into the output folder, holding its lock (one writer per folder) throughout."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"output folder {self.out_dir} is an existing file; give --out a folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(self.out_dir, holder="mmsafe run"):  # before anything is read: a second run stops at once
            return self._run()

    def _run(self) -> RunResult:
        from mmsafe.report import write_outputs

        result = RunResult(out_dir=self.out_dir)
        started = time.time()
        samples = self._load_samples()
        with Store(self.out_dir) as store:
            status = store.record_status()
            plans = {id(m): self._pending(m, samples, status) for m in self.grid.models}
            total = sum(len(it.judges) for p in plans.values() for *_, items in p for it in items)
            per_bench = len(self.grid.models) * len(self.grid.attacks) * len(self.grid.defenses)
            cells = sum(len(v) for v in samples.values()) * per_bench * len(self.grid.judges)
            result.skipped = cells - total
            if result.skipped:
                log.info("resuming: %d of %d records already in the store", result.skipped, cells)
            progress = Progress(total, label=self.config.name, enabled=self.show_progress)
            for defense in self.grid.defenses:
                defense.bind(store)
            for judge in self.grid.judges:
                judge.bind(store)
            for model in self.grid.models:
                plan = plans[id(model)]
                if not plan:
                    continue
                log.info("loading model %s", model.name)
                model.load()
                try:
                    cached = CachedModel(model, store)
                    for bench, attack, defense, items in plan:
                        target = defense.wrap(cached)
                        size = max(1, model.batch_size if not model.is_async else 4 * model.concurrency)
                        it = iter(items)
                        while chunk := list(islice(it, size)):
                            recs = self._chunk(chunk, model, target, bench, attack, defense, store)
                            n_err = sum(1 for r in recs if r.error or (r.judgement and r.judgement.error))
                            result.written += len(recs)
                            result.errors += n_err
                            progress.advance(
                                len(recs),
                                errors=n_err,
                                cached=sum(1 for c in chunk if c.generation and c.generation.cached)
                                * len(self.grid.judges),
                            )
                finally:
                    model.close()
            progress.close()
            for component in (*self.grid.attacks, *self.grid.defenses, *self.grid.judges):
                component.close()
            store.add_run(
                {
                    "name": self.config.name,
                    "config": self.config.model_dump(mode="json"),
                    "started": started,
                    "finished": time.time(),
                }
            )
            result.files = write_outputs(store, self.out_dir)
        return result

    def _chunk(
        self,
        chunk: list[_Item],
        model: ModelBackend,
        target: ModelBackend,
        bench: Benchmark,
        attack: Attack,
        defense: Defense,
        store: Store,
    ) -> list[Record]:
        # attack (one call per chunk, so white-box attacks can optimise several images at once)
        todo = []
        for item in chunk:
            if item.sample.error:
                item.error, item.stage = item.sample.error, "load"
            else:
                todo.append(item)
        if todo:
            t0 = time.perf_counter()
            try:
                prompts = attack.apply_batch(
                    [i.sample for i in todo], seeds=[i.seed for i in todo], target=model
                )
            except Exception as exc:
                prompts = [exc] * len(todo)
            per_item = (time.perf_counter() - t0) / len(todo)
            for item, res in zip(todo, prompts, strict=True):
                if isinstance(res, Exception):
                    item.error, item.stage = _err(res), "attack"
                    log.debug("attack failed on %s: %s", item.sample.id, item.error)
                else:
                    item.prompt = res
                item.timings["attack_s"] = per_item
        # generate
        live = [i for i in chunk if i.prompt is not None]
        if live:
            t0 = time.perf_counter()
            results = self._generate(target, [i.prompt for i in live], [i.seed for i in live])
            per_item = (time.perf_counter() - t0) / len(live)
            for item, res in zip(live, results, strict=True):
                if isinstance(res, Exception):
                    item.error, item.stage = _err(res), "generate"
                else:
                    item.generation = res
                    item.timings["generate_s"] = per_item  # share of the batch's wall time
        # judge
        verdicts: dict[tuple[int, str], Judgement] = {}
        done = [i for i in chunk if i.generation is not None]
        for judge in self.grid.judges:
            todo = [i for i in done if judge in i.judges]
            if not todo:
                continue
            t0 = time.perf_counter()
            js = _judge_isolated(judge, [(i.sample, i.prompt, i.generation) for i in todo])
            per_item = (time.perf_counter() - t0) / len(todo)
            for i, j in zip(todo, js, strict=True):
                verdicts[(id(i), judge.spec.key)] = j
                i.timings[f"judge_s:{judge.name}"] = per_item
        # records
        now = time.time()
        records, images = [], {}
        for item in chunk:
            if item.prompt is not None:
                for img in item.prompt.images:
                    images[img.sha256] = img
            for judge in item.judges:
                records.append(storable(self._record(item, model, bench, attack, defense, judge, verdicts, now)))
        store.put_records(records, images.values())
        return records

    def _record(
        self,
        item: _Item,
        model: ModelBackend,
        bench: Benchmark,
        attack: Attack,
        defense: Defense,
        judge: Judge,
        verdicts: dict[tuple[int, str], Judgement],
        now: float,
    ) -> Record:
        s = item.sample
        key = record_key(model, bench, s.id, attack, defense, judge)
        prompt_doc: dict[str, Any] | None = None
        generation: dict[str, Any] | None = None
        error, stage = item.error, item.stage
        gen = item.generation
        try:
            if item.prompt is not None:
                prompt_doc = {**item.prompt.fingerprint(), "attack_metadata": item.prompt.attack_metadata}
            if gen is not None:
                generation = gen.model_dump(mode="json", exclude={"text"})
        except UNSERIALISABLE as exc:  # an attack's notes or an answer's metadata that JSON cannot hold
            prompt_doc = generation = None
            gen = None
            error, stage = f"cannot store this record: {_err(exc)}", "store"
        return Record(
            key=key,
            run=self.config.name,
            sample_id=s.id,
            benchmark=bench.name,
            category=s.category,
            expected=s.expected,
            label=s.label,
            model=model.spec,
            benchmark_spec=bench.spec,
            attack=attack.spec,
            defense=defense.spec,
            judge=judge.spec,
            prompt=prompt_doc,
            image_hashes=tuple(i.sha256 for i in item.prompt.images) if item.prompt else (),
            response=gen.text if gen else None,
            generation=generation,
            judgement=verdicts.get((id(item), judge.spec.key)) if gen else None,
            error=error,
            error_stage=stage,
            timings=dict(item.timings),
            random_weights=model.random_weights,
            model_note=model.disclaimer(),
            created=now,
        )

    @staticmethod
    def _generate(target: ModelBackend, prompts: Sequence[Prompt], seeds: Sequence[int]) -> list[Any]:
        if target.is_async:
            return asyncio.run(_gather(target, prompts, seeds))
        try:
            res = target.generate(prompts, seeds=seeds)
            if len(res) != len(prompts):
                raise RuntimeError(f"backend returned {len(res)} results for {len(prompts)} prompts")
            return list(res)
        except Exception as exc:
            if len(prompts) == 1:
                return [exc]
            # isolate the item that broke the batch: one at a time
            log.warning("batch of %d failed (%s); retrying one at a time", len(prompts), _err(exc))
            out: list[Any] = []
            for p, s in zip(prompts, seeds, strict=True):
                try:
                    out.extend(target.generate([p], seeds=[s]))
                except Exception as e:
                    out.append(e)
            return out


def _judge_isolated(judge: Judge, items: list[tuple[Sample, Prompt, Generation]]) -> list[Judgement]:
    """One verdict per item. A batch that raises or returns the wrong number of verdicts is retried one
    item at a time, so the item that broke it fails alone (as :meth:`Runner._generate` does)."""
    try:
        out = judge.judge_batch(items)
        _check_verdicts(judge, out, len(items))
        return list(out)
    except Exception as exc:
        if len(items) == 1:
            return [Judgement(error=_err(exc))]
        log.warning("judge %s failed on a batch of %d (%s); retrying one at a time", judge.name, len(items), _err(exc))
    verdicts = []
    for it in items:
        try:
            (one,) = _check_verdicts(judge, judge.judge_batch([it]), 1)
        except Exception as exc:
            one = Judgement(error=_err(exc))
        verdicts.append(one)
    return verdicts


def _check_verdicts(judge: Judge, verdicts: Any, n: int) -> list[Judgement]:
    if not isinstance(verdicts, list | tuple) or len(verdicts) != n:
        got = len(verdicts) if isinstance(verdicts, list | tuple) else type(verdicts).__name__
        raise RuntimeError(f"judge '{judge.name}' returned {got} verdicts for {n} items")
    bad = next((v for v in verdicts if not isinstance(v, Judgement)), None)
    if bad is not None:
        raise TypeError(f"judge '{judge.name}' returned a {type(bad).__name__}, not a Judgement")
    return list(verdicts)


async def _gather(target: ModelBackend, prompts: Sequence[Prompt], seeds: Sequence[int]) -> list[Any]:
    sem = asyncio.Semaphore(max(1, target.concurrency))

    async def one(p: Prompt, s: int) -> Any:
        async with sem:
            try:
                return await target.agenerate(p, seed=s)
            except Exception as exc:
                return exc

    return list(await asyncio.gather(*(one(p, s) for p, s in zip(prompts, seeds, strict=True))))


def run(
    config: RunConfig, out_dir: str | Path, *, registry: Registry | None = None, progress: bool = True
) -> RunResult:
    """Run ``config`` into ``out_dir`` (resuming whatever is already there)."""
    return Runner(config, out_dir, registry=registry, progress=progress).run()


__all__ = ["RunResult", "Runner", "item_seed", "record_key", "run"]
