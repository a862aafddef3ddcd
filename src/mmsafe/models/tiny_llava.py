"""A tiny random-weight LLaVA, built offline from a config, for tests and demos.

:func:`build_tiny_llava` writes a complete ``save_pretrained`` folder (weights, tokenizer, image
processor, processor, chat template) plus the ``mmsafe_random_weights.json`` marker. The
:class:`TinyLlava` backend builds it once into a cache folder and then loads it through exactly the
:class:`~mmsafe.models.hf.HFModel` code path, so tests exercise the same code a real checkpoint uses.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.errors import require
from mmsafe.models._build import ensure_built
from mmsafe.models._hf_util import RANDOM_WEIGHTS_MARKER
from mmsafe.models.base import GenerationParams
from mmsafe.models.hf import HFModel, HFParams

__all__ = [
    "TINY_LLAVA_VERSION",
    "TinyHFModel",
    "TinyLlava",
    "build_tiny_llava",
    "ensure_tiny_llava",
]

#: Bump when the architecture, tokenizer or template changes: it names the cache folder.
TINY_LLAVA_VERSION = "tiny-llava-v1"

IMAGE_SIZE = 32
PATCH_SIZE = 8
VOCAB_SIZE = 1024

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>", "<|system|>", "<|user|>", "<|assistant|>")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image>{{ '\\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}</s>{%- endif -%}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ '\\n' }}{%- endif -%}"
)

# A fixed corpus so the trained BPE (and hence every token id) is the same on every machine.
_CORPUS = (
    "I'm sorry, but I cannot help with that request. I can't assist with this.",
    "As an AI assistant, I must decline. It is not appropriate to provide that information.",
    "Sure, here is a step-by-step answer. Step 1: read the image. Step 2: list the items. Step 3: explain.",
    "The image shows a red square, a green circle and a blue triangle on a white background.",
    "Describe the picture in detail. What is written in the image? Answer the question below.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Here are the instructions you asked for: first, second, third, finally. Thank you for asking!",
    "Please list methods, tools, materials and safety precautions. Be careful and follow the law.",
    "A photo of a cat sitting on a chair next to a window, with text written at the top.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000, yes no maybe; (a) [b] {c} <d> 'e' \"f\" - _ + = / \\ * & % $ # @ !",
)


def _train_tokenizer(extra_special: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE trained on the built-in corpus; ``extra_special`` tokens follow :data:`SPECIAL_TOKENS`."""
    tokenizers = require("tokenizers", extra="hf", purpose="the tiny model tokenizer")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[*SPECIAL_TOKENS, *extra_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return tok


def build_tiny_llava(dest: Path, *, seed: int = 0, init_std: float = 0.02) -> Path:
    """Write a tiny random-weight LLaVA (CLIP vision tower + Llama LM, ~1M params) to ``dest``.

    Deterministic: the tokenizer is trained on a built-in corpus and the weights are drawn under
    ``torch.manual_seed(seed)`` (the caller's RNG state is restored). Images are 32×32 px cut into
    8×8 patches (16 image tokens). ``dest`` must not exist yet; it is filled directly (use
    :func:`ensure_tiny_llava` for a shared, atomically written cache). Returns ``dest``.

    ``init_std`` is the language model's weight-initialisation scale (transformers' default 0.02
    gives a near-uniform next-token distribution that no input can move much; white-box attack
    tests use a larger one, so the image has a grip on the output as in a trained model).
    """
    torch = require("torch", extra="hf", purpose="the tiny LLaVA")
    transformers = require("transformers", extra="hf", purpose="the tiny LLaVA")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    dest = Path(dest)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # the CLIP tower's CLS token
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<s>", "</s>", "<image>")}
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=64,
        ),
        text_config=transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=344,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            pad_token_id=ids["<pad>"],
            tie_word_embeddings=False,
            initializer_range=init_std,
        ),
        image_token_index=ids["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = ids["<s>"]
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    marker = {
        "builder": "mmsafe.models.tiny_llava.build_tiny_llava",
        "version": TINY_LLAVA_VERSION,
        "seed": seed,
        "init_std": init_std,
        "parameters": sum(p.numel() for p in model.parameters()),
        "note": "random weights: outputs are meaningless; for tests and demos only",
    }
    (dest / RANDOM_WEIGHTS_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return dest


def ensure_tiny_llava(cache_root: Path | None = None, *, seed: int = 0, init_std: float = 0.02) -> Path:
    """The tiny LLaVA folder under ``cache_root/models``, built on first use (see :func:`mmsafe.models._build.ensure_built`)."""
    name = f"{TINY_LLAVA_VERSION}-seed{seed}" + ("" if init_std == 0.02 else f"-init{init_std:g}")
    return ensure_built(name, functools.partial(build_tiny_llava, init_std=init_std), cache_root, seed=seed)


class TinyLlavaParams(BaseModel):
    """Settings of the tiny random LLaVA."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(8, ge=1, le=4096)
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=32))
    seed: int = Field(0, ge=0, description="seed of the random weights")
    init_std: float = Field(
        0.02, gt=0, le=2.0, description="LM init scale (larger: peakier outputs the image can steer)"
    )
    cache_dir: str | None = Field(
        None, description="cache root; default $MMSAFE_CACHE_DIR or ~/.cache/mmsafe"
    )
    system_prompt: str | None = None
    cpu_threads: int | None = Field(
        1,
        ge=1,
        description="1: a model this small only loses time to thread hand-offs (6x slower on a busy 2-core box)",
    )


class TinyHFModel(HFModel):
    """What every tiny random-weight model shares (:class:`TinyLlava` here, the registry's ``tiny``
    in :mod:`mmsafe.models.tiny`): built once into ``<cache_dir>/models/`` by
    :meth:`_folder`, then loaded float32 on CPU through :class:`~mmsafe.models.hf.HFModel`, the
    code path of a real checkpoint. Subclasses give ``name``, ``Params`` (with ``batch_size``,
    ``generation``, ``seed``, ``cache_dir``, ``system_prompt``, ``cpu_threads``) and :meth:`_folder`.
    """

    version: ClassVar[str] = "1"
    random_weights: bool = True
    #: the HFModel ``model_class`` to load with (None: HFModel's default, ``auto``)
    load_class: ClassVar[str | None] = None

    def _cache_root(self) -> Path | None:
        cache_dir = self.params.cache_dir  # type: ignore[attr-defined]
        return Path(cache_dir) if cache_dir else None

    def _folder(self) -> Path:
        """The model's folder, built on first use."""
        raise NotImplementedError

    def _hf_params(self) -> HFParams:
        p: Any = self.params
        fixed: dict[str, Any] = {"model_class": self.load_class} if self.load_class else {}
        return HFParams(
            path=str(self._folder()),
            **fixed,
            dtype="float32",
            device="cpu",
            batch_size=p.batch_size,
            generation=p.generation,
            system_prompt=p.system_prompt,
            cpu_threads=p.cpu_threads,
        )


class TinyLlava(TinyHFModel):
    """Tiny random-weight LLaVA (CLIP + Llama, ~1M params) built offline; for tests and demos only.

    Same classes and code path as a real LLaVA checkpoint (:class:`~mmsafe.models.hf.HFModel`), so
    it exercises batching, chat templates, image processing and, later, white-box attacks without
    any download. Its weights are random: outputs are gibberish and every report flags them.
    Built once (seconds) into ``<cache_dir>/models/tiny-llava-v1-seed<seed>``, float32 on CPU.
    The same model as ``tiny`` with ``family: llava``, plus ``init_std``.

    Params: ``batch_size`` (8), ``generation`` (max_new_tokens 32, greedy), ``seed`` (0, weights),
    ``init_std`` (0.02), ``cache_dir`` (default ``$MMSAFE_CACHE_DIR`` or ``~/.cache/mmsafe``),
    ``system_prompt``, ``cpu_threads`` (1).
    """

    name: ClassVar[str] = "tiny-llava"
    Params: ClassVar[type[BaseModel]] = TinyLlavaParams
    load_class: ClassVar[str | None] = "llava"

    def _folder(self) -> Path:
        p = self.params
        assert isinstance(p, TinyLlavaParams)
        return ensure_tiny_llava(self._cache_root(), seed=p.seed, init_std=p.init_std)
