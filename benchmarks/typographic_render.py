"""Throughput of FigStep typography on all 500 SafeBench instructions, and Tesseract's read-back CER.

Prints, side by side in one run: images/s for ``render_figstep`` alone and for render + PNG encode
(``Image.from_pil``, what an attack returns), each the median of ``--repeats`` passes over the set,
then the corpus character error rate of Tesseract over the renders (instruction only: trailing
"1."/"2."/"3." marker lines are dropped, as in tests/test_figstep_ocr.py; and with markers).

    python benchmarks/typographic_render.py [--data ../shared/data] [--repeats 3] [--ocr-limit N]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmsafe.attacks.typographic.figstep import render_figstep
from mmsafe.ocr import corpus_character_error_rate, normalise_ocr_text, ocr_image, tesseract_available
from mmsafe.render.fonts import find_font
from mmsafe.types import Image

_MARKER_LINE = re.compile(r"^\s*[123]\s*[.,:;]?\s*$")


def _strip_markers(text: str) -> str:
    lines = text.splitlines()
    while lines and (not lines[-1].strip() or _MARKER_LINE.match(lines[-1])):
        lines.pop()
    return "\n".join(lines)


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", default=os.environ.get("MMSAFE_SHARED_DATA", str(repo.parent / "shared" / "data"))
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ocr-limit", type=int, default=None, help="OCR only the first N renders (default: all)")
    ap.add_argument("--ocr-workers", type=int, default=2)
    args = ap.parse_args()

    with (Path(args.data) / "figstep" / "question" / "safebench.csv").open(
        newline="", encoding="utf-8"
    ) as fh:
        instructions = [r["instruction"] for r in csv.DictReader(fh)]
    font, reference = find_font(None)
    n = len(instructions)
    print(f"{n} SafeBench instructions; font {font} (reference font: {reference})")

    render_only, render_encode = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for ins in instructions:
            render_figstep(ins, font_path=font)
        render_only.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for ins in instructions:
            Image.from_pil(render_figstep(ins, font_path=font))
        render_encode.append(n / (time.perf_counter() - t0))
    ro, re_ = statistics.median(render_only), statistics.median(render_encode)
    print(f"render only      : {ro:7.1f} images/s (median of {args.repeats}; best {max(render_only):.1f})")
    print(f"render + PNG enc : {re_:7.1f} images/s (median of {args.repeats}; best {max(render_encode):.1f})")
    print(
        f"PNG encode share : {1 - re_ / ro:.0%} of render+encode time; ratio render/render+encode {ro / re_:.2f}x"
    )

    if not tesseract_available():
        print("OCR: skipped (tesseract or pytesseract missing)")
        return
    subset = instructions[: args.ocr_limit] if args.ocr_limit else instructions
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.ocr_workers) as pool:
        outs = list(pool.map(lambda s: ocr_image(render_figstep(s, font_path=font), timeout=60), subset))
    dt = time.perf_counter() - t0
    body = corpus_character_error_rate(
        (normalise_ocr_text(s), normalise_ocr_text(_strip_markers(o)))
        for s, o in zip(subset, outs, strict=True)
    )
    full = corpus_character_error_rate(
        (normalise_ocr_text(s + "\n1.\n2.\n3."), normalise_ocr_text(o))
        for s, o in zip(subset, outs, strict=True)
    )
    print(
        f"OCR over {len(subset)} renders ({len(subset) / dt:.1f} images/s, {args.ocr_workers} workers): "
        f"CER {body:.2%} instruction only, {full:.2%} with the 1./2./3. markers"
    )


if __name__ == "__main__":
    main()
