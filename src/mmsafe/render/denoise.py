"""Image denoisers several defenses share: a local diffusers DDPM folder, and classical stand-ins.

Moved here from :mod:`mmsafe.defenses.cider` (its one-shot diffusion denoiser and filter passes) so
that CIDER and BlueSuffix's visual purifier use one implementation without importing each other.

:class:`DiffusionDenoiser` wraps a ``DDPMPipeline.save_pretrained``-style folder (``unet/`` +
``scheduler/``), loaded once, lazily, under a lock. It offers two uses of the same model:

* :meth:`DiffusionDenoiser.one_shot` — noise the image to timestep t (the forward process q(x_t|x_0))
  and predict x_0 in one step from the UNet's noise estimate (Carlini et al., "(Certified!!)
  Adversarial Robustness for Free!", ICLR 2023; the CIDER authors' denoiser).
* :meth:`DiffusionDenoiser.purify` — DiffPure (Nie et al., "Diffusion Models for Adversarial
  Purification", ICML 2022): noise to t, then run the reverse DDPM chain t−1 … 0 (t UNet calls).

The image is resized to the UNet's ``sample_size`` and back. Noise is drawn from a CPU generator
seeded by the caller, so a rerun gives the same image.

:func:`classical_denoise` is one pass of an offline stand-in (no diffusion weights ship anywhere
here): Gaussian blur, median filter or JPEG re-encoding. They remove high-frequency perturbations
much as a low-noise diffusion step does, but also blur real detail; a record that used one must say
so (the callers label it ``stand_in``).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

__all__ = ["ClassicalDenoiser", "DiffusionDenoiser", "MedianSize", "classical_denoise", "jpeg_roundtrip"]



def _odd(v: int) -> int:
    if v % 2 == 0:
        raise ValueError("a median window must be odd")
    return v


#: a median filter's window as a param: odd, 3–15 pixels (``purify``, ``bluesuffix``)
MedianSize = Annotated[int, Field(ge=3, le=15), AfterValidator(_odd)]

ClassicalDenoiser = Literal["gaussian", "median", "jpeg"]


def jpeg_roundtrip(pil: Any, quality: int) -> Any:
    """``pil`` (RGB) encoded as JPEG at ``quality`` and decoded again."""
    from PIL import Image as PILImage

    buf = io.BytesIO()
    pil.convert("RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with PILImage.open(buf) as out:
        return out.convert("RGB")


def classical_denoise(
    pil: Any, kind: str, *, blur_radius: float = 0.5, median_size: int = 3, jpeg_quality: int = 50
) -> Any:
    """One pass of a classical stand-in denoiser over ``pil`` (RGB out, same size)."""
    from PIL import ImageFilter

    img = pil.convert("RGB")
    if kind == "gaussian":
        return img.filter(ImageFilter.GaussianBlur(radius=blur_radius))
    if kind == "median":
        return img.filter(ImageFilter.MedianFilter(median_size))
    if kind == "jpeg":
        return jpeg_roundtrip(img, jpeg_quality)
    raise ValueError(f"unknown classical denoiser {kind!r}; one of gaussian, median, jpeg")


class DiffusionDenoiser:
    """A local diffusers DDPM folder used as an image denoiser (see the module docstring)."""

    def __init__(self, path: str, *, device: str = "cpu", purpose: str = "the diffusion denoiser") -> None:
        self.path = path
        self.device = device
        self.purpose = purpose
        self._lock = threading.RLock()
        self._loaded: tuple[Any, Any] | None = None

    def load(self) -> tuple[Any, Any]:
        """(UNet, DDPM scheduler), loaded on first use."""
        with self._lock:
            if self._loaded is None:
                from mmsafe.errors import require

                diffusers = require("diffusers", extra="diffusion", purpose=self.purpose)
                path = Path(str(self.path)).expanduser()
                if not path.is_dir():
                    raise ValueError(f"diffusion_path {str(path)!r} is not a folder")
                unet = diffusers.UNet2DModel.from_pretrained(
                    str(path), subfolder="unet", local_files_only=True
                )
                sched = diffusers.DDPMScheduler.from_pretrained(
                    str(path), subfolder="scheduler", local_files_only=True
                )
                unet.to(self.device).eval()
                self._loaded = (unet, sched)
            return self._loaded

    def close(self) -> None:
        with self._lock:
            self._loaded = None

    def _to_tensor(self, view: Any, size: int) -> Any:
        import numpy as np
        import torch
        from PIL import Image as PILImage

        x = np.asarray(
            view.convert("RGB").resize((size, size), PILImage.Resampling.BICUBIC), dtype=np.float32
        )
        return torch.from_numpy(x / 127.5 - 1.0).permute(2, 0, 1)[None].to(self.device)

    @staticmethod
    def _to_pil(x: Any, size: tuple[int, int]) -> Any:
        import numpy as np
        from PIL import Image as PILImage

        arr = ((x[0].permute(1, 2, 0).cpu().numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        return PILImage.fromarray(arr, mode="RGB").resize(size, PILImage.Resampling.BICUBIC)

    def _setup(self, view: Any) -> tuple[Any, Any, Any, Any]:
        import torch

        unet, sched = self.load()
        size = unet.config.sample_size
        size = size if isinstance(size, int) else int(size[0])
        x0 = self._to_tensor(view, size)
        acp = sched.alphas_cumprod.to(torch.device(self.device))
        return unet, sched, x0, acp

    def _noised(self, x0: Any, acp: Any, t: int, seed: int) -> Any:
        import torch

        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        a = acp[t]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def one_shot(self, view: Any, *, t: int, seed: int) -> Any:
        """``view`` noised to timestep ``t`` (seeded), x_0 predicted in one UNet call."""
        import torch

        unet, _, x0, acp = self._setup(view)
        t = min(int(t), len(acp) - 1)
        xt = self._noised(x0, acp, t, seed)
        a = acp[t]
        with torch.no_grad():
            eps = unet(xt, torch.tensor([t], device=xt.device)).sample[:, :3]
        pred = ((xt - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
        return self._to_pil(pred, view.size)

    def purify(self, view: Any, *, t: int, seed: int) -> Any:
        """DiffPure: ``view`` noised to timestep ``t`` (the ``t``-th of the schedule, 1-based as in the
        DiffPure code), then denoised by ``t`` reverse DDPM steps; every draw seeded by ``seed``."""
        import torch

        unet, sched, x0, acp = self._setup(view)
        t = max(1, min(int(t), len(acp)))
        x = self._noised(x0, acp, t - 1, seed)
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
        with torch.no_grad():
            for i in reversed(range(t)):
                eps = unet(x, torch.tensor([i], device=x.device)).sample
                x = sched.step(eps, i, x, generator=gen).prev_sample
        return self._to_pil(x.clamp(-1, 1), view.size)
