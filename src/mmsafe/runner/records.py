"""The last per-item stage before the store: a record that cannot be serialised fails alone.

The store writes a group of records in one transaction, so a single record that cannot become JSON
(text with a lone surrogate in a judge's rationale or an attack's notes, an object pydantic cannot
serialise, nesting too deep) would lose its whole group, and fail again on every rerun.
:func:`storable` turns such a record into an error record of stage ``store`` that keeps the cell's
identity (key, sample, specs) and drops the payload, so the other records of the group are written.
"""

from __future__ import annotations

from typing import Any

from mmsafe.errors import describe
from mmsafe.types import Judgement, Record, repair_strings, surrogate_key

__all__ = ["UNSERIALISABLE", "storable"]

#: what serialising a record can raise (pydantic's PydanticSerializationError is a ValueError)
UNSERIALISABLE = (ValueError, TypeError, RecursionError)


def storable(record: Record) -> Record:
    """``record`` if it serialises to JSON; otherwise a copy without prompt, response, generation and
    judgement, with ``error="cannot store this record: …"`` and ``error_stage="store"``.

    A lone surrogate in a dict key, which pydantic would write as three U+FFFD without a word, is
    never let through unseen: in the answer's generation and in the judgement's ``details`` (model
    and judge output) it is repaired as an answer's text is, and counted in
    ``generation.metadata.text_repaired`` / ``judgement.details.text_repaired``; anywhere else (an
    attack's notes, a spec, the timings) it fails the record here, as a lone surrogate in a value does.
    """
    record = _repaired_keys(record)
    try:
        _no_surrogate_keys(record)
        record.model_dump_json()
        return record
    except UNSERIALISABLE as exc:
        why = describe(exc, limit=300)
    bare = record.model_copy(
        update={
            "prompt": None,
            "response": None,
            "generation": None,
            "judgement": None,
            "error": f"cannot store this record: {why}",
            "error_stage": "store",
        }
    )
    try:
        _no_surrogate_keys(bare)
        bare.model_dump_json()
    except UNSERIALISABLE:
        # the cell's own fields (a spec's params, the sample id): their text made encodable, from the
        # python-mode dump (keys as they are: a JSON-mode dump would already have mapped them)
        doc, _ = repair_strings(bare.model_dump())
        bare = Record.model_validate(doc)
    return bare


def _repaired_keys(record: Record) -> Record:
    """``record`` with the lone surrogates of its generation and judgement details repaired and counted
    (keys and values, as :class:`~mmsafe.types.Generation` does on construction), when a key has one."""
    update: dict[str, Any] = {}
    gen = record.generation
    if gen is not None and surrogate_key(gen):
        fixed, n = repair_strings(gen)
        meta = dict(fixed.get("metadata") or {})
        meta["text_repaired"] = int(meta.get("text_repaired") or 0) + n
        update["generation"] = {**fixed, "metadata": meta}
    verdict = record.judgement
    if verdict is not None and surrogate_key(verdict.details):
        details, n = repair_strings(verdict.details)
        details = {**details, "text_repaired": int(details.get("text_repaired") or 0) + n}
        update["judgement"] = verdict.model_copy(update={"details": details})
    return record.model_copy(update=update) if update else record


def _no_surrogate_keys(record: Record) -> None:
    """Raise ``ValueError`` naming the field when a dict key in ``record`` holds a lone surrogate."""
    fields: dict[str, Any] = {
        "prompt": record.prompt,
        "generation": record.generation,
        "timings": record.timings,
        "judgement.details": record.judgement.details if isinstance(record.judgement, Judgement) else None,
    }
    for name in ("model", "benchmark_spec", "attack", "defense", "judge"):
        where = getattr(record, name).surrogate_key  # once per spec: a run shares a few
        if where:
            field, _, at = where.partition(": ")
            raise ValueError(f"a key in {name}.{field} holds a lone surrogate ({at}), which JSON cannot hold")
    for name, value in fields.items():
        where = surrogate_key(value)
        if where:
            raise ValueError(f"a key in {name} holds a lone surrogate ({where}), which JSON cannot hold")
