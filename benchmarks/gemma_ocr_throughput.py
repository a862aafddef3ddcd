"""Gemma-3-270M behind OCR: conversion, OCR and batched vs one-at-a-time generation, side by side.

Measures what the quickstart (starter suite × text-only + FigStep = 80 generations) spends its
time on, in one process: the one-time GGUF conversion (or the seconds it took, read from the cached
folder), loading, Tesseract per 760×760 FigStep image, and generation of the same N prompts at each
batch size (greedy, ``max_new_tokens`` fixed, so every row decodes the same number of steps). The
last lines project the quickstart's wall time from these numbers. Answers must not depend on the
batch size (left padding must not change greedy outputs); the script says so when they do.

It also times the stop-string criterion (the ``\nUser:`` cut of the dialogue format) side by side:
built once per loaded model, as mmsafe does, vs rebuilt on every ``generate`` call, which is what
passing ``stop_strings`` to transformers' ``generate`` does (a scan of the 262k-token vocabulary).

    python benchmarks/gemma_ocr_throughput.py                       # N=16, bs 1/8/16/20, 64 tokens
    python benchmarks/gemma_ocr_throughput.py --n 40 --batch-sizes 1 20 40 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from mmsafe.attacks.typographic.figstep import FIGSTEP_PROMPT, render_figstep
from mmsafe.datasets.starter import Starter
from mmsafe.models.base import GenerationParams
from mmsafe.models.gemma import CONVERSION_MARKER, ensure_gemma3_270m, gemma3_270m_folder
from mmsafe.models.gemma_ocr import GemmaOCR
from mmsafe.ocr import ocr_image
from mmsafe.render.fonts import find_font
from mmsafe.types import Image, Message, Prompt


def starter_texts(n: int) -> list[str]:
    texts = [s.text for s in Starter().load()]
    return [texts[i % len(texts)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="prompts per batch-size run")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 20])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="inference dtype")
    ap.add_argument("--ocr-images", type=int, default=8)
    ap.add_argument("--cpu-threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=None, help="default $MMSAFE_CACHE_DIR or ~/.cache/mmsafe")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, dtype {args.dtype}")

    cached = (gemma3_270m_folder(args.cache_dir) / CONVERSION_MARKER).is_file()
    t0 = time.perf_counter()
    folder = ensure_gemma3_270m(args.cache_dir)  # bfloat16 on disk, any inference dtype
    took = json.loads((folder / CONVERSION_MARKER).read_text())["seconds"]["total"]
    print(
        f"conversion: {took:.1f} s ({'cached earlier' if cached else 'just now'}: {time.perf_counter() - t0:.1f} s)"
    )

    font, _ = find_font()
    texts = starter_texts(max(args.n, args.ocr_images))
    images = [Image.from_pil(render_figstep(t, font_path=font)) for t in texts[: args.ocr_images]]
    t0 = time.perf_counter()
    for img in images:
        ocr_image(img.to_pil("RGB"))
    ocr_s = (time.perf_counter() - t0) / len(images)
    print(f"OCR: {ocr_s:.2f} s per 760x760 FigStep image (Tesseract, {len(images)} images)")

    prompts = [Prompt(messages=(Message.user(t),)) for t in texts[: args.n]]
    gen = GenerationParams(max_new_tokens=args.max_new_tokens)

    def loaded(batch_size: int = 20) -> GemmaOCR:
        m = GemmaOCR(
            cache_dir=args.cache_dir,
            dtype=args.dtype,
            generation=gen,
            cpu_threads=args.cpu_threads,
            batch_size=batch_size,
        )
        m.load()
        return m

    t0 = time.perf_counter()
    model = loaded()
    print(f"load: {time.perf_counter() - t0:.1f} s")
    model.generate(prompts[:2], seeds=[0, 0])  # warm-up (oneDNN kernels, allocator)

    print(f"\n{'batch':>5} {'seconds':>8} {'items/s':>8} {'tok/s':>7} {'speed-up':>8}")
    base_rate: float | None = None
    answers: dict[int, list[str]] = {}
    per_item: dict[int, float] = {}
    for bs in args.batch_sizes:
        model = loaded(bs)
        t0 = time.perf_counter()
        out = model.generate(prompts, seeds=[0] * len(prompts))
        dt = time.perf_counter() - t0
        bad = [g for g in out if isinstance(g, Exception)]
        if bad:
            raise bad[0]
        tokens = sum(g.usage.completion_tokens for g in out)  # type: ignore[union-attr]
        rate = len(prompts) / dt
        base_rate = base_rate or rate
        per_item[bs] = dt / len(prompts)
        answers[bs] = [g.text for g in out]  # type: ignore[union-attr]
        print(f"{bs:>5} {dt:>8.1f} {rate:>8.2f} {tokens / dt:>7.1f} {rate / base_rate:>7.1f}x")
        model.close()
    ref = answers[args.batch_sizes[0]]
    same = {bs: sum(a == b for a, b in zip(ref, ans, strict=True)) for bs, ans in answers.items()}
    print(f"answers equal to batch size {args.batch_sizes[0]}: {same}")

    # the stop-string criterion: once per loaded model vs rebuilt every call (transformers' stop_strings)
    import transformers

    bs = args.batch_sizes[-1]
    model = loaded(bs)
    model.generate(prompts[:bs], seeds=[0] * bs)  # builds the criterion once
    calls = max(1, -(-len(prompts) // bs))
    t0 = time.perf_counter()
    once = model.generate(prompts, seeds=[0] * len(prompts))
    t_once = time.perf_counter() - t0
    stops = list(model._settings.stop_strings)  # type: ignore[union-attr]
    model._stopping_criteria = lambda: transformers.StoppingCriteriaList(  # type: ignore[method-assign]
        [transformers.StopStringCriteria(model._tokenizer, stops)]
    )
    t0 = time.perf_counter()
    per_call = model.generate(prompts, seeds=[0] * len(prompts))
    t_per_call = time.perf_counter() - t0
    model.close()
    same_answers = [g.text for g in once] == [g.text for g in per_call]  # type: ignore[union-attr]
    print(
        f"\nstop strings {stops!r}, batch {bs}, {calls} generate calls: built once {t_once:.1f} s, rebuilt "
        f"per call {t_per_call:.1f} s ({t_per_call / t_once:.2f}x; answers equal: {same_answers})"
    )

    best = min(per_item, key=per_item.__getitem__)
    figstep_extra = len(FIGSTEP_PROMPT) / 4 / 200  # longer prompts: a rough allowance per item
    gen_s = 80 * per_item[best] * (1 + figstep_extra / 2)
    total = 7 + took + 2 + 40 * ocr_s + gen_s
    print(
        f"\nquickstart projection (80 generations at batch {best}): import ~7 s + conversion {took:.0f} s + "
        f"load ~2 s + OCR {40 * ocr_s:.0f} s + generation {gen_s:.0f} s = {total:.0f} s (budget 300 s)"
    )


if __name__ == "__main__":
    main()
