"""What differs between vision-language families, behind one small adapter interface.

:class:`~mmsafe.models.hf.HFModel` is the one driver (loading, batching, decoding, the white-box
entry points); a :class:`Family` adapter answers the questions on which checkpoints differ:

* how a conversation becomes the model's prompt text (chat template, or a documented plain format
  for families without one) and whether a system turn is real;
* how a batch is encoded (processor options) and which prompts may share a batch;
* where the image sits in pixel space (:meth:`Family.to_pixels`: resized/cropped, in [0, 1]) and
  how to turn pixel tensors back into the model's ``pixel_values`` differentiably
  (:meth:`Family.pixel_inputs`: normalisation plus any re-layout such as Qwen2-VL's patching);
* how the token-aligned inputs are extended over teacher-forced target tokens;
* which modules are the language model's decoder layers.

Adapters are plain classes: no torch at import time; torch is imported inside the methods.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

__all__ = ["Family", "pil_from_pixels", "without_video_processor"]


class Family:
    """Default behaviour: a chat-templated AutoModelForImageTextToText whose image processor
    returns ``pixel_values`` of shape ``[n_images, 3, H, W]`` (LLaVA-1.5, most CLIP/SigLIP models).

    Subclasses set the class attributes and override what differs. An instance wraps one loaded
    processor and model.
    """

    #: short name used in logs, docs and the tiny-model builders
    name: ClassVar[str] = "generic"
    #: ``config.model_type`` values this adapter serves (lookup key)
    model_types: ClassVar[frozenset[str]] = frozenset()
    #: ``config.architectures`` entries this adapter serves (lookup key, checked first)
    architectures: ClassVar[frozenset[str]] = frozenset()
    #: the prompt format has a real system turn (declares the ``system_prompt`` capability)
    system_prompt: ClassVar[bool] = True
    #: a prompt may carry more than one image
    multi_image: ClassVar[bool] = True
    #: the processor must bring a chat template (False: the adapter formats prompts itself)
    needs_chat_template: ClassVar[bool] = True
    #: keys of token-aligned ``[batch, seq]`` inputs and the value they take over target tokens
    #: pass ``position_ids`` counted over the attention mask in batched white-box passes (False for
    #: families that derive their own positions from the mask, such as Qwen2-VL's M-RoPE)
    explicit_positions: ClassVar[bool] = True
    sequence_fill: ClassVar[dict[str, int]] = {
        "attention_mask": 1,
        "token_type_ids": 0,
        "mm_token_type_ids": 0,
    }

    def __init__(self, processor: Any, model: Any) -> None:
        self.processor = processor
        self.model = model

    @classmethod
    def load_processor(cls, path: str, *, model_type: str | None, **kwargs: Any) -> Any:
        """The checkpoint's processor (default: ``AutoProcessor.from_pretrained``)."""
        import transformers

        return transformers.AutoProcessor.from_pretrained(path, **kwargs)

    # ------------------------------------------------------------------ prompts

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        caps = {"images", "batched", "gradients", "hidden_states", "prefill"}
        if cls.system_prompt:
            caps.add("system_prompt")
        return frozenset(caps)

    def instance_capabilities(self) -> frozenset[str]:
        """Capabilities of the loaded checkpoint (default: the class's)."""
        return self.capabilities()

    @property
    def encoder_decoder(self) -> bool:
        """True when the language model is an encoder-decoder (T5-based BLIP-2/InstructBLIP)."""
        cfg = self.model.config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return bool(getattr(cfg, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False))

    def render(self, conversation: list[dict[str, Any]], images: Sequence[Any]) -> str:
        """Prompt text for ``conversation`` (generation prompt included); ``{"type": "image"}`` items
        mark where ``images`` go. Raises ``ValueError`` for a prompt the family cannot take."""
        if len(images) > 1 and not self.multi_image:
            raise ValueError(f"{self.name} models take at most one image per prompt, got {len(images)}")
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def batch_key(self, images: Sequence[Any]) -> Hashable:
        """Prompts with equal keys may share a batch (default: any mix of image counts may)."""
        return 0

    def processor_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for every processor call."""
        return {}

    def encode(self, texts: list[str], images: list[list[Any]]) -> Any:
        """Tokenise a batch with LEFT padding and process its images (a ``BatchFeature`` of tensors)."""
        has_images = any(images)
        enc = self.processor(
            text=texts,
            images=images if has_images else None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
            **self.processor_kwargs(),
        )
        enc.pop("labels", None)  # processors that build training labels (PaliGemma) must not pass them on
        return enc

    def encode_whitebox(self, texts: list[str], images: list[list[Any]]) -> Any:
        """The encoding the white-box entry points use (default: the same as :meth:`encode`)."""
        return self.encode(texts, images)

    # -------------------------------------------------------------- pixel space

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    def _unnormalised(self, image: Any) -> Any:
        """The image processor's output for one PIL image, resized/cropped and rescaled, not normalised."""
        out = self.image_processor(
            images=[image], do_normalize=False, return_tensors="pt", **self.processor_kwargs()
        )
        return out

    def to_pixels(self, image: Any) -> Any:
        """``[3, H, W]`` float32 in [0, 1]: what the model sees before normalisation."""
        pv = self._unnormalised(image)["pixel_values"]
        return pv.reshape(-1, *pv.shape[-3:])[0].float().clamp(0.0, 1.0)

    def normalise(self, pixels: Any) -> Any:
        """Differentiable normalisation of a ``[3, H, W]`` tensor with the processor's mean/std."""
        import torch

        ip = self.image_processor
        if getattr(ip, "do_normalize", True) is False:
            return pixels
        mean = torch.as_tensor(_triple(ip.image_mean), dtype=pixels.dtype, device=pixels.device)
        std = torch.as_tensor(_triple(ip.image_std), dtype=pixels.dtype, device=pixels.device)
        return (pixels - mean[:, None, None]) / std[:, None, None]

    def pixel_inputs(self, pixels: Sequence[Any], enc: Any) -> dict[str, Any]:
        """Model inputs (``pixel_values`` …) computed differentiably from ``pixels``; ``enc`` is the
        processor's encoding of the same prompt (built from the same images), for shapes and extras."""
        import torch

        pv = torch.stack([self.normalise(p) for p in pixels])
        return {"pixel_values": pv.reshape(enc["pixel_values"].shape)}

    # ------------------------------------------------------------ model access

    def decoder_layers(self) -> Sequence[Any]:
        """The language model's decoder layers: the longest ``ModuleList`` named ``…layers`` under
        the language/text model (vision towers and Q-Formers excluded)."""
        import torch

        best: tuple[int, Any] | None = None
        for qual, module in self.model.named_modules():
            if not isinstance(module, torch.nn.ModuleList) or not qual.endswith("layers"):
                continue
            parts = qual.split(".")
            if not any(p in ("language_model", "text_model") for p in parts):
                continue
            if best is None or len(module) > best[0]:
                best = (len(module), module)
        if best is None:
            raise NotImplementedError(f"cannot find the decoder layers of {type(self.model).__name__}")
        return list(best[1])


def _triple(value: Any) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * 3
    return [float(v) for v in value]


def pil_from_pixels(pixels: Any) -> Any:
    """A PIL RGB image of a ``[3, H, W]`` tensor in [0, 1] (detached, rounded to 8 bits)."""
    from PIL import Image as PILImage

    arr = (pixels.detach().float().clamp(0, 1) * 255).round().to("cpu").byte().permute(1, 2, 0).numpy()
    return PILImage.fromarray(arr)


def without_video_processor(base: type) -> type:
    """``base`` (a processor class that also handles video) made to work without a video processor.

    Qwen2-VL, Qwen2.5-VL and SmolVLM processors require a video processor, and video processors need
    torchvision. The subclass accepts ``video_processor=None``, neither saves nor loads one, and keeps
    ``base``'s name so saved folders name the real class. Images and text work as in ``base``.
    """

    class _ImagesOnly(base):
        @classmethod
        def from_args_and_dict(cls, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
            return super().from_args_and_dict(args, processor_dict, **{"video_processor": None, **kwargs})

        @classmethod
        def from_dict(cls, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
            # transformers >= 5.25 builds loaded processors here instead of from_args_and_dict
            return super().from_dict(processor_dict, **{"video_processor": None, **kwargs})

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        @classmethod
        def get_attributes(cls) -> list[str]:
            return [n for n in super().get_attributes() if n != "video_processor"]

    _ImagesOnly.__name__ = base.__name__
    _ImagesOnly.__qualname__ = base.__qualname__
    return _ImagesOnly


def load_processor_without_video(path: str, *, model_type: str | None, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained``, or, when that fails for want of a video processor
    (no torchvision, or a folder saved without one), the family's processor without video."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        return transformers.AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ImportError, ValueError, TypeError) as exc:
        name = PROCESSOR_MAPPING_NAMES.get(model_type or "")
        about_video = "video" in str(exc).lower() or "torchvision" in str(exc).lower()
        if not isinstance(name, str) or not about_video:
            raise
        processor_cls: Any = without_video_processor(getattr(transformers, name))
        return processor_cls.from_pretrained(path, **kwargs)
