"""A response cache in front of any backend: key = hash(model spec, request, seed if sampling).

Answers go through :func:`~mmsafe.limits.truncate_answer` before they are cached (and so before they
are stored in a record): an answer over ``limits.answer_bytes`` is cut there and flagged.

The streaming runner keeps the cache's SQLite work off its event loop: it looks up the requests it is
about to send in one query per refill (:meth:`CachedModel.lookup`), sends only the misses
(:meth:`CachedModel.afresh`), and inside :meth:`CachedModel.buffered` the fresh answers are held in
memory and written in one transaction when it writes a judged group (:meth:`CachedModel.flush`), not
one per request on the loop thread, where every write would stall all requests in flight. A kill
loses at most the buffered answers, which a rerun asks for again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mmsafe.aio import generate_all
from mmsafe.limits import Limits, truncate_answer
from mmsafe.models.base import ModelBackend, WrappedModel
from mmsafe.store.sqlite import Store
from mmsafe.types import Generation, Prompt, stable_hash


def request_key(model: ModelBackend, prompt: Prompt, seed: int, *, model_key: str | None = None) -> str:
    """Cache key of one request. The seed counts only when decoding samples. ``model_key`` is
    ``model.spec.key`` when the caller has it already (building a spec hashes its params)."""
    body: dict[str, object] = {"model": model_key or model.spec.key, "prompt": prompt.fingerprint()}
    if not model.generation.greedy:
        body["seed"] = seed
    return stable_hash(body)


class CachedModel(WrappedModel):
    """Wraps a backend so identical requests are answered from the store (errors are never cached).

    Every answer, fresh or cached, is cut to ``limits.answer_bytes`` (:func:`~mmsafe.limits.truncate_answer`);
    a fresh one before it is cached, so an oversize answer is never stored whole."""

    def __init__(self, inner: ModelBackend, store: Store, *, limits: Limits | None = None) -> None:
        super().__init__(inner)
        self.store = store
        self.limits = limits or Limits()
        self._model_key: str | None = None
        self._lock = threading.Lock()
        self._buffering = 0
        self._pending: dict[str, Generation] = {}  # fresh answers not yet written (buffered mode)

    @property
    def model_key(self) -> str:
        """The inner model's spec key (its params are frozen: computed once)."""
        if self._model_key is None:
            self._model_key = self.inner.spec.key
        return self._model_key

    def key(self, prompt: Prompt, seed: int) -> str:
        """The cache key of ``prompt`` with ``seed`` (:func:`request_key`)."""
        return request_key(self.inner, prompt, seed, model_key=self.model_key)

    # -- lookups and writes -------------------------------------------------------------------------------
    def lookup(self, keys: Sequence[str]) -> dict[str, Generation]:
        """The cached answers among ``keys`` (one query; buffered answers included), each cut to the
        run's limits and marked ``cached``."""
        with self._lock:
            held = {k: self._pending[k] for k in keys if k in self._pending}
        rest = [k for k in keys if k not in held]
        found = {**held, **(self.store.get_responses(rest) if rest else {})}
        return {
            k: truncate_answer(g, self.limits).model_copy(update={"cached": True}) for k, g in found.items()
        }

    def _keep(self, key: str, gen: Generation) -> None:
        with self._lock:
            if self._buffering:
                self._pending[key] = gen
                return
        self.store.put_responses([(key, self.model_key, gen)])

    def flush(self) -> None:
        """Write the buffered answers in one transaction (nothing to do outside :meth:`buffered`)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            self.store.put_responses((k, self.model_key, g) for k, g in pending.items())

    @contextmanager
    def buffered(self) -> Iterator[CachedModel]:
        """Within the block, fresh answers from :meth:`agenerate`/:meth:`afresh` are held and written
        by :meth:`flush` (called by the owner, and once when the block ends), not one write each."""
        with self._lock:
            self._buffering += 1
        try:
            yield self
        finally:
            with self._lock:
                self._buffering -= 1
            self.flush()

    # -- answering ----------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        keys = [self.key(p, s) for p, s in zip(prompts, seeds, strict=True)]
        hits = self.lookup(keys)
        todo = [i for i, k in enumerate(keys) if k not in hits]
        out: list[Generation | Exception | None] = [hits.get(k) for k in keys]
        if todo:
            # any backend (an agenerate-only one too); a batch that breaks is retried one prompt at a time
            fresh = generate_all(self.inner, [prompts[i] for i in todo], [seeds[i] for i in todo])
            fresh = [g if isinstance(g, Exception) else truncate_answer(g, self.limits) for g in fresh]
            for i, g in zip(todo, fresh, strict=True):
                out[i] = g
            self.store.put_responses(
                (keys[i], self.model_key, g)
                for i, g in zip(todo, fresh, strict=True)
                if isinstance(g, Generation)
            )
        return [o for o in out if o is not None]

    async def agenerate(self, prompt: Prompt, *, seed: int) -> Generation:
        key = self.key(prompt, seed)
        hit = self.lookup([key]).get(key)
        if hit is not None:
            return hit
        return await self.afresh(prompt, seed=seed, key=key)

    async def afresh(self, prompt: Prompt, *, seed: int, key: str) -> Generation:
        """Ask the inner model (the caller knows ``key`` is not cached) and cache the answer."""
        gen = truncate_answer(await self.inner.agenerate(prompt, seed=seed), self.limits)
        self._keep(key, gen)
        return gen
