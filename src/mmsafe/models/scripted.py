"""A scripted backend for runner tests and demos: fixed rules instead of a model."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.models.base import GenerationParams, ModelBackend
from mmsafe.types import Generation, Prompt, Usage


class ScriptedParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: dict[str, str] = Field(
        default_factory=dict, description="substring of the prompt text → response (first match wins)"
    )
    default: str = Field("Sure, here is what you asked for.", description="response when no rule matches")
    see_system: bool = Field(False, description="rules also match the system message (defense tests)")
    echo: bool = Field(False, description="answer with the prompt text itself")
    fail_on: list[str] = Field(default_factory=list, description="prompt substrings that raise an error")
    exit_on: list[str] = Field(
        default_factory=list,
        description="prompt substrings that end the process at once (os._exit(3)): a worker crash, for the "
        "tests of executors that must survive one",
    )
    delay_s: float = Field(0.0, ge=0.0, le=10.0, description="sleep per item (for crash/resume tests)")
    delays: dict[str, float] = Field(
        default_factory=dict,
        description="prompt substring → sleep for the items whose prompt holds it, instead of delay_s "
        "(first match wins; for straggler tests)",
    )
    batch_size: int = Field(8, ge=1)
    concurrency: int = Field(4, ge=1)
    async_io: bool = Field(False, description="behave as an I/O backend (async, bounded concurrency)")
    generation: GenerationParams = Field(default_factory=GenerationParams)


class ScriptedModel(ModelBackend):
    """Scripted responses by substring rules (not a model): for runner tests and dry runs.

    It reads the text of the last user turn, answers with the first rule whose key occurs in it (or
    ``default``), and raises for prompts containing a ``fail_on`` substring, so tests can check
    per-item error capture. Images are accepted but only counted.
    """

    name: ClassVar[str] = "scripted"
    Params = ScriptedParams
    params: ScriptedParams
    capabilities: ClassVar[frozenset[str]] = frozenset({"images", "system_prompt", "batched"})
    # per-prompt delays change when answers come, not what they are (and keep the keys of older stores)
    #: exit_on injects crashes: how a run goes, not what the model answers (not part of the spec)
    runtime_params: ClassVar[frozenset[str]] = ModelBackend.runtime_params | {"delays", "exit_on"}

    @property
    def is_async(self) -> bool:  # type: ignore[override]
        return self.params.async_io

    def disclaimer(self) -> str | None:
        return "scripted responses, not a model"

    def _answer(self, prompt: Prompt) -> Generation:
        text = self._text(prompt)
        for bad in self.params.fail_on:
            if bad in text:
                raise RuntimeError(f"scripted failure on {bad!r}")
        if any(crash in text for crash in self.params.exit_on):
            os._exit(3)  # a crash, not an exception: nothing is cleaned up, as when a worker is killed
        delay = self._delay(text)
        if delay:
            time.sleep(delay)
        if self.params.echo:
            out = text
        else:
            out = next((v for k, v in self.params.rules.items() if k in text), self.params.default)
        out = out[: self.generation.max_new_tokens * 8]
        n_img = len(prompt.images)
        return Generation(
            text=out,
            finish_reason="stop",
            usage=Usage(prompt_tokens=len(text.split()) + n_img, completion_tokens=len(out.split())),
            metadata={"images_seen": n_img},
        )

    def _text(self, prompt: Prompt) -> str:
        roles = ("user", "system") if self.params.see_system else ("user",)
        return "\n".join(m.text for m in prompt.messages if m.role in roles)

    def _delay(self, text: str) -> float:
        for key, seconds in self.params.delays.items():
            if key in text:
                return min(max(0.0, float(seconds)), 10.0)
        return self.params.delay_s

    def generate(self, prompts: Sequence[Prompt], *, seeds: Sequence[int]) -> list[Generation | Exception]:
        out: list[Generation | Exception] = []
        for p in prompts:
            try:
                out.append(self._answer(p))
            except Exception as exc:
                out.append(exc)
        return out

    async def agenerate(self, prompt: Prompt, *, seed: int) -> Generation:
        import asyncio

        delay = self._delay(self._text(prompt))
        if delay:
            await asyncio.sleep(delay)
        params = self.params.model_copy(update={"delay_s": 0.0, "delays": {}})
        return ScriptedModel(params)._answer(prompt)
