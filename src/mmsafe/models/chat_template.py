"""Render a Jinja chat template without transformers, the way transformers renders it.

Backends that do not load a Hugging Face tokenizer (``llamacpp``) still render the same chat templates
as ``hf-text`` / ``gemma-ocr``. transformers' ``apply_chat_template`` compiles the template in a
sandboxed Jinja environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols``
extension, a ``tojson`` filter and a ``raise_exception`` function, and passes ``messages``,
``add_generation_prompt`` and the tokenizer's special tokens (``bos_token``, ``eos_token``); this
module does the same, so one template gives one text on both paths (``tests/test_llamacpp_backend.py``
compares them). The template is configuration, but the messages are attacker-controlled: the
sandbox keeps a template from reaching Python internals through them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from mmsafe.errors import require

__all__ = ["render_chat_template"]


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    require("jinja2", extra="llamacpp", purpose="rendering chat templates")
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat_template(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """``template`` rendered for ``messages`` (``[{"role", "content"}, …]``). Raises the template's own
    error (e.g. a role it rejects) for this conversation only."""
    return _compile(template).render(
        messages=list(messages),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
