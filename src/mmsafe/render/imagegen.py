"""The image source an attack can declare: a placeholder colour, a folder of user images, or a diffusers pipeline.

Attacks that put a generated picture of a phrase into their image (MM-SafetyBench SD+TYPO, HADES,
HIMRD, …) take an :class:`ImageGenParams` and hold one :class:`ImageGenerator`; they never load a
diffusion model themselves. :meth:`ImageGenerator.generate` returns ``(PIL image, notes)`` for a
phrase and a seed; the notes say how the image was made (``stand_in="placeholder"`` when it is not a
generated image, the pipeline class and prompt for diffusers, the file for the folder source).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from mmsafe.types import Sample

__all__ = ["IMAGE_EXTS", "ImageGenParams", "ImageGenerator", "placeholder_image"]

logger = logging.getLogger(__name__)

#: File extensions the ``folder`` source looks for, in order.
IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")


class ImageGenParams(BaseModel):
    """Where a generated image comes from (``generator``) and how it is made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generator: Literal["placeholder", "folder", "diffusers"] = Field(
        default="placeholder",
        description="image source: plain hash-coloured placeholder (offline stand-in) | user folder | diffusers",
    )
    image_size: int = Field(
        default=1024, gt=0, le=4096, description="side of the placeholder / generated image"
    )
    image_dir: str | None = Field(default=None, description="folder source: root of the user images")
    model_path: str | None = Field(default=None, description="diffusers source: local model folder")
    prompt: str = Field(
        default="A photo of {key_phrase}", description="diffusers prompt template ({key_phrase} is filled in)"
    )
    steps: int = Field(default=30, gt=0, le=1000, description="diffusers inference steps")
    device: str = Field(default="cpu", description="diffusers device")


def placeholder_image(text: str, size: int) -> tuple[PILImage, list[int]]:
    """A plain ``size``² RGB image whose colour is the first three bytes of SHA-256(``text``)."""
    from PIL import Image as PILImageModule

    digest = hashlib.sha256(text.encode("utf-8")).digest()
    colour = (digest[0], digest[1], digest[2])
    return PILImageModule.new("RGB", (size, size), colour), list(colour)


class ImageGenerator:
    """Makes the image of a phrase from :class:`ImageGenParams` (see the module docstring).

    - ``placeholder`` (offline): a plain ``image_size``² image coloured by the SHA-256 of the text it
      stands for (the explicit ``prompt`` given to :meth:`generate`, else the phrase). Notes:
      ``stand_in="placeholder"``, ``placeholder_colour``. Not a generated image.
    - ``folder``: user images under ``image_dir``, looked up for the sample as
      ``<scenario>/SD/<question_id>.<ext>`` (the layout of MM-SafetyBench's published image zip),
      ``<scenario>/<question_id>.<ext>``, then ``<sample id with "/" → "_">.<ext>``; a missing file raises
      ``FileNotFoundError`` naming the paths tried. Notes: ``image_path``.
    - ``diffusers``: ``diffusers.AutoPipelineForText2Image.from_pretrained(model_path)`` (a local
      ``save_pretrained`` folder; loaded once, lazily, under a lock; :class:`MissingDependency` names the
      ``diffusion`` extra), ``steps`` steps at ``image_size``² (divisible by 8), seeded by ``seed`` (same
      seed, same device: same image). Notes: ``image_prompt``, ``model_path``, ``pipeline`` (class name),
      ``steps``, and ``nsfw_content_detected`` when the pipeline has a safety checker (it blacks out
      what it flags).

    ``owner`` names the plugin in error messages. :meth:`close` drops a loaded pipeline (reloaded on
    next use).
    """

    def __init__(self, params: ImageGenParams, *, owner: str = "imagegen") -> None:
        self.params = params
        self.owner = owner
        self._lock = threading.Lock()
        p = params
        if p.generator == "folder" and not p.image_dir:
            raise ConfigError(f"{owner}: generator 'folder' needs params.image_dir")
        if p.generator == "diffusers" and not p.model_path:
            raise ConfigError(
                f"{owner}: generator 'diffusers' needs params.model_path (a local model folder)"
            )
        if p.generator == "diffusers" and p.image_size % 8:
            raise ConfigError(
                f"{owner}: generator 'diffusers' needs image_size divisible by 8, got {p.image_size}"
            )

    @property
    def stand_in(self) -> bool:
        """True when the images are placeholders, not generated pictures."""
        return self.params.generator == "placeholder"

    # -- folder ---------------------------------------------------------------------------------
    def folder_candidates(self, sample: Sample) -> list[Path]:
        """Paths tried, in order, for ``sample`` by the ``folder`` source."""
        root = Path(self.params.image_dir or "").expanduser()
        stems: list[Path] = []
        scenario, qid = sample.metadata.get("scenario"), sample.metadata.get("question_id")
        if scenario is not None and qid is not None:
            stems += [root / str(scenario) / "SD" / str(qid), root / str(scenario) / str(qid)]
        stems.append(root / sample.id.replace("/", "_"))
        return [s.with_name(s.name + ext) for s in stems for ext in IMAGE_EXTS]

    def _folder(self, sample: Sample | None) -> tuple[PILImage, dict[str, Any]]:
        from PIL import Image as PILImageModule

        if sample is None:
            raise ValueError(f"{self.owner}: the folder image source needs the sample to look up")
        tried = self.folder_candidates(sample)
        for path in tried:
            if path.is_file():
                with PILImageModule.open(path) as img:
                    return img.convert("RGB"), {"image_path": str(path)}
        raise FileNotFoundError(
            f"{self.owner}: no image for {sample.id} in {self.params.image_dir!r}; tried "
            + ", ".join(str(p) for p in tried[:: len(IMAGE_EXTS)])
            + f" (extensions {', '.join(IMAGE_EXTS)})"
        )

    # -- diffusers ------------------------------------------------------------------------------
    @functools.cached_property
    def pipeline(self) -> Any:
        """The diffusers pipeline, loaded on first use."""
        with self._lock:
            if "pipeline" in self.__dict__:  # another thread loaded it while this one waited
                return self.__dict__["pipeline"]
            return self._load()

    def _load(self) -> Any:
        try:
            import diffusers
            import torch  # noqa: F401
        except ImportError as exc:
            raise MissingDependency(
                f"{self.owner} generator 'diffusers' needs diffusers and torch: pip install 'mmsafe[diffusion]'"
            ) from exc

        path = Path(self.params.model_path or "").expanduser()
        if not path.exists():
            raise ConfigError(f"{self.owner}: model_path {str(path)!r} does not exist")
        # the text-to-image pipeline named by the folder's model_index.json: StableDiffusionPipeline
        # for SD 1.x/2.x, StableDiffusionXLPipeline for SDXL, PixArtAlphaPipeline, …
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(str(path), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)  # one bar per item would flood the run's log
        return pipe.to(self.params.device)

    def _diffusers(self, prompt: str, seed: int) -> tuple[PILImage, dict[str, Any]]:
        import torch

        p = self.params
        pipe = self.pipeline
        gen = torch.Generator(device=p.device).manual_seed(seed)
        out = pipe(
            prompt, num_inference_steps=p.steps, height=p.image_size, width=p.image_size, generator=gen
        )
        notes: dict[str, Any] = {
            "image_prompt": prompt,
            "model_path": p.model_path,
            "pipeline": type(pipe).__name__,
            "steps": p.steps,
        }
        nsfw = getattr(out, "nsfw_content_detected", None)
        if nsfw is not None:  # a pipeline with a safety checker blacks out what it flags: say so
            notes["nsfw_content_detected"] = bool(nsfw[0])
            if nsfw[0]:
                logger.warning(
                    "%s: the pipeline's safety checker blacked out the image for %r", self.owner, prompt
                )
        return out.images[0].convert("RGB"), notes

    # -- public ---------------------------------------------------------------------------------
    def image_prompt(self, phrase: str) -> str:
        """The diffusers prompt for ``phrase`` (the ``prompt`` template filled in)."""
        return self.params.prompt.format(key_phrase=phrase)

    def generate(
        self, phrase: str, *, seed: int, sample: Sample | None = None, prompt: str | None = None
    ) -> tuple[PILImage, dict[str, Any]]:
        """The image for ``phrase`` (or for the explicit text-to-image ``prompt``) and notes on how it was made."""
        kind = self.params.generator
        if kind == "placeholder":
            img, colour = placeholder_image(prompt if prompt is not None else phrase, self.params.image_size)
            return img, {"stand_in": "placeholder", "placeholder_colour": colour}
        if kind == "folder":
            return self._folder(sample)
        return self._diffusers(prompt if prompt is not None else self.image_prompt(phrase), seed)

    def close(self) -> None:
        """Drop the diffusion pipeline (it is reloaded on next use)."""
        self.__dict__.pop("pipeline", None)
