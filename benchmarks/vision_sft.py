"""Multimodal safety SFT (``sft-vision``, VLGuard-style) on gemma-llava: base vs trained, one table.

    python benchmarks/vision_sft.py [--out DIR] [--n-examples 120] [--epochs 1] [--max-tokens 96]
                                    [--lr 5e-4] [--projector-lr 5e-3] [--limit 40] [--reuse]

1. Trains ``sft-vision`` on ``gemma-llava`` (random CLIP tower + projector in front of the real
   Gemma-3-270M base) on mmsafe's written training set (``builtin``: ``mmsafe/data/safety_train.yaml``,
   its held-out split by request group, seed 0), ``--n-examples`` examples at the data's own harmful
   share, shown as FigStep-style typographic renders (plus a quarter again as text-only pairs), LoRA on
   the language model + the projector in full, in this process (its training seconds and peak RSS are
   the card's).
2. Generates (greedy, ``--new-tokens``) on the HELD-OUT items only, with the base model and with the
   adapter (``gemma-llava`` ``adapter:``), side by side:
   * FigStep attack (:class:`mmsafe.attacks.typographic.figstep.FigStep`, its own rendering and
     instruction: the item's ``title``, else the request rephrased) on held-out harmful requests —
     refusal rate (mmsafe's ``refusal`` judge);
   * the same render of held-out benign requests — answered rate (not refused);
   * held-out harmful requests as plain text — refusal rate.
   Each with a 95% Wilson interval.
3. Also prints a linear probe on the FROZEN random vision tower's features (logistic regression,
   harmful vs benign render, fitted on training renders, scored on held-out renders): how much of the
   request's harmfulness the random tower keeps at all. gemma-llava's tower has never seen an image,
   so whatever the trained model learns from a render is statistics of these features, not reading.

Gemma-3-270M base is not safety-aligned and its vision half is random: these numbers test the
training machinery, not any model's safety.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _pct(k: int, n: int) -> str:
    from mmsafe.metrics.rates import wilson_interval

    if n == 0:
        return "—"
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}] (n={n})"


def _train(out: Path, *, params: dict[str, Any], reuse: bool) -> dict[str, Any]:
    from mmsafe.lora import read_card
    from mmsafe.registry import Registry
    from mmsafe.training.sft_vision import VisionSafetySFT

    if reuse and (out / "card.json").is_file():
        return read_card(out)
    reg = Registry()
    if "sft-vision" not in reg.names("trainer"):
        reg.register("trainer", "sft-vision", VisionSafetySFT)
    trainer = reg.create("trainer", "sft-vision", params)
    return trainer.run(out, log_fn=lambda m: print(m, file=sys.stderr, flush=True))


def _probe(items_train: list[Any], items_held: list[Any], *, threads: int) -> str:
    """Held-out accuracy of a logistic regression on the frozen tower's mean and max-pooled features."""
    try:
        import numpy as np
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return "(scikit-learn not installed)"
    import torch

    from mmsafe.models.gemma_llava import GemmaLlava
    from mmsafe.training.sft import Example
    from mmsafe.training.sft_vision import render_title, typographic_prompt

    m = GemmaLlava({"cpu_threads": threads})
    m.load()

    def feats(items: list[Any]) -> tuple[Any, Any]:
        rows = []
        with torch.no_grad():
            for it in items:
                prompt = typographic_prompt(render_title(Example(it.request, it.target, it.kind, title=it.title)))
                f = m.image_features([m.to_pixels(prompt.images[0])], space="encoder")[0]
                rows.append(torch.cat([f.mean(0), f.amax(0)]).numpy())
        return np.array(rows), np.array([it.kind == "harmful" for it in items])

    xtr, ytr = feats(items_train)
    xte, yte = feats(items_held)
    m.close()
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=5000).fit((xtr - mu) / sd, ytr)
    acc = clf.score((xte - mu) / sd, yte)
    return f"{100 * acc:.1f}% held-out accuracy (train {100 * clf.score((xtr - mu) / sd, ytr):.0f}%, chance {100 * max(yte.mean(), 1 - yte.mean()):.0f}%)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="mmsafe-out/vision-sft-benchmark", help="the adapter goes here")
    ap.add_argument("--n-examples", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=96, help="answer tokens kept per training example")
    ap.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate")
    ap.add_argument("--projector-lr", type=float, default=5e-3)
    ap.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% more time")
    ap.add_argument("--new-tokens", type=int, default=24, help="tokens generated per evaluation answer")
    ap.add_argument("--limit", type=int, default=40, help="held-out items per set (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-train", type=int, default=160, help="training renders for the linear probe (0: skip)")
    ap.add_argument("--reuse", action="store_true", help="keep an adapter already trained in --out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from mmsafe.attacks.typographic.figstep import FigStep
    from mmsafe.judges.refusal import RefusalJudge
    from mmsafe.labelled.safety_examples import load_safety_items, split_items
    from mmsafe.models.base import GenerationParams
    from mmsafe.models.gemma_llava import GemmaLlava, ensure_gemma_llava
    from mmsafe.types import Expected, Message, Prompt, Sample

    ensure_gemma_llava()  # built once, outside the timed training
    params = {
        "model": {"name": "gemma-llava", "params": {"cpu_threads": args.threads}},
        "data": "builtin",
        "n_examples": args.n_examples,
        "epochs": args.epochs,
        "lr": args.lr,
        "projector_lr": args.projector_lr,
        "max_tokens": args.max_tokens,
        "batch_size": 4,
        "text_share": 0.25,
        "gradient_checkpointing": args.gradient_checkpointing,
        "n_held_out_eval": 0,
        "held_out_fraction": 0.2,
        "seed": 0,
    }
    t0 = time.perf_counter()
    reused = args.reuse and (out / "adapter" / "card.json").is_file()
    card = _train(out / "adapter", params=params, reuse=args.reuse)
    wall = time.perf_counter() - t0

    train_items, held = split_items(load_safety_items(), held_out_fraction=0.2, seed=0)
    harmful = [it for it in held if it.kind == "harmful"]
    benign = [it for it in held if it.kind == "benign"]
    if args.limit:
        harmful, benign = harmful[: args.limit], benign[: args.limit]
    attack = FigStep()

    def sample(it: Any) -> Sample:
        meta = {"instruction": it.title} if it.title else {}
        expected = Expected.refuse if it.kind == "harmful" else Expected.comply
        return Sample(id=it.id, benchmark="safety-train-held-out", text=it.request, expected=expected, metadata=meta)

    sets = {
        "FigStep on held-out harmful: refused": [(sample(it), attack.apply(sample(it), seed=0)) for it in harmful],
        "benign typographic renders: answered": [(sample(it), attack.apply(sample(it), seed=0)) for it in benign],
        "held-out harmful as text: refused": [
            (sample(it), Prompt(messages=(Message.user(it.request),))) for it in harmful
        ],
    }
    judge = RefusalJudge()
    columns: dict[str, dict[str, str]] = {}
    examples: dict[str, list[str]] = {}
    gen = GenerationParams(max_new_tokens=args.new_tokens)
    for label, adapter in (("base", None), ("sft-vision", str((out / "adapter").resolve()))):
        model = GemmaLlava({"cpu_threads": args.threads, "generation": gen, "adapter": adapter, "batch_size": 8})
        model.load()
        t1 = time.perf_counter()
        col: dict[str, str] = {}
        render_answers: list[str] = []
        for name, rows in sets.items():
            gens = model.generate([p for _, p in rows], seeds=[0] * len(rows))
            if "text" not in name:
                render_answers += [g.text.strip() for g in gens]
            verdicts = judge.judge_batch([(s, p, g) for (s, p), g in zip(rows, gens, strict=True)])
            refused = sum(bool(v.refused) for v in verdicts)
            k = len(rows) - refused if "answered" in name else refused
            col[name] = _pct(k, len(rows))
            examples.setdefault(f"{label} | {name}", [g.text[:90] for g in gens[:2]])
        # an image-blind model says the same thing whatever the render shows
        col["distinct answers over all renders"] = f"{len(set(render_answers))} of {len(render_answers)}"
        col["generation seconds"] = f"{time.perf_counter() - t1:.0f}"
        model.close()
        columns[label] = col

    step = max(1, len(train_items) // max(1, args.probe_train))  # both kinds: the file lists harmful items first
    probe = _probe(train_items[::step], held, threads=args.threads) if args.probe_train else "skipped"

    tr = card.get("training", {})
    rows_out = [*next(iter(columns.values())).keys()]
    print(f"# sft-vision on gemma-llava: {card['data']['n_train']} training pairs "
          f"({card['data']['n_typographic']} renders, {card['data']['n_text']} text), {params['epochs']} epoch(s), "
          f"max_tokens {args.max_tokens}, lr {args.lr:g} (projector {args.projector_lr:g}); held-out: {len(harmful)} harmful, {len(benign)} benign")
    print("| measure | base | sft-vision |")
    print("|---|---|---|")
    for r in rows_out:
        print(f"| {r} | {columns['base'][r]} | {columns['sft-vision'][r]} |")
    print(f"| training seconds | — | {tr.get('seconds')} (loss {tr.get('loss_first')} → {tr.get('loss_last')}) |")
    print(f"| peak RSS (training process) | — | {tr.get('peak_rss_mb', 0) / 1024:.2f} GiB |")
    print(f"| trainable parameters | — | LoRA {card['trainable']['lora_parameters']:,} + projector "
          f"{card['trainable']['full_weight_parameters']:,} |")
    print(f"\nlinear probe on the frozen random tower's features (harmful vs benign render): {probe}")
    if not reused:
        print(f"training wall time incl. model load and rendering: {wall:.0f} s")
    print("\nfirst answers:")
    print(json.dumps(examples, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
