"""Helpers shared by the benchmark loaders: reading CSV/JSON/JSON Lines files and images without leaving
the root, turning rows into Samples that record their provenance."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from mmsafe.errors import ConfigError, MmsafeError
from mmsafe.limits import MAX_IMAGE_FILE_BYTES
from mmsafe.types import Image, Sample, lone_surrogate

__all__ = [
    "MAX_DEPTH",
    "ImageLoadError",
    "ImageNotFound",
    "check_choices",
    "clip_repr",
    "image_folder",
    "item_image",
    "json_object",
    "jsonl_rows",
    "load_first_image",
    "load_image",
    "load_image_by_stem",
    "provenance",
    "read_csv",
    "read_json",
    "read_packaged_items",
    "require_file",
    "resolve_inside",
    "rows_to_samples",
    "sample_problem",
    "value_problem",
    "with_source",
]

#: How deeply a value read from a data file may nest (lists/objects in lists/objects); deeper is a row error.
MAX_DEPTH = 32

Row = TypeVar("Row")


def read_packaged_items(filename: str, file_model: Any) -> tuple[Any, ...]:
    """The validated ``items`` of a YAML file shipped in ``mmsafe/data/`` (a built-in suite).

    ``file_model`` is the pydantic model of the whole file (with an ``items`` tuple of objects that
    have an ``id``); a typo in the file fails loudly, and so does a repeated id.
    """
    from importlib import resources

    import yaml

    text = resources.files("mmsafe").joinpath(f"data/{filename}").read_text(encoding="utf-8")
    items = file_model.model_validate(yaml.safe_load(text)).items
    ids = [i.id for i in items]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{filename} has duplicate ids: {', '.join(dupes)}")
    return tuple(items)


class ImageLoadError(Exception):
    """An image a row names cannot be used; the message is the reason recorded on the Sample."""


class ImageNotFound(ImageLoadError):
    """The image a row names is not there (as opposed to there but unusable)."""


def require_file(root: Path, rel: str, *, benchmark: str) -> Path:
    """``root / rel``, or a :class:`ConfigError` saying which expected file is missing."""
    path = root / rel
    if not path.is_file():
        raise ConfigError(
            f"benchmark '{benchmark}': expected file {path} is missing (is {root} the right folder?)"
        )
    return path


def read_csv(path: Path, *, encoding: str = "utf-8") -> list[dict[str, str]]:
    """All rows of a CSV file with a header line, as dicts (a UTF-8 byte-order mark is ignored)."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        with path.open(encoding=enc, newline="") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot decode {path} as {encoding}: {exc}") from None


def read_json(path: Path) -> Any:
    """Parse a UTF-8 JSON file, raising :class:`ConfigError` naming the file when it is malformed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot parse {path} as JSON: {exc}") from None


def resolve_inside(root: Path, rel: str | Path) -> Path:
    """``rel`` resolved against ``root`` (symlinks followed); raises :class:`ImageLoadError` if outside it.

    Absolute paths are allowed only when they land inside ``root``.
    """
    base = root.resolve()
    try:
        target = (base / Path(rel)).resolve()
    except RuntimeError:  # Python 3.11/3.12: "Symlink loop from …"
        raise ImageLoadError(f"image path {clip_repr(str(rel))} is a symlink loop") from None
    except (ValueError, OSError) as exc:  # embedded NUL byte, a name too long for the file system
        raise ImageLoadError(f"invalid image path {clip_repr(str(rel))}: {_os_reason(exc)}") from None
    if not target.is_relative_to(base):
        raise ImageLoadError("image path escapes dataset root")
    return target


def load_image(root: Path, rel: str | Path, *, source: str | None = None) -> Image:
    """Read the image at ``root / rel`` (which must stay inside ``root``) as an :class:`Image`.

    Raises :class:`ImageLoadError` with a short reason (escape, missing, unreadable, a file over
    :data:`~mmsafe.limits.MAX_IMAGE_FILE_BYTES`, which is never read); the bytes are not decoded here,
    so a corrupt file fails later, only for the item that uses it. The run's own, lower limits
    (``limits.image_bytes``, ``limits.image_pixels``) are checked by the runner.
    """
    path = resolve_inside(root, rel)
    name = source if source is not None else str(rel)
    try:
        if not path.is_file():
            raise ImageNotFound(f"image not found: {name}")
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:  # before reading a byte of it
            raise ImageLoadError(
                f"image {clip_repr(name)} is {size / (1 << 20):,.0f} MiB; "
                f"no image over {MAX_IMAGE_FILE_BYTES >> 20} MiB is read"
            )
        return Image.from_path(path, source=name)
    except OSError as exc:  # unreadable, a name too long, a loop (Python ≥ 3.13 resolves loops as missing)
        raise ImageLoadError(f"cannot read image {clip_repr(name)}: {_os_reason(exc)}") from None


def load_first_image(
    root: Path,
    candidates: Sequence[str],
    *,
    source: Callable[[str], str] | None = None,
    missing: str | None = None,
) -> Image:
    """The first of ``candidates`` (paths relative to ``root``, e.g. one name with several extensions) that
    is there, read with :func:`load_image` (``source(candidate)`` names it). A candidate that is there but
    unusable (escapes ``root``, too large, unreadable) fails at once, without trying the others; when none
    is there, :class:`ImageNotFound` says ``image not found: <missing>`` (default: the first candidate)."""
    for cand in candidates:
        try:
            return load_image(root, cand, source=source(cand) if source else None)
        except ImageNotFound:
            continue
    raise ImageNotFound(f"image not found: {missing if missing is not None else root / candidates[0]}")


def load_image_by_stem(root: Path, stem: str, extensions: Sequence[str], *, shown: str) -> Image:
    """The image ``root/<stem><ext>`` for the first of ``extensions`` that is there (:func:`load_first_image`),
    named ``<shown>/<file>`` (``shown``: how the user gave ``root``); missing, the error lists every extension."""
    return load_first_image(
        root,
        [f"{stem}{ext}" for ext in extensions],
        source=lambda rel: f"{shown}/{rel}",
        missing=f"{shown}/{stem}{{{','.join(extensions)}}}",
    )


def clip_repr(value: Any, limit: int = 80) -> str:
    """``repr`` of a value (a path, a column name) for an error message: control bytes and lone
    surrogates escaped, cut to ``limit`` chars."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}…{text[-1]}"


def _os_reason(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__


# -- rows that cannot be read are errored Samples, not a stopped run ---------------------------------


def value_problem(value: Any, *, max_depth: int = MAX_DEPTH, decoded_as: str | None = None) -> str | None:
    """Why ``value`` (parsed from a data file) cannot travel through a run, or None.

    Checks every string, dict key and nesting level without recursion: a lone surrogate (which UTF-8
    cannot store), and nesting deeper than ``max_depth``. With ``decoded_as`` (text decoded with
    ``errors="surrogateescape"``), an escaped byte is reported as undecodable in that encoding.
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            at = lone_surrogate(item)
            if at is not None:
                code = ord(item[at])
                if decoded_as is not None and 0xDC80 <= code <= 0xDCFF:
                    return f"cannot be decoded as {decoded_as} (byte 0x{code - 0xDC00:02x} at char {at})"
                return f"holds a lone surrogate (U+{code:04X}) at char {at}"
        elif isinstance(item, dict | list | tuple):
            if depth >= max_depth:
                return f"is nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                stack.extend((k, depth + 1) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return None


def sample_problem(sample: Sample) -> str | None:
    """The first field of ``sample`` that :func:`value_problem` rejects, as "field 'x' …", or None."""
    fields: dict[str, Any] = {
        "id": sample.id,
        "category": sample.category,
        "text": sample.text,
        "label": sample.label,
        "target": sample.target,
        "references": sample.references,
        "images": [i.source for i in sample.images],
        "error": sample.error,
    }
    for name, value in (*fields.items(), *(("metadata", {k: v}) for k, v in sample.metadata.items())):
        problem = value_problem(value, max_depth=MAX_DEPTH + 1)
        if problem:
            return f"field {name!r} {problem}"
    return None


def rows_to_samples(
    rows: Iterable[tuple[int, Row]],
    to_sample: Callable[[int, Row], Sample | None],
    *,
    benchmark: str,
    id_prefix: str = "",
    repeated_ids: Literal["keep", "mark"] = "keep",
    source_file: str | None = None,
    first_row: int = 1,
    source_row: Callable[[int, Row], int] | None = None,
) -> Iterator[Sample]:
    """``to_sample(n, row)`` for each numbered row; a row it cannot map becomes an errored Sample.

    Rows are numbered from ``first_row`` (1: a CSV data row, a JSONL line; 0: an index into a JSON
    array). With ``source_file`` (the file's path relative to the dataset root) every Sample, errored
    ones included, records its provenance ``metadata["source"] = {"file": source_file, "row":
    n - first_row}`` (see :func:`with_source`), or ``source_row(n, row)`` when the numbered items are
    not the file's rows (an entry that expands into several items); a Sample whose mapping recorded
    its own source keeps it.

    A row whose mapping raises (a missing column, a bad value) or whose Sample holds text that cannot
    be stored (see :func:`sample_problem`) yields ``Sample(id=f"{id_prefix}row-{n}", error=…)`` with
    the reason, so the run records it as failed and its neighbours still load. ``None`` skips the
    row (a filter). :class:`~mmsafe.errors.MmsafeError` propagates: a config problem is not a row's fault.

    ``repeated_ids="mark"`` (user files) turns a repeated id into an errored Sample ``"<id>#row-<n>"``;
    ``"keep"`` (built-in data, whose ids are its own) leaves them for the runner to reject.
    """
    # every id read so far, as the keys of a dict: a set's table quadruples when it grows (2 MiB of
    # table at 20,000 ids), a dict's holds about a third of that; the loader lives as long as the run
    seen: dict[str, None] = {}
    for n, row in rows:
        sample = _map_row(n, row, to_sample, benchmark=benchmark, id_prefix=id_prefix)
        if sample is None:
            continue
        if source_file is not None and "source" not in sample.metadata:
            at = source_row(n, row) if source_row is not None else n - first_row
            sample = with_source(sample, file=source_file, row=at)
        if repeated_ids == "mark":
            if sample.id in seen:
                sample = sample.model_copy(
                    update={"id": f"{sample.id}#row-{n}", "error": f"row {n}: duplicate id {sample.id!r}"}
                )
            seen[sample.id] = None
        yield sample


def with_source(sample: Sample, *, file: str, row: int) -> Sample:
    """``sample`` with its provenance ``metadata["source"] = {"file": file, "row": row}``: the data
    file's path relative to the dataset root and the 0-based row (or item) index in that file. Every
    built-in loader records it, so two runs can be shown to have read the same items."""
    return sample.model_copy(update={"metadata": {**sample.metadata, "source": {"file": file, "row": row}}})


def _map_row(
    n: int, row: Row, to_sample: Callable[[int, Row], Sample | None], *, benchmark: str, id_prefix: str
) -> Sample | None:
    try:
        sample = to_sample(n, row)
    except MmsafeError:
        raise
    except Exception as exc:
        return Sample(id=f"{id_prefix}row-{n}", benchmark=benchmark, error=f"row {n}: {_row_reason(exc)}")
    if sample is None:
        return None
    problem = sample_problem(sample)
    if problem is not None:
        sid = sample.id if value_problem(sample.id) is None else f"{id_prefix}row-{n}"
        return Sample(id=sid, benchmark=benchmark, error=f"row {n}: {problem}")
    return sample


def _row_reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {clip_repr(exc.args[0] if exc.args else '?')}"
    msg = " ".join(str(exc).split())[:300]
    if lone_surrogate(msg) is not None:
        msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"cannot read this row: {type(exc).__name__}" + (f": {msg}" if msg else "")


def check_choices(field: str, values: Iterable[str] | None, allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` (turned into a ConfigError by the registry) for values not in ``allowed``."""
    allowed = list(allowed)
    bad = [v for v in values or () if v not in allowed]
    if bad:
        raise ValueError(f"unknown {field} {', '.join(map(repr, bad))}; allowed: {', '.join(allowed)}")


# -- JSON Lines: a published file read a row at a time, each row kept with its 0-based index --------------


def jsonl_rows(path: Path) -> Iterator[tuple[int, str]]:
    """``(row, line)`` for each non-blank line of ``path``, ``row`` counted from 0 over the non-blank
    lines; the line is not parsed here, so a bad line fails only its own item (:func:`json_object`).
    A file that cannot be opened is a :class:`ConfigError` naming it."""
    try:
        fh = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        row = 0
        for line in fh:
            if line.strip():
                yield row, line
                row += 1


def json_object(line: str) -> dict[str, Any]:
    """The JSON object on one line; ``ValueError`` with a short reason otherwise."""
    try:
        value = json.loads(line)
    except RecursionError:
        raise ValueError("invalid JSON: nested deeper than Python can parse") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


# -- the user's image folder of a set whose images are not shipped with its text files ------------------
# (SIUO, JailBreakV-28K, VLGuard and VLSBench publish their queries in a repository and their images in a
# separate archive: a loader takes that folder as a param; an item whose image is not there still loads,
# as a Sample whose ``error`` names the file it looked for)


def image_folder(root: Path, param: str | None, default: str) -> Path:
    """``param`` (a user path, ``~`` expanded), else ``root / default``; the folder need not exist."""
    return Path(param).expanduser() if param else root / default


def item_image(folder: Path, rel: str) -> tuple[tuple[Image, ...], str | None]:
    """``((image,), None)`` for ``folder / rel``, or ``((), reason)`` naming the path when it cannot be read."""
    if not rel:
        return (), "row names no image file"
    try:
        return (load_image(folder, rel),), None
    except ImageLoadError as exc:
        return (), f"{exc} (looked for {folder / rel})"


def provenance(root: Path, file: Path, row: int) -> dict[str, object]:
    """``metadata["source"]``: the data file relative to the dataset root and the 0-based row in it."""
    return {"file": file.relative_to(root).as_posix(), "row": row}
