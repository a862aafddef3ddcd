"""``mmsafe run CONFIG --executor ray``: a local model's work spread over Ray workers that keep it loaded.

For each local (not I/O) model of the grid, the driver (the ``mmsafe run`` process: it plans, and it alone writes
the store) starts ``workers`` Ray actors, each holding one replica of the model (``gpus_per_worker`` GPUs, or
``cpus_per_worker`` CPUs, each); it cuts the items the model still owes into batches of the model's
``batch_size`` and hands each to an idle worker, which attacks, defends, generates and judges the batch exactly as
the one-process runner does (the same :class:`~mmsafe.runner.run.Runner` methods, built from the same config: the
same keys, seeds and records) and sends back its records, which the driver writes. At most one batch per worker is
out at a time, and the items are read lazily, so the driver's memory does not grow with the grid.

Failures:

- a worker that dies (killed, out of memory, its node gone) loses only the batch it held: the batch goes back to
  the queue and a new worker takes the dead one's place. A batch whose worker died twice is not tried a third
  time: its items are recorded as failed (stage ``worker``, with the reason), and a rerun retries them;
- an error inside a worker's code outside the runner's per-item handling fails that batch's items with the reason
  (stage ``worker``);
- a driver that is killed loses the batches out; rerunning the command resumes from the store, as any run does.

What differs from one process: sub-models of attacks, defenses and judges (a judge's LLM, PAIR's attacker) answer
in the workers without the store's response cache (the driver's), so a rerun asks them again for the items it
redoes; an attack that fits something once per run (a universal adversarial image) fits it once per worker;
I/O models (``openai``) are not sent to workers: they stream from the driver as usual (serve a large model
with vLLM or SGLang instead, docs/scaling.md). Samples travel to the workers in Ray's object store (so the data
need only be readable by the driver); records come back as JSON and are validated by the driver.

Needs ``pip install 'mmsafe[ray]'``. ``address``: a running cluster (``ray start --head`` …, or ``auto``); none:
a local Ray started for the run and stopped after it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.errors import ConfigError, require
from mmsafe.types import Image, Record, Sample

if TYPE_CHECKING:
    from mmsafe.models.base import ModelBackend
    from mmsafe.runner.progress import Progress
    from mmsafe.runner.run import Runner, RunResult, _Cell
    from mmsafe.store.sqlite import Store

__all__ = ["RayOptions", "run_model_on_ray"]

log = logging.getLogger(__name__)

#: the Ray namespace mmsafe's actors are named in (a test finds a worker by its name there)
NAMESPACE = "mmsafe"
#: times a batch is handed out while its workers die, before its items are recorded as failed
MAX_TRIES = 2
#: how long a worker may take to start and load its model
START_TIMEOUT_S = 600.0


class RayOptions(BaseModel):
    """How ``--executor ray`` runs (none of it changes what a run computes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        None, description="a Ray cluster to join ('auto', or HOST:PORT); none: a local one"
    )
    workers: int | None = Field(
        None, ge=1, description="model replicas; default: as many as the cluster's resources fit"
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each replica takes")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each replica takes (1: one replica per GPU)")


@dataclass
class _Batch:
    cell: tuple[int, int, int]
    #: (sample, judge indices still owed, seed) per item
    units: list[tuple[Sample, list[int], int]]
    tries: int = 0


class _Worker:
    """A Ray actor: one replica of the grid's model ``model_index``, loaded once."""

    def __init__(self, config: dict[str, Any], model_index: int) -> None:
        from mmsafe.config import RunConfig
        from mmsafe.runner.run import Runner

        self.runner = Runner(
            RunConfig.model_validate(config), Path(tempfile.mkdtemp(prefix="mmsafe-ray-")), progress=False
        )
        self.model = self.runner.grid.models[model_index]
        self.model.load()
        self._cells: dict[tuple[int, int, int], _Cell] = {}

    def pid(self) -> int:
        return os.getpid()

    def process(
        self, cell: tuple[int, int, int], units: list[tuple[Sample, list[int], int]]
    ) -> tuple[list[str], list[Image]]:
        """The records (JSON) and images of the items of ``units`` in ``cell`` (benchmark, attack, defense
        indices), made as :meth:`Runner._run_batched` makes them."""
        from mmsafe.runner.records import storable
        from mmsafe.runner.run import _Cell, _Item

        runner, grid = self.runner, self.runner.grid
        c = self._cells.get(cell)
        if c is None:
            b, a, d = grid.benchmarks[cell[0]], grid.attacks[cell[1]], grid.defenses[cell[2]]
            c = self._cells[cell] = _Cell(bench=b, attack=a, defense=d, target=d.wrap(self.model))
        items = [
            _Item(cell=c, sample=s, judges=[grid.judges[j] for j in js], seed=seed) for s, js, seed in units
        ]
        runner._attack(items, self.model)
        runner._generate_batch(c.target, items)
        verdicts = runner._judge(items)
        now = time.time()
        records: list[str] = []
        images: dict[str, Image] = {}
        for item in items:
            if item.prompt is not None:
                for img in item.prompt.images:
                    images[img.sha256] = img
            for judge in item.judges:
                records.append(
                    storable(runner._record(item, self.model, judge, verdicts, now)).model_dump_json()
                )
        return records, list(images.values())


def _connect(options: RayOptions) -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report to Ray's servers
    ray = require("ray", extra="ray", purpose="--executor ray")
    if not ray.is_initialized():
        ray.init(
            address=options.address,
            namespace=NAMESPACE,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    return ray


def _replicas(ray: Any, options: RayOptions) -> tuple[int, float]:
    """How many workers, and the CPUs each takes: ``workers`` (default: as many as the cluster's CPUs, or GPUs,
    fit). Asked for more CPU workers than the cluster's CPUs fit, each gets a share of them (Ray schedules
    fractions), so every worker starts; GPU workers are not shared: at most one per ``gpus_per_worker``."""
    total = ray.cluster_resources()
    cpus = float(total.get("CPU", 1))
    gpu_fit = int(total.get("GPU", 0) // options.gpus_per_worker) if options.gpus_per_worker else None
    n = options.workers or max(1, int(cpus // options.cpus_per_worker))
    if gpu_fit is not None:
        if gpu_fit < 1:
            raise ConfigError(
                f"--gpus-per-worker {options.gpus_per_worker}: the Ray cluster has {total.get('GPU', 0)} GPUs"
            )
        if n > gpu_fit:
            log.warning("%d workers asked, the cluster's GPUs fit %d: %d workers", n, gpu_fit, gpu_fit)
            n = gpu_fit
    per = options.cpus_per_worker
    if n * per > cpus:
        per = cpus / n
        log.info("%d workers on %g CPUs: %.2g CPU each", n, cpus, per)
    return n, per


def run_model_on_ray(
    runner: Runner,
    model: ModelBackend,
    cells: list[_Cell],
    store: Store,
    progress: Progress,
    result: RunResult,
    options: RayOptions,
) -> None:
    """The items ``model`` owes in ``cells``, made by Ray workers and written by this process (see the module)."""
    ray = _connect(options)
    grid = runner.grid
    model_index = next(i for i, m in enumerate(grid.models) if m is model)
    index = {id(c): i for i, c in enumerate((*grid.benchmarks, *grid.attacks, *grid.defenses))}
    nb, na = len(grid.benchmarks), len(grid.attacks)
    judge_index = {id(j): i for i, j in enumerate(grid.judges)}
    config = runner.config.model_dump(mode="json")
    n, cpus_each = _replicas(ray, options)
    remote = ray.remote(num_cpus=cpus_each, num_gpus=options.gpus_per_worker, max_restarts=0)(_Worker)
    run_id = uuid.uuid4().hex[:8]
    spawned = 0

    def spawn() -> Any:
        nonlocal spawned
        spawned += 1
        return remote.options(name=f"mmsafe-{run_id}-{model_index}-{spawned}").remote(config, model_index)

    def batches() -> Iterator[_Batch]:
        size = max(1, model.batch_size)
        for cell in cells:
            key = (index[id(cell.bench)], index[id(cell.attack)] - nb, index[id(cell.defense)] - nb - na)
            items = runner._iter_items(model, cell, store)
            while chunk := list(islice(items, size)):
                yield _Batch(key, [(i.sample, [judge_index[id(j)] for j in i.judges], i.seed) for i in chunk])

    log.info(
        "model %s: %d Ray worker(s), %.2g CPU / %s GPU each",
        model.name,
        n,
        cpus_each,
        options.gpus_per_worker,
    )
    idle = deque(_started(ray, [spawn() for _ in range(n)], model.name))
    retry: deque[_Batch] = deque()
    source = batches()
    out: dict[Any, tuple[Any, _Batch]] = {}
    try:
        while True:
            while idle:
                batch = retry.popleft() if retry else next(source, None)
                if batch is None:
                    break
                actor = idle.popleft()
                batch.tries += 1
                out[actor.process.remote(batch.cell, batch.units)] = (actor, batch)
            if not out:
                break
            ready, _ = ray.wait(list(out), num_returns=1)
            for ref in ready:
                actor, batch = out.pop(ref)
                try:
                    texts, images = ray.get(ref)
                except (
                    ray.exceptions.RayActorError,
                    ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError,
                ) as exc:
                    log.warning("a Ray worker of %s died with a batch of %d items (%s); it is replaced",
                                model.name, len(batch.units), type(exc).__name__)  # fmt: skip
                    _kill(ray, actor)
                    idle.append(spawn())
                    if batch.tries < MAX_TRIES:
                        retry.append(batch)
                    else:
                        _fail(
                            runner,
                            model,
                            grid,
                            batch,
                            "the Ray workers holding this batch died twice",
                            store,
                            progress,
                            result,
                        )
                    continue
                except ray.exceptions.RayTaskError as exc:
                    idle.append(actor)
                    _fail(
                        runner,
                        model,
                        grid,
                        batch,
                        f"Ray worker error: {str(exc.cause)[:300]}",
                        store,
                        progress,
                        result,
                    )
                    continue
                idle.append(actor)
                records = [Record.model_validate_json(t) for t in texts]
                store.put_records(records, images)
                n_err = sum(1 for r in records if r.error or (r.judgement and r.judgement.error))
                result.written += len(records)
                result.errors += n_err
                progress.advance(len(records), errors=n_err)
    finally:
        for actor in list(idle) + [a for a, _ in out.values()]:
            _kill(ray, actor)


def _started(ray: Any, actors: list[Any], name: str, timeout_s: float | None = None) -> list[Any]:
    """The actors that have loaded their model within ``timeout_s``; the others are stopped (a worker the cluster
    cannot place would otherwise hold its batch forever). None started is an error saying why it may be."""
    timeout_s = START_TIMEOUT_S if timeout_s is None else timeout_s
    pending = {a.pid.remote(): a for a in actors}
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    up = []
    for ref in ready:
        try:
            ray.get(ref)
        except Exception as exc:  # the model failed to load in the worker
            raise RuntimeError(f"a Ray worker could not load model {name}: {exc}") from None
        up.append(pending[ref])
    for ref in late:
        _kill(ray, pending[ref])
    if late:
        log.warning(
            "%d Ray worker(s) of %s did not start within %.0f s (no room on the cluster?); going on with %d",
            len(late), name, timeout_s, len(up),
        )  # fmt: skip
    if not up:
        raise ConfigError(
            f"no Ray worker of model {name} started within {timeout_s:.0f} s: does the cluster have the "
            "resources asked (--cpus-per-worker, --gpus-per-worker)?"
        )
    return up


def _kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already gone
        log.debug("killing a Ray worker", exc_info=True)


def _fail(
    runner: Runner,
    model: ModelBackend,
    grid: Any,
    batch: _Batch,
    why: str,
    store: Store,
    progress: Progress,
    result: RunResult,
) -> None:
    """Record the batch's items as failed (stage ``worker``): nothing is lost, a rerun retries them."""
    from mmsafe.runner.run import _Cell, _Item

    b, a, d = grid.benchmarks[batch.cell[0]], grid.attacks[batch.cell[1]], grid.defenses[batch.cell[2]]
    cell = _Cell(bench=b, attack=a, defense=d, target=model)
    items = []
    for s, js, seed in batch.units:
        item = _Item(cell=cell, sample=s, judges=[grid.judges[j] for j in js], seed=seed)
        item.error, item.stage = why, "worker"
        items.append(item)
    runner._store(items, {}, model, store, progress, result)
