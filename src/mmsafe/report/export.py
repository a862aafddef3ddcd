"""Write every record of a store as JSONL or CSV."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from mmsafe.report.escape import csv_cell
from mmsafe.store.sqlite import Store
from mmsafe.types import Record

log = logging.getLogger("mmsafe.report")

CSV_COLUMNS = (
    "key",
    "run",
    "sample_id",
    "benchmark",
    "category",
    "expected",
    "model",
    "model_key",
    "attack",
    "attack_key",
    "defense",
    "judge",
    "prompt_text",
    "image_hashes",
    "response",
    "success",
    "refused",
    "score",
    "verdict_label",
    "rationale",
    "judge_error",
    "error",
    "error_stage",
    "timings",
    "random_weights",
)


def flat(r: Record) -> dict[str, Any]:
    """One record as a flat row (the CSV columns)."""
    j = r.judgement
    prompt_text = ""
    if r.prompt:
        texts = [
            p.get("text", "")
            for m in r.prompt.get("messages", [])
            for p in m.get("content", [])
            if p.get("type") == "text"
        ]
        prompt_text = "\n".join(texts)
    return {
        "key": r.key,
        "run": r.run,
        "sample_id": r.sample_id,
        "benchmark": r.benchmark,
        "category": r.category,
        "expected": r.expected.value,
        "model": r.model.name,
        "model_key": r.model.key,
        "attack": r.attack.name,
        "attack_key": r.attack.key,
        "defense": r.defense.name,
        "judge": r.judge.name,
        "prompt_text": prompt_text,
        "image_hashes": " ".join(r.image_hashes),
        "response": r.response,
        "success": None if j is None else j.success,
        "refused": None if j is None else j.refused,
        "score": None if j is None else j.score,
        "verdict_label": None if j is None else j.label,
        "rationale": None if j is None else j.rationale,
        "judge_error": None if j is None else j.error,
        "error": r.error,
        "error_stage": r.error_stage,
        "timings": json.dumps(r.timings, sort_keys=True),
        "random_weights": r.random_weights,
    }


def export(store_dir: str | Path, output: str | Path, *, fmt: str = "jsonl") -> int:
    """Write all records to ``output``; returns how many. ``fmt`` is ``jsonl`` or ``csv``."""
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"unknown export format '{fmt}'; allowed: jsonl, csv")
    n = 0
    # read-only: a mistyped folder is an error (before the output file is created), never a new empty store
    with Store.open_existing(store_dir) as store, open(output, "w", encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for r in store.iter_records():
                f.write(r.model_dump_json() + "\n")
                n += 1
        else:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            w.writeheader()
            for r in store.iter_records():
                row = flat(r)
                w.writerow({k: csv_cell(v) if isinstance(v, str) else v for k, v in row.items()})
                n += 1
        if store.unreadable:
            log.warning(
                "%d record(s) of %s cannot be read and are not exported (key %r…)",
                len(store.unreadable),
                store.path,
                min(store.unreadable)[:16],
            )
    return n
