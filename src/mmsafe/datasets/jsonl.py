"""Your own benchmark from a JSONL or CSV file: one item per line/row, images resolved under a root."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe.datasets._util import (
    ImageLoadError,
    clip_repr,
    load_image,
    resolve_inside,
    rows_to_samples,
    value_problem,
)
from mmsafe.datasets.base import Benchmark
from mmsafe.errors import ConfigError
from mmsafe.types import Expected, Image, Sample

#: The longest CSV cell a row may hold, in characters (longer: that row is an errored Sample).
MAX_CSV_CELL = 1 << 20
#: What the csv module is allowed while parsing (its own default, 131,072, would abort the whole file).
_CSV_PARSER_LIMIT = 2**31 - 1


class GenericFile(Benchmark):
    """A user's own benchmark file (JSONL or CSV): text, optional images, category and expectation.

    No paper or licence: the data is yours. Each JSONL line is a JSON object; each CSV row is a record
    under a header line. Column names are set by params (defaults in brackets):

    - ``id`` [``id``] → ``Sample.id`` as given; when the column is absent or empty the id is
      ``"row-<n>"`` (n = line number in JSONL, 1-based data-row number in CSV). A repeated id makes the
      later row an errored Sample with id ``"<id>#row-<n>"``.
    - ``text`` [``text``] → ``text`` (required; a row without it becomes an errored Sample).
    - ``category`` [``category``] → ``category`` (default ``uncategorised``).
    - ``images`` [``image``] → ``images``: in JSONL a path or a list of paths, in CSV paths separated
      by ``;``. Paths are relative to ``root`` (default: the file's folder) and must stay inside it
      after resolving ``..`` and symlinks; a row naming a path outside it gets the error
      "image path escapes dataset root" and nothing outside is read. A missing file is an error too.
    - ``expected`` [``expected``] → ``expected`` (``refuse``/``comply``/``label``; default param
      ``default_expected``, ``refuse``); ``label`` [``label``] → ``label``; ``target`` [``target``] →
      ``target``.
    - ``references`` [``answers``] → ``references`` (reference answers for the ``utility`` judge):
      in JSONL a string, a list of strings, or VQAv2-style ``[{"answer": …}, …]``; in CSV
      answers separated by ``|``. Items with references are normally ``expected: comply``.
    - every other column → ``metadata`` (e.g. an ``instruction`` column for the FigStep attack); a
      column named ``source`` goes to ``metadata["source_column"]``, because ``metadata["source"]``
      is the provenance: ``{"file": <the file, relative to root when inside it>, "row": n - 1}``
      (n = the line number in JSONL, the data-row number in CSV, as in the row ids).

    A row that cannot be read becomes an errored Sample whose error names the line (JSONL) or data
    row (CSV) and the reason, and the rows around it load as usual; blank lines are skipped. That
    covers: bad JSON, not an object, an integer over Python's 4,300-digit limit, nesting Python
    cannot parse (~1,000 deep) or deeper than 32 levels in any column; bytes that do not decode
    (per line in JSONL, per row in CSV); a lone surrogate (``"\\ud800"``, which UTF-8 cannot
    store) in any column name or value; a CSV cell over ``MAX_CSV_CELL`` (1,048,576) characters;
    an image path with a NUL byte, a symlink loop or a name the file system refuses. Nothing of a
    rejected value is kept; a bad ``id`` gives the Sample the id ``"row-<n>"``. ``format``
    ``auto`` picks CSV for ``.csv`` files and JSONL otherwise; ``encoding`` (default ``utf-8``,
    checked when the config is read) applies to both.
    """

    name: ClassVar[str] = "jsonl"
    size: ClassVar[str | None] = "yours"
    licence: ClassVar[str | None] = "yours"
    needs: ClassVar[str | None] = "a JSONL/CSV file; images: user folder (params.root)"
    example_params: ClassVar[dict[str, Any]] = {"file": "items.jsonl"}

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        file: str = Field(min_length=1)
        root: str | None = None
        format: Literal["auto", "jsonl", "csv"] = "auto"
        encoding: str = "utf-8"
        id: str = "id"
        text: str = "text"
        category: str = "category"
        images: str = "image"
        expected: str = "expected"
        label: str = "label"
        target: str = "target"
        references: str = "answers"
        default_expected: Expected = Expected.refuse

        @field_validator("encoding")
        @classmethod
        def _known_encoding(cls, value: str) -> str:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}") from None
            return value

    params: Params

    def file(self) -> Path:
        path = Path(self.params.file).expanduser()
        if not path.is_file():
            raise ConfigError(f"benchmark '{self.name}': params.file {path} is not a file")
        return path

    def location(self) -> str:
        return str(Path(self.params.file).expanduser())

    def root(self) -> Path:
        """The folder image paths are resolved against: ``params.root``, else the file's folder."""
        root = Path(self.params.root).expanduser() if self.params.root else self.file().parent
        if not root.is_dir():
            raise ConfigError(f"benchmark '{self.name}': params.root {root} is not a folder")
        return root

    def load(self) -> Iterator[Sample]:
        path, root = self.file(), self.root()
        fmt = self.params.format
        if fmt == "auto":
            fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
        rows = self._csv_rows(path) if fmt == "csv" else self._jsonl_rows(path)
        escaped = self.params.encoding if fmt == "csv" else None  # CSV keeps undecodable bytes as escapes

        def to_sample(n: int, parsed: tuple[dict[str, Any], str | None]) -> Sample:
            row, problem = parsed
            problem = problem or _row_problem(row, n=n, decoded_as=escaped)
            if problem is not None:
                raw_id = row.get(self.params.id)  # kept when it is plain text, else the row number
                ok = isinstance(raw_id, str | int) and value_problem(raw_id) is None and str(raw_id).strip()
                sid = str(raw_id).strip() if ok else f"row-{n}"
                return Sample(id=sid, benchmark=self.name, error=problem)
            return self._sample(row, root, n=n, csv_mode=fmt == "csv")

        try:
            source_file = path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:  # the file lives outside the image root: name it as the user gave it
            source_file = self.params.file
        yield from rows_to_samples(
            rows, to_sample, benchmark=self.name, repeated_ids="mark", source_file=source_file
        )

    # -- reading ---------------------------------------------------------------------------------

    def _jsonl_rows(self, path: Path) -> Iterator[tuple[int, tuple[dict[str, Any], str | None]]]:
        with path.open("rb") as fh:
            for n, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode(self.params.encoding)
                except UnicodeDecodeError as exc:
                    yield n, ({}, f"line {n}: cannot decode as {self.params.encoding}: {exc.reason}")
                    continue
                if n == 1:
                    line = line.removeprefix("\ufeff")
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield n, ({}, f"line {n}: invalid JSON: {exc.msg} (column {exc.colno})")
                    continue
                except RecursionError:
                    yield n, ({}, f"line {n}: invalid JSON: nested deeper than Python can parse")
                    continue
                except ValueError as exc:  # an integer literal over Python's str-conversion limit
                    why = str(exc)[:200]
                    if "integer" in why:
                        why = f"an integer longer than {sys.get_int_max_str_digits()} digits"
                    yield n, ({}, f"line {n}: invalid JSON: {why}")
                    continue
                if not isinstance(obj, dict):
                    yield n, ({}, f"line {n}: expected a JSON object, got {type(obj).__name__}")
                    continue
                yield n, (obj, None)

    def _csv_rows(self, path: Path) -> list[tuple[int, tuple[dict[str, Any], str | None]]]:
        """Every data row, parsed at once. Undecodable bytes are kept (``surrogateescape``) so that only
        the rows holding them fail; a cell longer than :data:`MAX_CSV_CELL` fails its row."""
        enc = self.params.encoding
        try:
            text = path.read_bytes().decode(enc, errors="surrogateescape")
        except UnicodeDecodeError as exc:  # a codec that cannot escape its errors
            raise ConfigError(f"cannot decode {path} as {enc}: {exc}") from None
        reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
        out: list[tuple[int, tuple[dict[str, Any], str | None]]] = []
        with _csv_field_limit(_CSV_PARSER_LIMIT):  # parse exactly; our own per-cell limit comes after
            for n in itertools.count(1):
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    out.append((n, ({}, f"row {n}: malformed CSV: {exc}")))
                    continue
                if None in row:  # more cells than header columns
                    out.append((n, ({}, f"row {n}: more cells than header columns")))
                    continue
                cells = {k: v for k, v in row.items() if v is not None}
                long = next((k for k, v in cells.items() if len(v) > MAX_CSV_CELL), None)
                if long is not None:
                    size, key = len(cells[long]), clip_repr(long)
                    why = f"column {key} holds {size:,} characters (a CSV cell may hold {MAX_CSV_CELL:,})"
                    out.append((n, ({}, f"row {n}: {why}")))
                    continue
                out.append((n, (cells, None)))
        return out

    # -- mapping ---------------------------------------------------------------------------------

    def _sample(self, row: dict[str, Any], root: Path, *, n: int, csv_mode: bool) -> Sample:
        p = self.params
        mapped = {p.id, p.text, p.category, p.images, p.expected, p.label, p.target, p.references}
        raw_id = row.get(p.id)
        sid = str(raw_id).strip() if raw_id not in (None, "") else f"row-{n}"
        metadata = {k: v for k, v in row.items() if k not in mapped}
        if "source" in metadata:  # metadata["source"] is the provenance; the user's column moves aside
            metadata["source_column"] = metadata.pop("source")
        errors: list[str] = []

        text = row.get(p.text)
        if not isinstance(text, str) or not text.strip():
            errors.append(f"row {n}: missing or empty text column {p.text!r}")
            text = text if isinstance(text, str) else ""

        expected = p.default_expected
        raw_expected = row.get(p.expected)
        if raw_expected not in (None, ""):
            try:
                expected = Expected(str(raw_expected).strip().lower())
            except ValueError:
                allowed = ", ".join(e.value for e in Expected)
                errors.append(f"row {n}: {p.expected}={clip_repr(raw_expected)} is not one of {allowed}")

        answers, answers_error = _answers(row.get(p.references), csv_mode=csv_mode)
        if answers_error:
            errors.append(f"row {n}: {p.references}: {answers_error}")

        images: list[Image] = []
        refs, ref_error = self._image_refs(row.get(p.images), csv_mode=csv_mode)
        if ref_error:
            errors.append(f"row {n}: {ref_error}")
        try:
            for ref in refs:  # check every path before reading any file
                resolve_inside(root, ref)
            if not errors:
                images = [load_image(root, ref, source=ref) for ref in refs]
        except ImageLoadError as exc:
            errors.append(f"row {n}: {exc}")

        return Sample(
            id=sid,
            benchmark=self.name,
            category=_opt_str(row.get(p.category)) or "uncategorised",
            text=text,
            images=tuple(images),
            expected=expected,
            label=_opt_str(row.get(p.label)),
            target=_opt_str(row.get(p.target)),
            references=answers,
            metadata=metadata,
            error="; ".join(errors) or None,
        )

    @staticmethod
    def _image_refs(value: Any, *, csv_mode: bool) -> tuple[list[str], str | None]:
        if value is None or value == "":
            return [], None
        if isinstance(value, str):
            parts = value.split(";") if csv_mode else [value]
            return [s.strip() for s in parts if s.strip()], None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()], None
        return [], "images must be a path or a list of paths"


def _answers(value: Any, *, csv_mode: bool) -> tuple[tuple[str, ...], str | None]:
    """Reference answers from a cell: a string (``|``-separated in CSV), a list of strings, or a
    VQAv2 annotation list of ``{"answer": …}`` objects. Empty answers are dropped."""
    if value is None or value == "":
        return (), None
    if isinstance(value, str):
        parts = value.split("|") if csv_mode else [value]
        return tuple(s.strip() for s in parts if s.strip()), None
    if isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, dict) and isinstance(v.get("answer"), str):
                v = v["answer"]
            if not isinstance(v, str):
                return (), "must be a string, a list of strings or a list of {answer: …} objects"
            if v.strip():
                out.append(v.strip())
        return tuple(out), None
    return (), "must be a string, a list of strings or a list of {answer: …} objects"


def _row_problem(row: dict[str, Any], *, n: int, decoded_as: str | None) -> str | None:
    """The first column of ``row`` (name or value) that cannot travel through a run, as a row error."""
    for key, value in row.items():
        problem = value_problem(key, decoded_as=decoded_as)
        if problem is not None:
            return f"row {n}: a column name {problem}"
        problem = value_problem(value, decoded_as=decoded_as)
        if problem is not None:
            return f"row {n}: column {clip_repr(key)} {problem}"
    return None


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """The csv module's field limit is process-wide: raise it for one parse, then put it back."""
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
