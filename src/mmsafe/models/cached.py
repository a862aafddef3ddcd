"""A response cache in front of any backend: key = hash(model spec, request, seed if sampling).

Answers go through :func:`~mmsafe.limits.truncate_answer` before they are cached (and so before they
are stored in a record): an answer over ``limits.answer_bytes`` is cut there and flagged.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmsafe.aio import generate_all
from mmsafe.limits import Limits, truncate_answer
from mmsafe.models.base import ModelBackend, WrappedModel
from mmsafe.store.sqlite import Store
from mmsafe.types import Generation, Prompt, stable_hash


def request_key(model: ModelBackend, prompt: Prompt, seed: int) -> str:
    """Cache key of one request. The seed counts only when decoding samples."""
    body: dict[str, object] = {"model": model.spec.key, "prompt": prompt.fingerprint()}
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

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        keys = [request_key(self.inner, p, s) for p, s in zip(prompts, seeds, strict=True)]
        hits = self.store.get_responses(keys)
        todo = [i for i, k in enumerate(keys) if k not in hits]
        out: list[Generation | Exception | None] = [
            truncate_answer(hits[k], self.limits).model_copy(update={"cached": True}) if k in hits else None
            for k in keys
        ]
        if todo:
            # any backend (an agenerate-only one too); a batch that breaks is retried one prompt at a time
            fresh = generate_all(self.inner, [prompts[i] for i in todo], [seeds[i] for i in todo])
            fresh = [g if isinstance(g, Exception) else truncate_answer(g, self.limits) for g in fresh]
            for i, g in zip(todo, fresh, strict=True):
                out[i] = g
            self.store.put_responses(
                (keys[i], self.inner.spec.key, g)
                for i, g in zip(todo, fresh, strict=True)
                if isinstance(g, Generation)
            )
        return [o for o in out if o is not None]

    async def agenerate(self, prompt: Prompt, *, seed: int) -> Generation:
        key = request_key(self.inner, prompt, seed)
        hit = self.store.get_responses([key]).get(key)
        if hit is not None:
            return truncate_answer(hit, self.limits).model_copy(update={"cached": True})
        gen = truncate_answer(await self.inner.agenerate(prompt, seed=seed), self.limits)
        self.store.put_responses([(key, self.inner.spec.key, gen)])
        return gen
