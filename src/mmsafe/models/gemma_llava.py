"""A LLaVA-style model whose language half is the real Gemma-3-270M, for white-box work offline.

:func:`build_gemma_llava` writes a ``LlavaForConditionalGeneration`` folder: a small CLIP vision
tower and a projector with seeded RANDOM weights in front of the real Gemma-3-270M base (converted by
:func:`mmsafe.models.gemma.ensure_gemma3_270m`). The vision half has never seen an image, so what
the model "sees" is noise to it; but the language model is real, so gradient attacks (a target
string's loss through the whole stack down to the pixels) and activation steering behave as they
do on a real LLaVA, at a size a CPU can run. :class:`GemmaLlava` builds it once into the cache and
loads it through :class:`~mmsafe.models.hf.HFModel`, the same code path as a real checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.errors import require
from mmsafe.models._build import ensure_built
from mmsafe.models._hf_util import MODEL_NOTE_FILE, AdapterFields
from mmsafe.models.base import GenerationParams, ModelBackend
from mmsafe.models.gemma import (
    DIALOGUE_STOP,
    GEMMA3_270M_VERSION,
    GEMMA_EOS_IDS,
    dialogue_template,
    ensure_gemma3_270m,
)
from mmsafe.models.hf import HFModel, HFParams
from mmsafe.paths import default_cache_root

__all__ = ["MODEL_NOTE", "MODEL_NOTE_FILE", "GemmaLlava", "build_gemma_llava", "ensure_gemma_llava"]

log = logging.getLogger(__name__)

#: Bump when the architecture, processor or template changes: it names the cache folder.
GEMMA_LLAVA_VERSION = f"gemma-llava-{GEMMA3_270M_VERSION}"

#: The note written beside the weights (MODEL_NOTE_FILE); HFModel.disclaimer reads it back for reports.
MODEL_NOTE = "vision tower and projector have random weights; language model is the real Gemma-3-270M base"

IMAGE_SIZE = 224
PATCH_SIZE = 28  # 8×8 = 64 image tokens: a real image size at a cost a CPU can pay (fwd+bwd)
IMAGE_TOKEN = "<image>"


def build_gemma_llava(dest: Path, *, gemma_path: Path, seed: int = 0) -> Path:
    """Write the composite to ``dest`` (which must not exist) from the converted Gemma at ``gemma_path``.

    Vision: CLIP ViT, 224 px, 28 px patches (64 image tokens), 4 layers of width 256, drawn under
    ``torch.manual_seed(seed)`` with the projector (the caller's RNG state is restored). Language:
    Gemma-3-270M's weights, with one row added to the embeddings for the ``<image>`` token (id
    262144, initialised to the mean embedding; it is replaced by image features before the LM sees
    it). Processor: ``CLIPImageProcessorPil`` + the Gemma tokenizer with ``<image>`` + a plain
    dialogue chat template (the base model continues ``User:/Assistant:`` text well). Saved as
    bfloat16 safetensors; load as float32 for gradients.
    """
    torch = require("torch", extra="hf", purpose="the Gemma LLaVA composite")
    transformers = require("transformers", extra="hf", purpose="the Gemma LLaVA composite")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    dest = Path(dest)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gemma_path)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    tokenizer.padding_side = "left"
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=dialogue_template(IMAGE_TOKEN),
        num_additional_image_tokens=1,  # the CLIP tower's CLS token
        image_token=IMAGE_TOKEN,
    )
    gemma = transformers.AutoModelForCausalLM.from_pretrained(gemma_path, dtype=torch.float32)
    text_config = gemma.config
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            projection_dim=256,
        ),
        text_config=text_config,
        image_token_index=image_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The language model's random init is wasted work (replaced below) but only a few seconds, once.
        model = transformers.LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(gemma.model.state_dict(), strict=True)
    model.lm_head.weight.data.copy_(gemma.lm_head.weight.data)
    del gemma
    with torch.no_grad():
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        assert model.get_input_embeddings().weight.shape[0] == old + 1 == image_id + 1
    model.tie_weights()
    gen = model.generation_config
    gen.bos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    gen.eos_token_id = list(GEMMA_EOS_IDS)
    model.to(torch.bfloat16)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    note = {
        "builder": "mmsafe.models.gemma_llava.build_gemma_llava",
        "version": GEMMA_LLAVA_VERSION,
        "seed": seed,
        "note": MODEL_NOTE,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "image_tokens": (IMAGE_SIZE // PATCH_SIZE) ** 2,
    }
    (dest / MODEL_NOTE_FILE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    return dest


def ensure_gemma_llava(cache_root: Path | str | None = None, *, seed: int = 0) -> Path:
    """``<cache_root>/models/gemma-llava-v1-seed<seed>``, built on first use (Gemma converted first).

    Written into a temporary sibling folder and renamed into place (concurrent processes never see
    half a model); a lock file makes a second process wait instead of building it again.
    """
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    dest = root / "models" / f"{GEMMA_LLAVA_VERSION}-seed{seed}"
    if (dest / MODEL_NOTE_FILE).is_file():
        return dest
    gemma_path = ensure_gemma3_270m(root, dtype="bfloat16")
    return ensure_built(  # locked: a second process waits instead of rebuilding
        dest.name,
        functools.partial(build_gemma_llava, gemma_path=gemma_path),
        root,
        seed=seed,
        marker=MODEL_NOTE_FILE,
    )


class GemmaLlavaParams(AdapterFields):
    """Settings of the Gemma LLaVA composite."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(8, ge=1, le=4096)
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=64))
    seed: int = Field(0, ge=0, description="seed of the random vision tower and projector")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="inference dtype; float32 gives clean gradients for pixel attacks"
    )
    cache_dir: str | None = Field(
        None, description="cache root; default $MMSAFE_CACHE_DIR or ~/.cache/mmsafe"
    )
    system_prompt: str | None = None
    cpu_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None: torch's default")


class GemmaLlava(HFModel):
    """LLaVA-style composite: random CLIP tower + projector in front of the real Gemma-3-270M base.

    For white-box attacks and defenses on a CPU: the language model is real (coherent text, real
    activations to steer), the vision half is random (seeded) and 224 px / 64 image tokens, so a
    pixel gradient runs through a real LM in seconds. What it says about an image is meaningless,
    and Gemma-3-270M base is not safety-aligned: its numbers test attack and defense machinery, not
    any model's safety. Built once (after the Gemma conversion) into
    ``<cache_dir>/models/gemma-llava-v1-seed<seed>`` and loaded through
    :class:`~mmsafe.models.hf.HFModel` (LLaVA family). Prompts use a plain ``User:/Assistant:``
    template (the base model continues it coherently); answers are cut at the next ``\\nUser:`` (a
    turn the base model would otherwise invent), as in ``gemma-ocr``.

    Params: ``batch_size`` (8), ``generation`` (max_new_tokens 64, greedy), ``seed`` (0),
    ``dtype`` (float32 | bfloat16), ``cache_dir``, ``system_prompt``, ``cpu_threads``, ``adapter``
    (e.g. one written by ``mmsafe train sft-vision``; its sha256 is pinned in ``adapter_sha256``).
    """

    name: ClassVar[str] = "gemma-llava"
    version: ClassVar[str] = "2"  # 2: answers cut at the next "\nUser:"
    Params: ClassVar[type[BaseModel]] = GemmaLlavaParams
    random_weights: bool = False
    #: where the converted weights live changes nothing they compute
    runtime_params: ClassVar[frozenset[str]] = ModelBackend.runtime_params | {"cache_dir"}

    def disclaimer(self) -> str | None:
        return MODEL_NOTE + "; Gemma-3-270M base is not safety-aligned: numbers test the machinery"

    def _hf_params(self) -> HFParams:
        p = self.params
        assert isinstance(p, GemmaLlavaParams)
        path = ensure_gemma_llava(Path(p.cache_dir) if p.cache_dir else None, seed=p.seed)
        return HFParams(
            path=str(path),
            model_class="llava",
            dtype=p.dtype,
            device="cpu",
            batch_size=p.batch_size,
            generation=p.generation,
            system_prompt=p.system_prompt,
            cpu_threads=p.cpu_threads,
            stop_strings=DIALOGUE_STOP,
            adapter=p.adapter,
            adapter_sha256=p.adapter_sha256,
        )
