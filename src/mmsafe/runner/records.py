"""The last per-item stage before the store: a record that cannot be serialised fails alone.

The store writes a group of records in one transaction, so a single record that cannot become JSON
(text with a lone surrogate in a judge's rationale or an attack's notes, an object pydantic cannot
serialise, nesting too deep) would lose its whole group, and fail again on every rerun.
:func:`storable` turns such a record into an error record of stage ``store`` that keeps the cell's
identity (key, sample, specs) and drops the payload, so the other records of the group are written.
"""

from __future__ import annotations

from mmsafe.errors import describe
from mmsafe.types import Record, repair_strings

__all__ = ["UNSERIALISABLE", "storable"]

#: what serialising a record can raise (pydantic's PydanticSerializationError is a ValueError)
UNSERIALISABLE = (ValueError, TypeError, RecursionError)


def storable(record: Record) -> Record:
    """``record`` if it serialises to JSON; otherwise a copy without prompt, response, generation and
    judgement, with ``error="cannot store this record: …"`` and ``error_stage="store"``."""
    try:
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
        bare.model_dump_json()
    except (
        UNSERIALISABLE
    ):  # the cell's own fields (a spec's params, the sample id): their text made encodable
        doc, _ = repair_strings(bare.model_dump(mode="json"))
        bare = Record.model_validate(doc)
    return bare
