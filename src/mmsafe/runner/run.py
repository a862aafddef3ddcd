"""The pipeline: expand the grid, skip what the store has, attack → defend → generate → judge → store.

Data flows one way, item by item. For each model (loaded once), the samples still missing a
completed record are read lazily from each benchmark; the attack builds each prompt, the (defended,
cached) model answers, every judge rules on every answer, and the item's records (all its judges)
are written in one transaction, after which the item is let go: memory holds what is in flight, not
the run.

- Local models answer in batches of their ``batch_size`` (one padded call; white-box attacks optimise
  a batch of images at once), one cell (benchmark × attack × defense) at a time; each batch is
  written before the next is read.
- I/O models (``is_async``) stream: up to ``window`` requests (default 2 × ``concurrency``) are in
  flight on one event loop in a thread of its own (:class:`~mmsafe.runner.aio.LoopThread`), at most
  ``concurrency`` of them running at once; whichever finish go to the judges, which run in a thread
  of their own (:class:`~mmsafe.runner.aio.Worker`), and are written once judged, while the others go
  on. A slow request delays only itself, and a slow judge does not stop the window from refilling
  (up to another ``window`` of answered items may wait for it).

A failure in any stage fails that item only, with its stage and reason recorded; a rerun retries
failed items and skips completed ones, so killing the process at any moment loses at most the batch
or the items in flight and under the judges, never part of an item. Keys and seeds do not depend on order or batching. An item over one of the
run's limits (``config.limits``, :mod:`mmsafe.limits`) fails before its attack or before generation,
with stage ``limit``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, islice, product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsafe.aio import generate_all
from mmsafe.attacks.base import Attack
from mmsafe.config import RunConfig
from mmsafe.datasets.base import Benchmark
from mmsafe.defenses.base import Defense
from mmsafe.errors import ConfigError, MmsafeError, describe
from mmsafe.judges.base import Judge
from mmsafe.limits import check_prompt, check_sample, request_deadline, within_deadline
from mmsafe.models.base import ModelBackend
from mmsafe.models.cached import CachedModel
from mmsafe.registry import Registry
from mmsafe.runner.aio import LoopThread, Worker
from mmsafe.runner.grid import Grid, resolve
from mmsafe.runner.progress import Progress
from mmsafe.runner.records import UNSERIALISABLE, storable
from mmsafe.runner.shard import Shard

if TYPE_CHECKING:
    from mmsafe.runner.ray_executor import RayOptions
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


#: sample metadata a defense may read from the prompt (:attr:`~mmsafe.types.Prompt.context`)
CONTEXT_KEYS = ("image_description",)


def _with_context(prompt: Prompt, sample: Sample) -> Prompt:
    """``prompt`` carrying what the dataset says about the request that the model is not shown (a
    caption of its image), for defenses that may use it; the model never sees it."""
    context = {k: v for k in CONTEXT_KEYS if isinstance(v := sample.metadata.get(k), str) and v.strip()}
    return prompt.model_copy(update={"context": context}) if context else prompt


def _err(exc: BaseException) -> str:
    return describe(exc, limit=500)


@dataclass(frozen=True)
class _Cell:
    """One model's grid cell: a benchmark under an attack and a defense (``target`` = the defended,
    cached model). Every item carries its cell, so items of several cells can share a window."""

    bench: Benchmark
    attack: Attack
    defense: Defense
    target: ModelBackend


@dataclass(eq=False)
class _Item:
    cell: _Cell
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
        shard: Shard | None = None,
        ray: RayOptions | None = None,
    ) -> None:
        self.config = config
        #: run local models on Ray workers (:mod:`mmsafe.runner.ray_executor`); None: in this process
        self.ray = ray
        self.out_dir = Path(out_dir)
        self.registry = registry or Registry()
        self.show_progress = progress
        #: run only this part of the grid (:mod:`mmsafe.runner.shard`); None: all of it
        self.shard = shard
        self.grid: Grid = resolve(config, self.registry)  # every config / grid error surfaces here
        #: each loaded model behind the run's response cache, by ``id`` of the model (:meth:`_attack_target`)
        self._answer_caches: dict[int, ModelBackend] = {}

    # -- samples -----------------------------------------------------------------------------------
    def _samples(self, bench: Benchmark) -> Iterator[Sample]:
        """The first ``limit`` samples of ``bench``, read lazily (loaders are deterministic, so every pass
        yields the same samples). A loader that fails outright (a malformed copy of built-in data, a bug)
        is a :class:`ConfigError` naming the benchmark and its data; rows it can read only in part are its
        own errored Samples and do not come here."""
        try:
            samples = islice(bench.load(), self.config.limit)
            if self.shard is None:
                yield from samples
            else:  # after the limit: the same first samples as one process, partitioned
                key, shard = bench.spec.key, self.shard
                yield from (s for s in samples if shard.owns(key, s.id))
        except MmsafeError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"benchmark '{bench.name}': cannot read its data at {bench.location()}: {_err(exc)}"
            ) from exc

    def _index(self, bench: Benchmark) -> list[str]:
        """One pass over ``bench`` keeping only the sample ids (for the plan and the progress total); a
        repeated id is a :class:`ConfigError` (a record is keyed by its sample id)."""
        ids = [s.id for s in self._samples(bench)]
        counts = Counter(ids)
        repeated = sorted(i for i, c in counts.items() if c > 1)
        if repeated:
            shown = ", ".join(repr(i) for i in repeated[:5]) + (" …" if len(repeated) > 5 else "")
            raise ConfigError(
                f"benchmark '{bench.name}' yields {len(repeated)} repeated sample id(s) from "
                f"{bench.location()}: {shown} (ids must be unique: a record is keyed by its sample id)"
            )
        log.info("benchmark %s: %d samples", bench.name, len(ids))
        return ids

    def _judge_keys(self) -> list[tuple[Judge, str]]:
        """Each judge of the grid with its spec key (a spec is built, and hashed, on every ``.spec``)."""
        return [(j, j.spec.key) for j in self.grid.judges]

    @staticmethod
    def _missing(judges: list[tuple[Judge, str]], sample_id: str, done: set[tuple[str, str]]) -> list[Judge]:
        """The judges still owing ``sample_id`` a completed record, given the cell's ``done`` (sample id, judge
        key) pairs (:meth:`Store.done_pairs`): a record of the cell with that sample and judge has the key
        :func:`record_key` gives them, so the pairs say what the keys would, without hashing a key per pair."""
        return [j for j, key in judges if (sample_id, key) not in done]

    def _iter_items(self, model: ModelBackend, cell: _Cell, store: Store) -> Iterator[_Item]:
        """The items of ``cell`` still missing a completed record, made one at a time as they are needed."""
        b, a, d = cell.bench, cell.attack, cell.defense
        done = store.done_pairs(model.spec.key, b.spec.key, a.spec.key, d.spec.key)
        judge_keys = self._judge_keys()
        for s in self._samples(b):
            judges = self._missing(judge_keys, s.id, done)
            if judges:
                yield _Item(cell=cell, sample=s, judges=judges, seed=item_seed(self.config.seed, s.id, a))

    # -- execution ----------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Run the grid into the output folder, holding its lock (one writer per folder) throughout."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(f"output folder {self.out_dir} is an existing file; give --out a folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(
            self.out_dir, holder="mmsafe run"
        ):  # before anything is read: a second run stops at once
            return self._run()

    def _plan(
        self, store: Store, index: dict[str, list[str]]
    ) -> tuple[dict[int, dict[tuple[Benchmark, Attack, Defense], int]], int]:
        """How many records each model still owes, per cell (by ``id(model)``; cells that owe none are
        left out), and how many records the whole grid has. Only these counts are kept: the sample ids
        of ``index`` and the done keys read here would otherwise stay in memory for the whole run."""
        owed: dict[int, dict[tuple[Benchmark, Attack, Defense], int]] = {}
        cells_total = 0
        judge_keys = [key for _, key in self._judge_keys()]
        keys = {id(c): c.spec.key for c in (*self.grid.benchmarks, *self.grid.attacks, *self.grid.defenses)}
        model_keys = {id(m): m.spec.key for m in self.grid.models}
        grid = list(product(self.grid.models, self.grid.benchmarks, self.grid.attacks, self.grid.defenses))
        done = store.count_done(
            [(model_keys[id(m)], keys[id(b)], keys[id(a)], keys[id(d)]) for m, b, a, d in grid],
            index,
            judge_keys,
        )
        for m, b, a, d in grid:
            want = len(index[keys[id(b)]]) * len(judge_keys)
            n = want - done[(model_keys[id(m)], keys[id(b)], keys[id(a)], keys[id(d)])]
            cells_total += want
            if n:
                owed.setdefault(id(m), {})[(b, a, d)] = n
        for m in self.grid.models:
            owed.setdefault(id(m), {})
        return owed, cells_total

    def _run(self) -> RunResult:
        from mmsafe.judge_eval import copy_judge_evals
        from mmsafe.report import write_outputs

        result = RunResult(out_dir=self.out_dir)
        started = time.time()
        index = {b.spec.key: self._index(b) for b in self.grid.benchmarks}
        with Store(self.out_dir) as store:
            self._claim_shard(store)
            owed, cells_total = self._plan(store, index)
            del index  # every sample id, and each cell's done keys, go before the first item is read
            total = sum(n for per in owed.values() for n in per.values())
            result.skipped = cells_total - total
            if result.skipped:
                log.info("resuming: %d of %d records already in the store", result.skipped, cells_total)
            progress = Progress(total, label=self.config.name, enabled=self.show_progress)
            # every sub-model (PAIR's attacker, a defense's rewriter, a judge's model) answers
            # through the store's response cache from here on: a rerun asks it nothing twice
            for component in (*self.grid.attacks, *self.grid.defenses, *self.grid.judges):
                component.bind(store)
            copy_judge_evals(store, [j.spec for j in self.grid.judges])  # what the report shows of them
            for model in self.grid.models:
                if not owed[id(model)]:
                    continue
                if self.ray is not None and not model.is_async:  # loaded by the workers, not here
                    from mmsafe.runner.ray_executor import run_model_on_ray

                    cells = [_Cell(bench=b, attack=a, defense=d, target=model) for b, a, d in owed[id(model)]]
                    run_model_on_ray(self, model, cells, store, progress, result, self.ray)
                    continue
                log.info("loading model %s", model.name)
                model.load()
                try:
                    cached = self._answer_caches[id(model)] = CachedModel(
                        model, store, limits=self.config.limits
                    )
                    cells = [
                        _Cell(bench=b, attack=a, defense=d, target=d.wrap(cached))
                        for b, a, d in owed[id(model)]
                    ]
                    if model.is_async:
                        self._run_windowed(model, cells, store, progress, result)
                    else:
                        for cell in cells:
                            self._run_batched(model, cell, store, progress, result)
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
                    **({"shard": str(self.shard)} if self.shard is not None else {}),
                }
            )
            result.files = write_outputs(store, self.out_dir)
        return result

    def _claim_shard(self, store: Store) -> None:
        """Mark the store as holding this shard (or the whole grid), or stop when it holds another part: a
        folder holds one part of one grid, so a resume never mixes two."""
        mine = "all" if self.shard is None else str(self.shard)
        held = store.get_meta("shard")
        if held is None:
            held = "all" if store.count_records() else None  # records from before shards: the whole grid
        if held is not None and held != mine and not (held == "merged" and mine == "all"):
            what = {"all": "the whole grid", "merged": "merged shards"}.get(held, f"shard {held}")
            raise ConfigError(
                f"{self.out_dir} holds {what} of a run; this run is "
                f"{'the whole grid' if self.shard is None else f'shard {self.shard}'}: use another --out"
            )
        if held is None:
            store.set_meta("shard", mine)

    def _run_batched(
        self, model: ModelBackend, cell: _Cell, store: Store, progress: Progress, result: RunResult
    ) -> None:
        """``cell`` in batches of the model's ``batch_size`` (one padded forward call each, so white-box
        attacks optimise several images at once); each batch is written, and let go, before the next
        one is read."""
        size = max(1, model.batch_size)
        items = self._iter_items(model, cell, store)
        while True:
            chunk = list(islice(items, size))
            if not chunk:
                break
            self._attack(chunk, model)
            self._generate_batch(cell.target, chunk)
            self._finish(chunk, model, store, progress, result)
            del chunk  # its items (prompts, images, answers) go before the next batch is read

    def _run_windowed(
        self, model: ModelBackend, cells: list[_Cell], store: Store, progress: Progress, result: RunResult
    ) -> None:
        """The items of every cell of an I/O model, streamed: at most ``window`` requests are in flight
        (sent and not yet answered), at most ``concurrency`` of them running at once on one event loop
        (one HTTP client for the session), and each answer goes to the judges as soon as it arrives.

        Each refill looks the new requests up in the response cache in one query, here in the main
        thread; hits go straight to the judges and only misses are sent, so the event loop does no
        SQLite work; their answers are cached in one transaction per judged group
        (:meth:`CachedModel.buffered`). Finished requests arrive in a queue (a callback per request,
        no scan of everything in flight), and every answer that has arrived is taken at once.

        The judges run in a thread of their own (one group of answered items at a time, each judge once
        over the group), so a slow judge does not stop the window from refilling; their records are
        written here, one transaction per judged group. Answered items waiting for or under the judges
        count against a second ``window``: at most ``2 × window`` items are held (sent and not yet
        stored), and when the judges fall that far behind, no new request is sent until they catch up.
        """
        window = self.config.window or 2 * max(1, model.concurrency)
        items = chain.from_iterable(self._iter_items(model, c, store) for c in cells)
        cache = _cache_of(cells)
        # a defended request runs its defense in a worker thread: as many threads as requests at once
        with (
            _responsive_loop(),
            LoopThread(name=f"mmsafe-{model.name}", threads=max(1, model.concurrency)) as loop,
            Worker(name=f"mmsafe-judge-{model.name}") as judges,
            cache.buffered() if cache is not None else nullcontext(),
        ):
            sem = asyncio.Semaphore(max(1, model.concurrency))
            deadline = request_deadline(model, self.config.limits)
            finished: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()  # requests and judged groups
            inflight: dict[Future[tuple[Generation, float]], _Item] = {}
            answered: list[_Item] = []  # waiting for the judge thread
            judging: list[_Item] = []  # the group the judge thread has
            verdicts: Future[dict[tuple[int, str], Judgement]] | None = None
            exhausted = False
            # refill once this many requests have finished (half the queue behind the running ones,
            # which keeps the slots busy meanwhile): one lookup and one wake-up of the loop per refill
            step = max(1, (window - max(1, model.concurrency)) // 2)
            while inflight or answered or judging or not exhausted:
                held = len(inflight) + len(answered) + len(judging)
                while not exhausted and len(inflight) <= window - step and held <= 2 * window - step:
                    batch = list(islice(items, min(window - len(inflight), 2 * window - held)))
                    if not batch:
                        exhausted = True
                        break
                    self._attack(batch, model)
                    live = [i for i in batch if i.prompt is not None]
                    failed = [i for i in batch if i.prompt is None]  # no load or no prompt: stored at once
                    del batch
                    answered += self._send(live, cache, loop, sem, deadline, inflight, finished)
                    del live
                    if failed:
                        self._store(failed, {}, model, store, progress, result)
                        del failed
                    held = len(inflight) + len(answered) + len(judging)
                if verdicts is None and answered:
                    judging, answered = answered, []
                    verdicts = judges.submit(self._judge, judging)
                    verdicts.add_done_callback(finished.put)
                if not inflight and verdicts is None:
                    continue
                done = _drain(finished)
                unjudged: list[_Item] = []
                for f in done:
                    if f is verdicts:
                        if cache is not None:
                            cache.flush()  # the group's fresh answers, one transaction
                        self._store(
                            judging,
                            _verdicts_of(verdicts, judging, self.grid.judges),
                            model,
                            store,
                            progress,
                            result,
                        )
                        judging, verdicts = [], None  # the group's prompts and answers go
                    elif f in inflight:
                        item = _answered(inflight.pop(f), f)
                        (answered if item.generation is not None else unjudged).append(item)
                del done
                if unjudged:  # a failed request: nothing to judge, stored at once
                    self._store(unjudged, {}, model, store, progress, result)
                    del unjudged

    @staticmethod
    def _send(
        items: list[_Item],
        cache: CachedModel | None,
        loop: LoopThread,
        sem: asyncio.Semaphore,
        deadline: tuple[float, str],
        inflight: dict[Future[tuple[Generation, float]], _Item],
        finished: queue.SimpleQueue[Future[Any]],
    ) -> list[_Item]:
        """Send the requests of ``items`` (each with a prompt) to the loop, and return those the
        response cache answered. Items whose target is the cache itself (no defense in front) are
        looked up here in one query; a defended item's defense asks the cache from its own thread."""
        direct = [i for i in items if cache is not None and i.cell.target is cache]
        keys: dict[int, str] = {}
        hits: dict[str, Generation] = {}
        share = 0.0
        if direct and cache is not None:
            t0 = time.perf_counter()
            keys = {id(i): cache.key(i.prompt, i.seed) for i in direct if i.prompt is not None}
            hits = cache.lookup(list(keys.values()))
            share = (time.perf_counter() - t0) / len(direct)
        answered: list[_Item] = []
        sent: list[_Item] = []
        requests = []
        for item in items:
            prompt = item.prompt
            if prompt is None:
                continue
            key = keys.get(id(item))
            if key is not None and key in hits:
                item.generation, item.timings["generate_s"] = hits[key], share
                answered.append(item)
                continue
            if key is not None and cache is not None:
                call = partial(cache.afresh, prompt, seed=item.seed, key=key)
            else:
                call = partial(item.cell.target.agenerate, prompt, seed=item.seed)
            sent.append(item)
            requests.append(_request(call, sem, deadline))
        if requests:
            for item, fut in zip(sent, loop.submit_many(requests), strict=True):  # one wake-up of the loop
                inflight[fut] = item
                fut.add_done_callback(finished.put)
        return answered

    def _generate_batch(self, target: ModelBackend, items: list[_Item]) -> None:
        live = [(i, i.prompt) for i in items if i.prompt is not None]
        if not live:
            return
        t0 = time.perf_counter()
        results = generate_all(target, [p for _, p in live], [i.seed for i, _ in live])
        per_item = (time.perf_counter() - t0) / len(live)
        for (item, _), res in zip(live, results, strict=True):
            if isinstance(res, Exception):
                item.error, item.stage = _err(res), "generate"
            else:
                item.generation = res
                item.timings["generate_s"] = per_item  # share of the batch's wall time

    def _attack_target(self, attack: Attack, model: ModelBackend) -> ModelBackend:
        """The undefended model a static attack is given. A query attack (one that offers ``adaptive``: it only
        sends the model prompts) gets it behind the run's response cache, so a rerun after a crash replays the
        searches' queries from the store instead of paying for them again; any other attack gets the model
        itself (a white-box attack reads its gradients, image-scaling its processor)."""
        if "adaptive" in type(attack.params).model_fields:
            return self._answer_caches.get(id(model), model)
        return model

    def _attack(self, items: list[_Item], model: ModelBackend) -> None:
        """Build each item's prompt: one ``apply_batch`` call per attack among ``items`` (so white-box
        attacks can optimise several images at once). An item whose sample did not load, or whose
        attack failed, gets its error and stage instead."""
        groups: dict[tuple[int, int], list[_Item]] = {}
        for item in items:
            if item.sample.error:
                item.error, item.stage = item.sample.error, "load"
            elif not self._over_limit(item):
                # an adaptive attack queries its cell's defended model: one group per defense
                adaptive = item.cell.attack.adaptive
                groups.setdefault((id(item.cell.attack), id(item.cell.target) if adaptive else 0), []).append(
                    item
                )
        for todo in groups.values():
            attack = todo[0].cell.attack
            target = todo[0].cell.target if attack.adaptive else self._attack_target(attack, model)
            t0 = time.perf_counter()
            try:
                prompts = attack.apply_batch(
                    [i.sample for i in todo], seeds=[i.seed for i in todo], target=target
                )
                if len(prompts) != len(todo):
                    raise RuntimeError(
                        f"attack '{attack.name}' returned {len(prompts)} prompts for {len(todo)} samples"
                    )
            except Exception as exc:
                prompts = [exc] * len(todo)
            per_item = (time.perf_counter() - t0) / len(todo)
            for item, res in zip(todo, prompts, strict=True):
                if isinstance(res, Exception):
                    item.error, item.stage = _err(res), "attack"
                    log.debug("attack failed on %s: %s", item.sample.id, item.error)
                elif not self._over_limit(item, res):
                    item.prompt = _with_context(res, item.sample)
                item.timings["attack_s"] = per_item

    def _finish(
        self, items: list[_Item], model: ModelBackend, store: Store, progress: Progress, result: RunResult
    ) -> None:
        """Judge ``items`` and store their records (a local model's batch, judged where it was made)."""
        self._store(items, self._judge(items), model, store, progress, result)

    def _judge(self, items: list[_Item]) -> dict[tuple[int, str], Judgement]:
        """Each judge's verdicts on the answered ``items`` (each judge once over the group), keyed by
        (item, judge). A judge that breaks on one item fails that item's verdict only."""
        verdicts: dict[tuple[int, str], Judgement] = {}
        # an answer always comes from a prompt: answered items have both
        answered = [
            (i, i.prompt, i.generation) for i in items if i.prompt is not None and i.generation is not None
        ]
        for judge in self.grid.judges:
            todo = [t for t in answered if judge in t[0].judges]
            if not todo:
                continue
            t0 = time.perf_counter()
            js = _judge_isolated(judge, [(i.sample, p, g) for i, p, g in todo])
            per_item = (time.perf_counter() - t0) / len(todo)
            for (i, _, _), j in zip(todo, js, strict=True):
                verdicts[(id(i), judge.spec.key)] = j
                i.timings[f"judge_s:{judge.name}"] = per_item
        return verdicts

    def _store(
        self,
        items: list[_Item],
        verdicts: dict[tuple[int, str], Judgement],
        model: ModelBackend,
        store: Store,
        progress: Progress,
        result: RunResult,
    ) -> None:
        """Write all the records of ``items`` (every judge's, and the images they name) in one
        transaction: an item is stored whole or not at all."""
        now = time.time()
        records, images = [], {}
        for item in items:
            if item.prompt is not None:
                for img in item.prompt.images:
                    images[img.sha256] = img
            for judge in item.judges:
                records.append(storable(self._record(item, model, judge, verdicts, now)))
        store.put_records(records, images.values())
        n_err = sum(1 for r in records if r.error or (r.judgement and r.judgement.error))
        result.written += len(records)
        result.errors += n_err
        cached = sum(len(i.judges) for i in items if i.generation is not None and i.generation.cached)
        progress.advance(len(records), errors=n_err, cached=cached)

    def _over_limit(self, item: _Item, prompt: Prompt | None = None) -> bool:
        """Fail ``item`` (stage ``limit``, with the reason) when its sample, or the ``prompt`` the attack
        built from it, is over one of the run's limits (:mod:`mmsafe.limits`). A prompt over a limit is
        not kept, so its images are not stored."""
        limits = self.config.limits
        problem = check_sample(item.sample, limits) if prompt is None else check_prompt(prompt, limits)
        if problem is not None:
            item.error, item.stage = problem, "limit"
        return problem is not None

    def _record(
        self,
        item: _Item,
        model: ModelBackend,
        judge: Judge,
        verdicts: dict[tuple[int, str], Judgement],
        now: float,
    ) -> Record:
        s = item.sample
        bench, attack, defense = item.cell.bench, item.cell.attack, item.cell.defense
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


def _judge_isolated(judge: Judge, items: list[tuple[Sample, Prompt, Generation]]) -> list[Judgement]:
    """One verdict per item. A batch that raises or returns the wrong number of verdicts is retried one
    item at a time, so the item that broke it fails alone (as :func:`mmsafe.aio.generate_all` does)."""
    try:
        out = judge.judge_batch(items)
        _check_verdicts(judge, out, len(items))
        return list(out)
    except Exception as exc:
        if len(items) == 1:
            return [Judgement(error=_err(exc))]
        log.warning(
            "judge %s failed on a batch of %d (%s); retrying one at a time", judge.name, len(items), _err(exc)
        )
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


async def _request(
    call: Callable[[], Awaitable[Generation]], sem: asyncio.Semaphore, deadline: tuple[float, str]
) -> tuple[Generation, float]:
    """One request (``call()``, e.g. the target's ``agenerate`` of one prompt) on the session's loop,
    within the model's concurrency and, once sent, its request deadline
    (:func:`~mmsafe.limits.request_deadline`: seconds and the setting): the answer and its seconds."""
    seconds, setting = deadline
    async with sem:
        t0 = time.perf_counter()
        gen = await within_deadline(call(), seconds, setting=setting)
        return gen, time.perf_counter() - t0


def _cache_of(cells: Sequence[_Cell]) -> CachedModel | None:
    """The response cache every cell's target answers through (directly, or behind defenses)."""
    for cell in cells:
        target: ModelBackend | None = cell.target
        while target is not None and not isinstance(target, CachedModel):
            target = getattr(target, "inner", None)
        if target is not None:
            return target
    return None


@contextmanager
def _responsive_loop() -> Iterator[None]:
    """While the window runs, the event-loop thread gets the GIL back quickly.

    - What exists before the window (imports, the models, the grid) lives for the session: it is
      moved out of the garbage collector's view (:func:`gc.freeze`), so a full collection walks only
      what the window made. Measured in ``benchmarks/http_path.py``: full collections over the whole
      heap took 50-130 ms each, a stall of every request in flight; 10-30 ms with the heap frozen.
    - The interpreter's switch interval drops from 5 ms to 0.5 ms (:func:`sys.setswitchinterval`):
      the loop thread releases the GIL at every socket call, and while the main thread stores
      records or the judges run it waited up to the whole interval to get it back, once per call,
      so the next requests went out a round late. Both are restored when the window closes.

    A process that froze objects itself (``gc.get_freeze_count() > 0``, e.g. a server before it forks)
    keeps its own freeze: the heap is then left as it is, since unfreezing would undo the host's.
    """
    interval = sys.getswitchinterval()
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.collect()
        gc.freeze()
    sys.setswitchinterval(min(interval, _SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if freeze:
            gc.unfreeze()


#: the GIL switch interval while an I/O model's window runs (:func:`_responsive_loop`)
_SWITCH_INTERVAL_S = 0.0005


def _drain(finished: queue.SimpleQueue[Future[Any]]) -> list[Future[Any]]:
    """Every finished future in the queue: waits for the first, then takes all that are there."""
    done = [finished.get()]
    while True:
        try:
            done.append(finished.get_nowait())
        except queue.Empty:
            return done


def _verdicts_of(
    fut: Future[dict[tuple[int, str], Judgement]], items: list[_Item], judges: Sequence[Judge]
) -> dict[tuple[int, str], Judgement]:
    """The verdicts the judge thread gave ``items``; should the thread itself fail (not one judge: those
    fail per item), every verdict of the group is that error, so each item is still stored."""
    exc = fut.exception()
    if exc is None:
        return fut.result()
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit in the judge thread: stop the run
        raise exc
    error = Judgement(error=_err(exc))
    return {(id(i), j.spec.key): error for i in items for j in judges if i.generation is not None}


def _answered(item: _Item, fut: Future[tuple[Generation, float]]) -> _Item:
    """``item`` with the outcome of its request: its answer and time, or its error (stage ``generate``)."""
    exc = fut.exception()
    if exc is not None:
        item.error, item.stage = _err(exc), "generate"
    else:
        item.generation, item.timings["generate_s"] = fut.result()
    return item


def run(
    config: RunConfig,
    out_dir: str | Path,
    *,
    registry: Registry | None = None,
    progress: bool = True,
    shard: Shard | None = None,
    ray: RayOptions | None = None,
) -> RunResult:
    """Run ``config`` (or its ``shard``: :mod:`mmsafe.runner.shard`) into ``out_dir``, resuming whatever is
    already there."""
    return Runner(config, out_dir, registry=registry, progress=progress, shard=shard, ray=ray).run()


__all__ = ["RunResult", "Runner", "item_seed", "record_key", "run"]
