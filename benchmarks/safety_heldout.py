"""Refusal of a gemma-ocr adapter on mmsafe's OWN held-out written requests: the set recipes are chosen on.

    python benchmarks/safety_heldout.py [ADAPTER ...] [--new-tokens 48] [--unseen-by-data OLD.yaml]

ADAPTER: a directory written by `mmsafe train`, `builtin:<name>`, or `none` (the base model). For each,
generates (greedy) on the held-out part of `mmsafe/data/safety_train.yaml` (split by request group,
seed 0: the split every trainer holds out), each request as plain text and as a FigStep-style render
(read by OCR), and prints how many harmful requests were refused and how many benign ones (a third are
trigger-word look-alikes) were refused, by mmsafe's `refusal` rules.

``--unseen-by-data OLD.yaml`` (another version of the written set, e.g. from git history) keeps only the
held-out requests that were not training requests of that version either, so adapters trained on two
versions of the set are compared on requests neither of them saw.

This is where the shipped adapter's recipe was chosen. The evaluation sets of `benchmarks/training.py`
(HarmBench, JailbreakBench, XSTest, vqa-starter) and the quickstart's starter suite were never used to
choose it; `scripts/check_training_overlap.py` shows the written data is disjoint from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("adapters", nargs="*", default=["none"], help="adapter dirs, builtin:<name>, or none")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--unseen-by-data", help="also drop the training requests of this version of the written set")
    args = ap.parse_args()

    from mmsafe.judges.refusal import RefusalJudge
    from mmsafe.labelled.safety_examples import load_safety_items
    from mmsafe.metrics.rates import wilson_interval
    from mmsafe.registry import Registry
    from mmsafe.training.sft import load_examples, text_prompt, typographic_prompt
    from mmsafe.types import Expected, Generation, Sample

    _, held, _ = load_examples("builtin", held_out_fraction=0.2, seed=0)
    if args.unseen_by_data:
        from mmsafe.labelled.safety_examples import split_items

        old_train, _ = split_items(load_safety_items(Path(args.unseen_by_data)), held_out_fraction=0.2, seed=0)
        seen = {r.request for r in old_train}
        held = [e for e in held if e.request not in seen]
        print(f"{len(held)} held-out requests unseen by {args.unseen_by_data} too", file=sys.stderr)
    judge = RefusalJudge()
    items = load_safety_items()
    harm_topics = {it.category for it in items if it.kind == "harmful"}
    on_harm_topic = {it.id for it in items if it.kind == "benign" and it.category in harm_topics}
    forms = {"text": [text_prompt(e.request) for e in held], "render": [typographic_prompt(e) for e in held]}
    for adapter in args.adapters:
        params: dict = {"generation": {"max_new_tokens": args.new_tokens}}
        if adapter != "none":
            params["adapter"] = adapter
        model = Registry().create("model", "gemma-ocr", params, where="safety_heldout")
        t0 = time.perf_counter()
        row: dict = {"adapter": adapter}
        for form, prompts in forms.items():
            gens = model.generate(prompts, seeds=[0] * len(prompts))
            subsets = {
                "harmful": lambda e: e.kind == "harmful",
                "benign": lambda e: e.kind == "benign",
                "benign on a harm topic": lambda e: e.id in on_harm_topic,
                "benign general": lambda e: e.kind == "benign" and e.id not in on_harm_topic,
            }
            for kind, member in subsets.items():
                refused = n = 0
                for e, p, g in zip(held, prompts, gens, strict=True):
                    if not member(e):
                        continue
                    g = g if isinstance(g, Generation) else Generation(text="")
                    expected = Expected.refuse if e.kind == "harmful" else Expected.comply
                    sample = Sample(id=e.id, benchmark="safety-heldout", text=e.request, expected=expected)
                    n += 1
                    refused += bool(judge.judge(sample, p, g).refused)
                lo, hi = wilson_interval(refused, n)
                row[f"{form}: {kind} refused"] = f"{refused}/{n} = {100 * refused / n:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
        row["seconds"] = round(time.perf_counter() - t0)
        print(json.dumps(row, ensure_ascii=False), flush=True)
        del model


if __name__ == "__main__":
    main()
