"""How long the README's quickstart (`mmsafe run`, no arguments) takes, cold and warm, side by side.

    python benchmarks/quickstart_time.py [--bound 300]

Cold: a fresh model cache, so the one-time Gemma-3-270M conversion is included, as on a new machine.
Warm: the same command again with that cache (answers are not reused: each run writes a new output folder).
Prints both wall times and their ratio, and whether the cold run fits the bound the quickstart promises
(about two minutes on 2 CPU cores; the bound defaults to 300 s). This replaces the wall-clock bound the
quickstart test used to carry: tests check what the run writes, this script checks how long it takes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cwd: Path, cache: Path) -> float:
    env = {**os.environ, "MMSAFE_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmsafe", "run"], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"mmsafe run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bound", type=float, default=300.0, help="seconds the cold run should fit in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "cache"
        (root / "cold").mkdir()
        (root / "warm").mkdir()
        cold = _run(root / "cold", cache)
        warm = _run(root / "warm", cache)
    print(f"cold (fresh cache, conversion included): {cold:7.1f} s")
    print(f"warm (converted model cached):           {warm:7.1f} s")
    print(f"cold / warm: {cold / warm:.2f}x")
    print(f"cold run {'fits' if cold <= args.bound else 'EXCEEDS'} the {args.bound:.0f} s bound")


if __name__ == "__main__":
    main()
