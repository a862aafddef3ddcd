"""LoRA adapters on any torch language model, injected in place with PEFT, saved as safetensors + a card.

Training methods (:mod:`mmsafe.training`) inject LoRA layers into the backend's own module
(:func:`inject`, PEFT's ``inject_adapter_in_model``), so the backend keeps rendering, generating and
computing losses exactly as at inference, and only the adapter weights train. LoRA may be confined to
a submodule (``scope``: a vision-language model's language model), and whole submodules may train in
full beside it (``modules_to_save``: LLaVA's multimodal projector); their weights travel in the same
tensor file and replace the base model's on load. :func:`save_adapter`
writes ``adapter.safetensors`` and ``card.json`` (method, base model fingerprint, data sha256, seed,
steps, metrics, tensor sha256); :func:`apply_adapter` checks the card against the files and the base
model, injects and loads the weights, and merges them for inference speed. A corrupt file, a card
that does not match its tensors, or an adapter trained on another base model is a :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
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
    "full_weight_state",
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
    scope: str | None = Field(
        None,
        description="dotted path of the submodule LoRA goes into (None: the whole model), e.g. a "
        "vision-language model's language model, so the vision tower's same-named layers stay untouched",
    )
    modules_to_save: tuple[str, ...] = Field(
        (),
        description="dotted paths of submodules trained in full and saved with the adapter (PEFT's "
        "modules_to_save), e.g. LLaVA's model.multi_modal_projector",
    )


def _peft() -> Any:
    return require("peft", extra="train", purpose="LoRA training and adapters")


def inject(module: Any, settings: LoraSettings, *, seed: int | None = None) -> list[Any]:
    """Add LoRA layers to ``module`` (or to its submodule ``settings.scope``) in place; freeze
    everything else except the full-weight ``settings.modules_to_save``; return the trainable
    parameters (LoRA first, then the full-weight ones).

    With ``seed``, the LoRA ``A`` matrices are drawn from it (torch's global generator is left as it
    was), so a training card's seed fixes the whole run. Only layers that exist are adapted; none
    matching ``target_modules`` is an error."""
    if seed is not None:
        import torch

        device = next(module.parameters()).device
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return inject(module, settings)
    peft = _peft()
    root = _submodule(module, settings.scope, what="lora.scope") if settings.scope else module
    present = {name.rsplit(".", 1)[-1] for name, _ in root.named_modules()}
    targets = [t for t in settings.target_modules if t in present]
    if not targets:
        where = f" (scope {settings.scope})" if settings.scope else ""
        raise ConfigError(
            f"lora.target_modules {list(settings.target_modules)} match no layer of {type(root).__name__}{where}"
        )
    full = set(_full_weight_names(module, settings.modules_to_save))
    config = peft.LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets, bias="none"
    )
    peft.inject_adapter_in_model(config, root)
    params, extra = [], []
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name or name in full)
        if "lora_" in name:
            params.append(p)
        elif name in full:
            extra.append(p)
    return params + extra


def _submodule(module: Any, path: str, *, what: str) -> Any:
    try:
        return module.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"{what}: {type(module).__name__} has no submodule {path!r}") from None


def _in_modules(name: str, modules: Sequence[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def _full_weight_names(module: Any, modules: Sequence[str]) -> list[str]:
    """Names of the parameters of the submodules ``modules`` (each must exist and hold parameters)."""
    for m in modules:
        if not any(True for _ in _submodule(module, m, what="lora.modules_to_save").parameters()):
            raise ConfigError(f"lora.modules_to_save: {m!r} has no parameters")
    return [n for n, _ in module.named_parameters() if "lora_" not in n and _in_modules(n, modules)]


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


def full_weight_state(module: Any, modules: Sequence[str]) -> dict[str, Any]:
    """The full weights of the submodules ``modules`` of ``module`` (name → CPU float32 tensor)."""
    names = set(_full_weight_names(module, modules))
    return {n: p.detach().to("cpu").float().contiguous() for n, p in module.named_parameters() if n in names}


def base_fingerprint(module: Any, *, exclude: Sequence[str] = ()) -> str:
    """sha256 of the base model's parameter names and shapes and of a sample of its weights (rounded to
    bfloat16, so the same weights loaded in float32 or bfloat16 match; LoRA parameters ignored, and
    those of the submodules in ``exclude``: full-weight modules an adapter trains and replaces)."""
    import torch

    h = hashlib.sha256()
    params = [(n, p) for n, p in module.named_parameters() if "lora_" not in n and not _in_modules(n, exclude)]
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
    """Write ``module``'s LoRA weights (and the full weights of ``settings.modules_to_save``, in the
    same file) and their card to ``out_dir``; returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = lora_state(module)
    if not state:
        raise ConfigError("the model has no LoRA weights to save")
    full_weights = full_weight_state(module, settings.modules_to_save)
    state.update(full_weights)
    tensors = out / ADAPTER_FILE
    save_file(state, str(tensors), metadata={"format": CARD_FORMAT})
    full = {
        "format": CARD_FORMAT,
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **dict(card),
        "lora": settings.model_dump(mode="json"),
        "base_fingerprint": base_fingerprint(module, exclude=settings.modules_to_save),
        "tensors_file": ADAPTER_FILE,
        "tensors_sha256": _sha256(tensors),
        "n_parameters": int(sum(t.numel() for t in state.values())),
    }
    if settings.modules_to_save:  # what the file holds besides LoRA: module → parameter count
        full["full_weight_modules"] = {
            m: int(sum(t.numel() for n, t in full_weights.items() if _in_modules(n, (m,))))
            for m in settings.modules_to_save
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
    weights — LoRA, and the full weights of the card's ``lora.modules_to_save``, which replace the
    base model's — and (``merge``) fold the LoRA weights into the base weights. Returns the card."""
    from safetensors.torch import load_file

    root = adapter_path(str(path))
    card = read_card(root)
    if expected_sha256 is not None and card["tensors_sha256"] != expected_sha256:
        raise ConfigError(
            f"adapter {root} has changed since this run was configured (sha256 {card['tensors_sha256'][:12]}…, "
            f"the spec says {expected_sha256[:12]}…)"
        )
    try:
        settings = LoraSettings.model_validate(card.get("lora", {}))
    except ValueError as exc:
        raise ConfigError(f"adapter {root}: {CARD_FILE} has unusable LoRA settings ({exc})") from None
    fp = base_fingerprint(module, exclude=settings.modules_to_save)
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
    expected |= set(_full_weight_names(module, settings.modules_to_save))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        kind = "weights" if settings.modules_to_save else "LoRA weights"
        raise ConfigError(
            f"adapter {root} does not fit this model: {len(missing)} {kind} missing "
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
