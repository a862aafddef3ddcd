"""A GGUF file's identity and header, read without any ML library: sha256 and metadata values.

GGUF (the llama.cpp model format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) starts
with the magic ``GGUF``, a uint32 version (2 or 3: 64-bit counts), the tensor count and the metadata
key/value count, then the key/value pairs: a length-prefixed UTF-8 key, a uint32 value type and the
value (scalars, strings as uint64 length + bytes, arrays as element type + uint64 count + elements).
:func:`read_gguf_metadata` walks those pairs (skipping the 262k-string vocabulary arrays without
decoding them) and keeps the scalar and string values; a file that is not GGUF, or whose header ends
early, raises :class:`GGUFError` with the reason. Nothing here loads tensors.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import struct
from pathlib import Path
from typing import Any

__all__ = ["GGUFError", "gguf_sha256", "read_gguf_metadata"]

_MAGIC = b"GGUF"
#: value type → struct format of the scalar types (8 string, 9 array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a readable GGUF model (the message says why)."""


def read_gguf_metadata(path: str | Path) -> dict[str, Any]:
    """The scalar and string metadata of the GGUF file at ``path`` (arrays are skipped), plus
    ``"gguf.version"`` and ``"gguf.tensor_count"``. Raises :class:`GGUFError` for a file that is not
    GGUF or whose header is cut short, ``OSError`` when it cannot be opened."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFError(f"{size} bytes: too short for a GGUF header")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, size)


def _parse(buf: Any, size: int) -> dict[str, Any]:
    if buf[:4] != _MAGIC:
        raise GGUFError(f"does not start with the GGUF magic (starts with {bytes(buf[:4])!r})")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} (llama.cpp reads versions 2 and 3)")
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
    pos = 24
    out: dict[str, Any] = {"gguf.version": version, "gguf.tensor_count": n_tensors}

    def need(n: int) -> None:
        if pos + n > size:
            raise GGUFError(f"the header ends early (at byte {pos:,} of {size:,}): truncated or damaged")

    def string() -> str:
        nonlocal pos
        need(8)
        (n,) = struct.unpack_from("<Q", buf, pos)
        need(8 + n)
        raw = bytes(buf[pos + 8 : pos + 8 + n])
        pos += 8 + n
        return raw.decode("utf-8", errors="replace")

    def skip(vtype: int, count: int) -> None:
        nonlocal pos
        if vtype in _SCALARS:
            width = struct.calcsize(_SCALARS[vtype]) * count
            need(width)
            pos += width
        elif vtype == _STRING:
            for _ in range(count):
                need(8)
                (n,) = struct.unpack_from("<Q", buf, pos)
                pos += 8 + n
            need(0)
        else:
            raise GGUFError(f"unknown array element type {vtype}")

    for _ in range(n_kv):
        key = string()
        need(4)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype]
            need(struct.calcsize(fmt))
            (out[key],) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
        elif vtype == _STRING:
            out[key] = string()
        elif vtype == _ARRAY:
            need(12)
            etype, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            skip(etype, count)
        else:
            raise GGUFError(f"metadata {key!r} has unknown value type {vtype}")
    return out


def gguf_sha256(path: str | Path) -> str:
    """sha256 of the file at ``path`` (about 0.4 s per 250 MB here), remembered per (path, size,
    modification time) within the process, so re-validating a config does not re-read the file."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
