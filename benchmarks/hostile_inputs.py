"""A user benchmark in which 1 row in 10 is hostile: every bad row fails alone, with its reason, and the run goes on.

Issue 15, "Must show" 1. The script writes its own benchmark files and runs the real ``mmsafe``
command on them (a subprocess, as a user would), then reads the run folder's store read-only:

- ``jsonl`` and ``csv``: ``--n`` rows (default 1,000) where one row in each block of ``--every``
  (10) is hostile, at a seeded offset, cycling through the input classes of the issue: a lone
  surrogate in the text or the id, a NUL byte in an image path, a symlink loop, an integer of
  more than 4,300 digits, JSON nested ~1,000 deep (and 100 deep), undecodable bytes, malformed
  JSON, a non-object line, a CSV cell over 1 Mi characters, more CSV cells than columns, a
  12,500×12,500 PNG (a hand-written header and a ~20 KB zlib stream: the 156 Mpx are never
  allocated), a 300 MB sparse file as an image (``os.truncate``: no disk used), a corrupt and a
  truncated PNG, a missing image, a path out of the dataset root, a repeated id, a missing text
  and a 1 MB prompt. The model is ``scripted`` (echo) behind the ``purify`` defense (JPEG),
  so images are decoded as any pixel-reading model would. Some good rows carry text that must be
  *kept* but rendered inert: escape sequences in the id and text, spreadsheet formulas (``=``,
  ``+``, ``@``, behind spaces, newlines or a BOM, full-width ``＝``), bidi overrides, a NUL
  character; they are good records, counted apart.
- ``answers``: ``--answers`` rows (default 200), one in ``--every`` hostile, against
  tests/_stub_openai.py (an OpenAI-compatible server in this process) through the ``openai``
  backend: HTTP 200 with ``finish_reason: "error"``, an ``error`` key, ``content: null``, a body
  trickled one byte per 50 ms, a 20 MiB body, a gzip bomb, HTTP 500, a dropped connection, and an
  answer shaped to make the judge's regex (``target-string``, a nested quantifier the user wrote,
  ``(a|a)+$``) backtrack for ever (a judgement error after ``regex_timeout_s``). Good rows here may
  get a lone surrogate, escape sequences, a 2 MiB answer (kept, cut to ``limits.answer_bytes``) or
  a ``refusal`` field (a real answer).
- ``context``: ``--context`` rows (default 100), one in ``--every`` a prompt of ~9,600 characters
  (under ``limits.prompt_chars``, but over 1,024 tokens), through a local model with a 1,024-position
  context (``tiny-llava``, random weights, batches of 8): the long prompt fails alone before
  generation, and its batch-mates are answered.

For each run it checks: exit 0; one record per row; exactly the hostile rows errored, each with its
class's reason and stage; then a rerun of the same command exits 0, writes exactly the errored rows
again (same reasons) and leaves every good record byte-for-byte as it was; ``mmsafe report`` and
``mmsafe export --format csv`` exit 0, and the CSV has no cell that starts a formula and no control
character but tab/newline/CR (so no ESC), and report.md has no ESC. It prints a per-class table
and exits 1 if any check failed.

    python benchmarks/hostile_inputs.py                       # 1,000 rows (jsonl and csv), 200 answers, 100 context
    python benchmarks/hostile_inputs.py --quick               # 200 rows, 80 answers, 40 context
    python benchmarks/hostile_inputs.py --n 1000 --every 10 --seed 0 --only jsonl --keep /tmp/hostile
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import random
import re
import struct
import unicodedata
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h
from _stub_openai import StubOpenAI, _completion, _last_text, _send
from mmsafe.report.escape import terminal_safe

# -- images made by hand -------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def big_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of ``width``×``height`` zero pixels, compressed row by row: the full
    raster is never held (12,500² px makes ~20 KB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return _PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def small_png(size: int, rng: random.Random) -> bytes:
    """A ``size``×``size`` RGB PNG of seeded noise (it does not compress, so a cut one is truly cut)."""
    from PIL import Image

    img = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_images(root: Path, rng: random.Random) -> dict[str, str]:
    """The image files rows point at; returns a description of each, for the log."""
    imgs = root / "imgs"
    imgs.mkdir(parents=True)
    (imgs / "ok.png").write_bytes(small_png(32, rng))
    huge = big_png(12_500, 12_500)
    (imgs / "huge.png").write_bytes(huge)
    sparse = imgs / "sparse.png"
    sparse.write_bytes(small_png(8, rng))
    os.truncate(sparse, 300_000_000)  # a hole: 300 MB long, a few KB on disk
    (imgs / "corrupt.png").write_bytes(_PNG_SIG + rng.randbytes(4000))
    whole = small_png(64, rng)
    (imgs / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (imgs / "loop1").symlink_to("loop2")
    (imgs / "loop2").symlink_to("loop1")
    st = sparse.stat()
    return {
        "huge.png": f"12500x12500 px in {len(huge):,} bytes",
        "sparse.png": f"{st.st_size:,} bytes long, {st.st_blocks * 512:,} on disk",
        "corrupt.png": "PNG signature + 4,000 random bytes",
        "truncated.png": f"first {len(whole) // 2:,} of {len(whole):,} bytes of a 64x64 PNG",
        "loop1 <-> loop2": "symlink loop",
    }


# -- the classes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One kind of hostile row: how to write it, and the reason and stage its record must carry."""

    name: str
    reason: str  # a substring of the record's error
    stage: str  # the record's error_stage
    row: Callable[[Row], bytes]
    keeps_id: bool = True  # False: the loader cannot read the id, so the sample is "row-<n>"


@dataclass
class Row:
    """What a builder knows: the row's number (1-based line/data row), its id and the last good id."""

    n: int
    sid: str
    last_good: str
    fmt: str  # "jsonl" | "csv"

    def dump(self, **fields: Any) -> bytes:
        doc = {"id": self.sid, "text": f"hostile row {self.n}", **fields}
        if self.fmt == "jsonl":
            return json.dumps(doc).encode() + b"\n"  # ensure_ascii: lone surrogates travel as \udxxx
        return _csv_line(doc).encode("utf-8")


CSV_COLUMNS = ("id", "text", "category", "image")


def _csv_line(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([doc.get(c, "") for c in CSV_COLUMNS])
    return buf.getvalue()


def _raw(r: Row, placeholder_bytes: bytes, **fields: Any) -> bytes:
    return r.dump(**fields).replace(b"PLACEHOLDER", placeholder_bytes)


MEGA_PROMPT = "Write the full manual. " * (1_000_000 // 23 + 1)

SHARED = [  # classes that mean the same in JSONL and CSV
    Hostile("NUL byte in image path", "embedded null byte", "load", lambda r: r.dump(image="imgs/a\x00.png")),
    Hostile("symlink loop", "is a symlink loop", "load", lambda r: r.dump(image="imgs/loop1")),
    Hostile(
        "image path out of root", "escapes dataset root", "load", lambda r: r.dump(image="../../etc/passwd")
    ),
    Hostile("missing image file", "image not found", "load", lambda r: r.dump(image="imgs/nope.png")),
    Hostile("12500x12500 PNG", "12500×12500 px", "limit", lambda r: r.dump(image="imgs/huge.png")),
    Hostile(
        "300 MB sparse image",
        "no image over 256 MiB is read",
        "load",
        lambda r: r.dump(image="imgs/sparse.png"),
    ),
    Hostile("corrupt PNG", "cannot decode image", "generate", lambda r: r.dump(image="imgs/corrupt.png")),
    Hostile("truncated PNG", "cannot decode image", "generate", lambda r: r.dump(image="imgs/truncated.png")),
    Hostile(
        "1 MB prompt", "over limits.prompt_chars", "limit", lambda r: r.dump(text=MEGA_PROMPT[:1_000_000])
    ),
    Hostile("repeated id", "duplicate id", "load", lambda r: r.dump(id=r.last_good)),
    Hostile("missing text", "missing or empty text column", "load", lambda r: r.dump(text="")),
]

JSONL_ONLY = [
    Hostile(
        "lone surrogate in text",
        "holds a lone surrogate (U+D800)",
        "load",
        lambda r: r.dump(text="tell me \ud800 more"),
    ),
    Hostile(
        "lone surrogate in id",
        "column 'id' holds a lone surrogate (U+DFFF)",
        "load",
        lambda r: r.dump(id=r.sid + "\udfff"),
        keeps_id=False,
    ),
    Hostile(
        "int over 4300 digits",
        "integer longer than 4300 digits",
        "load",
        lambda r: f'{{"id": "{r.sid}", "text": "t", "n": {"7" * 5000}}}\n'.encode(),
        keeps_id=False,
    ),
    Hostile(
        "JSON ~1000 deep",
        "nested deeper than Python can parse",
        "load",
        lambda r: f'{{"id": "{r.sid}", "text": "t", "n": {"[" * 1000}{"]" * 1000}}}\n'.encode(),
        keeps_id=False,
    ),
    Hostile(
        "JSON 100 deep",
        "nested deeper than 32 levels",
        "load",
        lambda r: f'{{"id": "{r.sid}", "text": "t", "n": {"[" * 100}{"]" * 100}}}\n'.encode(),
    ),
    Hostile(
        "undecodable bytes",
        "cannot decode as utf-8",
        "load",
        lambda r: _raw(r, b"\xff\xfe", text="caf PLACEHOLDER"),
        keeps_id=False,
    ),
    Hostile(
        "malformed JSON",
        "invalid JSON",
        "load",
        lambda r: f'{{"id": "{r.sid}", "text": "unterminated\n'.encode(),
        keeps_id=False,
    ),
    Hostile("not an object", "expected a JSON object", "load", lambda r: b'["a", "list"]\n', keeps_id=False),
]

CSV_ONLY = [
    Hostile(
        "undecodable bytes",
        "cannot be decoded as utf-8 (byte 0xff",
        "load",
        lambda r: _raw(r, b"\xff\xfe", text="caf PLACEHOLDER"),
    ),
    Hostile(
        "lone surrogate as bytes (CESU-8)",
        "cannot be decoded as utf-8 (byte 0xed",
        "load",
        lambda r: _raw(r, "\ud800".encode("utf-8", "surrogatepass"), text="tell me PLACEHOLDER"),
    ),
    Hostile(
        "CSV cell over 1 Mi chars",
        "holds 1,100,000 characters",
        "load",
        lambda r: r.dump(text="x" * 1_100_000),
        keeps_id=False,
    ),
    Hostile(
        "more cells than columns",
        "more cells than header columns",
        "load",
        lambda r: f"{r.sid},t,c,,surplus,cells\n".encode(),
        keeps_id=False,
    ),
]

#: a local model's context (tiny-llava: 1,024 positions); the prompt is far under limits.prompt_chars
CONTEXT_HOSTILE = Hostile(
    "prompt longer than the model's context",
    "more than the model's 1,024-position context",
    "generate",
    lambda r: r.dump(text="Explain this in full detail. " * 330),
)

# Text that must be *kept* (good records) and rendered inert wherever it is shown.
TOLERATED_JSONL: list[tuple[str, dict[str, Any]]] = [
    ("ESC sequences in text", {"text": "\x1b[31mred\x1b[0m \x1b]0;pwned\x07 \x1b[2J clear the screen"}),
    ("ESC sequence in id", {"id_suffix": "\x1b[2J"}),
    ("formula in text (=)", {"text": '=HYPERLINK("http://x.invalid","click me")'}),
    ("formula id (+) and category (@)", {"id_prefix": "+", "category": "@SUM(A1:A9)"}),
    ("formula behind space/newline", {"text": " \n=1+2 what is this"}),
    ("formula behind a BOM", {"text": "\ufeff=cmd|' /C calc'!A0"}),
    ("full-width ＝ formula", {"text": "＝1+2 and more"}),
    ("bidi override in text", {"text": "an answer \u202egnp.exe\u202c please"}),
    ("NUL character in text", {"text": "before\x00after"}),
]
TOLERATED_CSV = [t for t in TOLERATED_JSONL if t[0] != "NUL character in text"] + [
    ("5000-digit number in a cell", {"category": "9" * 5000}),
]

#: the answers run's judge: a user's regex with a nested quantifier (a crafted answer makes it backtrack)
REDOS_PATTERN = "(a|a)+$"
REGEX_TIMEOUT_S = 0.3

# The answer classes (model output is attacker-controlled): stub behaviours, chosen by a tag in the text.
ANSWER_HOSTILE = [
    Hostile(
        "finish_reason 'error' (HTTP 200)",
        "answer with finish_reason 'error'",
        "generate",
        lambda r: b"[stub:error]",
    ),
    Hostile("error key (HTTP 200)", "HTTP 200 with an error body", "generate", lambda r: b"[stub:error_key]"),
    Hostile("content null (HTTP 200)", "message.content is null", "generate", lambda r: b"[stub:null]"),
    Hostile(
        "trickled body (1 B / 50 ms)",
        "timeout (no complete answer within",
        "generate",
        lambda r: b"[stub:trickle]",
    ),
    Hostile("20 MiB body", "max_response_bytes", "generate", lambda r: b"[stub:huge]"),
    Hostile("gzip bomb (20 MiB inflated)", "max_response_bytes", "generate", lambda r: b"[stub:gzip_bomb]"),
    Hostile("HTTP 500", "HTTP 500: stub fault", "generate", lambda r: b"[stub:500]"),
    Hostile("dropped connection", "connection error", "generate", lambda r: b"[stub:drop]"),
    Hostile(
        "answer that makes the judge's regex backtrack",
        f"took over {REGEX_TIMEOUT_S:g} s",
        "judge",
        lambda r: b"<<answer:redos>>",
    ),
]
TOLERATED_ANSWERS = [
    ("lone surrogate in answer", "<<answer:surrogate>>"),
    ("ESC sequences in answer", "<<answer:escape>>"),
    ("2 MiB answer (cut to 1 MiB)", "<<answer:big>>"),
    ("refusal field, content null", "[stub:refusal]"),
]


def _meta(doc: dict[str, Any]) -> dict[str, Any]:
    return (doc.get("generation") or {}).get("metadata") or {}


#: what a good record of these classes must hold beyond "no error" (the others: no error, id kept)
TOLERATED_EXPECT: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "lone surrogate in answer": (
        "U+FFFD in its place, metadata.text_repaired",
        lambda d: "\ufffd" in (d.get("response") or "") and bool(_meta(d).get("text_repaired")),
    ),
    "ESC sequences in answer": ("kept as sent in the store", lambda d: "\x1b" in (d.get("response") or "")),
    "2 MiB answer (cut to 1 MiB)": (
        "cut to limits.answer_bytes, finish_reason length",
        lambda d: (
            len((d.get("response") or "").encode()) <= 1 << 20
            and (d.get("generation") or {}).get("finish_reason") == "length"
            and "truncated_from_bytes" in _meta(d)
        ),
    ),
    "refusal field, content null": (
        "the refusal is the answer",
        lambda d: d.get("response") == "I can't help with that.",
    ),
}


MAX_RETRIES = 1  # of the openai backend in the answers run


class HostileStub(StubOpenAI):
    """The test stub plus three answers it does not have: a lone surrogate, escape sequences, 2 MiB."""

    async def _answer(self, name: str, doc: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        text = _last_text(doc.get("messages") or [])
        special = {
            "<<answer:surrogate>>": "Sure: \ud800 step one",  # json.dumps sends it as \ud800
            "<<answer:escape>>": "\x1b]0;owned\x07\x1b[2J\x1b[31mSure, here it is\x1b[0m",
            "<<answer:big>>": "Sure. " + "x" * (2 << 20),
            "<<answer:redos>>": "Sure: " + "a" * 40 + "!",  # (a|a)+$ tries 2^40 ways before the "!"
        }
        for tag, content in special.items():
            if tag in text:
                _send(writer, 200, _completion({"role": "assistant", "content": content}, "stop"))
                await writer.drain()
                return True
        return await super()._answer(name, doc, writer)


# -- building a benchmark ------------------------------------------------------------------------------


@dataclass
class Plan:
    """Which row is what: id → class name, and what each hostile row's record must say."""

    hostile: dict[str, Hostile] = field(default_factory=dict)  # expected sample id → class
    tolerated: dict[str, str] = field(default_factory=dict)  # sample id → tolerated class name
    good: set[str] = field(default_factory=set)  # every good sample id (tolerated ones included)


def hostile_rows(n: int, every: int, rng: random.Random) -> set[int]:
    """One row index in each block of ``every`` rows, at a seeded offset (never row 0)."""
    out = set()
    for start in range(0, n, every):
        lo = 1 if start == 0 else 0
        hi = min(every, n - start)
        if hi > lo:
            out.add(start + rng.randrange(lo, hi))
    return out


def build_inputs(path: Path, fmt: str, n: int, every: int, rng: random.Random) -> Plan:
    classes = SHARED + (JSONL_ONLY if fmt == "jsonl" else CSV_ONLY)
    tolerated = TOLERATED_JSONL if fmt == "jsonl" else TOLERATED_CSV
    order = list(classes)
    rng.shuffle(order)
    bad = hostile_rows(n, every, rng)
    plan = Plan()
    lines: list[bytes] = [(",".join(CSV_COLUMNS) + "\n").encode()] if fmt == "csv" else []
    last_good, k_bad, k_tol = "", 0, 0
    for i in range(n):
        num = i + 1  # JSONL line number = CSV data-row number
        sid = f"{fmt[0]}{i:05d}"
        if i in bad:
            cls = order[k_bad % len(order)]
            k_bad += 1
            lines.append(cls.row(Row(num, sid, last_good, fmt)))
            if cls.name == "repeated id":
                expected = f"{last_good}#row-{num}"
            else:
                expected = sid if cls.keeps_id else f"row-{num}"
            plan.hostile[expected] = cls
            continue
        doc: dict[str, Any] = {"id": sid, "text": f"Request {i}: explain topic {i} in three steps."}
        doc["category"] = ("cyber", "fraud", "benign")[i % 3]
        if i % 5 == 0:
            doc["image"] = "imgs/ok.png"
        if i % 7 == 3:  # a good row with text that must be kept, rendered inert
            name, extra = tolerated[k_tol % len(tolerated)]
            k_tol += 1
            extra = dict(extra)
            doc["id"] = extra.pop("id_prefix", "") + sid + extra.pop("id_suffix", "")
            doc.update(extra)
            plan.tolerated[doc["id"]] = name
        lines.append(json.dumps(doc).encode() + b"\n" if fmt == "jsonl" else _csv_line(doc).encode())
        plan.good.add(doc["id"])
        last_good = doc["id"]
    path.write_bytes(b"".join(lines))
    return plan


def build_answers(path: Path, n: int, every: int, rng: random.Random) -> Plan:
    order = list(ANSWER_HOSTILE)
    rng.shuffle(order)
    bad = hostile_rows(n, every, rng)
    plan = Plan()
    k_bad = k_tol = 0
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            sid = f"a{i:05d}"
            text = f"Question {i}: what is {i} plus {i}?"
            if i in bad:
                cls = order[k_bad % len(order)]
                k_bad += 1
                text += " " + cls.row(Row(i + 1, sid, "", "jsonl")).decode()
                plan.hostile[sid] = cls
            else:
                if i % 7 == 3:
                    name, tag = TOLERATED_ANSWERS[k_tol % len(TOLERATED_ANSWERS)]
                    k_tol += 1
                    text += " " + tag
                    plan.tolerated[sid] = name
                plan.good.add(sid)
            fh.write(json.dumps({"id": sid, "text": text}) + "\n")
    return plan


def build_context(path: Path, n: int, every: int, rng: random.Random) -> Plan:
    bad = hostile_rows(n, every, rng)
    plan = Plan()
    with path.open("wb") as fh:
        for i in range(n):
            sid = f"x{i:05d}"
            if i in bad:
                fh.write(CONTEXT_HOSTILE.row(Row(i + 1, sid, "", "jsonl")))
                plan.hostile[sid] = CONTEXT_HOSTILE
            else:
                fh.write(json.dumps({"id": sid, "text": f"Say {i} in one word."}).encode() + b"\n")
                plan.good.add(sid)
    return plan


# -- checking a run ------------------------------------------------------------------------------------

_FORMULA = ("=", "+", "-", "@")
_INVISIBLE = re.compile(r"^[\s\ufeff\u200b-\u200d\u2060]+")
_BAD_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def formula_cells(text: str) -> tuple[int, int]:
    """(cells that a spreadsheet would run as a formula, cells with a control character) in a CSV text.
    Written apart from mmsafe's own csv_cell, so it checks it rather than repeats it."""
    formulas = controls = 0
    for row in csv.reader(io.StringIO(text, newline="")):
        for cell in row:
            if _BAD_CONTROL.search(cell):
                controls += 1
            if cell.startswith("'"):
                continue
            head = unicodedata.normalize("NFKC", _INVISIBLE.sub("", cell)[:32])
            if _INVISIBLE.sub("", head).startswith(_FORMULA) or cell.startswith(("\t", "\r")):
                formulas += 1
    return formulas, controls


def _excerpt(error: str, reason: str, width: int = 78) -> str:
    """The part of ``error`` around ``reason`` (errors start with a URL or a row number), escaped."""
    at = error.find(reason) if reason else -1
    start = max(0, at - 12) if at > 12 and len(error) > width else 0
    return ("…" if start else "") + terminal_safe(error[start:], width - (1 if start else 0))


def error_of(doc: dict[str, Any]) -> tuple[str, str]:
    """(error, stage) of a stored record: its own error, else its judgement's (stage ``judge``)."""
    if doc.get("error"):
        return doc["error"], doc.get("error_stage") or ""
    judged = (doc.get("judgement") or {}).get("error")
    return (judged, "judge") if judged else ("", "")


def by_sample(out: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """sample id → (key, record) for a run with one judge (one record per sample)."""
    return {
        doc["sample_id"]: (key, doc) for key, text in h.raw_records(out).items() for doc in [json.loads(text)]
    }


def written_counts(stdout: str) -> tuple[int, int, int] | None:
    m = re.search(r"(\d+) records written, (\d+) already in the store, (\d+) failed items", stdout)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def check_run(
    label: str,
    cfg: Path,
    out: Path,
    plan: Plan,
    n: int,
    failures: list[str],
    *,
    stub: StubOpenAI | None = None,
) -> list[list[Any]]:
    """Run, rerun, report and export one benchmark; print the checks; return the per-class rows."""
    print(
        f"\n== {label}: {n} rows, {len(plan.hostile)} hostile, {len(plan.tolerated)} good rows with "
        "text to render inert"
    )
    proc, wall = h.run_mmsafe("run", cfg, "--out", out, "--quiet")
    print(
        f"  mmsafe run: exit {proc.returncode} in {wall:.1f} s; {terminal_safe((proc.stdout.splitlines() or [''])[0])}"
    )
    h.check(proc.returncode == 0, f"{label}: the run exits 0", failures)
    if proc.returncode != 0:
        print("  stderr: " + terminal_safe(proc.stderr[-1500:], keep_newlines=True))
        return []
    recs = by_sample(out)
    errored = {sid for sid, (_, d) in recs.items() if error_of(d)[0]}
    h.check(len(recs) == n, f"{label}: {len(recs)} records for {n} rows", failures)
    h.check(
        errored == set(plan.hostile),
        f"{label}: errored records = the {len(plan.hostile)} hostile rows "
        f"({len(errored)} errored, {len(errored - set(plan.hostile))} unexpected, "
        f"{len(set(plan.hostile) - errored)} hostile rows without an error)",
        failures,
    )
    for sid in sorted(errored - set(plan.hostile))[:5]:
        print(
            f"    unexpected error on {terminal_safe(sid)}: {terminal_safe(error_of(recs[sid][1])[0], 160)}"
        )
    good_ok = all(
        sid in recs and not error_of(recs[sid][1])[0] and recs[sid][1].get("response") is not None
        for sid in plan.good
    )
    h.check(good_ok, f"{label}: all {len(plan.good)} good rows answered, ids kept exactly", failures)

    rows: dict[str, list[Any]] = {}
    classes = {c.name: c for c in plan.hostile.values()}
    for sid, cls in plan.hostile.items():
        row = rows.setdefault(cls.name, [cls.name, 0, 0, "", ""])
        row[1] += 1
        doc = recs.get(sid, ("", {}))[1]
        err, stage = error_of(doc)
        if err and cls.reason in err and stage == cls.stage:
            row[2] += 1
        if not row[3] or (cls.reason not in row[4]):
            row[3], row[4] = stage or "-", err or "(no record / no error)"
    table = [[r[0], r[1], r[2], r[3], _excerpt(r[4], classes[r[0]].reason)] for r in rows.values()]
    missed = sum(r[1] - r[2] for r in rows.values())
    h.check(
        missed == 0,
        f"{label}: every hostile row has its class's reason and stage ({missed} do not)",
        failures,
    )

    tol: dict[str, list[Any]] = {}
    for sid, name in plan.tolerated.items():
        what, expect = TOLERATED_EXPECT.get(name, ("recorded, id kept", lambda d: True))
        row = tol.setdefault(name, [name, 0, 0, what])
        row[1] += 1
        doc = recs.get(sid, ("", {}))[1]
        if doc and not error_of(doc)[0] and expect(doc):
            row[2] += 1
    short = sum(r[1] - r[2] for r in tol.values())
    h.check(
        short == 0,
        f"{label}: every good row with hostile text is recorded as expected ({short} not)",
        failures,
    )

    # the rerun: the same command
    before = h.raw_records(out)
    requests_before = stub.requests if stub else 0
    proc2, wall2 = h.run_mmsafe("run", cfg, "--out", out, "--quiet")
    counts = written_counts(proc2.stdout)
    print(
        f"  rerun: exit {proc2.returncode} in {wall2:.1f} s; {terminal_safe((proc2.stdout.splitlines() or [''])[0])}"
    )
    h.check(proc2.returncode == 0, f"{label}: the rerun exits 0", failures)
    h.check(
        counts is not None and counts[:2] == (len(plan.hostile), n - len(plan.hostile)),
        f"{label}: the rerun writes exactly the {len(plan.hostile)} errored rows and skips the rest "
        f"(written, skipped, failed = {counts})",
        failures,
    )
    after = h.raw_records(out)
    good_keys = [recs[s][0] for s in plan.good if s in recs]
    same = sum(1 for k in good_keys if after.get(k) == before.get(k))
    h.check(
        same == len(good_keys),
        f"{label}: {same} of {len(good_keys)} good records byte-identical after the rerun",
        failures,
    )
    bad_keys = [recs[s][0] for s in plan.hostile if s in recs]
    same_reason = sum(
        1
        for k in bad_keys
        if k in after and error_of(json.loads(after[k]))[1] == error_of(json.loads(before[k]))[1]
    )
    h.check(
        same_reason == len(bad_keys),
        f"{label}: errored rows still errored at the same stage after the "
        f"rerun ({same_reason} of {len(bad_keys)})",
        failures,
    )
    if stub is not None:  # a judgement error is judged again on the cached answer: no request
        sent, tries = stub.requests - requests_before, 1 + MAX_RETRIES
        asked = sum(1 for c in plan.hostile.values() if c.stage == "generate")
        h.check(
            asked <= sent <= tries * asked,
            f"{label}: the rerun sent {sent} requests for the {asked} rows that errored in generation "
            f"(at most {tries} attempts each) and none for the other rows",
            failures,
        )

    # report and export
    rep, _ = h.run_mmsafe("report", out)
    report_md = (out / "report.md").read_text(encoding="utf-8") if (out / "report.md").exists() else ""
    h.check(
        rep.returncode == 0 and "\x1b" not in rep.stdout + rep.stderr,
        f"{label}: mmsafe report exits 0 ({rep.returncode}), no ESC on the terminal",
        failures,
    )
    h.check(
        bool(report_md) and "\x1b" not in report_md and "\x9b" not in report_md,
        f"{label}: report.md has no ESC",
        failures,
    )
    csv_out = out / "records.csv"
    exp, _ = h.run_mmsafe("export", out, "--format", "csv", "--output", csv_out)
    h.check(exp.returncode == 0, f"{label}: mmsafe export --format csv exits 0 ({exp.returncode})", failures)
    if csv_out.exists():
        text = csv_out.read_text(encoding="utf-8")
        n_rows = sum(1 for _ in csv.reader(io.StringIO(text, newline=""))) - 1
        formulas, controls = formula_cells(text)
        h.check(n_rows == n, f"{label}: the CSV has {n_rows} rows", failures)
        h.check(
            formulas == 0 and controls == 0,
            f"{label}: CSV cells starting a formula: {formulas}; with a control character (ESC…): {controls}",
            failures,
        )

    print(f"\n  {label}: hostile rows (each must be one errored record with its reason)")
    print(
        "  "
        + h.table(["class", "rows", "with reason", "stage", "reason (first, escaped)"], table).replace(
            "\n", "\n  "
        )
    )
    if tol:
        print(f"\n  {label}: good rows with text to keep and render inert")
        print(
            "  "
            + h.table(["class", "rows", "as expected", "expected"], list(tol.values())).replace("\n", "\n  ")
        )
    return table


# -- main ----------------------------------------------------------------------------------------------


def main() -> int:
    csv.field_size_limit(1 << 30)  # the exported CSV holds whole answers (up to limits.answer_bytes)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="rows of the jsonl and csv benchmarks (default 1000)")
    ap.add_argument("--answers", type=int, default=200, help="rows of the answers benchmark (default 200)")
    ap.add_argument("--every", type=int, default=10, help="one hostile row in each block of this many (10)")
    ap.add_argument("--seed", type=int, default=0, help="where in each block, and which class (0)")
    ap.add_argument("--context", type=int, default=100, help="rows of the context benchmark (default 100)")
    ap.add_argument(
        "--only", choices=("jsonl", "csv", "answers", "context"), action="append", help="run only these"
    )
    ap.add_argument("--quick", action="store_true", help="a smoke version: 200 rows, 80 answers, 40 context")
    ap.add_argument("--keep", help="write everything here (kept); default: a temporary folder")
    args = ap.parse_args()
    if args.quick:
        args.n, args.answers, args.context = 200, 80, 40
    parts = args.only or ["jsonl", "csv", "answers", "context"]
    work = h.work_dir(args.keep, "mmsafe-hostile-")
    rng = random.Random(args.seed)
    data = work / "data"
    described = make_images(data, rng)
    print(f"hostile inputs: seed {args.seed}, one row in {args.every} hostile; work folder {work}")
    for name, what in described.items():
        print(f"  {name}: {what}")

    failures: list[str] = []
    base = {
        "judges": ["refusal"],
        "defenses": [{"name": "purify", "params": {"methods": ["jpeg"]}}],
        "models": [{"name": "scripted", "params": {"echo": True}}],
    }
    for fmt in ("jsonl", "csv"):
        if fmt not in parts:
            continue
        plan = build_inputs(data / f"bench.{fmt}", fmt, args.n, args.every, rng)
        cfg = h.write_config(
            work / f"{fmt}.yaml",
            {
                "name": f"hostile-{fmt}",
                **base,
                "benchmarks": [{"name": "jsonl", "params": {"file": str(data / f"bench.{fmt}")}}],
            },
        )
        check_run(fmt, cfg, work / f"out-{fmt}", plan, args.n, failures)

    if "answers" in parts:
        plan = build_answers(data / "answers.jsonl", args.answers, args.every, rng)
        with HostileStub(trickle_s=0.05, trickle_bytes=4096, huge_bytes=20 << 20) as stub:
            model = {
                "name": "openai",
                "params": {
                    "base_url": stub.base_url,
                    "model": "stub",
                    "concurrency": 8,
                    "timeout_s": 3.0,  # the stub builds its 20 MiB bodies on its one loop: not 1 s
                    "deadline_s": 10.0,
                    "max_retries": MAX_RETRIES,
                    "backoff_base_s": 0.05,
                    "backoff_max_s": 0.2,
                },
            }
            cfg = h.write_config(
                work / "answers.yaml",
                {
                    "name": "hostile-answers",
                    "models": [model],
                    "benchmarks": [{"name": "jsonl", "params": {"file": str(data / "answers.jsonl")}}],
                    "judges": [
                        {
                            "name": "target-string",
                            "params": {
                                "targets": [REDOS_PATTERN],
                                "match": "regex",
                                "regex_timeout_s": REGEX_TIMEOUT_S,
                            },
                        }
                    ],
                },
            )
            check_run("answers", cfg, work / "out-answers", plan, args.answers, failures, stub=stub)

    if "context" in parts:
        plan = build_context(data / "context.jsonl", args.context, args.every, rng)
        model = {"name": "tiny-llava", "params": {"batch_size": 8, "generation": {"max_new_tokens": 8}}}
        cfg = h.write_config(
            work / "context.yaml",
            {
                "name": "hostile-context",
                "models": [model],
                "benchmarks": [{"name": "jsonl", "params": {"file": str(data / "context.jsonl")}}],
                "judges": ["refusal"],
            },
        )
        check_run("context", cfg, work / "out-context", plan, args.context, failures)

    return h.finish(failures, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
