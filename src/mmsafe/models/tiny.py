"""Tiny random-weight models of every supported vision-language family, built offline.

Each builder writes a complete ``save_pretrained`` folder (weights, tokenizer, processor, chat
template where the family has one) plus the ``mmsafe_random_weights.json`` marker, using the same
transformers classes as the real checkpoints, so :class:`~mmsafe.models.hf.HFModel` loads them
unchanged and tests exercise the real code path. Tokenizers are byte-level BPEs trained in-process
on a fixed corpus (with the family's special tokens); image processors are the ``…Pil`` classes
(no torchvision); processors that insist on a video processor (Qwen2-VL, Qwen2.5-VL, SmolVLM) are
built through a subclass that accepts ``video_processor=None``. SmolVLM's processor needs
``num2words``.

:class:`TinyModel` (registry name ``tiny``) builds one once under ``$MMSAFE_CACHE_DIR`` and loads it.
Weights are random: outputs are gibberish, and every report says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.errors import require
from mmsafe.models._build import ensure_built
from mmsafe.models._hf_util import RANDOM_WEIGHTS_MARKER
from mmsafe.models.base import GenerationParams
from mmsafe.models.families.base import without_video_processor
from mmsafe.models.tiny_llava import TinyHFModel, _train_tokenizer, build_tiny_llava

__all__ = [
    "ADAPTER_OF",
    "TINY_FAMILIES",
    "TINY_FAMILIES_VERSION",
    "TinyModel",
    "TinyModelParams",
    "build_tiny_family",
    "ensure_tiny_family",
]

#: Bump when any builder below changes: it names the cache folders.
TINY_FAMILIES_VERSION = "v1"

TinyFamily = Literal[
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "smolvlm",
    "paligemma",
    "blip2",
    "instructblip",
]

#: Small shared sizes: 64-wide, 2-layer language models; 32-56 px images.
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2

_CHATML = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{%- endif -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

_IDEFICS3 = (
    "<|im_start|>"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}"
    "{%- if message['content'][0]['type'] == 'image' -%}{{ ':' }}{%- else -%}{{ ': ' }}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}<image>"
    "{%- endif -%}{%- endfor -%}"
    "<end_of_utterance>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}Assistant:{%- endif -%}"
)

_LLAVA_NEXT = (  # Mistral-style [INST] template as in llava-v1.6-mistral, with a system line
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'][0]['text'] }}\n"
    "{%- elif message['role'] == 'user' -%}[INST] "
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image>\n{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%} [/INST]"
    "{%- else -%}{%- for part in message['content'] -%}{{ part['text'] }}{%- endfor -%}</s>"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _fast_tokenizer(
    extra_special: tuple[str, ...], *, bos: str = "<s>", eos: str = "</s>", **extra: Any
) -> Any:
    transformers = require("transformers", extra="hf", purpose="the tiny models")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(extra_special),
        bos_token=bos,
        eos_token=eos,
        pad_token="<pad>",
        padding_side="left",
        **extra,
    )


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _llama(tokenizer: Any, *, eos: str = "</s>") -> Any:
    transformers = require("transformers", extra="hf", purpose="the tiny models")
    pad, bos, eos_id = _ids(tokenizer, "<pad>", "<s>", eos)
    return transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=eos_id,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )


# --------------------------------------------------------------------------- builders


def _build_llava_next(dest: Path) -> tuple[Any, Any, Any]:
    transformers = require("transformers", extra="hf", purpose="the tiny models")
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _fast_tokenizer((), extra_special_tokens={"image_token": "<image>"})
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_NEXT,
        num_additional_image_tokens=1,
    )
    config = transformers.LlavaNextConfig(
        vision_config=transformers.CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
        ),
        text_config=_llama(tok),
        image_token_index=_ids(tok, "<image>")[0],
        image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    return processor, transformers.LlavaNextForConditionalGeneration, config


def _build_qwen2_vl(dest: Path, *, v25: bool = False) -> tuple[Any, Any, Any]:
    transformers = require("transformers", extra="hf", purpose="the tiny models")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = (
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    )
    tok = _fast_tokenizer(specials, bos="<s>", eos="<|im_end|>")
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=48 * 48
    )
    base = transformers.Qwen2_5_VLProcessor if v25 else transformers.Qwen2VLProcessor
    processor = without_video_processor(base)(
        image_processor=image_processor, tokenizer=tok, chat_template=_CHATML
    )
    pad, bos, eos = _ids(tok, "<pad>", "<s>", "<|im_end|>")
    image, video, vstart, vend = _ids(
        tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )
    text = {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    vision: dict[str, Any] = {
        "depth": 2,
        "num_heads": 4,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "in_channels": 3,
    }
    if v25:
        vision.update(
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=HIDDEN,
            window_size=32,
            fullatt_block_indexes=[1],
        )
        cfg_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    else:
        vision.update(embed_dim=32, hidden_size=HIDDEN, mlp_ratio=2)
        cfg_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    config = cfg_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=vstart,
        vision_end_token_id=vend,
        tie_word_embeddings=False,
    )
    return processor, model_cls, config


def _build_idefics3(dest: Path, *, smol: bool = False) -> tuple[Any, Any, Any]:
    transformers = require("transformers", extra="hf", purpose="the tiny models")
    if smol:
        require("num2words", extra="hf", purpose="the SmolVLM processor")
        from transformers.models.smolvlm.image_processing_pil_smolvlm import (
            SmolVLMImageProcessorPil as ImageProcessor,
        )
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import (
            Idefics3ImageProcessorPil as ImageProcessor,
        )

    specials = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", "<|im_start|>")
    tok = _fast_tokenizer(
        specials,
        eos="<end_of_utterance>",
        extra_special_tokens={
            "image_token": "<image>",
            "fake_image_token": "<fake_token_around_image>",
            "global_image_token": "<global-img>",
            "end_of_utterance_token": "<end_of_utterance>",
        },
    )
    image_processor = ImageProcessor(
        size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    # 32 px / 8 px patches = 16 patches, pixel-shuffled by scale_factor 2 → 4 image tokens
    kwargs = {
        "image_processor": image_processor,
        "tokenizer": tok,
        "image_seq_len": 4,
        "chat_template": _IDEFICS3,
    }
    if smol:
        processor = without_video_processor(transformers.SmolVLMProcessor)(video_processor=None, **kwargs)
        cfg_cls, vis_cls = transformers.SmolVLMConfig, transformers.SmolVLMVisionConfig
        model_cls = transformers.SmolVLMForConditionalGeneration
    else:
        processor = transformers.Idefics3Processor(**kwargs)
        cfg_cls, vis_cls = transformers.Idefics3Config, transformers.Idefics3VisionConfig
        model_cls = transformers.Idefics3ForConditionalGeneration
    config = cfg_cls(
        vision_config=vis_cls(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        text_config=_llama(tok, eos="<end_of_utterance>").to_dict(),
        image_token_id=_ids(tok, "<image>")[0],
        scale_factor=2,
        pad_token_id=_ids(tok, "<pad>")[0],
        tie_word_embeddings=False,
    )
    return processor, model_cls, config


def _build_paligemma(dest: Path) -> tuple[Any, Any, Any]:
    transformers = require("transformers", extra="hf", purpose="the tiny models")
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tok = _fast_tokenizer(("<image>",), extra_special_tokens={"image_token": "<image>"})
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16  # (32 / 8) ** 2 patches
    processor = transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    pad, bos, eos, image = _ids(tok, "<pad>", "<s>", "</s>", "<image>")
    config = transformers.PaliGemmaConfig(
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "projection_dim": HIDDEN,
        },
        text_config={
            "model_type": "gemma",
            "vocab_size": len(tok),
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HIDDEN // HEADS,
            "max_position_embeddings": 2048,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": pad,
        },
        image_token_index=image,
        projection_dim=HIDDEN,
        pad_token_id=pad,
    )
    return processor, transformers.PaliGemmaForConditionalGeneration, config


def _build_blip2(dest: Path, *, instruct: bool = False) -> tuple[Any, Any, Any]:
    transformers = require("transformers", extra="hf", purpose="the tiny models")
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    # no ``image_token`` attribute: the BLIP processors then register "<image>" themselves (with a
    # string attribute, transformers 5.23 fails on ``self.image_token.content``)
    tok = _fast_tokenizer(("<image>",))
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    queries = 4
    pad, bos, eos, image = _ids(tok, "<pad>", "<s>", "</s>", "<image>")
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    qformer = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "encoder_hidden_size": 32,
        "pad_token_id": pad,
    }
    if instruct:
        qformer_tok = _fast_tokenizer(())
        processor = transformers.InstructBlipProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            qformer_tokenizer=qformer_tok,
            num_query_tokens=queries,
        )
        config = transformers.InstructBlipConfig(
            vision_config=vision,
            qformer_config=qformer,
            text_config=_llama(tok).to_dict(),
            num_query_tokens=queries,
            image_token_index=image,
        )
        return processor, transformers.InstructBlipForConditionalGeneration, config
    processor = transformers.Blip2Processor(
        image_processor=image_processor, tokenizer=tok, num_query_tokens=queries
    )
    text = transformers.OPTConfig(
        vocab_size=len(tok),
        hidden_size=HIDDEN,
        ffn_dim=2 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        word_embed_proj_dim=HIDDEN,
        max_position_embeddings=2048,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    config = transformers.Blip2Config(
        vision_config=vision,
        qformer_config=qformer,
        text_config=text.to_dict(),
        num_query_tokens=queries,
        image_token_index=image,
    )
    return processor, transformers.Blip2ForConditionalGeneration, config


_BUILDERS: dict[str, Callable[[Path], tuple[Any, Any, Any]]] = {
    "llava_next": _build_llava_next,
    "qwen2_vl": _build_qwen2_vl,
    "qwen2_5_vl": lambda d: _build_qwen2_vl(d, v25=True),
    "idefics3": _build_idefics3,
    "smolvlm": lambda d: _build_idefics3(d, smol=True),
    "paligemma": _build_paligemma,
    "blip2": _build_blip2,
    "instructblip": lambda d: _build_blip2(d, instruct=True),
}

#: The adapter (:mod:`mmsafe.models.families`) that serves each tiny family.
ADAPTER_OF: dict[str, str] = {
    "llava": "llava",
    "llava_next": "llava_next",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "paligemma": "paligemma",
    "blip2": "blip2",
    "instructblip": "blip2",
}

#: Every family :func:`build_tiny_family` can build.
TINY_FAMILIES: tuple[str, ...] = ("llava", *_BUILDERS)


def build_tiny_family(family: str, dest: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight model of ``family`` to ``dest`` (which must not exist); returns it.

    Deterministic: tokenizers are trained on a built-in corpus and weights are drawn under
    ``torch.manual_seed(seed)`` (the caller's RNG state is restored).
    """
    if family == "llava":
        return build_tiny_llava(dest, seed=seed)
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    torch = require("torch", extra="hf", purpose="the tiny models")
    dest = Path(dest)
    processor, model_cls, config = _BUILDERS[family](dest)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    tok = processor.tokenizer
    gen = model.generation_config
    gen.bos_token_id = tok.bos_token_id
    gen.eos_token_id = tok.eos_token_id
    gen.pad_token_id = tok.pad_token_id
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    marker = {
        "builder": "mmsafe.models.tiny.build_tiny_family",
        "family": family,
        "version": TINY_FAMILIES_VERSION,
        "seed": seed,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "note": "random weights: outputs are meaningless; for tests and demos only",
    }
    (dest / RANDOM_WEIGHTS_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return dest


def ensure_tiny_family(family: str, cache_root: Path | None = None, *, seed: int = 0) -> Path:
    """The tiny ``family`` model under ``cache_root/models``, built atomically on first use."""
    if family == "llava":
        from mmsafe.models.tiny_llava import ensure_tiny_llava

        return ensure_tiny_llava(cache_root, seed=seed)
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")

    def builder(dest: Path, *, seed: int) -> Path:
        return build_tiny_family(family, dest, seed=seed)

    return ensure_built(
        f"tiny-{family.replace('_', '-')}-{TINY_FAMILIES_VERSION}-seed{seed}", builder, cache_root, seed=seed
    )


class TinyModelParams(BaseModel):
    """Settings of a tiny random model of one family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: TinyFamily = Field("llava", description="which architecture to build")
    batch_size: int = Field(8, ge=1, le=4096)
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=32))
    seed: int = Field(0, ge=0, description="seed of the random weights")
    cache_dir: str | None = Field(
        None, description="cache root; default $MMSAFE_CACHE_DIR or ~/.cache/mmsafe"
    )
    system_prompt: str | None = None
    cpu_threads: int | None = Field(1, ge=1, description="1: a model this small only loses time to threading")


class TinyModel(TinyHFModel):
    """Tiny random-weight model of any supported family (LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
    Idefics3, SmolVLM, PaliGemma, BLIP-2, InstructBLIP), built offline; for tests and demos only.

    Same transformers classes, processors and code path as real checkpoints of the family
    (:class:`~mmsafe.models.hf.HFModel`), so batching, prompt formats, image processing and the
    white-box entry points run without any download. Weights are random: outputs are gibberish and
    every report flags them. Built once (seconds) into ``<cache_dir>/models/``, float32 on CPU.
    ``family: llava`` is the model of ``tiny-llava`` (:class:`~mmsafe.models.tiny_llava.TinyLlava`).

    Params: ``family`` (llava), ``batch_size`` (8), ``generation`` (max_new_tokens 32, greedy),
    ``seed`` (0), ``cache_dir`` (default ``$MMSAFE_CACHE_DIR`` or ``~/.cache/mmsafe``),
    ``system_prompt``, ``cpu_threads`` (1).
    """

    name: ClassVar[str] = "tiny"
    Params: ClassVar[type[BaseModel]] = TinyModelParams

    def __init__(self, params: BaseModel | dict[str, Any] | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        from mmsafe.models.families import FAMILIES

        adapter = ADAPTER_OF[self.params.family]  # type: ignore[attr-defined]
        self.capabilities = next(f for f in FAMILIES if f.name == adapter).capabilities()  # type: ignore[misc]

    def _folder(self) -> Path:
        p = self.params
        assert isinstance(p, TinyModelParams)
        return ensure_tiny_family(p.family, self._cache_root(), seed=p.seed)
