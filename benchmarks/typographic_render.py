"""FigStep typography on all 500 SafeBench instructions: mmsafe's attack vs FigStep's own generator.

Prints, side by side in one run, each the median of ``--repeats`` passes over the set:

- FigStep's own generator: render on an RGB canvas + PIL's default PNG save (what ThuCCSLab/FigStep
  ``src/generate_prompts.py`` does; saved to memory here, so the disk is not timed);
- mmsafe's attack, ``FigStep.apply`` (grey canvas + 8-bit grey PNG at zlib level 1, via
  ``Image.from_pil``, plus the overflow check and metadata), and its render + encode alone;
- the ratio of their times (target ≥ 2×), encoded bytes per image, and how many of the 500 images
  decode to RGB pixels identical to the default-PNG decode of FigStep's RGB render (must be all);
- the grey PNG at zlib levels 1, 3 and 6 (time and bytes), render alone, and the encode share;

then the corpus character error rate of Tesseract over the renders (instruction only: trailing
"1."/"2."/"3." marker lines are dropped, as in tests/test_figstep_ocr.py; and with markers).

    python benchmarks/typographic_render.py [--data ../shared/data] [--repeats 3] [--ocr-limit N] [--no-ocr]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImageModule

from mmsafe.attacks.typographic.figstep import FigStep, render_figstep
from mmsafe.ocr import corpus_character_error_rate, normalise_ocr_text, ocr_image, tesseract_available
from mmsafe.render.fonts import find_font
from mmsafe.types import Image, Sample

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
    ap.add_argument("--no-ocr", action="store_true", help="skip the OCR read-back")
    args = ap.parse_args()

    with (Path(args.data) / "figstep" / "question" / "safebench.csv").open(
        newline="", encoding="utf-8"
    ) as fh:
        instructions = [r["instruction"] for r in csv.DictReader(fh)]
    font, reference = find_font(None)
    n = len(instructions)
    print(f"{n} SafeBench instructions; font {font} (reference font: {reference}); medians of {args.repeats}")
    attack = FigStep(font_path=font)
    index = {ins: i for i, ins in enumerate(instructions)}
    samples = [
        Sample(id=f"safebench/{i}", benchmark="safebench", metadata={"instruction": ins})
        for i, ins in enumerate(instructions)
    ]

    def upstream(ins: str) -> bytes:  # FigStep's generator: RGB canvas, PIL's default PNG
        buf = io.BytesIO()
        render_figstep(ins, font_path=font).save(buf, format="PNG")
        return buf.getvalue()

    def grey_png(level: int) -> Callable[[str], bytes]:
        def encode(ins: str) -> bytes:
            buf = io.BytesIO()
            render_figstep(ins, font_path=font, mode="L").save(buf, format="PNG", compress_level=level)
            return buf.getvalue()

        return encode

    cases: dict[str, Callable[[str], Any]] = {
        "FigStep's generator (RGB render + PIL default PNG)": upstream,
        "mmsafe FigStep.apply (the attack)": lambda ins: attack.apply(samples[index[ins]], seed=0),
        "mmsafe render + encode (grey, Image.from_pil)": lambda ins: Image.from_pil(
            render_figstep(ins, font_path=font, mode="L")
        ),
        "  grey PNG level 1": grey_png(1),
        "  grey PNG level 3": grey_png(3),
        "  grey PNG level 6": grey_png(6),
        "render only, RGB canvas": lambda ins: render_figstep(ins, font_path=font),
        "render only, grey canvas": lambda ins: render_figstep(ins, font_path=font, mode="L"),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    outs: dict[str, list[Any]] = {}
    for _ in range(args.repeats):  # interleaved: every case sees the same machine state in each pass
        for name, fn in cases.items():
            t0 = time.perf_counter()
            out = [fn(ins) for ins in instructions]
            times[name].append(time.perf_counter() - t0)
            outs[name] = out
    med = {k: statistics.median(v) for k, v in times.items()}

    def nbytes(name: str) -> float:
        out = outs[name]
        if name.startswith("mmsafe FigStep.apply"):
            out = [p.images[0].data for p in out]
        elif name.startswith("mmsafe render"):
            out = [im.data for im in out]
        elif name.startswith("render only"):
            return float("nan")
        return sum(len(b) for b in out) / n

    base = med["FigStep's generator (RGB render + PIL default PNG)"]
    print(f"{'':52s} {'ms/image':>9s} {'images/s':>9s} {'vs FigStep':>10s} {'bytes/image':>11s}")
    for name in cases:
        t = med[name]
        b = nbytes(name)
        size = "" if b != b else f"{b:11,.0f}"
        print(f"{name:52s} {t / n * 1e3:9.2f} {n / t:9.1f} {base / t:9.2f}x {size}")

    attack_png = [p.images[0] for p in outs["mmsafe FigStep.apply (the attack)"]]
    same = sum(
        np.array_equal(
            np.asarray(ours.to_pil("RGB")),
            np.asarray(PILImageModule.open(io.BytesIO(theirs)).convert("RGB")),
        )
        for ours, theirs in zip(
            attack_png, outs["FigStep's generator (RGB render + PIL default PNG)"], strict=True
        )
    )
    print(f"decoded RGB pixels of the attack's image == FigStep's default-PNG decode: {same}/{n}")
    t_attack = med["mmsafe FigStep.apply (the attack)"]
    print(
        f"ratio FigStep's generator / mmsafe attack: {base / t_attack:.2f}x (target >= 2x)\n"
        f"time outside rendering: FigStep's generator {1 - med['render only, RGB canvas'] / base:.0%} "
        f"(PNG encode), the attack {1 - med['render only, grey canvas'] / t_attack:.0%} "
        "(grey PNG encode, overflow check, metadata)"
    )

    if args.no_ocr:
        return
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
