"""Tiny random guard models for the image-guard tests, built from configs (no download).

* :func:`build_tiny_shieldgemma2` — a ``ShieldGemma2ForImageClassification`` + ``ShieldGemma2Processor`` saved like a
  checkpoint (32 px SigLIP tower, 2-layer Gemma 3 text model); the classifier path of the ``shieldgemma2`` judge.
* :func:`build_verdict_llava` — the tiny LLaVA (``mmsafe.models.tiny_llava``) with two verdict words added to its
  vocabulary and an output head that can only say one of them: every row of ``lm_head`` is zero except
  ``unsafe = +v`` and ``safe = −v``, so greedy decoding's first token is always one of the two (whichever ``v · h``
  favours) and a one-token answer is a parseable verdict — a generate-mode guard whose real verdict the
  teacher-forced margin can be checked against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_tiny_shieldgemma2(dest: Path) -> Path:
    """A tiny random ShieldGemma2ForImageClassification + ShieldGemma2Processor saved like a checkpoint."""
    import torch
    import transformers
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from mmsafe.models.tiny import _fast_tokenizer, _ids

    tok = _fast_tokenizer(
        (
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
            "<start_of_turn>",
            "<end_of_turn>",
            "Yes",
            "No",
        ),
        bos="<bos>",
        eos="<eos>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    template = (  # a stand-in for the checkpoint's template: the image, then the policy, then a question
        "{%- for m in messages -%}<start_of_turn>{{ m['role'] }}\n{%- for part in m['content'] -%}"
        "{%- if part['type'] == 'image' -%}<start_of_image>{%- else -%}Policy: {{ part['text'] }} Violated?"
        "{%- endif -%}{%- endfor -%}<end_of_turn>\n{%- endfor -%}<start_of_turn>model\n"
    )
    processor = transformers.ShieldGemma2Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
        tokenizer=tok,
        chat_template=template,
        image_seq_length=4,
    )
    pad, bos, eos, image, boi, eoi, yes, no = _ids(
        tok,
        "<pad>",
        "<bos>",
        "<eos>",
        "<image_soft_token>",
        "<start_of_image>",
        "<end_of_image>",
        "Yes",
        "No",
    )
    config = transformers.ShieldGemma2Config(
        text_config={
            "model_type": "gemma3_text",
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "sliding_window": 512,  # the last token must see the image at the start of the prompt
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        mm_tokens_per_image=4,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    config.yes_token_index, config.no_token_index = yes, no
    torch.manual_seed(0)
    model = transformers.ShieldGemma2ForImageClassification(config).eval()
    with torch.no_grad():  # Gemma 3 initialises the image projection to zeros: give it random weights
        model.model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 1.0)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def build_verdict_llava(dest: Path, *, unsafe: str, safe: str, seed: int = 0, scale: float = 1.0) -> Path:
    """The tiny LLaVA whose only possible first words are ``unsafe`` and ``safe`` (see the module docstring)."""
    import torch
    import transformers

    from mmsafe.models.tiny_llava import build_tiny_llava

    base = build_tiny_llava(Path(dest).with_name(Path(dest).name + "-base"), seed=seed, init_std=0.1)
    processor: Any = transformers.AutoProcessor.from_pretrained(base)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(base).eval()
    processor.tokenizer.add_tokens([unsafe, safe])
    model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    u, s = processor.tokenizer.convert_tokens_to_ids([unsafe, safe])
    head = model.get_output_embeddings().weight
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        v = torch.randn(head.shape[1], generator=gen) * scale
        head.zero_()
        head[u], head[s] = v, -v
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    (Path(dest) / "mmsafe_random_weights.json").write_text('{"note": "random weights: tests only"}\n')
    return Path(dest)
