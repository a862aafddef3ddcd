"""Text corpora for objectives fitted over many sentences (a universal image, a safety guardrail).

``load_corpus`` reads a user's corpus file as text only (nothing in it is executed). It began in
:mod:`~mmsafe.attacks.adversarial.adv_universal` (which still re-exports it) and moved here when the
``uniguard`` defense needed it too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["load_corpus"]


def load_corpus(path: str | Path) -> list[tuple[str | None, str]]:
    """``(prompt or None, target)`` pairs from a ``.txt``, ``.csv`` or ``.jsonl`` file (read as
    text only; nothing in it is executed). Raises ``ValueError`` naming the file and line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    pairs: list[tuple[str | None, str]] = []
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("target"), str):
                raise ValueError(f"{path}:{n}: expected an object with a string 'target'")
            prompt = row.get("prompt")
            pairs.append((prompt if isinstance(prompt, str) else None, row["target"]))
    elif suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if rows:
            header = [h.strip().lower() for h in rows[0]]
            col = next((header.index(k) for k in ("target", "text") if k in header), None)
            body = rows[1:] if col is not None else rows
            col = col or 0
            pairs = [(None, r[col]) for r in body if len(r) > col and r[col].strip()]
    else:
        pairs = [(None, line.strip()) for line in text.splitlines() if line.strip()]
    if not pairs:
        raise ValueError(f"{path}: the corpus is empty")
    return pairs
