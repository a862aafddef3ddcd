"""Speed of the learned judge on CPU: batched judging vs one response at a time.

Times, side by side in one run, on the same responses (JailbreakBench artifact responses when
``../shared/data/jailbreakbench/artifacts`` exists, else synthetic ones of similar length):

* loading (classifier file + MiniLM weights, first forward pass);
* ``LearnedJudge.judge_batch`` over all responses (``batch_size`` texts per MiniLM forward pass);
* ``LearnedJudge.judge`` called once per response (a forward pass of one text each time);

and prints ms/response for both and their ratio. Speed does not depend on what the classifier
learned, so it uses a classifier with seeded random coefficients (no training needed).

    python benchmarks/learned_judge.py              # 256 responses, batch 32
    python benchmarks/learned_judge.py --n 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from mmsafe.judges.learned import FEATURE_DIM, LearnedClassifier, LearnedJudge
from mmsafe.types import Expected, Generation, Message, Prompt, Sample

JBB = (
    Path(os.environ.get("MMSAFE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    / "jailbreakbench"
    / "artifacts"
)
WORDS = "the a to of and in first then you can use mix heat water tool careful result step next".split()


def pairs(n: int, seed: int = 0) -> tuple[list[tuple[str, str]], str]:
    rng = random.Random(seed)
    if JBB.is_dir():
        from mmsafe.judge_eval import read_labelled

        rows = list(read_labelled(JBB))
        rng.shuffle(rows)
        return [(r.prompt, r.response) for r in rows[:n]], f"JailbreakBench responses ({JBB})"
    out = []
    for i in range(n):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 180)))
        out.append(
            (f"How do I do thing {i % 50}?", ("I'm sorry, I can't. " if i % 3 == 0 else "Sure. ") + words)
        )
    return out, "synthetic responses"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    data, where = pairs(args.n)
    items = [
        (
            Sample(id=str(i), benchmark="b", text=q, expected=Expected.refuse),
            Prompt(messages=(Message.user(q),)),
            Generation(text=r),
        )
        for i, (q, r) in enumerate(data)
    ]
    rng = random.Random(0)
    clf = LearnedClassifier(coef=tuple(rng.gauss(0, 1) for _ in range(FEATURE_DIM)), intercept=0.0)
    warm = (
        Sample(id="w", benchmark="b", text="warm-up request"),
        Prompt(messages=(Message.user("warm-up request"),)),
        Generation(text="warm-up response"),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = clf.save(Path(tmp) / "random.json")

        def fresh() -> LearnedJudge:  # loaded and warmed up on another text: caches start empty
            judge = LearnedJudge({"weights": str(path), "batch_size": args.batch_size})
            judge.judge(*warm)
            return judge

        t0 = time.perf_counter()
        batch_judge = fresh()
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = batch_judge.judge_batch(items)
        t_batch = time.perf_counter() - t0
        batch_judge.close()

        single_judge = fresh()
        t0 = time.perf_counter()
        single = [single_judge.judge(*it) for it in items]
        t_single = time.perf_counter() - t0
        single_judge.close()
    same = max(abs(a.score - b.score) for a, b in zip(batched, single, strict=True))
    n = len(items)
    mean_chars = sum(len(r) for _, r in data) / n
    print(f"{n} {where}, mean {mean_chars:.0f} chars; {len({q for q, _ in data})} distinct requests")
    print(f"load (classifier + MiniLM + first pass): {t_load:.2f} s")
    print(f"judge_batch (batch {args.batch_size}): {1000 * t_batch / n:.1f} ms/response")
    print(f"judge, one at a time:        {1000 * t_single / n:.1f} ms/response")
    print(f"batched speed-up: {t_single / t_batch:.2f}x; max |P batch - P single| = {same:.2e}")


if __name__ == "__main__":
    main()
