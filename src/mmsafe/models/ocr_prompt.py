"""The OCR front end of text-only backends: a prompt's images become their Tesseract text in the turn.

One home for what every "OCR-pipeline MLLM" does to a prompt before its chat template renders it
(``hf-text`` with ``image_input="ocr"``, hence ``gemma-ocr``, and ``llamacpp``): each image is read by
Tesseract (:func:`mmsafe.ocr.ocr_image`), once per distinct image (by sha256) per loaded model, and
its text takes the image's place as a line ``[Text in image N]: …`` (N counts images from 1 over the
whole prompt); each turn's parts are joined with newlines, so any chat template (even one that only
accepts string content) renders it. Two backends that share this code and the chat template see the
same prompt text, which is what makes their answers comparable.

pytesseract is imported only when an image is read.
"""

from __future__ import annotations

from typing import Any, Literal

from mmsafe.errors import MissingDependency
from mmsafe.models._hf_util import to_conversation
from mmsafe.types import Image, Prompt

__all__ = [
    "IMAGE_TEXT_FORMAT",
    "NO_TEXT",
    "ImageInput",
    "OCRFrontEnd",
    "format_image_text",
    "require_tesseract",
]

ImageInput = Literal["ocr", "reject"]

#: How the OCR'd text of the n-th image (1-based, counted over the whole prompt) enters its turn.
IMAGE_TEXT_FORMAT = "[Text in image {n}]: {text}"
#: What stands in for the text of an image in which OCR found none.
NO_TEXT = "(no text found)"


def format_image_text(n: int, text: str) -> str:
    """The line(s) that replace image ``n`` in a turn: :data:`IMAGE_TEXT_FORMAT` with the OCR text,
    its lines stripped and blank lines dropped (a multi-line read stays multi-line)."""
    lines = [line.strip() for line in text.splitlines()]
    body = "\n".join(line for line in lines if line)
    return IMAGE_TEXT_FORMAT.format(n=n, text=body or NO_TEXT)


def require_tesseract() -> None:
    """Raise :class:`MissingDependency` (naming the ``ocr`` extra and the binary) unless OCR can run."""
    from mmsafe.ocr import tesseract_available

    if not tesseract_available():
        raise MissingDependency(
            "image_input='ocr' needs pytesseract and the tesseract binary: pip install "
            "'mmsafe[ocr]' and apt-get install tesseract-ocr tesseract-ocr-eng (or set "
            "image_input='reject')"
        )


class OCRFrontEnd:
    """Prompt → chat messages with string contents, every image replaced by its OCR text.

    ``image_input="reject"`` makes a prompt with images an error (of that prompt only). The cache of
    OCR texts lives as long as this object: a backend makes one per loaded model.
    """

    def __init__(
        self,
        *,
        model: str,
        image_input: ImageInput = "ocr",
        lang: str = "eng",
        timeout_s: float = 60.0,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.image_input = image_input
        self.lang = lang
        self.timeout_s = timeout_s
        self.system_prompt = system_prompt
        self._texts: dict[str, str] = {}  # image sha256 → OCR text

    def read(self, image: Image, pil: Any) -> str:
        """Tesseract's text of ``image`` (``pil`` is its decoded pixels), read once per distinct image."""
        text = self._texts.get(image.sha256)
        if text is None:
            from mmsafe.ocr import ocr_image

            text = ocr_image(pil, lang=self.lang, timeout=self.timeout_s)
            self._texts[image.sha256] = text
        return text

    def clear(self) -> None:
        self._texts.clear()

    def messages(self, prompt: Prompt) -> tuple[list[dict[str, str]], list[str]]:
        """Chat messages (``system_prompt`` first when the prompt has no system turn) whose contents are
        strings, and the OCR text of each image in order. Raises for this prompt only: an image that
        cannot be decoded or read, or any image with ``image_input="reject"``."""
        conversation, pil_images = to_conversation(prompt, system_prompt=self.system_prompt)
        if pil_images and self.image_input == "reject":
            raise ValueError(
                f"{self.model} reads text only and image_input='reject': this prompt has "
                f"{len(pil_images)} image(s) (set image_input='ocr' to read them with Tesseract)"
            )
        image_texts = [self.read(img, pil) for img, pil in zip(prompt.images, pil_images, strict=True)]
        n = 0
        messages = []
        for turn in conversation:
            pieces = []
            for part in turn["content"]:
                if part["type"] == "image":
                    pieces.append(format_image_text(n + 1, image_texts[n]))
                    n += 1
                else:
                    pieces.append(part["text"])
            messages.append({"role": turn["role"], "content": "\n".join(pieces)})
        return messages, image_texts
