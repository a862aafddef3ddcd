"""Scaling a run past one process: Ray workers (1, 2, 4) and shards + merge, against one process, in one run.

Issue 20: "items/s with 1, 2 and 4 Ray workers on the tiny model in one run, and the overhead of sharding +
merge vs one process". The grid: the ``tiny`` model (a random-weight Llama built offline, CPU, greedy,
``--max-new-tokens`` tokens) × a generated jsonl benchmark of ``--rows`` requests × attacks none and FigStep ×
judge refusal. Each command runs in a fresh process (``mmsafe run …``), timed from start to exit, side by side:

- **one process**: ``mmsafe run CONFIG``;
- **Ray, k workers**: ``mmsafe run CONFIG --executor ray --workers k`` (a local Ray started for the run and
  stopped after it: its start-up, about 5 s here, is in the time; each worker loads the model once);
- **shards**: ``mmsafe run CONFIG --shard i/N`` for each i one after the other, then ``mmsafe merge``: what the
  split itself costs (each shard loads the model and reads the benchmark); and the N shards two at a time
  (this machine's cores), as separate machines or Slurm tasks would run them, plus the merge.

Every run's records are compared with the one-process run's: every unit present once (checked), and the content
but for times (checked for Ray, which cuts the batches as one process does; counted for shards, whose padded
batches hold other samples: the tiny random model's nearly flat logits let that flip a greedy near-tie). Items/s
counts generations (records / judges). One process already uses both cores of this machine (torch's threads); a
worker gets one CPU each (Ray sets its threads), so on 2 cores Ray can only add its start-up and transfer costs:
the gain is across machines and GPUs, which this machine cannot show.

    python benchmarks/scaling.py                       # 48 rows, 2 attacks: 96 generations
    python benchmarks/scaling.py --rows 96 --workers 1 2 4 --shards 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import _harness as h


def config(rows: Path, max_new_tokens: int) -> dict:
    return {
        "name": "scaling",
        "models": [
            {"name": "tiny", "params": {"generation": {"max_new_tokens": max_new_tokens}, "batch_size": 4}}
        ],
        "benchmarks": [{"name": "jsonl", "params": {"file": str(rows)}}],
        "attacks": ["none", "figstep"],
        "judges": ["refusal"],
    }


def write_rows(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps({"id": f"r{i:04d}", "text": f"Explain step {i} of making bread, in detail."})
                + "\n"
            )


def timed(*args: str | Path) -> float:
    proc, wall = h.run_mmsafe(*args, *(["--quiet"] if args[0] == "run" else []))
    if proc.returncode != 0:
        raise SystemExit(f"mmsafe {' '.join(map(str, args))} failed: {proc.stderr[-2000:]}")
    return wall


def parallel(commands: list[list[str | Path]], slots: int) -> float:
    """Wall time of running ``commands`` (mmsafe argument lists) ``slots`` at a time."""
    t0 = time.perf_counter()
    pending = list(commands)
    running: list[subprocess.Popen[str]] = []
    while pending or running:
        while pending and len(running) < slots:
            running.append(subprocess.Popen(h.mmsafe_cmd(*pending.pop(0), "--quiet"), env=h.env(), text=True,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))  # fmt: skip
        for p in list(running):
            if p.poll() is not None:
                if p.returncode != 0:
                    raise SystemExit(f"a shard failed: {p.stderr.read()[-2000:] if p.stderr else ''}")
                running.remove(p)
        time.sleep(0.05)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--keep", help="work here and keep it; default: a temporary folder")
    args = ap.parse_args()
    work = h.work_dir(args.keep, "mmsafe-scaling-")
    rows = work / "rows.jsonl"
    write_rows(rows, args.rows)
    cfg = h.write_config(work / "scaling.yaml", config(rows, args.max_new_tokens))
    generations = args.rows * 2
    failures: list[str] = []
    table = []

    base = work / "one"
    t_one = timed("run", cfg, "--out", base)
    table.append(["one process", t_one, generations / t_one, 1.0, "-"])

    def same(out: Path, what: str, *, batches_differ: bool = False) -> str:
        """Every unit once (a check); the records' content equal to one process's, where the batches are the same
        (Ray cuts them in the same order): shards put other samples side by side in a padded batch, which can
        flip a greedy near-tie of the tiny random model (its logits are nearly flat), so there the count of
        differing records is reported, not checked."""
        diff = h.compare_stores(base, out)
        whole = not (diff["lost"] or diff["extra"] or diff["duplicated"])
        h.check(whole, f"{what}: every unit once ({diff})", failures)
        if not batches_differ:
            h.check(diff["differing"] == 0, f"{what}: records equal to one process's", failures)
        return f"{diff['got']} units once; {diff['differing']} differ" if whole else str(diff)

    for k in args.workers:
        out = work / f"ray-{k}"
        t = timed("run", cfg, "--out", out, "--executor", "ray", "--workers", str(k))
        table.append(
            [f"Ray, {k} worker{'s' if k > 1 else ''}", t, generations / t, t_one / t, same(out, f"ray {k}")]
        )

    n = args.shards
    shard_dirs = [work / "shards" / str(i) for i in range(n)]
    t_seq = sum(timed("run", cfg, "--shard", f"{i}/{n}", "--out", d) for i, d in enumerate(shard_dirs))
    t_merge = timed("merge", work / "merged", *shard_dirs)
    table.append([f"{n} shards one after another + merge", t_seq + t_merge, generations / (t_seq + t_merge),
                  t_one / (t_seq + t_merge), same(work / "merged", "merged shards", batches_differ=True)])  # fmt: skip
    par_dirs = [work / "shards-par" / str(i) for i in range(n)]
    t_par = parallel([["run", cfg, "--shard", f"{i}/{n}", "--out", d] for i, d in enumerate(par_dirs)], 2)
    t_merge2 = timed("merge", work / "merged-par", *par_dirs)
    table.append([f"{n} shards two at a time + merge", t_par + t_merge2, generations / (t_par + t_merge2),
                  t_one / (t_par + t_merge2), same(work / "merged-par", "parallel shards", batches_differ=True)])  # fmt: skip
    print(
        f"\n{generations} generations (tiny model, {args.max_new_tokens} new tokens), wall seconds per command"
    )
    print(h.table(["how", "seconds", "items/s", "speed-up vs one process", "records"], table))
    print(f"\nsharding overhead: {n} shards one after another + merge take {(t_seq + t_merge) / t_one:.2f}x one "
          f"process (the merge alone {t_merge:.1f} s)")  # fmt: skip
    return h.finish(failures, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
