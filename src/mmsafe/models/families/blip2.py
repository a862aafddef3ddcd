"""BLIP-2 and InstructBLIP (``Blip2ForConditionalGeneration``, ``InstructBlipForConditionalGeneration``).

Neither has a chat template. Prompt formats: BLIP-2 uses the paper's VQA format,
``Question: <q> Answer:``, with earlier turns as ``Question: <q> Answer: <a>`` before it;
InstructBLIP takes the instruction text as it is (earlier turns joined by newlines). A system turn is
folded in as plain text before the rest (no ``system_prompt`` capability). Exactly one image per
prompt: the processor prepends the Q-Former's ``num_query_tokens`` image tokens once, and the
model needs ``pixel_values``. Mixed prompts batch freely (one image each). InstructBLIP's Q-Former
also reads the prompt (``qformer_input_ids``), which the processor adds. Pixel space: the image
resized to the square the processor uses (224 px), no crop. Random-init gradients through the
Q-Former are tiny (~1e-7) but not zero. T5-based checkpoints (BLIP-2 FlanT5, InstructBLIP FlanT5:
encoder-decoder language models) generate (the answer is the decoder's output after its start
token) and have ``target_loss`` / ``teacher_forced`` (via ``labels``, one example per forward pass,
gradients to the pixels; no ``embed_delta``), tested on a tiny random build; they lack the
``hidden_states`` capability: :meth:`decoder_layers` looks for decoder-only layers, and steering a
T5's blocks is not implemented.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from mmsafe.models.families.base import Family


class Blip2(Family):
    name: ClassVar[str] = "blip2"
    model_types: ClassVar[frozenset[str]] = frozenset({"blip-2", "instructblip"})
    architectures: ClassVar[frozenset[str]] = frozenset(
        {"Blip2ForConditionalGeneration", "InstructBlipForConditionalGeneration"}
    )
    system_prompt: ClassVar[bool] = False
    multi_image: ClassVar[bool] = False
    needs_chat_template: ClassVar[bool] = False

    @classmethod
    def load_processor(cls, path: str, *, model_type: str | None, **kwargs: Any) -> Any:
        from tokenizers import AddedToken

        processor = super().load_processor(path, model_type=model_type, **kwargs)
        if isinstance(getattr(processor, "image_token", None), str):
            # transformers 5.23 reloads it as a string but calls ``.content`` on it
            processor.image_token = AddedToken(processor.image_token, normalized=False, special=True)
        return processor

    def instance_capabilities(self) -> frozenset[str]:
        caps = self.capabilities()
        # a T5 decoder starts from nothing: text in the encoder's input is not an answer it continues
        return caps - {"hidden_states", "prefill"} if self.encoder_decoder else caps

    def decoder_layers(self) -> Sequence[Any]:
        if self.encoder_decoder:
            raise NotImplementedError(
                f"{type(self.model).__name__} has an encoder-decoder (T5) language model: "
                "hidden states / decoder layers are only supported for decoder-only ones (OPT, Vicuna)"
            )
        return super().decoder_layers()

    @property
    def instruct(self) -> bool:
        return self.model.config.model_type == "instructblip"

    def render(self, conversation: list[dict[str, Any]], images: Sequence[Any]) -> str:
        if len(images) != 1:
            raise ValueError(
                f"BLIP-2/InstructBLIP models take exactly one image per prompt, got {len(images)}"
            )
        turns = [
            (turn["role"], " ".join(p["text"] for p in turn["content"] if p["type"] == "text").strip())
            for turn in conversation
        ]
        if self.instruct:
            return "\n".join(text for _, text in turns if text)
        out: list[str] = []
        for role, text in turns:
            if role == "system":
                out.append(text)
            elif role == "user":
                out.append(f"Question: {text} Answer:")
            else:
                out.append(text)
        return " ".join(t for t in out if t)

    def encode(self, texts: list[str], images: list[list[Any]]) -> Any:
        """Batch padding that does not change any prompt's positions.

        The processor puts the query tokens *before* the left padding: the padding is moved first,
        so each row is ``[pad…][queries][text]``. InstructBLIP's Q-Former reads the prompt with
        absolute position embeddings (BERT), so its inputs are padded on the RIGHT instead.
        """
        import torch

        enc = super().encode(texts, images)
        for prefix, pad_first in (("", True), ("qformer_", False)):
            mask = enc.get(f"{prefix}attention_mask")
            if mask is None or not bool((mask == 0).any()):
                continue
            order = torch.argsort(mask if pad_first else 1 - mask, dim=1, stable=True)
            for key in (f"{prefix}input_ids", f"{prefix}attention_mask"):
                enc[key] = torch.gather(enc[key], 1, order)
        return enc
