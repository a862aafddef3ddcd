"""Teacher-forced target losses over a batch, encoded once and evaluated many times.

An optimisation-based attack evaluates the same (prompt, target) pairs hundreds of times with only
the pixels changing. :class:`TeacherForced` tokenises and processes the pairs once (the processor's
own layout of image tokens, the family's extension of token-aligned inputs over the target), pads
them into one left-padded batch, and then each call only swaps pixels in (differentiably, through
the family's ``pixel_inputs``) and runs one forward pass. Left padding puts every target at the end
of its row, so the model is asked for the logits of the last ``max_target_len + 1`` positions only
(``logits_to_keep`` where the model supports it): the full-vocabulary projection over the prompt is
never computed.

When every example shows the same image after the same opening tokens (a universal attack: one
image, many texts), the shared prefix — template and image tokens, most of the sequence — runs
once and its key/value cache is repeated over the batch; only the per-example suffixes run K times
(losses and gradients equal the plain batch; see ``_shared_prefix``).

A target is a string or a sequence of ``(text, weight)`` segments (tokenised separately and
concatenated): the loss of an example is the weighted mean of its tokens' cross-entropies, so one
pass can weigh a tool-call string against the natural answer before it (Fu et al. 2023).

Optional ``embed_delta`` (``[B, L, D]``) is added to the language model's input embeddings at the
prompt's text positions (not image tokens, padding or the target): CroPA's learnable prompt
perturbation (Luo et al. 2024).

:class:`TeacherForced` reads the backend only through a :class:`WhiteBoxView` (its public parts:
the torch module, the family adapter, the tokenizer, the device and the backend's own prompt
encoder), never through the backend's private attributes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmsafe.types import Prompt

__all__ = ["Target", "TeacherForced", "WhiteBoxView", "segments"]

Target = str | Sequence[tuple[str, float]]


def segments(target: Target) -> list[tuple[str, float]]:
    """``target`` as ``(text, weight)`` segments (a plain string is one segment of weight 1)."""
    if isinstance(target, str):
        return [(target, 1.0)]
    out = [(str(t), float(w)) for t, w in target]
    if not out:
        raise ValueError("a target needs at least one segment")
    return out


@dataclass(frozen=True)
class WhiteBoxView:
    """What white-box objectives may use of a loaded Hugging Face vision-language backend
    (:meth:`~mmsafe.models.hf.HFModel.whitebox_view`).

    ``module`` is the torch model (eval mode, weights frozen); ``family`` its family adapter
    (:class:`~mmsafe.models.families.base.FamilyAdapter`: ``encoder_decoder``, ``sequence_fill``,
    ``explicit_positions``, differentiable ``pixel_inputs``); ``tokenizer`` the text tokenizer;
    ``device`` where inputs go; ``encode(prompt)`` the backend's encoding of one prompt — rendered
    exactly as generation renders it (system prompt, family template), processed as a batch of
    one, on the device with floats in the model's dtype — and the number of images in it.
    """

    module: Any
    family: Any
    tokenizer: Any
    device: Any
    encode: Callable[[Prompt], tuple[Any, int]]

    @property
    def dtype(self) -> Any:
        """The model's floating-point dtype (pixel inputs are cast to it)."""
        return self.module.dtype

    @property
    def pad_id(self) -> int:
        """The tokenizer's padding id (0 when it has none)."""
        pad = self.tokenizer.pad_token_id
        return 0 if pad is None else int(pad)

    @property
    def image_token(self) -> int | None:
        """The id of the image placeholder token in the model's config, if it has one."""
        cfg = self.module.config
        token = getattr(cfg, "image_token_id", None)
        if token is None:
            token = getattr(cfg, "image_token_index", None)
        return None if token is None else int(token)

    def cast(self, value: Any) -> Any:
        """``value`` on the model's dtype when it is floating point (ids and masks stay as they are)."""
        return value.to(self.dtype) if value.is_floating_point() else value

    def pixel_inputs(self, pixels: Sequence[Any], encoding: Any) -> dict[str, Any]:
        """The family's differentiable model inputs for ``pixels`` (moved to the device) in the
        layout of ``encoding``, floats cast to the model's dtype."""
        swapped = self.family.pixel_inputs([p.to(self.device) for p in pixels], encoding)
        return {key: self.cast(value) for key, value in swapped.items()}


class TeacherForced:
    """Batched teacher-forced loss of ``targets`` as the answers to ``prompts`` (see the module doc).

    ``__call__(pixels)`` takes one list of ``[3, H, W]`` tensors per prompt (its images, in order,
    already in the model's pixel space; ``None`` keeps the prompt's own images) and returns the
    per-example losses ``[B]`` (float32). Gradients flow to the pixels and to ``embed_delta``.
    """

    def __init__(self, view: WhiteBoxView, prompts: Sequence[Prompt], targets: Sequence[Target]) -> None:
        import torch

        if len(prompts) != len(targets) or not prompts:
            raise ValueError("need one target per prompt, and at least one prompt")
        self.view = view
        tok = view.tokenizer
        self.encoder_decoder = bool(view.family.encoder_decoder)
        self.n_images: list[int] = []
        self.encodings: list[Any] = []  # per example, unpadded, batch 1 (prompt only)
        self.target_ids: list[Any] = []
        self.target_weights: list[Any] = []
        for prompt, target in zip(prompts, targets, strict=True):
            enc, n_images = view.encode(prompt)
            ids, weights = [], []
            for seg, w in segments(target):
                piece = tok(seg, add_special_tokens=False)["input_ids"]
                ids.extend(piece)
                weights.extend([w] * len(piece))
            if not ids:
                raise ValueError("the target string has no tokens")
            self.n_images.append(n_images)
            self.encodings.append(enc)
            self.target_ids.append(torch.tensor(ids, device=view.device))
            self.target_weights.append(torch.tensor(weights, dtype=torch.float32, device=view.device))
        self._shared: dict[str, Any] | None = None
        if not self.encoder_decoder:
            self._collate()

    # ------------------------------------------------------------------ batching

    def _collate(self) -> None:
        """One left-padded batch of prompt + target over every token-aligned key."""
        import torch

        fam = self.view.family
        pad_id = self.view.pad_id
        rows: list[dict[str, Any]] = []
        for enc, ids in zip(self.encodings, self.target_ids, strict=True):
            start = enc["input_ids"].shape[1]
            row: dict[str, Any] = {"input_ids": torch.cat([enc["input_ids"][0], ids])}
            for key, value in enc.items():
                if key == "input_ids" or not hasattr(value, "dim"):
                    continue
                if value.dim() == 2 and value.shape == (1, start):
                    fill = fam.sequence_fill.get(key, 0)
                    row[key] = torch.cat([value[0], torch.full_like(ids, fill, dtype=value.dtype)])
            row["attention_mask"] = torch.ones_like(row["input_ids"])
            if "attention_mask" in enc:
                row["attention_mask"] = torch.cat([enc["attention_mask"][0], torch.ones_like(ids)])
            rows.append(row)
        length = max(r["input_ids"].shape[0] for r in rows)
        self.length = length
        self.n_keep = max(int(t.shape[0]) for t in self.target_ids)
        batch: dict[str, Any] = {}
        for key in rows[0]:
            fill = pad_id if key == "input_ids" else 0
            batch[key] = torch.stack(
                [
                    torch.cat(
                        [
                            torch.full(
                                (length - r[key].shape[0],), fill, dtype=r[key].dtype, device=r[key].device
                            ),
                            r[key],
                        ]
                    )
                    for r in rows
                ]
            )
        # non-token inputs (pixel_values, image_sizes, image_grid_thw, …): concatenated in order
        for key in self.encodings[0]:
            if key in batch or not hasattr(self.encodings[0][key], "dim"):
                continue
            batch[key] = _cat_padded([e[key] for e in self.encodings])
        # labels / weights aligned to the last n_keep positions (left-padded with ignore)
        labels = torch.full((len(rows), self.n_keep), -100, dtype=torch.long, device=self.view.device)
        weights = torch.zeros((len(rows), self.n_keep), dtype=torch.float32, device=self.view.device)
        for i, (ids, w) in enumerate(zip(self.target_ids, self.target_weights, strict=True)):
            labels[i, self.n_keep - ids.shape[0] :] = ids
            weights[i, self.n_keep - ids.shape[0] :] = w
        self.labels, self.weights = labels, weights
        # prompt text positions (for embed_delta): real tokens before the target, minus image tokens
        mask = batch["attention_mask"].bool().clone()
        for i, ids in enumerate(self.target_ids):
            mask[i, length - ids.shape[0] :] = False
        image_token = self.view.image_token
        if image_token is not None:
            mask &= batch["input_ids"] != int(image_token)
        self.prompt_mask = mask
        if getattr(fam, "explicit_positions", True):
            positions = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
            batch["position_ids"] = positions
        self.batch = batch
        forward = inspect.signature(self.view.module.forward).parameters
        self._keep_kwarg = "logits_to_keep" in forward
        self._cache_kwarg = "cache" if "cache" in forward else "past_key_values"
        if "position_ids" not in forward:
            batch.pop("position_ids", None)
        self._shared = self._shared_prefix(pad_id) if "position_ids" in forward else None

    def _shared_prefix(self, pad_id: int) -> dict[str, Any] | None:
        """The shared-prefix layout, when every example starts with the same tokens covering all
        image tokens and has identical image inputs (a universal attack: one image, many texts).

        The prefix (template, image tokens, any common text) is then run once, its key/value cache
        repeated over the batch, and only the suffixes (rest of the prompt + target, right-padded)
        run per example: for LLaVA-1.5's 576 image tokens that is most of the sequence. Only for
        plain causal layouts (no token-type ids, positions derived from the mask); otherwise None.
        """
        import torch

        fam = self.view.family
        encs = self.encodings
        if len(encs) < 2 or not getattr(fam, "explicit_positions", True):
            return None
        token_keys = {
            k
            for k, v in encs[0].items()
            if hasattr(v, "dim") and v.dim() == 2 and v.shape == encs[0]["input_ids"].shape
        }
        if token_keys - {"input_ids", "attention_mask"}:
            return None  # token-type ids (PaliGemma's bidirectional prefix…): not a plain causal prefix
        others = [k for k, v in encs[0].items() if hasattr(v, "dim") and k not in token_keys]
        for e in encs[1:]:
            if set(e.keys()) != set(encs[0].keys()):
                return None
            for k in others:
                a, b = encs[0][k], e[k]
                if a.shape != b.shape or not torch.equal(a, b):
                    return None  # different images, or per-prompt extras (InstructBLIP's Q-Former text)
        ids = [e["input_ids"][0] for e in encs]
        if any("attention_mask" in e and not bool(e["attention_mask"].all()) for e in encs):
            return None
        shortest = min(len(x) for x in ids)
        common = 0
        while common < shortest and all(x[common] == ids[0][common] for x in ids):
            common += 1
        image_token = self.view.image_token
        if image_token is None:
            return None
        last_image = max(
            int((x == image_token).nonzero().max()) if bool((x == image_token).any()) else -1 for x in ids
        )
        # every example keeps at least one prompt token in its suffix (it predicts the first target)
        plen = min(common, shortest - 1)
        if last_image < 0 or plen <= last_image:
            return None
        suffixes = [torch.cat([x[plen:], t]) for x, t in zip(ids, self.target_ids, strict=True)]
        width = max(len(x) for x in suffixes)
        dev = self.view.device
        suffix_ids = torch.full((len(ids), width), pad_id, dtype=ids[0].dtype, device=dev)
        mask = torch.zeros((len(ids), plen + width), dtype=torch.long, device=dev)
        mask[:, :plen] = 1
        labels = torch.full((len(ids), width), -100, dtype=torch.long, device=dev)
        weights = torch.zeros((len(ids), width), dtype=torch.float32, device=dev)
        for i, (x, t, w) in enumerate(zip(ids, self.target_ids, self.target_weights, strict=True)):
            n_prompt = len(x) - plen
            suffix_ids[i, : len(suffixes[i])] = suffixes[i]
            mask[i, plen : plen + len(suffixes[i])] = 1
            # logits at suffix position p predict token p + 1
            labels[i, n_prompt - 1 : n_prompt - 1 + len(t)] = t
            weights[i, n_prompt - 1 : n_prompt - 1 + len(t)] = w
        prefix = {k: encs[0][k] for k in others}
        prefix["input_ids"] = ids[0][:plen].unsqueeze(0)
        prefix["attention_mask"] = torch.ones_like(prefix["input_ids"])
        return {
            "length": plen,
            "prefix": prefix,
            "suffix_ids": suffix_ids,
            "mask": mask,
            "positions": (plen + torch.arange(width, device=dev)).unsqueeze(0).expand(len(ids), -1),
            "labels": labels,
            "weights": weights,
        }

    def _same_pixels(self, pixels: Sequence[Sequence[Any] | None]) -> bool:
        first = pixels[0]
        if first is None:
            return all(p is None for p in pixels)
        return all(
            p is not None and len(p) == len(first) and all(a is b for a, b in zip(p, first, strict=True))
            for p in pixels
        )

    def _call_shared(self, pixels: Sequence[Any] | None) -> Any:
        import torch

        sh = self._shared
        assert sh is not None
        hf = self.view.module
        prefix = dict(sh["prefix"])
        if pixels is not None:
            prefix.update(self.view.pixel_inputs(pixels, self.encodings[0]))
        kw = {"logits_to_keep": 1} if self._keep_kwarg else {}
        out = hf(**prefix, use_cache=True, **kw)
        # transformers 5.25 renamed past_key_values to cache (the old name goes in 5.40); older 5.x only has it
        cache = getattr(out, "cache", None)
        cache = out.past_key_values if cache is None else cache
        cache.batch_repeat_interleave(len(self.encodings))
        out = hf(
            input_ids=sh["suffix_ids"],
            attention_mask=sh["mask"],
            position_ids=sh["positions"],
            **{self._cache_kwarg: cache},
            use_cache=True,
        )
        logits = out.logits.float()
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            sh["labels"].reshape(-1),
            reduction="none",
            ignore_index=-100,
        ).reshape(sh["labels"].shape)
        w = sh["weights"]
        return (ce * w).sum(-1) / w.sum(-1).clamp(min=1e-12)

    # ------------------------------------------------------------------- calling

    def _pixel_inputs(self, pixels: Sequence[Sequence[Any] | None]) -> dict[str, Any]:
        """Differentiable model inputs for the swapped pixels, concatenated over the batch."""

        parts: list[dict[str, Any]] = []
        for enc, px, n in zip(self.encodings, pixels, self.n_images, strict=True):
            if px is None:
                parts.append({})
                continue
            if len(px) != n:
                raise ValueError(f"the prompt has {n} image(s) but {len(px)} pixel tensor(s)")
            parts.append(self.view.family.pixel_inputs([p.to(self.view.device) for p in px], enc))
        keys = {k for part in parts for k in part}
        out = {}
        for key in keys:
            pieces = [part.get(key, enc.get(key)) for part, enc in zip(parts, self.encodings, strict=True)]
            out[key] = self.view.cast(_cat_padded(pieces))
        return out

    def __call__(
        self, pixels: Sequence[Sequence[Any] | None] | None = None, *, embed_delta: Any = None
    ) -> Any:
        import torch

        if pixels is None:
            pixels = [None] * len(self.encodings)
        if len(pixels) != len(self.encodings):
            raise ValueError(f"{len(self.encodings)} prompts but {len(pixels)} pixel lists")
        if self.encoder_decoder:
            if embed_delta is not None:
                raise NotImplementedError("embed_delta is not supported for encoder-decoder models")
            return torch.stack([self._one_encoder_decoder(i, px) for i, px in enumerate(pixels)])
        if self._shared is not None and embed_delta is None and self._same_pixels(pixels):
            return self._call_shared(pixels[0])
        inputs = {**self.batch, **self._pixel_inputs(pixels)}
        handle = None
        if embed_delta is not None:
            mask = self.prompt_mask.unsqueeze(-1)

            def add_delta(_mod: Any, _inp: Any, output: Any) -> Any:
                if output.shape[:2] != mask.shape[:2]:
                    return output  # another call through the same embedding (e.g. generation)
                return output + (embed_delta.to(output.dtype) * mask)

            handle = self.view.module.get_input_embeddings().register_forward_hook(add_delta)
        try:
            if self._keep_kwarg:
                out = self.view.module(**inputs, use_cache=False, logits_to_keep=self.n_keep + 1)
            else:
                out = self.view.module(**inputs, use_cache=False)
        finally:
            if handle is not None:
                handle.remove()
        logits = out.logits[:, -(self.n_keep + 1) : -1].float()
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), self.labels.reshape(-1), reduction="none", ignore_index=-100
        ).reshape(self.labels.shape)
        return (ce * self.weights).sum(-1) / self.weights.sum(-1).clamp(min=1e-12)

    def _one_encoder_decoder(self, i: int, px: Sequence[Any] | None) -> Any:
        import torch

        enc = dict(self.encodings[i])
        if px is not None:
            enc.update(self.view.pixel_inputs(px, enc))
        ids = self.target_ids[i].unsqueeze(0)
        out = self.view.module(**enc, labels=ids, use_cache=False)
        ce = torch.nn.functional.cross_entropy(
            out.logits[0, : ids.shape[1]].float(), ids[0], reduction="none"
        )
        w = self.target_weights[i]
        return (ce * w).sum() / w.sum().clamp(min=1e-12)

    @property
    def embed_shape(self) -> tuple[int, int, int]:
        """Shape of an ``embed_delta`` for this batch: ``[B, L, hidden]``."""
        hidden = self.view.module.get_input_embeddings().weight.shape[1]
        return (len(self.encodings), int(self.length), int(hidden))


def _cat_padded(pieces: list[Any]) -> Any:
    """Concatenate along dim 0; 2-D integer inputs of different widths (InstructBLIP's Q-Former
    ``qformer_input_ids`` / ``qformer_attention_mask``: a bidirectional encoder's own text) are
    right-padded with 0 first, which is both its pad id and a masked position."""
    import torch

    widths = {p.shape[1:] for p in pieces}
    if len(widths) > 1 and all(p.dim() == 2 and not p.is_floating_point() for p in pieces):
        width = max(p.shape[1] for p in pieces)
        pieces = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in pieces]
    return torch.cat(pieces)
