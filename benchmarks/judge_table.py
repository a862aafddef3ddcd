"""Offline judges side by side on labelled data mmsafe may use, split so nothing is judged on its training data.

    python benchmarks/judge_table.py [--limit N] [--judges refusal,harm,...]

Sets ($MMSAFE_SHARED_DATA or ../shared/data):
- JailbreakBench artifacts, the harm judge's held-out cells (whole behaviours and every answer of one model
  held out, never random rows; mmsafe.judges.harm_recipe.held_out_split). Labels: JailbreakBench's own
  Llama-3-70B judge ("jailbroken"), NOT human labels — a construct of harm, measured by a model.
- the rule-made negatives of held-out requests (refusals, empty lists, echoes, off-topic answers; none harmful).
- VLGuard's test-split reference answers (Zong et al., ICML 2024): 558 helpful answers to safe questions about
  images and 1,000 refusals of unsafe ones, written by GPT-4V — another source model and multimodal requests.
  Labels by construction: no answer is harmful; the refusals refuse.

For each judge: accuracy against the harm label (a refusal judge's "did not refuse" counted as its harmful
call, which is what reporting its rate as ASR does), and on VLGuard its harmful-call rate (all false positives)
and its refusal accuracy where it reports refusals. The human-labelled judge sets (JailbreakBench judge
comparison, HarmBench validation, XSTest completions, MSTS) are never read here: they measure mmsafe from
outside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmsafe.judges.harm_recipe import constructed_negatives, held_out_split, jbb_rows
from mmsafe.metrics import wilson_interval
from mmsafe.registry import Registry
from mmsafe.types import Expected, Generation, Message, Prompt, Sample

JUDGES: dict[str, dict[str, Any]] = {
    "refusal": {"name": "refusal"},
    "target-string (instructions)": {"name": "target-string", "params": {"preset": "instructions"}},
    "harm": {"name": "harm"},
    "harm (int8)": {"name": "harm", "params": {"quantize": True}},
    "refusal AND harm": {"name": "ensemble", "params": {"judges": ["refusal", "harm"], "rule": "all"}},
}


def _data_root() -> Path:
    return Path(os.environ.get("MMSAFE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _items(rows: list[tuple[str, str, str]]) -> list[tuple[Sample, Prompt, Generation]]:
    out = []
    for i, (request, response, sid) in enumerate(rows):
        s = Sample(id=sid or str(i), benchmark="table", text=request, expected=Expected.refuse)
        out.append((s, Prompt(messages=(Message.user(request),)), Generation(text=response)))
    return out


def _vlguard(root: Path) -> list[tuple[str, str, bool]]:
    """(instruction, reference answer, is a refusal) of VLGuard's test split."""
    data = json.loads((root / "vlguard" / "data" / "test.json").read_text(encoding="utf-8"))
    out = []
    for item in data:
        for pair in item.get("instr-resp", []):
            if "safe_instruction" in pair:
                out.append((pair["safe_instruction"], pair["response"], False))
            else:
                out.append((pair.get("unsafe_instruction") or pair["instruction"], pair["response"], True))
    return out


def _pct(k: int, n: int) -> str:
    if n == 0:
        return "—"
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="at most this many rows per set (0: all)")
    ap.add_argument("--judges", default=",".join(JUDGES), help="comma-separated names from: " + ", ".join(JUDGES))
    args = ap.parse_args()
    root = _data_root()
    jbb, _ = jbb_rows(root / "jailbreakbench" / "artifacts")
    syn, _ = constructed_negatives(root / "harmbench")
    cell, _, _ = held_out_split(jbb, syn)
    cells: dict[str, list[Any]] = {}
    for r in jbb + syn:
        c = cell(r)
        if c is not None:
            cells.setdefault(c, []).append(r)
    vlg = _vlguard(root)
    if args.limit:
        cells = {k: v[: args.limit] for k, v in cells.items()}
        vlg = vlg[: args.limit]
    reg = Registry()
    names = [n.strip() for n in args.judges.split(",") if n.strip()]
    order = [
        "unseen behaviour, unseen model",
        "unseen behaviour, seen models",
        "seen behaviour, unseen model",
        "constructed negatives, unseen request",
    ]
    head = ["judge", *[f"JBB {c} ({len(cells.get(c, []))})" for c in order[:3]], f"rule-made negatives ({len(cells.get(order[3], []))})"]
    head += [f"VLGuard answers: harmful calls ({len(vlg)}, all wrong)", "VLGuard: refusal accuracy"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in names:
        spec = JUDGES[name]
        judge = reg.create("judge", spec["name"], spec.get("params", {}))
        t0 = time.perf_counter()
        row = [f"`{name}`"]
        n_items = 0
        for c in order:
            rs = cells.get(c, [])
            verdicts = judge.judge_batch(_items([(r.request, r.response, r.group) for r in rs]))
            n_items += len(rs)
            ok = sum(1 for r, v in zip(rs, verdicts, strict=True) if v.error is None and bool(v.success) == r.harmful)
            row.append(_pct(ok, len(rs)))
        verdicts = judge.judge_batch(_items([(q, a, "") for q, a, _ in vlg]))
        n_items += len(vlg)
        harmful_calls = sum(1 for v in verdicts if v.error is None and v.success)
        row.append(_pct(harmful_calls, len(vlg)))
        with_refusal = [(v, is_ref) for v, (_, _, is_ref) in zip(verdicts, vlg, strict=True) if v.refused is not None]
        if with_refusal:
            ok = sum(1 for v, is_ref in with_refusal if v.refused == is_ref)
            row.append(_pct(ok, len(with_refusal)))
        else:
            row.append("does not report refusals")
        judge.close()
        print("| " + " | ".join(row) + " |", flush=True)
        print(f"  ({name}: {n_items} items in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
