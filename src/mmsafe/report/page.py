"""One self-contained HTML page under a strict Content-Security-Policy: the shared base of ``report.html``,
``compare.html``, ``mmsafe view`` and the annotation form.

Model outputs and dataset text are attacker-controlled, and these pages show them. So:

* every string that reaches markup goes through :func:`esc` (text and attribute values alike);
* data for scripts travels in ``<script type="application/json">`` blocks written by :func:`json_block`
  (``<``, ``>``, ``&``, U+2028 and U+2029 as ``\\uXXXX`` escapes, so no string can close the block), and the
  scripts read it with ``JSON.parse`` and put text into the page with ``textContent`` only;
* the page's policy (:func:`csp`) names its one stylesheet and its scripts by sha256, so nothing else runs:
  no inline handler (``onerror=``), no ``javascript:`` URL, no injected ``<script>`` or ``<style>``; images only
  from ``data:`` URIs (or the local server, in ``mmsafe view``); no network at all for a file page
  (``default-src 'none'``, no ``connect-src``); no ``<base>``, no form posts.

The policy is in a ``<meta>`` element so that the file keeps it when opened from disk or mailed; the server of
``mmsafe view`` also sends it as a header.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["RawJSON", "compact_json", "csp", "esc", "json_block", "json_text", "page", "source_hash"]


def esc(text: object) -> str:
    """``text`` as inert HTML text or attribute value (quotes escaped too)."""
    return html.escape(str(text), quote=True)


_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class RawJSON(str):
    """JSON text already made (by :func:`compact_json`), which :func:`json_text` embeds as it is: as the whole
    value or as a value of the top-level object. Lets a page carry thousands of kept items without parsing them
    back and writing them again (:mod:`mmsafe.report.item_cache`); it is escaped like all the rest."""


def compact_json(obj: Any) -> str:
    """``obj`` as :func:`json_text` writes it, before escaping for the page (what a :class:`RawJSON` holds)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)


def json_text(obj: Any) -> str:
    """``obj`` as JSON that is safe inside a ``<script type="application/json">`` element. A :class:`RawJSON`,
    as ``obj`` or as a value of an object (of objects…) goes in as it is (then escaped)."""
    text = _with_raw(obj)
    for ch, rep in _JSON_ESCAPES.items():
        text = text.replace(ch, rep)
    return text


def _has_raw(obj: Any) -> bool:
    return isinstance(obj, RawJSON) or (isinstance(obj, Mapping) and any(_has_raw(v) for v in obj.values()))


def _with_raw(obj: Any) -> str:
    if isinstance(obj, RawJSON):
        return str(obj)
    if isinstance(obj, Mapping) and _has_raw(obj):
        return "{" + ",".join(f"{compact_json(str(k))}:{_with_raw(v)}" for k, v in obj.items()) + "}"
    return compact_json(obj)


def json_block(block_id: str, obj: Any) -> str:
    """A data block the page's scripts read with ``JSON.parse(document.getElementById(block_id).textContent)``."""
    return f'<script type="application/json" id="{esc(block_id)}">{json_text(obj)}</script>'


def source_hash(source: str) -> str:
    """The CSP source expression that allows exactly this inline script or stylesheet."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


def csp(*, styles: Sequence[str], scripts: Sequence[str], server: bool = False) -> str:
    """The policy of a page whose only inline stylesheets and scripts are ``styles`` and ``scripts``.

    ``server``: the page is served by ``mmsafe view`` and may fetch JSON and images from its own origin."""
    img = "data: 'self'" if server else "data:"
    parts = [
        "default-src 'none'",
        f"img-src {img}",
        "style-src " + (" ".join(source_hash(s) for s in styles) or "'none'"),
        "script-src " + (" ".join(source_hash(s) for s in scripts) or "'none'"),
        "base-uri 'none'",
        "form-action 'none'",
    ]
    if server:
        parts.append("connect-src 'self'")
    return "; ".join(parts)


def page(
    title: str,
    body: str,
    *,
    css: str,
    scripts: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
    server: bool = False,
) -> str:
    """A whole HTML document: ``body`` is trusted markup (built with :func:`esc`), ``css`` the one stylesheet,
    ``scripts`` the inline scripts (run in order at the end of the body), ``data`` the JSON blocks by id."""
    policy = csp(styles=[css], scripts=scripts, server=server)
    blocks = "".join(json_block(k, v) for k, v in (data or {}).items())
    code = "".join(f"<script>{s}</script>" for s in scripts)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(policy)}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{css}</style></head>"
        f"<body>{body}{blocks}{code}</body></html>\n"
    )
