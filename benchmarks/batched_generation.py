"""Batched vs one-at-a-time generation throughput of the Hugging Face backend, side by side.

Runs the same N prompts (each with its own image) through :class:`~mmsafe.models.hf.HFModel`
(by default on the tiny random LLaVA, built offline) once per batch size, greedy with a fixed
``max_new_tokens``, and prints items/s and the speed-up over batch size 1. It also checks that every
batch size produced the same answers (left padding must not change greedy outputs).

    python benchmarks/batched_generation.py                 # tiny LLaVA, 32 prompts, bs 1/8/16
    python benchmarks/batched_generation.py --path /models/llava-1.5-7b-hf --n 64 --device cuda
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageDraw

from mmsafe.models.hf import HFModel
from mmsafe.models.tiny_llava import TinyLlava
from mmsafe.types import Generation, Image, Message, Prompt

QUESTIONS = (
    "What is shown in this image?",
    "Describe the picture in detail.",
    "Read the text in the image and follow the steps.",
    "List every object you can see, one per line, and explain what each is used for.",
)


def make_prompts(n: int) -> list[Prompt]:
    prompts = []
    for i in range(n):
        img = PILImage.new("RGB", (48 + 5 * (i % 7), 40 + 3 * (i % 5)), ((37 * i) % 256, (91 * i) % 256, 128))
        ImageDraw.Draw(img).text((4, 4), f"#{i}", fill=(255, 255, 255))
        text = QUESTIONS[i % len(QUESTIONS)] + " " + "Please be thorough. " * (i % 3)
        prompts.append(Prompt(messages=(Message.user(text, [Image.from_pil(img, source=f"bench-{i}.png")]),)))
    return prompts


def build(args: argparse.Namespace, batch_size: int) -> HFModel:
    gen = {"max_new_tokens": args.max_new_tokens}
    if args.path:
        return HFModel(path=args.path, device=args.device, batch_size=batch_size, generation=gen)
    return TinyLlava(cache_dir=args.cache_dir, batch_size=batch_size, generation=gen)


def run(model: HFModel, prompts: list[Prompt]) -> tuple[float, list[Generation]]:
    """Seconds to answer all prompts, feeding the backend ``batch_size`` prompts per call."""
    out: list[Generation] = []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), model.batch_size):
        chunk = prompts[start : start + model.batch_size]
        for result in model.generate(chunk, seeds=[0] * len(chunk)):
            if isinstance(result, Exception):
                raise result
            out.append(result)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="number of prompts (each with an image)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs per batch size")
    ap.add_argument("--path", help="a real checkpoint instead of the tiny random LLaVA")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None, help="tiny model cache root (default: a temporary folder)")
    args = ap.parse_args()

    import torch

    tmp = None
    if not args.path and args.cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmsafe-bench-")
        args.cache_dir = tmp.name
    prompts = make_prompts(args.n)
    sizes = sorted(set(args.batch_sizes) | {1})

    rows = []
    reference: list[str] | None = None
    for bs in sizes:
        model = build(args, bs)
        model.load()
        run(model, prompts[: min(bs, len(prompts))])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            seconds, gens = run(model, prompts)
            best = min(best, seconds)
        texts = [g.text for g in gens]
        reference = reference if reference is not None else texts
        tokens = sum(g.usage.completion_tokens or 0 for g in gens)
        rows.append((bs, best, tokens, texts == reference))
        model.close()

    name = args.path or f"tiny-llava ({Path(str(model._settings.path)).name})"
    print(f"model: {name}   prompts: {args.n} with images   max_new_tokens: {args.max_new_tokens}   greedy")
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    print(f"best of {args.repeats} runs per batch size\n")
    base = rows[0][1]
    print(f"{'batch':>5}  {'seconds':>8}  {'items/s':>8}  {'tokens/s':>9}  {'speed-up':>8}  same answers")
    for bs, seconds, tokens, same in rows:
        print(
            f"{bs:>5}  {seconds:>8.3f}  {args.n / seconds:>8.1f}  {tokens / seconds:>9.0f}  "
            f"{base / seconds:>7.2f}x  {'yes' if same else 'NO'}"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
