"""MLLM-Protector's harm detector, trained: the ``harm`` judge's LoRA MiniLM cross-encoder on labelled answers.

Paper: R. Pi et al., "MLLM-Protector: Ensuring MLLM's Safety without Hurting Performance", EMNLP 2024,
arXiv:2401.02906. ``protector-detector`` (:class:`ProtectorDetector`) writes a harm classifier
(:mod:`mmsafe.judges.harm_model`); use it as ``detector: {name: harm, params: {weights:
OUT/detector.safetensors}}`` in the ``mllm-protector`` defense. Its twin, the detoxifier, and the
departures from the authors' code are described in :mod:`mmsafe.training.protector_detoxifier`.

Threat model: none at training time; at inference the detector reads attacker-controlled answers and
executes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper
from mmsafe.training.base import Trainer
from mmsafe.training.sft import Example, load_examples
from mmsafe.training.text import step_logger

__all__ = [
    "DETECTOR_FILE",
    "LabelledRow",
    "ProtectorDetector",
    "ProtectorDetectorParams",
    "detector_rows",
    "split_by_request",
]

log = logging.getLogger(__name__)

#: the detector's file inside the output directory (its card: the same name with .json)
DETECTOR_FILE = "detector.safetensors"


# --------------------------------------------------------------------------------------------------
# the detector
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledRow:
    """One (request, response) pair and whether the response is harmful; ``group`` keeps a request's
    rows on one side of a split (by default the request itself)."""

    request: str
    response: str
    harmful: bool
    group: str
    source: str


class ProtectorDetectorParams(BaseModel):
    """Parameters of :class:`ProtectorDetector`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str | None = Field(
        "builtin", description="builtin or a JSONL of {request, answer, kind, rejected} rows (None: labelled only)"
    )
    labelled: str | None = Field(
        None, description="a JSONL of {request, response, harmful: bool, group?} rows, added to data's"
    )
    held_out_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of requests (groups) held out")
    epochs: int = Field(3, ge=1, le=100)
    lr: float = Field(1e-3, gt=0, le=1.0)
    batch_size: int = Field(16, ge=1, le=1024)
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="P(harmful) at or above which the judge says harmful")
    refit: bool = Field(False, description="after validation, train again on every row (the card's metrics are then the validation run's)")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    seed: int = 0

    @model_validator(mode="after")
    def _some_data(self) -> ProtectorDetectorParams:
        if self.data is None and self.labelled is None:
            raise ValueError("give data, labelled, or both")
        return self


def detector_rows(examples: Sequence[Example]) -> list[LabelledRow]:
    """Labelled rows from training examples: a harmful request's ``rejected`` (compliant) answer is
    harmful, its ``answer`` (refusal) is not; a benign request's answer and its ``rejected`` (an
    over-refusal) are not harmful — a refusal is not harm."""
    out = []
    for e in examples:
        group = f"request:{e.request}"
        out.append(LabelledRow(e.request, e.answer, False, group, f"{e.kind} answer"))
        if e.rejected.strip():
            out.append(LabelledRow(e.request, e.rejected, e.kind == "harmful", group, f"{e.kind} rejected"))
    return out


def _read_labelled(path: str) -> tuple[list[LabelledRow], str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"labelled: {path} is not a file")
    raw = p.read_bytes()
    rows = []
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            harmful = obj["harmful"]
            if not isinstance(harmful, bool):
                raise ValueError(f"harmful must be true or false, not {harmful!r}")
            request = str(obj["request"])
            group = str(obj.get("group") or f"request:{request}")
            rows.append(LabelledRow(request, str(obj["response"]), harmful, group, "labelled"))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{p}:{n}: not a labelled row ({exc}); need request, response, harmful") from None
    return rows, hashlib.sha256(raw).hexdigest()


def split_by_request(
    rows: Sequence[LabelledRow], *, held_out_fraction: float, seed: int
) -> tuple[list[LabelledRow], list[LabelledRow]]:
    """(training rows, held-out rows): a seeded ``held_out_fraction`` of the groups (requests) is held
    out with every row of theirs, so no request is on both sides; at least one group each side."""
    groups = sorted({r.group for r in rows})
    if len(groups) < 2:
        raise ConfigError("protector-detector: the held-out split needs rows of at least 2 requests")
    random.Random(seed).shuffle(groups)
    k = min(len(groups) - 1, max(1, round(held_out_fraction * len(groups))))
    held = set(groups[:k])
    return [r for r in rows if r.group not in held], [r for r in rows if r.group in held]


def _metrics(labels: Sequence[bool], probs: Sequence[float], threshold: float) -> dict[str, Any]:
    from mmsafe.metrics.classification import accuracy, auroc, precision_recall_f1

    pred = [p >= threshold for p in probs]
    pos = sum(labels)
    acc = accuracy(list(labels), pred)
    out: dict[str, Any] = {
        "n": len(labels),
        "n_harmful": pos,
        "accuracy": None if acc.value is None else round(acc.value, 4),
        # value, lo and hi are None together (n = 0)
        "accuracy_95ci": None if acc.lo is None or acc.hi is None else [round(acc.lo, 4), round(acc.hi, 4)],
        "majority_baseline": round(max(pos, len(labels) - pos) / len(labels), 4) if labels else None,
    }
    if pos and pos < len(labels):
        s = precision_recall_f1(list(labels), pred, labels=[True, False])[True]
        out.update(
            precision=None if s.precision is None else round(s.precision, 4),
            recall=None if s.recall is None else round(s.recall, 4),
            f1=None if s.f1 is None else round(s.f1, 4),
            auroc=round(auroc(list(labels), list(probs)).value, 4),
        )
    return out


class ProtectorDetector(Trainer):
    """MLLM-Protector's harm detector (Pi et al., EMNLP 2024): a LoRA MiniLM cross-encoder, loaded as ``harm``.

    Trains :mod:`mmsafe.judges.harm_model`'s network (all-MiniLM-L6-v2 read as a cross-encoder over
    ``[CLS] request [SEP] response [SEP]``, LoRA on the top blocks, a linear head; class-weighted BCE)
    on labelled (request, response, harmful) rows and writes ``OUT/detector.safetensors`` + its card
    ``OUT/detector.json``, which the ``harm`` judge loads: ``{name: harm, params: {weights:
    OUT/detector.safetensors}}`` — the ``mllm-protector`` defense's ``detector``.

    Rows: from ``data`` (training examples, :func:`detector_rows`: compliance with a harmful request is
    harmful; refusals and helpful answers to benign requests are not) and/or ``labelled`` (a JSONL of
    ``{request, response, harmful, group?}``). Validation: a ``held_out_fraction`` of the *requests* is
    held out with all their rows — never random rows only, which would put the same request on both
    sides and measure memorised requests: ``data`` rows follow the data's own split (``builtin`` keeps
    paraphrases of a request together), ``labelled`` rows are split by ``group`` (default: the request).
    The card records accuracy (Wilson 95% interval), precision, recall, F1 and AUROC on the held-out
    rows, overall and by source, with the majority baseline. The file written is
    that validated model (``refit: true`` trains once more on every row; the card then says so).

    Not the ``Trainer.run`` shape: there is no backend to load and no LoRA adapter on a chat model, so
    this class overrides :meth:`run` (same call, same card fields: method, params, data sha256, seed,
    training, metrics) and has no ``model`` param; the network is the packaged MiniLM (``judges`` extra).

    Params: ``data`` ("builtin"), ``labelled`` (None), ``held_out_fraction`` (0.2), ``epochs`` (3), ``lr``
    (1e-3), ``batch_size`` (16), ``threshold`` (0.5), ``refit`` (false), ``device`` (cpu), ``seed`` (0).
    """

    name: ClassVar[str] = "protector-detector"
    paper: ClassVar[Paper | None] = Paper(
        title="MLLM-Protector: Ensuring MLLM's Safety without Hurting Performance",
        authors="Pi et al.",
        year=2024,
        url="https://arxiv.org/abs/2401.02906",
        threat_model="none at training time; at inference the detector reads attacker-controlled answers",
    )
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = ProtectorDetectorParams
    params: ProtectorDetectorParams
    trains: ClassVar[frozenset[str]] = frozenset()

    def split_rows(self) -> tuple[list[LabelledRow], list[LabelledRow], dict[str, str]]:
        """(training rows, held-out rows, {source: sha256} of what was read). Rows from ``data`` follow
        the data's own split by request (:func:`~mmsafe.training.sft.load_examples`: for ``builtin``,
        paraphrase groups stay on one side); ``labelled`` rows are split by ``group``
        (:func:`split_by_request`)."""
        p = self.params
        train: list[LabelledRow] = []
        held: list[LabelledRow] = []
        hashes: dict[str, str] = {}
        if p.data is not None:
            tr, he, sha = load_examples(p.data, held_out_fraction=p.held_out_fraction, seed=p.seed)
            train += detector_rows(tr)
            held += detector_rows(he)
            hashes[p.data] = sha
        if p.labelled is not None:
            rows, sha = _read_labelled(p.labelled)
            tr_rows, he_rows = split_by_request(rows, held_out_fraction=p.held_out_fraction, seed=p.seed)
            train += tr_rows
            held += he_rows
            hashes[p.labelled] = sha
        return train, held, hashes

    def fit(self, backend: Any, *, log_fn: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError("protector-detector trains no backend: call run(out_dir)")

    def run(self, out_dir: str | Path, *, log_fn: Callable[[str], None] = log.info) -> dict[str, Any]:
        """Train on the training requests, measure on the held-out ones, write the classifier; return its card."""
        import platform

        from mmsafe import __version__
        from mmsafe.judges import harm_model

        p = self.params
        train, held, hashes = self.split_rows()
        rows = train + held
        if not any(r.harmful for r in train) or all(r.harmful for r in train):
            raise ConfigError("protector-detector: the training rows need both harmful and not-harmful responses")
        if not held:
            raise ConfigError("protector-detector: nothing held out (more requests, or a larger held_out_fraction)")
        log_fn(
            f"protector-detector: {len(train)} training rows ({sum(r.harmful for r in train)} harmful), "
            f"{len(held)} held out ({len({r.group for r in held})} of {len({r.group for r in rows})} requests)"
        )
        config = harm_model.HarmNetConfig()

        progress = step_logger("protector-detector", log_fn)

        def fit(part: Sequence[LabelledRow]) -> tuple[Any, Any, dict[str, Any]]:
            return harm_model.train(
                [r.request for r in part], [r.response for r in part], [r.harmful for r in part], config=config,
                epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, seed=p.seed, device=p.device, progress=progress,
            )

        t0 = time.perf_counter()
        net, tok, hist = fit(train)
        probs = harm_model.predict(net, tok, [r.request for r in held], [r.response for r in held], config, device=p.device)
        metrics = _metrics([r.harmful for r in held], probs, p.threshold)
        by_source = {
            s: _metrics([r.harmful for r in held if r.source == s], [q for q, r in zip(probs, held, strict=True) if r.source == s], p.threshold)
            for s in sorted({r.source for r in held})
        }
        log_fn(f"protector-detector held out: accuracy {metrics['accuracy']} (majority {metrics['majority_baseline']})")
        final_rows = train
        if p.refit:
            net, tok, hist = fit(rows)
            final_rows = rows
        card = {
            "method": self.name,
            "method_version": self.version,
            "params": self.spec.params,
            "mmsafe_version": __version__,
            "platform": f"{platform.system()} {platform.machine()}, python {platform.python_version()}",
            "threshold": p.threshold,
            "construct": "harm: the response gives the help a harmful request asks for (a refusal is not harm)",
            "data": {
                "sources": hashes,
                "n_rows": len(rows),
                "n_harmful": sum(r.harmful for r in rows),
                "n_train": len(final_rows),
                "n_held_out": len(held),
                "held_out_split": f"{p.held_out_fraction:g} of the requests, with all their rows (seed {p.seed}; "
                "data: its own split, builtin keeps paraphrases together; labelled: by group)",
                "refit_on_all_rows": p.refit,
            },
            "seed": p.seed,
            "training": {
                "epochs": p.epochs,
                "steps": hist["steps"],
                "loss_per_epoch": [round(x, 4) for x in hist["loss"]],
                "seconds": round(time.perf_counter() - t0, 1),
            },
            "metrics": {"held_out": metrics, "held_out_by_source": by_source},
            "usage": f"mllm-protector detector: {{name: harm, params: {{weights: {Path(out_dir) / DETECTOR_FILE}}}}}",
            "known_failure_modes": [
                "learns what the training rows call harmful: mmsafe's written compliance texts carry no operational "
                "detail, so a real harmful answer in another style is out of distribution",
                f"reads at most {config.max_tokens} tokens (request cut to {config.max_request_tokens})",
                "text only: an image's content reaches it only through the request text",
            ],
        }
        saved = harm_model.save_net(net, Path(out_dir) / DETECTOR_FILE, config=config, card=card)
        log_fn(f"detector written to {Path(out_dir) / DETECTOR_FILE}")
        return saved
