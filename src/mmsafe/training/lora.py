"""LoRA adapters on any torch language model, injected in place with PEFT, saved as safetensors + a card.

Training methods (:mod:`mmsafe.training`) inject LoRA layers into the backend's own module
(:func:`inject`, PEFT's ``inject_adapter_in_model``), so the backend keeps rendering, generating and
computing losses exactly as at inference, and only the adapter weights train. :func:`save_adapter`
writes ``adapter.safetensors`` and ``card.json`` (method, base model fingerprint, data sha256, seed,
steps, metrics, tensor sha256); :func:`apply_adapter` checks the card against the files and the base
model, injects and loads the weights, and merges them for inference speed. A corrupt file, a card
that does not match its tensors, or an adapter trained on another base model is a :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.errors import ConfigError, require

__all__ = [
    "ADAPTER_FILE",
    "CARD_FILE",
    "LoraSettings",
    "adapter_path",
    "adapters_enabled",
    "apply_adapter",
    "base_fingerprint",
    "inject",
    "lora_state",
    "pin_adapter",
    "read_card",
    "save_adapter",
]

ADAPTER_FILE = "adapter.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "mmsafe-adapter"
#: adapters shipped inside the package, by name (``adapter: builtin:<name>``)
_BUILTIN_PREFIX = "builtin:"


class LoraSettings(BaseModel):
    """LoRA hyper-parameters (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(8, ge=1, le=256, description="rank")
    alpha: float = Field(16.0, gt=0, description="scale numerator (update = alpha / r · B A)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        description="names of the linear layers to adapt (suffix match)",
    )


def _peft() -> Any:
    return require("peft", extra="train", purpose="LoRA training and adapters")


def inject(module: Any, settings: LoraSettings) -> list[Any]:
    """Add LoRA layers to ``module`` in place; freeze everything else; return the trainable parameters.

    Only layers that exist are adapted; none matching ``target_modules`` is an error."""
    peft = _peft()
    present = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
    targets = [t for t in settings.target_modules if t in present]
    if not targets:
        raise ConfigError(
            f"lora.target_modules {list(settings.target_modules)} match no layer of {type(module).__name__}"
        )
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets, bias="none"
    )
    peft.inject_adapter_in_model(config, module)
    params = []
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            params.append(p)
    return params


@contextmanager
def adapters_enabled(module: Any, enabled: bool) -> Iterator[None]:
    """Turn every LoRA layer of ``module`` on or off inside the block (off = the base model: DPO's reference)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    before = [not m.disable_adapters for m in layers]
    for m in layers:
        m.enable_adapters(enabled)
    try:
        yield
    finally:
        for m, on in zip(layers, before, strict=True):
            m.enable_adapters(on)


def lora_state(module: Any) -> dict[str, Any]:
    """The LoRA weights of ``module`` (name → CPU float32 tensor)."""
    return {n: p.detach().to("cpu").float().contiguous() for n, p in module.named_parameters() if "lora_" in n}


def base_fingerprint(module: Any) -> str:
    """sha256 of the base model's parameter names and shapes and of a sample of its weights (rounded to
    bfloat16, so the same weights loaded in float32 or bfloat16 match; LoRA parameters ignored)."""
    import torch

    h = hashlib.sha256()
    params = [(n, p) for n, p in module.named_parameters() if "lora_" not in n]
    for name, p in params:
        h.update(f"{name.replace('.base_layer', '')}:{tuple(p.shape)};".encode())
    for _, p in (params[0], params[len(params) // 2], params[-1]):
        sample = p.detach().reshape(-1)[:4096].to("cpu").to(torch.bfloat16).float()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def adapter_path(spec: str) -> Path:
    """A directory holding an adapter: a path, or ``builtin:<name>`` for one shipped with mmsafe."""
    if spec.startswith(_BUILTIN_PREFIX):
        name = spec[len(_BUILTIN_PREFIX) :]
        root = Path(str(resources.files("mmsafe") / "data" / "adapters"))
        path = root / name
        if not (path / CARD_FILE).is_file():
            known = sorted(p.name for p in root.iterdir() if (p / CARD_FILE).is_file()) if root.is_dir() else []
            raise ConfigError(f"no built-in adapter {name!r}; built-in: {', '.join(known) or '(none)'}")
        return path
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ConfigError(f"adapter {spec}: not a directory (expected {ADAPTER_FILE} and {CARD_FILE} inside)")
    return path


def save_adapter(out_dir: str | Path, module: Any, *, settings: LoraSettings, card: Mapping[str, Any]) -> Path:
    """Write ``module``'s LoRA weights and their card to ``out_dir``; returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = lora_state(module)
    if not state:
        raise ConfigError("the model has no LoRA weights to save")
    tensors = out / ADAPTER_FILE
    save_file(state, str(tensors), metadata={"format": CARD_FORMAT})
    full = {
        "format": CARD_FORMAT,
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(card),
        "lora": settings.model_dump(mode="json"),
        "base_fingerprint": base_fingerprint(module),
        "tensors_file": ADAPTER_FILE,
        "tensors_sha256": _sha256(tensors),
        "n_parameters": int(sum(t.numel() for t in state.values())),
    }
    (out / CARD_FILE).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return out


def pin_adapter(values: Any) -> Any:
    """For a params validator (mode "before"): fill ``adapter_sha256`` from the card of ``adapter``, so
    the spec (and every cache key) names the exact weights, and a changed adapter is a changed model."""
    if isinstance(values, dict) and values.get("adapter") and not values.get("adapter_sha256"):
        values = {**values, "adapter_sha256": read_card(values["adapter"])["tensors_sha256"]}
    return values


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of the adapter in ``path``, checked against its tensor file (sha256)."""
    root = adapter_path(str(path))
    try:
        card = json.loads((root / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"adapter {root}: {CARD_FILE} is unreadable or not JSON ({exc})") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ConfigError(f"adapter {root}: {CARD_FILE} is not an mmsafe adapter card")
    tensors = root / str(card.get("tensors_file", ADAPTER_FILE))
    if not tensors.is_file():
        raise ConfigError(f"adapter {root}: {tensors.name} is missing")
    if _sha256(tensors) != card.get("tensors_sha256"):
        raise ConfigError(f"adapter {root}: {tensors.name} does not match its card (sha256 differs: damaged or replaced)")
    return card


def apply_adapter(
    module: Any, path: str | Path, *, merge: bool = True, expected_sha256: str | None = None
) -> dict[str, Any]:
    """Inject the adapter in ``path`` into ``module`` (checked: files, sha256, base model), load its
    weights and (``merge``) fold them into the base weights. Returns the card."""
    from safetensors.torch import load_file

    root = adapter_path(str(path))
    card = read_card(root)
    if expected_sha256 is not None and card["tensors_sha256"] != expected_sha256:
        raise ConfigError(
            f"adapter {root} has changed since this run was configured (sha256 {card['tensors_sha256'][:12]}…, "
            f"the spec says {expected_sha256[:12]}…)"
        )
    settings = LoraSettings.model_validate(card.get("lora", {}))
    fp = base_fingerprint(module)
    if card.get("base_fingerprint") != fp:
        raise ConfigError(
            f"adapter {root} was trained on another base model ({card.get('base', '?')}; fingerprint "
            f"{str(card.get('base_fingerprint'))[:12]}…), not this one (fingerprint {fp[:12]}…)"
        )
    try:
        state = load_file(str(root / str(card.get("tensors_file", ADAPTER_FILE))))
    except Exception as exc:  # safetensors raises its own error type for a damaged header
        raise ConfigError(f"adapter {root}: the tensor file cannot be read ({exc})") from None
    inject(module, settings)
    expected = {n for n, _ in module.named_parameters() if "lora_" in n}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ConfigError(
            f"adapter {root} does not fit this model: {len(missing)} LoRA weights missing "
            f"({missing[:2]}…), {len(extra)} unknown ({extra[:2]}…)"
        )
    params = dict(module.named_parameters())
    import torch

    with torch.no_grad():
        for name, value in state.items():
            target = params[name]
            if tuple(target.shape) != tuple(value.shape):
                raise ConfigError(f"adapter {root}: {name} has shape {tuple(value.shape)}, the model {tuple(target.shape)}")
            target.copy_(value.to(target.dtype))
    for p in module.parameters():
        p.requires_grad_(False)
    if merge:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for m in module.modules():
            if isinstance(m, BaseTunerLayer):
                m.merge()
    return card
