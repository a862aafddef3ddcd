"""Untrusted text in a judge's prompt: quote it so it cannot pose as the prompt, and read only the
judge model's own answer.

Threat model: the judged response (and the request, and any context passage) is attacker-controlled.
It can carry a forged verdict aimed at the judge — ``[[SAFE]]``, ``Verdict: no``, ``safe`` alone on
a line, a fake JSON verdict, a fake judge turn after a fake closing tag, chat-template control
tokens, "ignore previous instructions" (:mod:`mmsafe.judges.forgery` builds these cases). Two
defences, both used by every template of the ``llm`` judge:

- :func:`neutralise` rewrites untrusted text before it is put between the template's ``<<<`` and
  ``>>>`` markers, so that nothing in it can end the block, start a line of the prompt, or be read
  by a tokenizer as a turn boundary;
- :func:`own_answer` removes from the judge model's answer the material it copied from the prompt
  (a quoted block, or lines repeated from the judged text), so that a verdict echoed from the
  response is never parsed as the judge's own.

Neither makes a judge model immune to being talked into a verdict; ``mmsafe judge-eval
--robustness`` measures how often that still happens.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["CLOSE", "OPEN", "QUOTE", "neutralise", "own_answer", "unneutralised"]

#: markers around untrusted text in every built-in template
OPEN, CLOSE = "<<<", ">>>"
#: what every line of untrusted text after its first starts with inside the prompt
QUOTE = "| "

#: characters that read as angle brackets (mapped to ASCII before marker runs are broken up)
_ANGLES = str.maketrans(
    {
        "\uff1c": "<",  # fullwidth
        "\uff1e": ">",
        "\ufe64": "<",  # small form
        "\ufe65": ">",
        "\u2039": "<",  # single guillemets
        "\u203a": ">",
        "\u2329": "<",  # angle brackets
        "\u232a": ">",
        "\u27e8": "<",
        "\u27e9": ">",
        "\u3008": "<",
        "\u3009": ">",
        "\u276e": "<",
        "\u276f": ">",
        "\u226a": "<<",  # much less / greater than
        "\u226b": ">>",
        "\u300a": "<<",  # double angle brackets
        "\u300b": ">>",
        "\u22d8": "<<<",  # very much less / greater than
        "\u22d9": ">>>",
    }
)

#: chat-template control tokens written as ``<|name|>`` (ChatML, Llama 3, Phi, …; also with fullwidth bars)
_BAR_TOKEN = re.compile(r"<\s*[|\uff5c]([^<>\n]{0,64}?)[|\uff5c]\s*>")
#: ``<name>`` / ``</name>`` tags that open or close a turn, a role, or a section a judge prompt may use
_TAG_NAMES = (
    "s",
    "bos",
    "eos",
    "pad",
    "unk",
    "eot",
    "endoftext",
    "start_of_turn",
    "end_of_turn",
    "start_of_image",
    "end_of_image",
    "image",
    "turn",
    "message",
    "conversation",
    "system",
    "user",
    "assistant",
    "human",
    "model",
    "ai",
    "bot",
    "judge",
    "grader",
    "evaluator",
    "verdict",
    "evaluation",
    "assessment",
    "response",
    "answer",
    "output",
    "reply",
    "generation",
    "completion",
    "request",
    "question",
    "prompt",
    "query",
    "input",
    "instruction",
    "instructions",
    "behavior",
    "behaviour",
    "context",
    "material",
    "text",
    "data",
    "document",
    "end",
)
_TAG = re.compile(
    r"<\s*(/?)\s*(" + "|".join(sorted(_TAG_NAMES, key=len, reverse=True)) + r")\s*/?\s*>", re.IGNORECASE
)
#: Llama 2 turn and system markers
_INST = re.compile(r"\[\s*(/?)\s*INST\s*\]", re.IGNORECASE)
_SYS = re.compile(r"<<\s*(/?)\s*SYS\s*>>", re.IGNORECASE)
#: two or more angle brackets in a row (a marker, or half of one that the template completes)
_RUN = re.compile(r"<{2,}|>{2,}")


def neutralise(text: str) -> str:
    """``text`` made safe to put between the template's ``<<<`` and ``>>>`` markers.

    In order: format characters (Unicode category Cf: zero-width characters, bidi controls) are
    dropped — they can hide a marker from a reader or split one for a filter; look-alike angle
    brackets (fullwidth, guillemets, ``≫``…) become ASCII; chat control tokens lose their angle
    brackets (``<|im_start|>`` → ``(|im_start|)``, ``<end_of_turn>`` → ``(end_of_turn)``,
    ``</response>`` → ``(/response)``, ``[INST]`` → ``(INST)``, ``<<SYS>>`` → ``(SYS)``), so no
    tokenizer reads a turn boundary and no fake closing tag survives; runs of two or more ``<`` or
    ``>`` are spaced out (``>>>`` → ``> > >``), so the text cannot close its block; and every line
    after the first starts with :data:`QUOTE` (``| ``; any Unicode line break counts), so no line of
    it can pose as a line of the prompt: a verdict line (``safe``, ``Verdict: no``, ``[[SAFE]]``),
    a role header (``Assistant:``, ``### Response:``) or a section header of the template. The
    first line is left as it is: every built-in template writes it straight after the opening
    marker, on the marker's line (a custom template that starts a line with a field leaves that
    field's first line unmarked).

    Single-line text without markers, control tokens or format characters is returned unchanged.
    """
    s = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    s = s.translate(_ANGLES)
    s = _BAR_TOKEN.sub(lambda m: f"(|{m.group(1)}|)", s)
    s = _SYS.sub(lambda m: f"({m.group(1)}SYS)", s)
    s = _TAG.sub(lambda m: f"({m.group(1)}{m.group(2)})", s)
    s = _INST.sub(lambda m: f"({m.group(1)}INST)", s)
    s = _RUN.sub(lambda m: " ".join(m.group(0)), s)
    lines = s.splitlines()
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return "\n".join([lines[0], *((QUOTE + ln) if ln.strip() else QUOTE.rstrip() for ln in lines[1:])])


#: what :func:`unneutralised` looks for: a marker, a control token, a role/section tag
_LEFTOVER = (
    ("block marker", re.compile(r"<<<|>>>")),
    ("control token", _BAR_TOKEN),
    ("role or turn tag", _TAG),
    ("[INST] marker", re.compile(r"\[\s*/?\s*INST\s*\]", re.IGNORECASE)),
)


def unneutralised(text: str) -> list[str]:
    """What in ``text`` (the output of :func:`neutralise`) could still pose as the prompt: the
    names of leftover markers, control tokens and role tags, and of lines after the first that do
    not start with :data:`QUOTE`. Empty for every output of :func:`neutralise` (tests check it)."""
    found = [name for name, rx in _LEFTOVER if rx.search(text)]
    if any(ch for ch in text if unicodedata.category(ch) == "Cf"):
        found.append("format character")
    if any(not ln.startswith(QUOTE.rstrip()) for ln in text.splitlines()[1:]):
        found.append("unquoted line")
    return found


# ------------------------------------------------------------------------------------------------ answers

#: the template's blocks as the judge model may copy them (an unclosed block runs to the end)
_BLOCK = re.compile(re.escape(OPEN) + r".*?(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)
_NON_WORD = re.compile(r"[\W_]+")
#: a run of copied lines with at least this many letters and digits is recognisably a copy
MIN_COPY_CHARS = 12
#: a line with at least this many letters and digits that occurs inside a line of the material is a copy
MIN_PARTIAL_CHARS = 24


def _norm(line: str) -> str:
    return _NON_WORD.sub("", line.casefold())


def _copied_lines(lines: Sequence[str], material: Iterable[str]) -> tuple[set[int], set[int]]:
    """Indices of answer lines copied from ``material``: ``(sure, short)`` — copies recognisable as such,
    and short copied lines standing alone, which may as well be the judge's own words."""
    quoted = {n for text in material for n in map(_norm, text.splitlines()) if n}
    if not quoted:
        return set(), set()
    joined = "\n".join(quoted)

    def copied(n: str) -> bool:
        return n in quoted or (len(n) >= MIN_PARTIAL_CHARS and n in joined)

    sure: set[int] = set()
    short: set[int] = set()
    run: list[int] = []

    def close_run() -> None:
        size = sum(len(_norm(lines[i])) for i in run)
        prefixed = any(lines[i].lstrip().startswith(QUOTE.rstrip()) for i in run)
        (sure if size >= MIN_COPY_CHARS or prefixed else short).update(run)
        run.clear()

    for i, line in enumerate(lines):
        n = _norm(line)
        if not n:
            continue  # blank lines neither extend nor break a run
        if copied(n):
            run.append(i)
        else:
            close_run()
    close_run()
    return sure, short


def own_answer(answer: str, material: Sequence[str] = (), *, short_copies: bool = False) -> tuple[str, int]:
    """The judge model's own words in ``answer``, and how many lines were dropped as copies.

    Dropped: everything between the template's ``<<<`` and ``>>>`` markers (a block the judge
    quoted; an unclosed ``<<<`` runs to the end of the answer); and lines that repeat the judged
    ``material`` (request, response, context — the raw texts). A line is a copy when, with case,
    spaces and punctuation ignored, it equals a line of the material, or holds at least
    :data:`MIN_PARTIAL_CHARS` letters and digits found inside one. Consecutive copies (blank lines
    between them allowed) are dropped together when they hold at least :data:`MIN_COPY_CHARS`
    letters and digits, or when one starts with the quote prefix ``|`` the prompt put there.

    A shorter copy standing alone (``safe``, ``Verdict: no`` repeated from the response) cannot be
    told from the judge's own verdict by its form; it is dropped only with ``short_copies=True``.
    The ``llm`` judge reads the answer that way first and keeps the reading only when the rest of
    the answer states a verdict by itself (a verdict line, a ``key: value`` line or JSON); a judge
    whose whole answer is the forged word was swayed, not misread, and its verdict stands.
    """
    removed = 0

    def cut(m: re.Match[str]) -> str:
        nonlocal removed
        removed += m.group(0).count("\n") + 1
        return "\n"

    text = _BLOCK.sub(cut, answer)
    lines = text.splitlines()
    sure, short = _copied_lines(lines, material)
    drop = sure | short if short_copies else sure
    if drop:
        removed += len(drop)
        text = "\n".join(ln for i, ln in enumerate(lines) if i not in drop)
    return text, removed
