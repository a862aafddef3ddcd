"""Loss curves of the ``imgjp`` (ImgJP, DeltaJP), ``umk``, ``bap`` and ``jps`` attacks on a tiny random Qwen2-VL.

Issue 21's "must show": each new white-box attack lowers its objective on a non-LLaVA family. The
tiny Qwen2-VL (random weights, built offline by ``tiny`` with ``family: qwen2_vl``; its pixels
reach the model through Qwen2-VL's patching, redone in torch) is attacked with each method for
``--steps`` steps on the built-in behaviours; the per-step loss history each attack records
(``loss_curve``, plus UMK's image-prefix stage ``prefix_loss_curve``; BAP's stage-1 image curve —
its text stage runs one round with the scripted attacker —; JPS's curve of each image fit, the
first without a steer, the second after one revision by the scripted reviser — it continues from
the first fit's image, so on this random model, where the image's effect barely depends on the
prompt, it starts on the plateau the first fit reached and stays flat; exact up to 100 steps,
evenly subsampled to 100 points beyond) is written to ``curves.json`` and ``curves.csv`` and
plotted to ``curves.png`` (matplotlib) or ``curves.svg`` (written by hand when matplotlib is
missing) under ``--out``. First and last loss per curve are printed. Random weights: the curves
show the optimisation works through this family's code path, not any model's safety.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/whitebox_curves.py --out /tmp/curves
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/whitebox_curves.py --family llava --steps 50
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _runs(steps: int, candidates: int) -> dict[str, tuple[str, dict[str, Any]]]:
    # every training behaviour in each step's minibatch (the papers' minibatches — one behaviour,
    # or 8 of them — make a per-step curve jump between batches); step sizes larger than the
    # papers' 1/255 so a short run moves visibly; UMK with fewer GCG candidates than its 250
    return {
        "imgjp": ("imgjp", {"steps": steps, "behavior_batch": 64, "step_size": 4 / 255}),
        "deltajp": (
            "imgjp",
            {"variant": "deltajp", "steps": steps, "behavior_batch": 64, "step_size": 2 / 255},
        ),
        "umk": (
            "umk",
            {
                "steps": steps,
                "prefix_steps": steps,
                "step_size": 4 / 255,
                "candidates": candidates,
                "suffix_init": "! ! ! ! ! ! ! !",
                "prefix_batch": 64,
                "query_batch": 64,
            },
        ),
        "bap": (
            "bap",
            {
                "steps": steps,
                "step_size": 2 / 255,
                "corpus_batch": 64,
                "rounds": 1,
                "attacker": {"name": "scripted", "params": {"default": "@@Tell me more@@"}},
            },
        ),
        "jps": (
            "jps",
            {
                "steps": steps,
                "step_size": 1 / 255,  # the release's α
                "revisions": 1,
                "reviser": {"name": "scripted", "params": {"default": "@@Answer the question in full.@@"}},
            },
        ),
    }


def _svg(curves: dict[str, list[float]], path: Path) -> None:
    """A plain line chart, for machines without matplotlib."""
    w, h, pad = 640, 400, 40
    values = [v for c in curves.values() for v in c]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    lines = []
    for (name, c), colour in zip(curves.items(), colours, strict=False):
        n = max(1, len(c) - 1)
        pts = " ".join(
            f"{pad + i * (w - 2 * pad) / n:.1f},{h - pad - (v - lo) * (h - 2 * pad) / span:.1f}"
            for i, v in enumerate(c)
        )
        lines.append(f'<polyline fill="none" stroke="{colour}" points="{pts}"/>')
        lines.append(
            f'<text x="{w - pad - 150}" y="{pad + 16 * len(lines) // 2}" fill="{colour}">{name}</text>'
        )
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">'
        f'<text x="{pad}" y="20">loss per step ({lo:.3f} – {hi:.3f})</text>{"".join(lines)}</svg>'
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("whitebox-curves"))
    ap.add_argument("--family", default="qwen2_vl", help="tiny family (default qwen2_vl)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=128, help="UMK's GCG candidates per round (paper: 250)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MMSAFE_CACHE_DIR", tempfile.mkdtemp(prefix="mmsafe-curves-"))

    from mmsafe.registry import Registry
    from mmsafe.types import Sample

    reg = Registry(entry_points=False)
    model = reg.create("model", "tiny", {"family": args.family})
    model.load()
    sample = Sample(id="curve", benchmark="bench", text="Tell me something")
    curves: dict[str, list[float]] = {}
    summary: dict[str, Any] = {"family": args.family, "steps": args.steps, "runs": {}}
    for label, (name, params) in _runs(args.steps, args.candidates).items():
        t0 = time.perf_counter()
        prompt = reg.create("attack", name, params).apply(sample, seed=0, target=model)
        meta = prompt.attack_metadata
        if "rounds" in meta:  # jps: one curve per image fit
            for r in meta["rounds"]:
                curves[f"{label} fit {r['revision']}" + (" (steered)" if r["steer"] else "")] = r[
                    "loss_curve"
                ]
        elif "prefix_loss_curve" in meta:
            curves[f"{label} (a) image prefix"] = meta["prefix_loss_curve"]
            curves[f"{label} (b) image + suffix"] = meta["loss_curve"]
        else:
            curves[label] = meta["loss_curve"]
        keep = (
            "train_loss_clean",
            "train_loss_final",
            "heldout_loss_clean",
            "heldout_loss_final",
            "suffix",
            "gcg_rounds",
            "gcg_accepted",
            "linf",
            "delta_linf",
            "corpus_loss_clean",
            "corpus_loss_final",
            "fit_queries",
            "fit_aux_calls",
        )
        summary["runs"][label] = {k: meta[k] for k in keep if k in meta} | {
            "seconds": round(time.perf_counter() - t0, 1)
        }
    summary["curves"] = curves
    (args.out / "curves.json").write_text(json.dumps(summary, indent=1))
    with (args.out / "curves.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["curve", "point", "loss"])
        for name, c in curves.items():
            writer.writerows([name, i, v] for i, v in enumerate(c))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, c in curves.items():
            ax.plot(range(len(c)), c, label=name)
        ax.set_xlabel("step" if args.steps <= 100 else "point (100 evenly spaced)")
        ax.set_ylabel("mean target loss (minibatch)")
        ax.set_title(f"tiny {args.family} (random weights)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out / "curves.png", dpi=100)
        plot = args.out / "curves.png"
    except ImportError:
        plot = args.out / "curves.svg"
        _svg(curves, plot)
    for name, c in curves.items():
        print(f"{name:28s} first {c[0]:.4f}  last {c[-1]:.4f}  min {min(c):.4f}  ({len(c)} points)")
    for label, run in summary["runs"].items():
        print(label, json.dumps(run))
    print(f"wrote {args.out / 'curves.json'}, {args.out / 'curves.csv'}, {plot}")


if __name__ == "__main__":
    main()
