"""The default model on llama.cpp (``llamacpp``) vs on transformers (``gemma-ocr``), side by side.

The same K prompts (the starter suite's SafeBench-style requests, in the dialogue format both
backends share) go through ``gemma-ocr`` (transformers, float32, the default model today) one at a
time and as one batch, and through ``llamacpp`` (llama.cpp on the same Q4_K_M GGUF), greedy, with the
same ``max_new_tokens``, in one process; each is timed ``--repeats`` times (median). Printed: new
tokens/s of each, the ratios, the share of greedy answers that are exactly equal, and where the two
engines' greedy token streams first differ (mean position over the differing prompts, stop strings
off, so both write ``max_new_tokens`` tokens unless one ends). At each first difference the script
also prints transformers' gap between its top two logits there: small gaps are near-ties, which
llama.cpp (quantised weights and 8-bit activations in its dot products) may resolve the other way.

    python benchmarks/gguf_backend.py                        # K=8, 64 tokens, 3 repeats, 2 threads
    python benchmarks/gguf_backend.py --llama-threads 2 1    # llama.cpp also on 1 thread (a busy machine)
    python benchmarks/gguf_backend.py --k 16 --max-new-tokens 128 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from mmsafe.datasets.starter import Starter
from mmsafe.models.base import GenerationParams
from mmsafe.models.gemma_ocr import GemmaOCR
from mmsafe.models.llamacpp import LlamaCppModel
from mmsafe.types import Generation, Message, Prompt


def prompts(k: int) -> list[Prompt]:
    texts = [s.text for s in Starter().load()]
    return [Prompt(messages=(Message.user(texts[i % len(texts)]),)) for i in range(k)]


def timed(model, ps: list[Prompt], repeats: int, *, one_at_a_time: bool = False) -> tuple[float, list[Generation]]:
    """Median new tokens/s over ``repeats`` runs of ``model.generate(ps)`` (or one ``generate`` call per
    prompt), and the last answers."""
    rates = []
    out: list = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if one_at_a_time:
            out = [model.generate([p], seeds=[0])[0] for p in ps]
        else:
            out = model.generate(ps, seeds=[0] * len(ps))
        dt = time.perf_counter() - t0
        bad = [g for g in out if isinstance(g, Exception)]
        if bad:
            raise RuntimeError(f"{type(model).__name__}: {bad[0]!r}")
        rates.append(sum(g.usage.completion_tokens or 0 for g in out) / dt)
    return statistics.median(rates), out


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=8, help="prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and llama.cpp's)")
    ap.add_argument(
        "--llama-threads",
        type=int,
        nargs="+",
        default=None,
        help="llama.cpp thread counts to time, one row each (default: --threads); the first is compared",
    )
    ap.add_argument("--cache-dir", default=None, help="default $MMSAFE_CACHE_DIR or ~/.cache/mmsafe")
    args = ap.parse_args()
    import torch

    gen = GenerationParams(max_new_tokens=args.max_new_tokens)
    ps = prompts(args.k)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
        f"K={args.k}, max_new_tokens={args.max_new_tokens}, greedy, median of {args.repeats}"
    )
    common = {"cache_dir": args.cache_dir, "generation": gen}
    hf = GemmaOCR({**common, "batch_size": max(args.k, 1), "cpu_threads": args.threads})
    llama_threads = args.llama_threads or [args.threads]
    lls = [LlamaCppModel({**common, "n_threads": n}) for n in llama_threads]
    ll = lls[0]
    t0 = time.perf_counter()
    hf.load()
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in lls:
        m.load()
    t_ll = time.perf_counter() - t0
    print(f"load: transformers {t_hf:.1f} s, llama.cpp {t_ll:.1f} s ({ll.p.binding})")

    r_one, a_hf = timed(hf, ps, args.repeats, one_at_a_time=True)
    r_batch, a_hfb = timed(hf, ps, args.repeats)
    rates = [timed(m, ps, args.repeats) for m in lls]
    a_ll = rates[0][1]
    print(f"\n{'path':<38} {'tok/s':>7} {'vs transformers one at a time':>30} {'vs batched':>11}")
    print(f"{'transformers, one at a time':<38} {r_one:>7.1f} {1.0:>29.2f}x {r_one / r_batch:>10.2f}x")
    print(f"{'transformers, batch of ' + str(args.k):<38} {r_batch:>7.1f} {r_batch / r_one:>29.2f}x {1.0:>10.2f}x")
    for n, (r, _) in zip(llama_threads, rates, strict=True):
        label = f"llama.cpp (llamacpp), {n} thread{'s' if n > 1 else ''}"
        print(f"{label:<38} {r:>7.1f} {r / r_one:>29.2f}x {r / r_batch:>10.2f}x")

    same = sum(a.text == b.text for a, b in zip(a_hf, a_ll, strict=True))
    same_b = sum(a.text == b.text for a, b in zip(a_hfb, a_hf, strict=True))
    print(f"\ngreedy answers equal (transformers vs llama.cpp): {same}/{len(ps)} ({same / len(ps):.0%})")
    print(f"  (transformers batched vs one at a time: {same_b}/{len(ps)})")

    # token streams without stop strings: where do the two engines first part?
    positions, gaps = [], []
    model, tok = hf._model, hf._tokenizer
    eos = list(hf._eos_ids)
    for i, p in enumerate(ps):
        text, _ = ll.render(p)
        ids = ll.tokenize(text)
        saved, ll._stops = ll._stops, ()
        try:
            ll_new = [int(t) for t in ll.complete(ids, seed=0)["tokens"]]
        finally:
            ll._stops = saved
        with torch.inference_mode():
            enc = torch.tensor([ids])
            out = model.generate(
                input_ids=enc,
                attention_mask=torch.ones_like(enc),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tok.pad_token_id,
            )
        hf_new = [int(t) for t in out[0, len(ids) :].tolist() if int(t) not in eos]
        ll_new = [t for t in ll_new if t not in eos]
        pos = first_difference(hf_new, ll_new)
        if pos is None:
            continue
        positions.append(pos)
        with torch.inference_mode():
            logits = model(torch.tensor([ids + hf_new[:pos]])).logits[0, -1].float()
        top = torch.topk(logits, 2).values
        gaps.append(float(top[0] - top[1]))
        print(
            f"  prompt {i}: first difference at new token {pos} "
            f"(transformers {tok.decode(hf_new[pos : pos + 1])!r} vs llama.cpp "
            f"{tok.decode(ll_new[pos : pos + 1]) if pos < len(ll_new) else '<end>'!r}; "
            f"transformers' top-2 logit gap there {gaps[-1]:.3f})"
        )
    n_same = len(ps) - len(positions)
    print(f"token streams identical for {args.max_new_tokens} tokens: {n_same}/{len(ps)}")
    if positions:
        print(
            f"mean first-difference position over the {len(positions)} differing: "
            f"{statistics.mean(positions):.1f} tokens; median top-2 logit gap there {statistics.median(gaps):.3f}"
        )
    for m in lls:
        m.close()
    hf.close()


if __name__ == "__main__":
    main()
