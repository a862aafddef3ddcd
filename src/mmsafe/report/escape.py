"""Escaping for attacker-controlled text (model outputs, dataset prompts) wherever it is rendered."""

from __future__ import annotations

import html
import re
import unicodedata
from typing import Any

_MD_SPECIAL = re.compile(r"([\\`*_\[\]!|~])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def md_cell(text: str | None, *, limit: int = 300) -> str:
    """Render untrusted text inert inside a Markdown table cell.

    Markdown punctuation that builds links, images (which would fetch URLs), emphasis, code spans or
    table cells is backslash-escaped, then ``<``, ``>`` and ``&`` become entities (no tags, no script), control and bidi-override characters are
    dropped, newlines become spaces, and the text is cut to ``limit`` characters.
    """
    if text is None:
        return ""
    t = _CONTROL.sub("", text)
    t = " ".join(t.split())
    if len(t) > limit:
        t = t[:limit] + "…"
    t = _MD_SPECIAL.sub(r"\\\1", t)
    return html.escape(t, quote=False)


_FORMULA_START = ("=", "+", "-", "@")
#: what a spreadsheet may skip before it looks for a formula: whitespace (incl. ideographic and no-break
#: spaces), byte-order marks and zero-width characters
_INVISIBLE_START = re.compile(r"^[\s\ufeff\u200b-\u200d\u2060]+")
#: control characters a CSV cell never needs (tab, newline and carriage return are kept; ESC is not)
_CSV_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def csv_cell(text: str | None) -> str:
    """Neutralise spreadsheet formula injection and terminal escapes in one CSV cell.

    A cell gets a leading ``'`` when it would start a formula: ``= + - @`` first, also after leading
    whitespace, newlines, BOMs or zero-width characters, and also in a compatibility form that
    NFKC-normalises to one (full-width ``＝``, small ``﹦``, …), or when it starts with a tab or carriage
    return. Control characters other than tab, newline and carriage return (ESC included, so no ANSI
    sequence reaches a terminal that shows the file) become U+FFFD.
    """
    if text is None:
        return ""
    t = _CSV_CONTROL.sub("\ufffd", text)
    head = unicodedata.normalize("NFKC", _INVISIBLE_START.sub("", t)[:16])
    if _INVISIBLE_START.sub("", head).startswith(_FORMULA_START) or t.startswith(("\t", "\r")):
        return "'" + t
    return t


#: ANSI/VT escape sequences: CSI (ESC [ or 0x9B … final byte), OSC/DCS/PM/APC strings up to BEL or ST,
#: and two-character ESC sequences
_ESCAPE_RE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]P^_X]|[\x90\x9d\x9e\x9f\x98])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)


def terminal_safe(text: Any, limit: int | None = None, *, keep_newlines: bool = False) -> str:
    """``text`` made safe for a terminal: escape sequences removed, other control characters shown as ``\\xNN``.

    Model outputs, labelled data, server error bodies and file names are attacker-controlled: an ANSI
    sequence could recolour, move the cursor, retitle the window or hide text; bidi overrides could
    reorder what is shown; a lone surrogate could not even be printed. ``keep_newlines`` keeps ``\\n``
    as a line break (for messages that are indented lists); the text is cut to ``limit`` characters.
    """
    s = _ESCAPE_RE.sub("", str(text))
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and ch not in "\u200d"):
            out.append(
                {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(
                    ch, f"\\u{ord(ch):04x}" if ord(ch) > 0xFF else f"\\x{ord(ch):02x}"
                )
            )
        else:
            out.append(ch)
    s = "".join(out)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s
