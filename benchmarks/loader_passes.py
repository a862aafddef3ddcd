"""What the runner's re-reading of a benchmark costs: one pass per grid cell.

The runner reads each benchmark lazily, a row at a time, once for the plan (its sample ids) and again
for every grid cell (model × attack × defense) that still owes records, so memory does not grow with
the benchmark. This prints, for each built-in benchmark whose data is on this machine
(``$MMSAFE_DATA_DIR``, default ../shared/data) and for a generated 1,000-row JSONL benchmark with one
PNG per row, the time of one pass (the second of two, so the files are in the page cache, as they
are after the first cell) and what the re-reads of a 3 × 3 grid add per item.

    python benchmarks/loader_passes.py
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _harness import REPO  # puts this checkout's src/ on sys.path
from mmsafe.registry import Registry

CELLS = 9  # a 3 attacks × 3 defenses grid: 1 + 9 passes, where one would do


def _jsonl_bench(folder: Path, n: int = 1000) -> Path:
    from PIL import Image, ImageDraw

    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        img = Image.new("RGB", (760, 760), "white")
        ImageDraw.Draw(img).text((20, 20 + i % 700), f"Steps for item {i}:\n1.\n2.\n3.", fill="black")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        (folder / "img" / f"{i}.png").write_bytes(buf.getvalue())
        rows.append(json.dumps({"id": f"r{i}", "text": f"Question {i}", "image": f"img/{i}.png"}))
    path = folder / "bench.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def _pass(bench) -> tuple[int, float, float]:
    t0 = time.perf_counter()
    n, size = 0, 0
    for s in bench.load():
        n += 1
        size += len(s.text.encode("utf-8", "surrogatepass")) + sum(len(i.data) for i in s.images)
    return n, size / 2**20, time.perf_counter() - t0


def main() -> int:
    os.environ.setdefault("MMSAFE_DATA_DIR", str(REPO.parent / "shared" / "data"))
    reg = Registry(entry_points=False)
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("figstep tiny + images", "figstep", {"split": "tiny", "with_images": True}),
            ("figstep full + images", "figstep", {"split": "full", "with_images": True}),
            ("mm-safetybench", "mm-safetybench", {}),
            ("xstest", "xstest", {}),
            ("harmbench", "harmbench", {}),
            ("jailbreakbench", "jailbreakbench", {}),
            ("jsonl 1,000 rows + PNG", "jsonl", {"file": str(_jsonl_bench(Path(tmp) / "j"))}),
        ]
        print(
            f"{'benchmark':24s} {'samples':>7s} {'MiB':>7s} {'pass s':>7s} {'ms/sample':>9s} {'grid of 9 cells: s':>19s}"
        )
        for label, name, params in cases:
            try:
                bench = reg.create("benchmark", name, params, where=label)
                _pass(bench)
                n, mib, took = _pass(bench)
            except Exception as exc:  # data not on this machine
                print(f"{label:24s} n/a ({type(exc).__name__}: {str(exc)[:80]})")
                continue
            print(
                f"{label:24s} {n:7d} {mib:7.1f} {took:7.2f} {took / max(n, 1) * 1e3:9.2f} {CELLS * took:19.2f}"
            )
    print(
        f"\nThe re-reads of a {CELLS}-cell grid add one pass per cell: the ms/sample column, per item run."
        " Compare it with a model's time per item (an API request, a forward pass)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
