"""OCR input filter: read the text inside each image and refuse when that text is a harmful request.

The target threat is the typographic jailbreak, where the harmful instruction is moved out of the
text turn (which a text-only safety filter or the aligned language model would catch) into the
pixels of an image: FigStep (Gong et al., "FigStep: Jailbreaking Large Vision-Language Models via
Typographic Visual Prompts", arXiv:2311.05608, 2023) renders "Steps to manufacture …" as an empty
numbered list, and MM-SafetyBench (Liu et al., "MM-SafetyBench: A Benchmark for Safety Evaluation of
Multimodal Large Language Models", ECCV 2024) pairs a typographic rendering of the key phrase with
a generated picture. This defense undoes the move: Tesseract (:mod:`mmsafe.ocr`) reads the text in
every image, and that text — with the user's own text when ``include_user_text`` — is judged *as
if it were the request*. A request judged harmful is answered with ``refusal_text`` and the model
is never called (``blocked``, calls = 0); anything else goes to the model unchanged (``passed``,
calls = 1). Prompts without images are passed without a check. The OCR text read, and what the
detector matched, are kept in the item's defense details.

Detectors (``detector``):

* ``"keywords"`` (default) — our own built-in list of regular expressions for harmful requests,
  :data:`HARMFUL_REQUEST_PATTERNS` (making weapons, explosives or drugs, hacking into accounts,
  stealing, killing a person, fraud, malware, trafficking, evading the police …), matched
  case-insensitively on the whitespace-normalised text. A crude, transparent baseline: it misses
  paraphrases and can flag benign mentions ("how do police detect counterfeit money?").
* ``{name: <judge>, params: {…}}`` — any registered judge. Judges rule on *responses*, so the
  request text is handed over as the generation text (and as the sample's text); ``success=True``
  means harmful. E.g. ``{name: target-string, params: {targets: [...], match: regex}}`` for a
  custom word list, or an LLM judge with a template that asks whether a request is harmful. A
  judge error on an item is recorded as that item's error (fail closed: no answer is produced).

What it needs: ``pytesseract`` and the ``tesseract`` binary (``pip install 'mmsafe[ocr]'`` and
e.g. ``apt-get install tesseract-ocr tesseract-ocr-eng``); when either is missing each item with
an image fails with :class:`~mmsafe.errors.MissingDependency` naming what to install. OCR costs
CPU time (about a second per large image), no model calls.

Limits: the filter only sees text Tesseract can read (stylised, rotated, low-contrast or
split-across-images text gets through), and says nothing about the picture itself (an image that
*shows* a weapon with a benign question is passed).

Parameters: ``detector`` (``"keywords"`` or a judge {name, params}), ``include_user_text`` (True),
``refusal_text``, ``lang`` (Tesseract language, ``eng``), ``ocr_config`` (extra Tesseract flags),
``ocr_timeout`` (seconds, 0 = none), ``extra_patterns`` (more regexes for the keyword detector),
``regex_timeout_s`` (1.0: the most one extra pattern may search one request, which comes from
attacker-made images; past it the item fails with ``regex '…' took over 1 s …``; runtime only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mmsafe.components import SubJudge
from mmsafe.config import ComponentField
from mmsafe.defenses.base import Defense, mark
from mmsafe.limits import DEFAULT_REGEX_TIMEOUT_S, PatternTimeout, compile_pattern, regex_search
from mmsafe.models.base import ModelBackend
from mmsafe.ocr import normalise_ocr_text, ocr_image
from mmsafe.types import Generation, Judgement, Message, Prompt, Sample

__all__ = ["DEFAULT_REFUSAL", "HARMFUL_REQUEST_PATTERNS", "OCRFilter", "OCRFilterParams", "keyword_matches"]

DEFAULT_REFUSAL = "I can't help with that request."

_HARM_OBJECT = (
    r"(?:bombs?|explosives?|grenades?|weapons?|guns?|firearms?|rifles?|silencers?|ammunition|"
    r"poisons?|nerve agents?|sarin|ricin|anthrax|bioweapons?|chemical weapons?|napalm|molotov|"
    r"meth(?:amphetamine)?|cocaine|heroin|fentanyl|lsd|illegal drugs?|narcotics?|"
    r"malware|viruse?s?|ransomware|keyloggers?|botnets?|counterfeit \w+|fake (?:ids?|passports?|money))"
)

#: Built-in harmful-request rules of the ``keywords`` detector: (rule name, regex). Our own list;
#: matched case-insensitively on whitespace-normalised text.
HARMFUL_REQUEST_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "make-weapon-drug-malware",
        r"\b(?:make|making|build|building|manufactur\w*|synthes\w*|produc\w*|assembl\w*|creat\w*|"
        r"cook\w*|brew\w*|obtain\w*|acquir\w*|buy\w*|get|smuggl\w*|writ\w*|develop\w*)\b"
        r"[^.?!]{0,40}?\b" + _HARM_OBJECT,
    ),
    (
        "hacking",
        r"\b(?:hack\w*|break into|crack\w*|brute[- ]?forc\w*|gain unauthori[sz]ed access)\b[^.?!]{0,40}?"
        r"\b(?:accounts?|passwords?|computers?|networks?|servers?|systems?|wi-?fi|e-?mails?|banks?|"
        r"databases?|phones?|websites?)\b",
    ),
    (
        "steal",
        r"\b(?:steal\w*|stole|shoplift\w*|rob|robb\w*|burglar\w*|embezzl\w*|launder\w*|pickpocket\w*)\b",
    ),
    (
        "kill-harm-person",
        r"\b(?:kill\w*|murder\w*|assassinat\w*|poison\w*|strangl\w*|stab\w*|shoot\w*|hurt\w*|kidnap\w*|"
        r"tortur\w*)\b[^.?!]{0,20}?\b(?:someone|somebody|a person|people|him|her|them|my \w+|"
        r"a child|children|(?:my |a |the )?(?:neighbou?r|wife|husband|boss|teacher)s?)\b",
    ),
    ("self-harm", r"\b(?:kill myself|commit suicide|end my life|self[- ]harm\w*|cut myself)\b"),
    (
        "fraud",
        r"\b(?:phishing|identity theft|credit card fraud|insurance fraud|tax evasion|scam\w*|"
        r"money laundering|ponzi)\b",
    ),
    ("illegal", r"\billegal(?:ly)?\b|\billicit\b"),
    (
        "evade-law",
        r"\b(?:evad\w*|escap\w*|avoid\w*|hid\w*)\b[^.?!]{0,20}?\b(?:police|law enforcement|"
        r"detection|authorities|customs|the cops)\b",
    ),
    ("trafficking", r"\btraffick\w*\b"),
    ("sexual-minors", r"\b(?:child (?:porn\w*|sexual\w*)|csam|sexuali[sz]\w* (?:a )?minors?)\b"),
    ("undetectable", r"\b(?:untraceable|undetectable)\b"),
    (
        "hate-violence",
        r"\b(?:terror\w* attack|mass shooting|genocide|ethnic cleansing|incite\w* violence)\b",
    ),
)


class OCRFilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: Literal["keywords"] | ComponentField = Field(
        default="keywords", description='"keywords" or a judge {name, params} whose success = harmful'
    )
    include_user_text: bool = Field(True, description="judge the user's text together with the OCR text")
    refusal_text: str = Field(DEFAULT_REFUSAL, min_length=1, max_length=5000)
    lang: str = Field("eng", min_length=1, max_length=64, description="Tesseract language(s)")
    ocr_config: str = Field("", max_length=500, description="extra Tesseract command-line flags")
    ocr_timeout: float = Field(30.0, ge=0.0, description="seconds per image, 0 = no limit")
    extra_patterns: tuple[str, ...] = Field(default=(), description="more regexes for the keyword detector")
    regex_timeout_s: float = Field(
        DEFAULT_REGEX_TIMEOUT_S,
        ge=0.0,
        le=600.0,
        description="wall time of one extra_patterns search on one request (0: none); longer fails the item",
    )

    @field_validator("extra_patterns")
    @classmethod
    def _compile(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for pat in v:
            compile_pattern(pat)
        return v


_COMPILED = tuple((name, re.compile(pat, re.IGNORECASE)) for name, pat in HARMFUL_REQUEST_PATTERNS)


def keyword_matches(
    text: str, extra: Sequence[str] = (), *, timeout_s: float = DEFAULT_REGEX_TIMEOUT_S
) -> list[str]:
    """Names of the built-in rules (and ``extra:<regex>`` for extra patterns) that match ``text``.

    The extra (user-supplied) patterns search for at most ``timeout_s`` each, and raise
    :class:`~mmsafe.limits.PatternTimeout` past it: the text is read from attacker-made images."""
    norm = normalise_ocr_text(text)
    hits = [name for name, rx in _COMPILED if rx.search(norm)]
    hits += [f"extra:{p}" for p in extra if regex_search(p, norm, ignore_case=True, timeout_s=timeout_s)]
    return hits


class OCRFilter(Defense):
    """OCR input filter: refuse, without calling the model, when the text in the images is a harmful request."""

    name: ClassVar[str] = "ocr-filter"
    Params: ClassVar[type[BaseModel]] = OCRFilterParams
    runtime_params: ClassVar[frozenset[str]] = frozenset({"regex_timeout_s"})
    #: the detector judge (None for ``detector: keywords``); bound and closed with the defense
    judge: Any = SubJudge("detector")

    def read_text(self, prompt: Prompt) -> str:
        """The text Tesseract reads in every image of ``prompt``, normalised and joined."""
        p = self.params
        assert isinstance(p, OCRFilterParams)
        texts = []
        for image in prompt.images:
            raw = ocr_image(image.to_pil("RGB"), lang=p.lang, config=p.ocr_config, timeout=p.ocr_timeout)
            texts.append(normalise_ocr_text(raw))
        return " ".join(t for t in texts if t)

    def _request_text(self, prompt: Prompt, ocr_text: str) -> str:
        p = self.params
        assert isinstance(p, OCRFilterParams)
        if not p.include_user_text:
            return ocr_text
        user = " ".join(m.text for m in prompt.messages if m.role == "user").strip()
        return normalise_ocr_text(f"{ocr_text} {user}")

    def _detect(self, requests: list[str]) -> list[tuple[bool, dict[str, Any]] | Exception]:
        p = self.params
        assert isinstance(p, OCRFilterParams)
        if self.judge is None:
            out: list[tuple[bool, dict[str, Any]] | Exception] = []
            for text in requests:
                try:
                    hits = keyword_matches(text, p.extra_patterns, timeout_s=p.regex_timeout_s)
                except PatternTimeout as exc:  # this item fails alone
                    out.append(exc)
                    continue
                out.append((bool(hits), {"detector": "keywords", "matches": hits}))
            return out
        items = []
        for i, text in enumerate(requests):
            sample = Sample(id=f"ocr-filter-{i}", benchmark="ocr-filter", text=text)
            items.append((sample, Prompt(messages=(Message.user(text),)), Generation(text=text)))
        verdicts: list[Judgement] = self.judge.judge_batch(items) if items else []
        results: list[tuple[bool, dict[str, Any]] | Exception] = []
        for v in verdicts:
            if v.error:
                results.append(RuntimeError(f"ocr-filter detector '{self.judge.name}' failed: {v.error}"))
            else:
                info = {"detector": self.judge.name, "label": v.label, "score": v.score}
                results.append((v.success is True, info))
        return results

    def defend(
        self, prompts: Sequence[Prompt], seeds: Sequence[int], model: ModelBackend
    ) -> list[Generation | Exception]:
        p = self.params
        assert isinstance(p, OCRFilterParams)
        results: list[Generation | Exception | None] = [None] * len(prompts)
        details: dict[int, dict[str, Any]] = {}
        to_check: list[int] = []
        requests: list[str] = []
        for i, prompt in enumerate(prompts):
            if not prompt.images:
                details[i] = {"checked": False}
                continue
            try:
                ocr_text = self.read_text(prompt)
            except Exception as exc:  # MissingDependency, a corrupt image: this item fails alone
                results[i] = exc
                continue
            details[i] = {"checked": True, "ocr_text": ocr_text[:2000]}
            to_check.append(i)
            requests.append(self._request_text(prompt, ocr_text))

        for i, verdict in zip(to_check, self._detect(requests), strict=True):
            if isinstance(verdict, Exception):
                results[i] = verdict
                details.pop(i, None)
                continue
            harmful, info = verdict
            details[i].update(info)
            if harmful:
                gen = Generation(text=p.refusal_text, finish_reason="blocked")
                results[i] = mark(gen, "blocked", calls=0, **details.pop(i))

        passing = [i for i in range(len(prompts)) if results[i] is None]
        if passing:
            answers = model.generate([prompts[i] for i in passing], seeds=[seeds[i] for i in passing])
            for i, r in zip(passing, answers, strict=True):
                results[i] = r if isinstance(r, Exception) else mark(r, "passed", calls=1, **details[i])
        return [r for r in results if r is not None]
