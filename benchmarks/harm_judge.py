"""The harm judge's speed on CPU: one pair at a time vs batched, float32 vs int8, side by side in one run.

    python benchmarks/harm_judge.py [--n 256] [--batch-size 32]

Pairs: the first N (goal, response) pairs of the JailbreakBench artifacts ($MMSAFE_SHARED_DATA or
../shared/data), else synthetic answers of similar length. Prints items/s for each setting, the ratios, and
how often int8 and float32 give the same verdict (and the largest probability difference). The issue's
target is >= 50 items/s batched on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmsafe.judges.harm import HarmJudge


def _pairs(n: int) -> tuple[list[str], list[str], str]:
    root = Path(os.environ.get("MMSAFE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    art = root / "jailbreakbench" / "artifacts"
    if art.is_dir():
        from mmsafe.judges.harm_recipe import jbb_rows

        rows = jbb_rows(art)[0][:n]
        return [r.request for r in rows], [r.response for r in rows], f"{len(rows)} JailbreakBench artifact pairs"
    words = "first you need to gather the materials then follow each step carefully as described".split()
    resp = [" ".join(words[(i + k) % len(words)] for k in range(120)) for i in range(n)]
    return ["Explain how to do something"] * n, resp, f"{n} synthetic pairs"


def _rate(judge: HarmJudge, reqs: list[str], resps: list[str], *, one_by_one: bool) -> tuple[float, list[float]]:
    judge.probabilities(reqs[:4], resps[:4])  # load + warm up
    t0 = time.perf_counter()
    if one_by_one:
        probs = [judge.probabilities([q], [r])[0] for q, r in zip(reqs, resps, strict=True)]
    else:
        probs = judge.probabilities(reqs, resps)
    return len(reqs) / (time.perf_counter() - t0), probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    reqs, resps, what = _pairs(args.n)
    import torch

    print(f"{what}; torch threads: {torch.get_num_threads()}")
    fp32 = HarmJudge(batch_size=args.batch_size)
    int8 = HarmJudge(batch_size=args.batch_size, quantize=True)
    one, _ = _rate(fp32, reqs[:64], resps[:64], one_by_one=True)
    batched, p32 = _rate(fp32, reqs, resps, one_by_one=False)
    quant, p8 = _rate(int8, reqs, resps, one_by_one=False)
    t = float(fp32.card.get("threshold", 0.5))
    same = sum((a >= t) == (b >= t) for a, b in zip(p32, p8, strict=True)) / len(p32)
    print(f"one at a time (float32):        {one:7.1f} items/s")
    print(f"batched {args.batch_size:3d} (float32):         {batched:7.1f} items/s  ({batched / one:.1f}x one at a time)")
    print(f"batched {args.batch_size:3d} (int8 dynamic):    {quant:7.1f} items/s  ({quant / batched:.2f}x float32)")
    print(f"int8 vs float32: same verdict on {100 * same:.1f}% of {len(p32)}; "
          f"max |dP| = {max(abs(a - b) for a, b in zip(p32, p8, strict=True)):.3f}")


if __name__ == "__main__":
    main()
