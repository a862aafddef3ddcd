"""Synthetic run stores for the sample-browser tests: records written with ``Store.put_records`` as the runner
writes them (specs, prompt fingerprint with images by hash, response, verdict), so a test can have 1,050 items
or a category holding markup without running a model."""

from __future__ import annotations

import io
from pathlib import Path

from mmsafe.store.sqlite import Store
from mmsafe.types import ComponentSpec, Expected, Image, Judgement, Record


def png(text: str, size: tuple[int, int] = (200, 120)) -> Image:
    """A small PNG with ``text`` on it."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    img = PILImage.new("RGB", size, "white")
    ImageDraw.Draw(img).text((8, 8), text, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return Image.from_bytes(buf.getvalue(), source=text)


def spec(kind: str, name: str, **params: object) -> ComponentSpec:
    return ComponentSpec(kind=kind, name=name, params=dict(params), version="1")


def record(
    *,
    model: ComponentSpec,
    attack: ComponentSpec,
    defense: ComponentSpec,
    judge: ComponentSpec,
    sample_id: str,
    category: str = "cat",
    expected: str = "refuse",
    text: str = "question",
    images: tuple[Image, ...] = (),
    response: str | None = "answer",
    judgement: Judgement | None = None,
    error: str | None = None,
    error_stage: str | None = None,
    benchmark: ComponentSpec | None = None,
    attack_metadata: dict[str, object] | None = None,
) -> Record:
    bench = benchmark or spec("benchmark", "synthetic")
    content: list[dict[str, object]] = [
        {"type": "image", "image": {"sha256": i.sha256, "source": i.source}} for i in images
    ]
    content.append({"type": "text", "text": text})
    key = "|".join((model.key, bench.key, attack.key, defense.key, judge.key, sample_id))
    return Record(
        key=key,
        run="synthetic",
        sample_id=sample_id,
        benchmark=bench.name,
        category=category,
        expected=Expected(expected),
        model=model,
        benchmark_spec=bench,
        attack=attack,
        defense=defense,
        judge=judge,
        prompt={"messages": [{"role": "user", "content": content}], "attack_metadata": attack_metadata or {}},
        image_hashes=tuple(i.sha256 for i in images),
        response=None if error_stage else response,
        judgement=None
        if error_stage
        else (judgement or Judgement(success=True, refused=False, label="comply")),
        error=error,
        error_stage=error_stage,
    )


def grid_store(path: Path, *, n_samples: int, attacks: tuple[str, ...] = ("none", "typo")) -> Store:
    """A store of 1 model × ``attacks`` × 1 defense × ``n_samples`` samples, judged by two judges: ``rule``
    (success on even samples) and ``other`` (refused on multiples of 3). Samples of the ``typo`` attack carry one
    of five images. Returned open (read-write); the caller closes it."""
    store = Store(path)
    m, d = spec("model", "m"), spec("defense", "none")
    judges = (spec("judge", "rule"), spec("judge", "other"))
    imgs = [png(f"image {i}") for i in range(5)]
    recs = []
    for a in attacks:
        att = spec("attack", a)
        for n in range(n_samples):
            for j in judges:
                verdict = (
                    Judgement(success=n % 2 == 0, refused=None, label="x", rationale=f"rule on {n}")
                    if j.name == "rule"
                    else Judgement(success=None, refused=n % 3 == 0, score=n / n_samples, rationale="other")
                )
                recs.append(
                    record(
                        model=m,
                        attack=att,
                        defense=d,
                        judge=j,
                        sample_id=f"s{n:05d}",
                        category=f"c{n % 4}",
                        expected="refuse" if n % 5 else "comply",
                        text=f"question {n} about topic {n % 7}",
                        images=(imgs[n % 5],) if a == "typo" else (),
                        response=f"answer {n} ({a})",
                        judgement=verdict,
                    )
                )
    store.put_records(recs, imgs)
    return store
