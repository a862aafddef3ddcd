"""BlueSuffix's suffix generator trained on the real Gemma-3-270M against the default model, held-out before/after.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/bluesuffix_train.py [--out DIR] [--steps 12]
        [--prompts-per-step 2] [--group-size 4] [--eval-prompts 8] [--target-tokens 24] [--judge refusal]
        [--attack appeal-emotion] [--lr 2e-4]

Generator: Gemma-3-270M base as ``hf-text`` (the converted folder ``gemma-ocr`` uses), fed the raw request
text as the authors feed GPT-2 (a chat template that writes the user's text alone), LoRA r 16 / α 16.
Target: ``gemma-ocr-safe`` (the default model: Gemma-3-270M + mmsafe's safety adapter, behind OCR),
``--target-tokens`` new tokens per answer. Jailbreak prompts: every request (training and held out) first
goes through ``--attack`` (default ``appeal-emotion``: on 10 written harmful requests the target refused
10/10 plain, 10/10 under prefix-injection, refusal-suppression, AIM, hypothetical and ignore-previous,
9/10 under FigStep and 7/10 under appeal-emotion, which also raised its refusals of 10 benign requests
from 3 to 5: the one attack here that leaves the reward something to learn from); ``none`` for plain
requests. Reward judge: ``refusal`` (or ``harm``; the harm judge rates no
benign request, so benign rewards are then all 0 and carry no signal). Data: mmsafe's written training set;
the categories fraud, privacy and history are held out (never trained on) and evaluated: the judge's safe
rate on harmful requests and refusal rate on benign ones, with no suffix, the base generator's suffix and
the trained generator's (greedy suffixes). Prints the card's numbers; the adapter and card stay in ``--out``.

Caveat: the target was safety-tuned on the same written set (all categories, by request), so its held-out
refusals are largely its own; what this shows is the trainer's loop on real models at CPU scale
(a few minutes), not BlueSuffix's effect at the paper's 500 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

RAW_TEMPLATE = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--eval-prompts", type=int, default=8)
    ap.add_argument("--target-tokens", type=int, default=24)
    ap.add_argument("--judge", default="refusal", choices=["refusal", "harm"])
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--attack", default="appeal-emotion")
    args = ap.parse_args()

    from mmsafe.models.gemma import ensure_gemma3_270m
    from mmsafe.registry import Registry

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bluesuffix-"))
    params = {
        "model": {"name": "hf-text", "params": {"path": str(ensure_gemma3_270m()), "chat_template": RAW_TEMPLATE,
                                                "device": "cpu", "generation": {"max_new_tokens": 10}}},
        "target": {"name": "gemma-ocr-safe", "params": {"generation": {"max_new_tokens": args.target_tokens}}},
        "judge": args.judge,
        "attack": None if args.attack == "none" else args.attack,
        "steps": args.steps,
        "prompts_per_step": args.prompts_per_step,
        "group_size": args.group_size,
        "eval_prompts": args.eval_prompts,
        "lr": args.lr,
    }  # fmt: skip
    t0 = time.perf_counter()
    card = (
        Registry()
        .create("trainer", "bluesuffix", params)
        .run(out, log_fn=lambda m: print(m, file=sys.stderr))
    )
    wall = time.perf_counter() - t0
    m = card["metrics"]
    print(f"bluesuffix on Gemma-3-270M vs gemma-ocr-safe, judge {args.judge}: {args.steps} steps × "
          f"{args.prompts_per_step} requests × {args.group_size} suffixes; {wall:.0f} s wall, "
          f"peak RSS {card['training']['peak_rss_mb']:.0f} MB")  # fmt: skip
    print(f"attack: {args.attack}; held out: {card['data']['held_out_split']}; "
          f"evaluated {card['data']['n_held_out_evaluated']}")  # fmt: skip
    print(f"{'target input':<28}{'harmful safe rate':>20}{'benign refusal rate':>22}")
    for key, label in (("held_out_no_suffix", "no suffix"), ("held_out_base_generator", "base generator suffix"),
                       ("held_out_trained_generator", "trained generator suffix")):  # fmt: skip
        row = m[key]
        print(f"{label:<28}{row.get('harmful_safe_rate')!s:>20}{row.get('benign_refusal_rate')!s:>22}")
    t = card["training"]
    print(f"training reward first/last fifth: {t['reward_first']} → {t['reward_last']}; "
          f"KL at the last step {t['history'][-1].get('kl')}")  # fmt: skip
    print(
        "suffixes (trained):",
        json.dumps(m["held_out_trained_generator"].get("suffix_examples"), ensure_ascii=False),
    )
    print(f"adapter and card: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
