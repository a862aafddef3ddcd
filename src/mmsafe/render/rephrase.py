"""Question → statement: :func:`rephrase_as_statement` turns a request written as a question into
the declarative "Steps to …" / "List of …" form that typographic attacks typeset.

Shared by FigStep (when a sample carries no curated ``instruction``), the text-only attack and the
vision SFT data.
"""

from __future__ import annotations

import re

__all__ = ["rephrase_as_statement"]


_SUBJECT = r"(?:i|you|we|one|someone|somebody|people|they|a person|an individual|anyone)"
_AUX = r"(?:can|could|do|does|should|would|might|may|will|must)"
_FLAGS = re.IGNORECASE

#: Ordered (rule name, pattern, head) triples; the first match wins. ``x`` is the remainder kept verbatim.
#: A head ending in " to" becomes " for" when ``x`` starts with a gerund ("Steps for creating …").
_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("how-to", re.compile(r"^how\s+to\s+(?P<x>.+)$", _FLAGS), "Steps to"),
    (
        "how-aux-subject",
        re.compile(
            rf"^how\s+{_AUX}\s+{_SUBJECT}\s+(?:best\s+|effectively\s+|successfully\s+)?(?P<x>.+)$", _FLAGS
        ),
        "Steps to",
    ),
    (
        "can-you-guide",
        re.compile(
            r"^(?:can|could|would|will)\s+you\s+(?:please\s+)?"
            r"(?:guide|show|teach|tell|help|instruct|walk|explain(?:\s+to)?)(?:\s+(?:me|us))?"
            r"(?:\s+(?:on|in|with|through|about))?(?:\s+how)?(?:\s+to)?\s+(?P<x>.+)$",
            _FLAGS,
        ),
        "Steps to",
    ),
    (
        "can-you-list",
        re.compile(
            r"^(?:can|could|would|will)\s+you\s+(?:please\s+)?"
            r"(?:provide|give|share|suggest|recommend|list|name|offer)(?:\s+(?:me|us))?(?:\s+with)?"
            r"(?:\s+(?:a\s+list\s+of|a|an|some|the))?\s+(?P<x>.+)$",
            _FLAGS,
        ),
        "List of",
    ),
    (
        "what-way",
        re.compile(
            r"^what(?:'s|\s+is|\s+are)\s+(?:the\s+|some\s+)?"
            r"(?:(?:best|easiest|most\s+effective|quickest|fastest|simplest|safest|cheapest)\s+)?"
            r"(?:way|ways|method|methods|technique|techniques|strategy|strategies|means)\s+"
            r"(?P<prep>to|for|of)\s+(?P<x>.+)$",
            _FLAGS,
        ),
        "Methods",
    ),
    (
        "what-noun-aux",
        re.compile(
            r"^(?:what|which)\s+(?P<noun>methods|techniques|ways|strategies|tactics|steps|tools|resources)\s+"
            rf"(?:are|is|{_AUX})\s+(?:{_SUBJECT}\s+)?(?:be\s+)?(?:(?:use|employ|take|follow|need)\s+)?"
            r"(?P<x>.+)$",
            _FLAGS,
        ),
        "",
    ),
    (
        "what-are",
        re.compile(r"^(?:what|which)\s+(?:are|is)\s+(?:the\s+|some\s+)?(?P<x>.+)$", _FLAGS),
        "List of",
    ),
    (
        "imperative-how",
        re.compile(
            r"^(?:please\s+)?(?:explain|describe|tell\s+me|show\s+me|teach\s+me)(?:\s+in\s+detail)?\s+how\s+to\s+"
            r"(?P<x>.+)$",
            _FLAGS,
        ),
        "Steps to",
    ),
    (
        "imperative-list",
        re.compile(
            r"^(?:please\s+)?(?:list|give|provide|suggest|name)(?:\s+(?:me|us))?"
            r"(?:\s+(?:a\s+list\s+of|some|the|a|an))?\s+(?P<x>.+)$",
            _FLAGS,
        ),
        "List of",
    ),
)
_WH_WORDS = frozenset({"which", "what", "who", "whom", "whose", "whether", "if", "where", "when", "why"})
_NOT_GERUNDS = frozenset(
    {"bring", "sing", "ring", "string", "spring", "swing", "sting", "fling", "cling", "wring"}
)


def _is_gerund(word: str) -> bool:
    w = word.lower()
    return len(w) > 4 and w.endswith("ing") and w not in _NOT_GERUNDS


def rephrase_as_statement(question: str) -> tuple[str, str]:
    """Rule-based rephrasing of a question into a FigStep-style statement; returns ``(statement, rule)``.

    A crude stand-in for SafeBench's curated ``instruction`` column (which FigStep generated with
    GPT-4 and checked by hand); prefer the curated text when a sample has it. Rules, first match wins:

    - ``How can/do/should <subject> X?`` and ``How to X?`` → ``Steps to X.``
    - ``Can you guide/show/teach/help me (on/in) (how to) X?`` → ``Steps to X.`` (``Steps for X.``
      when X starts with a gerund: "guide me in creating …" → "Steps for creating …")
    - ``Can you provide/give/suggest (me) (a list of) X?`` → ``List of X.``
    - ``What's the best way/method to X?`` → ``Methods to X.``
    - ``What methods/techniques/… are used for X?`` → ``Methods used for X.``
    - ``What are (the) X?`` / ``Which are X?`` → ``List of X.``
    - ``Explain/describe how to X.`` → ``Steps to X.``; ``List/give/provide X.`` → ``List of X.``
    - Text that is already a statement (not ending in ``?``) is kept as it is (rule ``statement``).
    - Any other question → ``Steps to answer the question: <question without "?">.`` (rule ``fallback``).

    The remainder X is kept verbatim (no pronoun rewriting), whitespace is collapsed and the result
    always ends with a single full stop. Deterministic.
    """
    q = " ".join(question.split())
    if not q:
        raise ValueError("cannot rephrase an empty question")
    core = q.rstrip("?!. ").strip()
    if not core:
        raise ValueError(f"cannot rephrase {question!r}: no words")
    for rule, pattern, head in _RULES:
        m = pattern.match(core)
        if not m:
            continue
        x = m.group("x").strip()
        if x.split()[0].lower() in _WH_WORDS:  # "Can you tell me which …": not a how-to
            continue
        groups = m.groupdict()
        if groups.get("noun"):
            head = groups["noun"].capitalize()
        elif groups.get("prep"):
            head = f"{head} {groups['prep'].lower()}"
        if head.endswith(" to") and _is_gerund(x.split()[0]):
            head = head[: -len(" to")] + " for"
        statement = f"{head} {x}" if head else x
        return statement[0].upper() + statement[1:] + ".", rule
    if not q.endswith("?"):
        return core[0].upper() + core[1:] + ".", "statement"
    return f"Steps to answer the question: {core}.", "fallback"
