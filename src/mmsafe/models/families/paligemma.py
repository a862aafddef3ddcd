"""PaliGemma / PaliGemma 2 (``PaliGemmaForConditionalGeneration``: SigLIP + Gemma), no chat template.

Prompt format (big_vision's, which the processor completes): every image's ``<image>`` tokens
first, then ``<bos>``, the prefix text and a newline; the answer follows as the suffix. The prefix
is the text of every turn in order, joined by newlines (a system turn is folded in as plain text:
PaliGemma has no system role, so ``system_prompt`` is not declared). Pretrained ("pt") checkpoints
expect task prefixes such as ``answer en <question>`` or ``caption en``; this backend passes the
user's text unchanged. The prefix attends bidirectionally (``token_type_ids`` = 0) and the suffix
causally (= 1): :meth:`~mmsafe.models.hf.HFModel.target_loss` marks target tokens with 1, otherwise
the target would leak into the prefix. Text-only prompts are tokenised without the processor (it
demands images) and never share a batch with image prompts. Several images per prompt work.
Pixel space: the image resized to the SigLIP square (224/448/896 px), no crop.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

from mmsafe.models.families.base import Family


class PaliGemma(Family):
    name: ClassVar[str] = "paligemma"
    model_types: ClassVar[frozenset[str]] = frozenset({"paligemma"})
    architectures: ClassVar[frozenset[str]] = frozenset({"PaliGemmaForConditionalGeneration"})
    system_prompt: ClassVar[bool] = False
    needs_chat_template: ClassVar[bool] = False
    sequence_fill: ClassVar[dict[str, int]] = {"attention_mask": 1, "token_type_ids": 1}

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        # a prefix-LM: text after the prompt would sit in the bidirectional prefix, not be continued as an answer
        return super().capabilities() - {"prefill"}

    def render(self, conversation: list[dict[str, Any]], images: Sequence[Any]) -> str:
        texts = [part["text"] for turn in conversation for part in turn["content"] if part["type"] == "text"]
        # the processor inserts <bos> after the last <image> and appends the newline
        return "<image>" * len(images) + "\n".join(texts)

    def batch_key(self, images: Sequence[Any]) -> Hashable:
        return bool(images)

    def encode(self, texts: list[str], images: list[list[Any]]) -> Any:
        if any(images):
            return super().encode(texts, images)
        tok = self.processor.tokenizer
        enc = tok(
            [f"{tok.bos_token}{t}\n" for t in texts],
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        )
        enc["token_type_ids"] = enc["input_ids"].new_zeros(enc["input_ids"].shape)
        return enc
