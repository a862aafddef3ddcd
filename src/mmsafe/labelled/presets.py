"""Readers for the published human-labelled judge-evaluation sets: ``mmsafe judge-eval --preset NAME``.

Each preset reads one published file by its documented format and returns
:class:`~mmsafe.labelled.LabelledData` with the right construct, class names, row ids and
expected behaviour. The facts each reader relies on (column and field names, label values) were
checked against the sources named in its docstring; no labelled data ships with mmsafe, and the
tests use invented rows in the same formats.

=================  ===========  ==========================================================================
preset             construct    reads
=================  ===========  ==========================================================================
``jbb-human``      harm         JailbreakBench ``judge_comparison`` (``data/judge-comparison.csv``)
``harmbench-text`` harm         HarmBench ``data/classifier_val_sets/text_behaviors_val_set.json``
``harmbench-mm``   harm         HarmBench ``data/classifier_val_sets/multimodal_behaviors_val_set.json``
``xstest-v2``      refusal      XSTest ``model_completions/xstest_v2_completions_<model>.csv``
``msts``           harm         MSTS ``data/response_annotations/<language>_<modality>.csv``
=================  ===========  ==========================================================================

A preset fixes the columns it reads; ``label_col`` may still name another label column (a
published judge's verdicts, to compare a judge with it instead of with the humans) and an
expected-behaviour column (``expected``, ``behavior type``…) is honoured when present.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmsafe.errors import ConfigError
from mmsafe.labelled.read import (
    _ALIASES,
    _check_encoding,
    _Collector,
    _decode,
    _expected_value,
    _id_value,
    _load_json,
    _Table,
    _table,
    _text_field,
)
from mmsafe.labelled.rows import CONSTRUCTS, LabelledData, LabelledRow, _BadRow, _norm_label, parse_label
from mmsafe.types import Expected

__all__ = ["PRESETS", "Preset", "read_preset"]


@dataclass(frozen=True)
class _Options:
    label_col: str | None
    expected_col: str | None
    label_map: Mapping[str, bool]
    behaviors: Path | None


#: a reader fills the collector from the file's text and returns the columns it used (role → column)
_Reader = Callable[[Path, str, _Options, _Collector], dict[str, str]]


@dataclass(frozen=True)
class Preset:
    """A published labelled set: what it measures, the words for its classes, how to read it."""

    name: str
    construct: Literal["harm", "refusal"]
    class_names: tuple[str, str]
    summary: str
    reader: _Reader
    default_labels: Mapping[str, bool] | None = None


# ------------------------------------------------------------------------------------------------ helpers


def _majority(obj: Mapping[str, Any], cols: Sequence[str], parse: Callable[[Any], bool]) -> bool:
    """The majority vote of the non-empty ``cols``; a tie or no vote is a bad row."""
    votes: list[bool] = []
    for c in cols:
        v = obj.get(c)
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        try:
            votes.append(parse(v))
        except ValueError as exc:
            raise _BadRow(f"{c!r}: {exc}") from None
    if not votes:
        raise _BadRow(f"no label: {', '.join(cols)} are all absent or empty")
    yes = sum(votes)
    if 2 * yes == len(votes):
        shown = ", ".join(f"{c}={obj.get(c)!r}" for c in cols if c in obj)
        raise _BadRow(f"the annotators are split evenly ({shown}) and there is no majority label")
    return 2 * yes > len(votes)


def _label(
    obj: Mapping[str, Any],
    col: str,
    fallback: Sequence[str],
    parse: Callable[[Any], bool],
) -> bool:
    """``obj[col]`` read by ``parse`` when present and non-empty, else the majority of ``fallback``."""
    v = obj.get(col)
    if v is not None and not (isinstance(v, str) and not v.strip()):
        try:
            return parse(v)
        except ValueError as exc:
            raise _BadRow(f"{col!r}: {exc}") from None
    if fallback and any(c in obj for c in fallback):
        return _majority(obj, fallback, parse)
    raise _BadRow(f"no {col!r} label")


def _require(path: Path, table: _Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing and table.columns:
        raise ConfigError(
            f"{path}: not {what}: no column {', '.join(repr(c) for c in missing)}; "
            f"columns: {', '.join(table.columns) or '(none)'}"
        )


def _check_label_col(path: Path, table: _Table, label_col: str | None) -> None:
    """A label column the user named must exist (a published judge's verdict column, say)."""
    if label_col is not None and table.columns and label_col not in table.columns:
        raise ConfigError(f"{path}: no column {label_col!r} (label_col); columns: {', '.join(table.columns)}")


def _expected_col(path: Path, table: _Table, opts: _Options) -> str | None:
    if opts.expected_col is not None:
        if opts.expected_col not in table.columns:
            raise ConfigError(
                f"{path}: no column {opts.expected_col!r} (expected_col); columns: {', '.join(table.columns)}"
            )
        return opts.expected_col
    return next((c for c in _ALIASES["expected"] if c in table.columns), None)


def _parser(label_map: Mapping[str, bool]) -> Callable[[Any], bool]:
    return lambda v: parse_label(v, label_map)


def _metadata(**values: Any) -> dict[str, Any]:
    """The non-empty string values, for :attr:`LabelledRow.metadata`."""
    return {k: v for k, v in values.items() if isinstance(v, str) and v.strip()}


# ------------------------------------------------------------------------------------------------ jbb-human

_JBB_HUMANS = ("human1", "human2", "human3")


def _read_jbb_human(path: Path, text: str, opts: _Options, coll: _Collector) -> dict[str, str]:
    """JailbreakBench's judge comparison: 300 jailbreak responses labelled by three people.

    Format (Hugging Face dataset ``JailbreakBench/JBB-Behaviors``, config ``judge_comparison``,
    file ``data/judge-comparison.csv``; the columns as read by several public loaders of that file
    and named in the dataset card's config): ``Index``, ``goal`` (the behaviour's request),
    ``prompt`` (the jailbreak prompt sent), ``target_response``, ``human1`` / ``human2`` /
    ``human3`` (0/1, 1 = jailbroken) and ``human_majority`` (their majority) — the label — plus
    the verdicts of four judges (``harmbench_cf``, ``gpt4_cf``, ``llamaguard2_cf``, ``llama3_cf``),
    any of which ``label_col`` can pick. Row id = ``Index``; ``attack_prompt`` = ``prompt``; when
    ``human_majority`` is empty the majority of the three is taken. Every row is a harmful request
    unless an expected-behaviour column says otherwise (a benign goal is ``comply``).
    """
    table = _table(path, text, coll)
    label_col = opts.label_col or "human_majority"
    _require(path, table, ("goal", "target_response"), "a JailbreakBench judge-comparison file")
    _check_label_col(path, table, opts.label_col)
    if table.columns and label_col not in table.columns and not set(_JBB_HUMANS) <= set(table.columns):
        raise ConfigError(
            f"{path}: no label column {label_col!r} (nor {', '.join(_JBB_HUMANS)}); columns: {', '.join(table.columns)}"
        )
    exp_col = _expected_col(path, table, opts)
    parse = _parser(opts.label_map)
    fallback = _JBB_HUMANS if opts.label_col is None else ()
    for where, obj in table.records:
        try:
            goal = _text_field(obj, "goal")
            attack = obj.get("prompt")
            votes = [obj[h] for h in _JBB_HUMANS if h in obj]
            coll.rows.append(
                LabelledRow(
                    prompt=goal,
                    response=_text_field(obj, "target_response"),
                    label=_label(obj, label_col, fallback, parse),
                    source=where,
                    attack_prompt=attack
                    if isinstance(attack, str) and attack.strip() and attack != goal
                    else None,
                    id=_id_value(obj.get("Index")),
                    expected=_expected_value(obj, exp_col),
                    metadata={"votes": votes} if votes else {},
                )
            )
        except _BadRow as exc:
            coll.bad(where, str(exc))
    cols = {"prompt": "goal", "response": "target_response", "label": label_col, "id": "Index"}
    if "prompt" in table.columns:
        cols["attack_prompt"] = "prompt"
    if exp_col:
        cols["expected"] = exp_col
    return cols


# ------------------------------------------------------------------------------------------------ harmbench

_HB_HUMANS = ("human_0", "human_1", "human_2")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def _harmbench_behaviors(path: Path) -> dict[str, dict[str, str]]:
    """HarmBench's behaviour CSV (``harmbench_behaviors_text_all.csv`` / ``…_multimodal_all.csv``):
    ``BehaviorID`` → ``Behavior``, ``ContextString``, ``ImageFileName``, ``ImageDescription``,
    ``SemanticCategory``."""
    if not path.is_file():
        raise FileNotFoundError(f"HarmBench behaviour file {path} does not exist")
    text = _decode(path, path.read_bytes(), "utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = reader.fieldnames or []
    if "BehaviorID" not in cols or "Behavior" not in cols:
        raise ConfigError(
            f"{path}: not a HarmBench behaviour CSV (needs BehaviorID and Behavior); columns: {', '.join(cols)}"
        )
    return {row["BehaviorID"].strip(): row for row in reader if (row.get("BehaviorID") or "").strip()}


def _mm_test_case(tc: Any) -> tuple[str, str]:
    """(image file name, text) of a multimodal test case ``[image file, text]``."""
    if isinstance(tc, list | tuple) and len(tc) == 2 and all(isinstance(x, str) for x in tc):
        a, b = tc
        if b.lower().endswith(_IMAGE_SUFFIXES) and not a.lower().endswith(_IMAGE_SUFFIXES):
            a, b = b, a
        return a, b
    raise _BadRow(f"test_case is {type(tc).__name__}, not [image file, text] (a multimodal test case)")


def _read_harmbench(
    path: Path, text: str, opts: _Options, coll: _Collector, *, multimodal: bool
) -> dict[str, str]:
    obj = _load_json(path, text)
    if not isinstance(obj, dict) or not all(isinstance(v, list) for v in obj.values()):
        raise ConfigError(
            f"{path}: not a HarmBench classifier validation set (a JSON object of BehaviorID → list of completions)"
        )
    behaviors = _harmbench_behaviors(opts.behaviors) if opts.behaviors is not None else None
    parse = _parser(opts.label_map)
    label_col = opts.label_col
    for bid, items in obj.items():
        info = behaviors.get(bid) if behaviors is not None else None
        for i, item in enumerate(items):
            where = f"{path}:{bid}[{i}]"
            try:
                if not isinstance(item, dict):
                    raise _BadRow(f"a JSON {type(item).__name__}, not an object")
                if behaviors is not None and info is None:
                    raise _BadRow(f"BehaviorID {bid!r} is not in {opts.behaviors}")
                tc = item.get("test_case")
                if multimodal:
                    image, tc_text = _mm_test_case(tc)
                elif isinstance(tc, str):
                    image, tc_text = None, tc
                else:
                    raise _BadRow(
                        f"test_case is {type(tc).__name__}, not text (a multimodal test case? use preset harmbench-mm)"
                    )
                if label_col is not None:
                    if label_col not in item:
                        raise _BadRow(f"no {label_col!r} field")
                    label = _label(item, label_col, (), parse)
                else:
                    label = _majority(item, _HB_HUMANS, parse)
                behavior = (info or {}).get("Behavior") or ""
                coll.rows.append(
                    LabelledRow(
                        prompt=behavior or tc_text,
                        response=_text_field(item, "generation"),
                        label=label,
                        source=where,
                        attack_prompt=tc_text if behavior and tc_text != behavior else None,
                        group=f"harmbench:{bid}",
                        id=f"{bid}/{i}",
                        image=image or (info or {}).get("ImageFileName") or None,
                        metadata=_metadata(
                            behavior_id=bid,
                            behavior=behavior,
                            context=(info or {}).get("ContextString"),
                            image_description=(info or {}).get("ImageDescription"),
                            category=(info or {}).get("SemanticCategory"),
                        ),
                    )
                )
            except _BadRow as exc:
                coll.bad(where, str(exc))
    return {
        "prompt": "Behavior (by BehaviorID)" if behaviors is not None else "test_case",
        "response": "generation",
        "label": label_col or "+".join(_HB_HUMANS),
        "id": "BehaviorID/index",
    }


def _read_harmbench_text(path: Path, text: str, opts: _Options, coll: _Collector) -> dict[str, str]:
    """HarmBench's classifier validation set for text behaviours.

    Format (centerforaisafety/HarmBench, ``data/classifier_val_sets/text_behaviors_val_set.json``;
    its field names as read by public loaders of that file): a JSON object mapping each
    ``BehaviorID`` to a list of completions, each with ``test_case`` (the prompt sent), ``generation``
    (the response) and three human labels ``human_0``, ``human_1``, ``human_2`` (1 = the generation
    is an instance of the harmful behaviour) — the label is their majority — besides the
    classifiers' verdicts (``label_col`` can pick one). The behaviour's own text is not in the file:
    pass HarmBench's behaviour CSV as ``behaviors`` (``harmbench_behaviors_text_all.csv``) to give
    judges the plain behaviour (``prompt``; ``test_case`` becomes ``attack_prompt``) and the context
    string of contextual behaviours; without it the test case is the prompt. Row id =
    ``BehaviorID/index``; group = the behaviour.
    """
    return _read_harmbench(path, text, opts, coll, multimodal=False)


def _read_harmbench_mm(path: Path, text: str, opts: _Options, coll: _Collector) -> dict[str, str]:
    """HarmBench's classifier validation set for multimodal behaviours.

    Format (``data/classifier_val_sets/multimodal_behaviors_val_set.json``): as the text set, but
    each ``test_case`` is a pair ``[image file name, text]`` (HarmBench's multimodal test-case form,
    unpacked ``image, prompt = test_case`` by its multimodal models, the image a file of
    ``data/multimodal_behavior_images/``). The image's file name is recorded on the row
    (:attr:`LabelledRow.image`); the image itself is not loaded, so a judge sees the text only.
    With ``behaviors`` (``harmbench_behaviors_multimodal_all.csv``) the row also gets the image
    description (``metadata["image_description"]``, which the ``llm`` judge's ``harmbench`` template
    shows as context). Unverified: that the pair is always in this order (a pair whose second item
    looks like an image file name is read the other way round).
    """
    return _read_harmbench(path, text, opts, coll, multimodal=True)


# ------------------------------------------------------------------------------------------------ xstest-v2

#: XSTest response classes (``1_full_compliance`` / ``2_full_refusal`` / ``3_partial_refusal``) → refusal
XSTEST_LABELS: dict[str, bool] = {
    "1_full_compliance": False,
    "2_full_refusal": True,
    "3_partial_refusal": True,
}
_XSTEST_ANNOTATORS = ("annotation_1", "annotation_2")


def _read_xstest_v2(path: Path, text: str, opts: _Options, coll: _Collector) -> dict[str, str]:
    """XSTest v2 labelled completions (a refusal-labelled set).

    Format (paul-rottger/exaggerated-safety, ``model_completions/xstest_v2_completions_<model>.csv``,
    one file per model; the automated-evaluation copies in ``evaluation/automated_evaluation_labels/``
    add ``gpt4_label`` or ``strmatch_label``): ``id``, ``type``, ``prompt``, ``completion``,
    ``annotation_1``, ``annotation_2``, ``agreement``, ``final_label``. Labels are the classes
    ``1_full_compliance``, ``2_full_refusal``, ``3_partial_refusal``; the label is ``final_label``
    (the two annotations' majority when it is empty). The construct is refusal: True = the model
    refused, and a partial refusal counts as a refusal (``label_map`` /
    ``--negative 3_partial_refusal`` counts it as compliance). ``type`` gives the expected
    behaviour: the ``contrast_*`` types are the unsafe prompts (``refuse``), the others safe
    (``comply``), as the XSTest README says. Row id = ``id``; category = ``type``.
    """
    table = _table(path, text, coll)
    label_col = opts.label_col or "final_label"
    _require(path, table, ("prompt", "completion", "type"), "an XSTest v2 completions file")
    _check_label_col(path, table, opts.label_col)
    if table.columns and label_col not in table.columns and not set(_XSTEST_ANNOTATORS) <= set(table.columns):
        raise ConfigError(
            f"{path}: no label column {label_col!r} (nor {', '.join(_XSTEST_ANNOTATORS)}); "
            f"columns: {', '.join(table.columns)}"
        )
    exp_col = _expected_col(path, table, opts)
    parse = _parser(opts.label_map)
    fallback = _XSTEST_ANNOTATORS if opts.label_col is None else ()
    for where, obj in table.records:
        try:
            kind = _text_field(obj, "type").strip()
            expected = (
                _expected_value(obj, exp_col)
                if exp_col
                else (Expected.refuse if kind.startswith("contrast_") else Expected.comply)
            )
            coll.rows.append(
                LabelledRow(
                    prompt=_text_field(obj, "prompt"),
                    response=_text_field(obj, "completion"),
                    label=_label(obj, label_col, fallback, parse),
                    source=where,
                    id=_id_value(obj.get("id")),
                    expected=expected,
                    metadata=_metadata(category=kind),
                )
            )
        except _BadRow as exc:
            coll.bad(where, str(exc))
    return {
        "prompt": "prompt",
        "response": "completion",
        "label": label_col,
        "id": "id",
        "expected": exp_col or "type (contrast_* = refuse)",
    }


# ------------------------------------------------------------------------------------------------ msts

_MSTS_ANNOTATORS = ("annot1_label", "annot2_label", "annot3_label")
#: an MSTS label or taxonomy value: "1 - safe", "2 - unsafe", "1.3 - safety considerations / contexts", "2.Z - …"
_MSTS_CODE = re.compile(r"^\s*([12])(?:\.[0-9A-Za-z]+)?\s*(?:-|$)")


def _msts_parser(label_map: Mapping[str, bool]) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if isinstance(value, str):
            key = _norm_label(value)
            for k, v in label_map.items():
                if _norm_label(k) == key:
                    return bool(v)
            m = _MSTS_CODE.match(value)
            if m:
                return m.group(1) == "2"
        return parse_label(value, label_map)

    return parse


def _read_msts(path: Path, text: str, opts: _Options, coll: _Collector) -> dict[str, str]:
    """MSTS response annotations (Röttger et al., "MSTS: A Multimodal Safety Test Suite for
    Vision-Language Models", 2025).

    Format (paul-rottger/msts-multimodal-safety, ``data/response_annotations/<language>_<modality>.csv``,
    e.g. ``english_multimodal.csv``, ``english_textonly.csv``, ``german_multimodal.csv``):
    ``case_id``, ``prompt_type``, ``prompt_text``, ``unsafe_image_description`` (multimodal files),
    ``model``, ``response``, ``annot1_label`` (and in the English files ``annot2_label``,
    ``agreement_label``, ``final_label``, ``final_taxonomy``, …). ``final_label`` is ``1 - safe``
    or ``2 - unsafe``; annotator labels are taxonomy classes whose leading digit is the same
    (``1.1 - rejection or rebuttal`` … safe, ``2.1 - explicit encouragement`` … unsafe). The label
    is ``final_label``, else the annotators' majority (files with one annotator: theirs). Unsafe is
    the positive class. Every MSTS prompt is unsafe, so every row is ``expected=refuse``. Row id =
    ``case_id/prompt_type/model`` (unique within a file); the image description is kept as
    ``metadata["image_description"]`` (the image's file name is not in the annotation files, only
    in ``data/prompts/``: a column ``unsafe_image_id`` is recorded as the image when present).
    """
    table = _table(path, text, coll)
    label_col = opts.label_col or "final_label"
    _require(path, table, ("prompt_text", "response"), "an MSTS response-annotation file")
    _check_label_col(path, table, opts.label_col)
    annotators = tuple(c for c in _MSTS_ANNOTATORS if c in table.columns)
    if table.columns and label_col not in table.columns and not annotators:
        raise ConfigError(
            f"{path}: no label column {label_col!r} (nor {', '.join(_MSTS_ANNOTATORS)}); columns: {', '.join(table.columns)}"
        )
    exp_col = _expected_col(path, table, opts)
    parse = _msts_parser(opts.label_map)
    fallback = annotators if opts.label_col is None else ()
    for where, obj in table.records:
        try:
            parts = [_id_value(obj.get(c)) for c in ("case_id", "prompt_type", "model")]
            coll.rows.append(
                LabelledRow(
                    prompt=_text_field(obj, "prompt_text"),
                    response=_text_field(obj, "response"),
                    label=_label(obj, label_col, fallback, parse),
                    source=where,
                    id="/".join(p for p in parts if p) if parts[0] else None,
                    expected=_expected_value(obj, exp_col),
                    image=_id_value(obj.get("unsafe_image_id")),
                    metadata=_metadata(
                        image_description=obj.get("unsafe_image_description"),
                        category=obj.get("prompt_type"),
                        model=obj.get("model"),
                    ),
                )
            )
        except _BadRow as exc:
            coll.bad(where, str(exc))
    cols = {
        "prompt": "prompt_text",
        "response": "response",
        "label": label_col,
        "id": "case_id/prompt_type/model",
    }
    if exp_col:
        cols["expected"] = exp_col
    return cols


# ------------------------------------------------------------------------------------------------ registry

#: every preset by name
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="jbb-human",
            construct="harm",
            class_names=("safe", "jailbroken"),
            summary="JailbreakBench judge_comparison CSV: goal, prompt, target_response, human_majority",
            reader=_read_jbb_human,
        ),
        Preset(
            name="harmbench-text",
            construct="harm",
            class_names=("safe", "harmful"),
            summary="HarmBench text_behaviors_val_set.json: BehaviorID → [{test_case, generation, human_0..2}]",
            reader=_read_harmbench_text,
        ),
        Preset(
            name="harmbench-mm",
            construct="harm",
            class_names=("safe", "harmful"),
            summary="HarmBench multimodal_behaviors_val_set.json: test_case = [image file, text]",
            reader=_read_harmbench_mm,
        ),
        Preset(
            name="xstest-v2",
            construct="refusal",
            class_names=("compliance", "refusal"),
            summary="XSTest v2 completions CSV: id, type, prompt, completion, final_label (refusal classes)",
            reader=_read_xstest_v2,
            default_labels=XSTEST_LABELS,
        ),
        Preset(
            name="msts",
            construct="harm",
            class_names=("safe", "unsafe"),
            summary="MSTS response_annotations CSV: prompt_text, response, final_label (1 - safe / 2 - unsafe)",
            reader=_read_msts,
        ),
    )
}


def read_preset(
    name: str,
    path: str | Path,
    *,
    label_col: str | None = None,
    expected_col: str | None = None,
    encoding: str = "utf-8",
    label_map: Mapping[str, bool] | None = None,
    on_bad: Literal["error", "skip"] = "error",
    construct: str | None = None,
    class_names: tuple[str, str] | None = None,
    behaviors: str | Path | None = None,
) -> LabelledData:
    """Read ``path`` as the published set ``name`` (see :data:`PRESETS`).

    ``construct`` may only repeat the preset's (a refusal-labelled set cannot measure harm);
    ``class_names`` replaces the preset's words; ``label_map`` is read before the preset's own
    label values; ``behaviors`` is for the HarmBench presets. The other arguments are as in
    :func:`~mmsafe.labelled.read_labelled`.
    """
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    if construct is not None and construct != preset.construct:
        raise ConfigError(
            f"preset {name!r} is labelled for {preset.construct}, not {construct} "
            f"({CONSTRUCTS[preset.construct].question}); drop the construct or the preset"
        )
    if behaviors is not None and not name.startswith("harmbench"):
        raise ConfigError(f"behaviors (a HarmBench behaviour CSV) does not apply to preset {name!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"labelled data {p} does not exist" if not p.exists() else f"{p} is not a file"
        )
    enc = _check_encoding("utf-8" if name.startswith("harmbench") else encoding)
    raw = p.read_bytes()
    text = _decode(p, raw, enc)
    opts = _Options(
        label_col=label_col,
        expected_col=expected_col,
        label_map={**(preset.default_labels or {}), **(label_map or {})},
        behaviors=Path(behaviors) if behaviors is not None else None,
    )
    coll = _Collector(on_bad)
    cols = preset.reader(p, text, opts, coll)
    sha = hashlib.sha256(raw)
    if opts.behaviors is not None:  # the rows depend on the behaviour file too
        sha.update(b"\0behaviors\0" + hashlib.sha256(opts.behaviors.read_bytes()).hexdigest().encode())
    return LabelledData(
        rows=tuple(coll.rows),
        path=str(p),
        sha256=sha.hexdigest(),
        columns=cols,
        encoding=enc.removesuffix("-sig"),
        skipped=tuple(coll.skipped),
        construct=preset.construct,
        class_names=class_names or preset.class_names,
        preset=name,
    )
