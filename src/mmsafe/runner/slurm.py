"""``mmsafe slurm CONFIG --shards N --out DIR``: a Slurm job array that runs a config's shards, and its merge.

Writes three files under ``DIR/slurm/`` and submits nothing:

- ``shards.sbatch``: an array of N tasks; task ``i`` runs ``mmsafe run CONFIG --shard i/N --out DIR/shards/i``
  (:mod:`mmsafe.runner.shard`). A task that is preempted, killed or times out resumes where it stopped when it
  runs again (``--requeue``; or resubmit the array: finished shards have nothing left to do);
- ``merge.sbatch``: ``mmsafe merge DIR/merged DIR/shards/0 … DIR/shards/N-1`` (:mod:`mmsafe.runner.merge`), which
  checks that every unit of the grid is there once;
- ``submit.sh``: submits the array, then the merge with ``--dependency=afterok`` on the whole array.

Every path is made absolute and shell-quoted; ``setup`` lines (activating an environment, loading modules) are
the user's own shell, written as given. Logs go to ``DIR/slurm/logs/``. The scripts are plain bash with
``#SBATCH`` comments, so running them with bash (``SLURM_ARRAY_TASK_ID=i bash shards.sbatch``) does what the
cluster would: that is how the tests run them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from mmsafe.config import load_config
from mmsafe.errors import ConfigError

__all__ = ["SlurmOptions", "write_slurm"]

_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class SlurmOptions:
    shards: int
    partition: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = 4
    mem: str = "32G"
    gpus_per_task: int = 0
    account: str | None = None
    #: shell lines run before mmsafe in every job
    setup: tuple[str, ...] = ()
    #: the command that runs mmsafe on the nodes
    mmsafe: str = "mmsafe"

    def check(self) -> None:
        if self.shards < 1:
            raise ConfigError(f"--shards {self.shards}: give 1 or more")
        if not _TIME.match(self.time):
            raise ConfigError(f"--time {self.time!r}: give Slurm's [D-]HH:MM:SS (or MM, HH:MM)")
        if not _MEM.match(self.mem):
            raise ConfigError(f"--mem {self.mem!r}: give a size such as 32G")
        if self.cpus_per_task < 1 or self.gpus_per_task < 0:
            raise ConfigError("--cpus-per-task must be >= 1 and --gpus-per-task >= 0")
        for name, value in (("--partition", self.partition), ("--account", self.account)):
            if value is not None and not _NAME.match(value):
                raise ConfigError(f"{name} {value!r}: letters, digits, '.', '_' and '-' only")
        if any("\n" in line for line in self.setup):
            raise ConfigError("--setup: one shell line each (repeat --setup for more)")


def _header(job: str, opts: SlurmOptions, log: Path, *, array: bool) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job}"]
    if array:
        lines += [
            f"#SBATCH --array=0-{opts.shards - 1}",
            f"#SBATCH --time={opts.time}",
            f"#SBATCH --cpus-per-task={opts.cpus_per_task}",
            f"#SBATCH --mem={opts.mem}",
            "#SBATCH --requeue",
        ]
        if opts.gpus_per_task:
            lines.append(f"#SBATCH --gpus-per-task={opts.gpus_per_task}")
    else:
        lines += ["#SBATCH --time=04:00:00", "#SBATCH --cpus-per-task=2", f"#SBATCH --mem={opts.mem}"]
    if opts.partition:
        lines.append(f"#SBATCH --partition={opts.partition}")
    if opts.account:
        lines.append(f"#SBATCH --account={opts.account}")
    lines += [f"#SBATCH --output={log}", "#SBATCH --open-mode=append", "", "set -euo pipefail", *opts.setup]
    return lines


def write_slurm(config: str | Path, out: str | Path, opts: SlurmOptions) -> dict[str, Path]:
    """Write ``shards.sbatch``, ``merge.sbatch`` and ``submit.sh`` for ``config`` under ``out/slurm``."""
    opts.check()
    cfg = Path(config).resolve()
    name = load_config(cfg).name
    root = Path(out).resolve()
    folder = root / "slurm"
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    n = opts.shards
    shard_dir = f'{q(str(root / "shards"))}/"${{SLURM_ARRAY_TASK_ID}}"'
    shards = _header(f"mmsafe-{name}", opts, folder / "logs" / "shard-%a.out", array=True) + [
        ': "${SLURM_ARRAY_TASK_ID:?run by sbatch as an array task, or set it}"',
        f'{opts.mmsafe} run {q(str(cfg))} --shard "${{SLURM_ARRAY_TASK_ID}}/{n}" --out {shard_dir} --quiet',
    ]
    shard_dirs = " ".join(q(str(root / "shards" / str(i))) for i in range(n))
    merge = _header(f"mmsafe-{name}-merge", opts, folder / "logs" / "merge.out", array=False) + [
        f"{opts.mmsafe} merge {q(str(root / 'merged'))} {shard_dirs}",
    ]
    submit = [
        "#!/bin/bash",
        "set -euo pipefail",
        f"cd {q(str(folder))}",
        "array=$(sbatch --parsable shards.sbatch)",
        'array="${array%%;*}"',
        'merge=$(sbatch --parsable --dependency="afterok:${array}" merge.sbatch)',
        f'echo "shards: array job ${{array}} ({n} tasks); merge: job ${{merge%%;*}} (after all succeed)"',
    ]
    paths = {
        "shards": folder / "shards.sbatch",
        "merge": folder / "merge.sbatch",
        "submit": folder / "submit.sh",
    }
    for key, lines in (("shards", shards), ("merge", merge), ("submit", submit)):
        paths[key].write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[key].chmod(0o755)
    return paths
