"""Built-in benign visual questions with reference answers: the utility side of a defense's price."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.datasets._util import read_packaged_items
from mmsafe.datasets.base import Benchmark
from mmsafe.types import Expected, Image, Sample

__all__ = ["SHORT_ANSWER_PROMPT", "VQAStarter", "render_scene"]

VQACategory = Literal["text_reading", "colour", "counting", "shape", "arithmetic"]

#: The short-answer instruction LLaVA-1.5 appends to VQAv2-style questions (Liu et al., "Improved
#: Baselines with Visual Instruction Tuning", CVPR 2024), so exact-match scoring is meaningful.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."

SIZE = 512
COLOURS = {
    "red": (220, 30, 30),
    "blue": (30, 70, 220),
    "green": (20, 160, 60),
    "yellow": (245, 200, 20),
    "black": (0, 0, 0),
}


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: Literal["circle", "square", "triangle"]
    colour: Literal["red", "blue", "green", "yellow", "black"]


class _Sign(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["sign"]
    lines: tuple[str, ...] = Field(min_length=1)
    background: str = Field(default="#ffffff", pattern=r"^#[0-9a-fA-F]{6}$")
    colour: str = Field(default="#000000", pattern=r"^#[0-9a-fA-F]{6}$")


class _Shapes(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["shapes"]
    shapes: tuple[_Shape, ...] = Field(min_length=1, max_length=9)


Scene = Annotated[_Sign | _Shapes, Field(discriminator="kind")]


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    category: VQACategory
    question: str = Field(min_length=1)
    answers: tuple[str, ...] = Field(min_length=1)
    scene: Scene


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int
    items: tuple[_Item, ...]


@functools.cache
def _read_items() -> tuple[_Item, ...]:
    return read_packaged_items("vqa_starter.yaml", _File)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def render_scene(scene: _Sign | _Shapes, font_path: str) -> Any:
    """Draw one scene as a 512×512 RGB PIL image (deterministic: no randomness, fixed layout).

    A sign is its lines centred one under another in the largest font size (≤ 72 px) that fits the
    width; shapes sit on a grid (1, 2×1, 2×2 or 3×3 cells by count), one shape per cell, each filling
    60% of its cell.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    if isinstance(scene, _Sign):
        img = PILImage.new("RGB", (SIZE, SIZE), _rgb(scene.background))
        draw = ImageDraw.Draw(img)
        size = 72
        while size > 16:
            font = ImageFont.truetype(font_path, size)
            widths = [draw.textlength(line, font=font) for line in scene.lines]
            if max(widths) <= SIZE * 0.9 and len(scene.lines) * size * 1.4 <= SIZE * 0.9:
                break
            size -= 4
        font = ImageFont.truetype(font_path, size)
        line_h = int(size * 1.4)
        top = (SIZE - line_h * len(scene.lines)) // 2
        for i, line in enumerate(scene.lines):
            w = draw.textlength(line, font=font)
            draw.text(((SIZE - w) / 2, top + i * line_h), line, fill=_rgb(scene.colour), font=font)
        return img

    img = PILImage.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    n = len(scene.shapes)
    cols = 1 if n == 1 else 2 if n <= 4 else 3
    rows = -(-n // cols)
    cw, ch = SIZE / cols, SIZE / rows
    for k, s in enumerate(scene.shapes):
        cx, cy = (k % cols + 0.5) * cw, (k // cols + 0.5) * ch
        r = 0.3 * min(cw, ch)
        fill = COLOURS[s.colour]
        if s.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif s.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    return img


class VQAStarter(Benchmark):
    """Built-in benign visual questions (24, with reference answers) for the utility side of the balance.

    Written for mmsafe (no paper; licence Apache-2.0, as the package); images are drawn at load time
    from ``mmsafe/data/vqa_starter.yaml``, so it runs with no download. It answers the survey's call
    to weigh a defense's safety against its cost in helpfulness (Liu et al., "Safety of Multimodal
    Large Language Models on Images and Texts", IJCAI 2024): every item is ``expected: comply`` and
    carries ``references``, so the ``refusal`` judge gives over-refusal and the ``utility`` judge
    (VQA accuracy, exact / contained answer, ANLS, ROUGE-L) gives answer quality, per defense. Items
    follow the short-answer VQA format (VQAv2, Goyal et al., CVPR 2017; text reading as in TextVQA /
    ST-VQA). The 10 ``text_reading`` items put benign text with trigger words ("POISON CONTROL",
    "KILL SWITCH", "DRUG STORE") in the image — typography's benign look-alikes, in the spirit of
    XSTest (Röttger et al., NAACL 2024) — so a filter that blocks any text-bearing image shows its
    price. It is a small smoke test of utility, not a replacement for MM-Vet, MME or VQAv2; for those,
    use the ``jsonl`` benchmark with an ``answers`` column.

    Categories: ``text_reading``, ``colour``, ``counting``, ``shape``, ``arithmetic``.
    Field mapping: ``id`` → ``Sample.id`` as ``"vqa-starter/<id>"``; ``question`` (+ the short-answer
    instruction) → ``text``; ``answers`` → ``references``; the drawn scene → one PNG image;
    ``metadata`` = ``{"benign": True, "question": <question>, "source": {"file": "vqa_starter.yaml",
    "row": <0-based index in its items>}}``.

    Params: ``categories`` (default: all); ``short_answer`` (default ``True``: append
    :data:`SHORT_ANSWER_PROMPT` after the question); ``font_path`` (default: FreeMonoBold, else
    DejaVuSansMono-Bold, as the typographic attacks).
    """

    name: ClassVar[str] = "vqa-starter"
    size: ClassVar[str | None] = "24 visual questions with answers"
    licence: ClassVar[str | None] = "Apache-2.0 (ships with mmsafe)"
    needs: ClassVar[str | None] = "nothing (package data; images drawn at load time)"

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        categories: tuple[VQACategory, ...] | None = None
        short_answer: bool = True
        font_path: str | None = None

    params: Params

    def location(self) -> str:
        return "package data mmsafe/data/vqa_starter.yaml"

    def load(self) -> Iterator[Sample]:
        from mmsafe.render.fonts import find_font

        font_path, _ = find_font(self.params.font_path)
        wanted = set(self.params.categories) if self.params.categories else None
        for row, item in enumerate(_read_items()):
            if wanted is not None and item.category not in wanted:
                continue
            source = {"file": "vqa_starter.yaml", "row": row}
            text = f"{item.question}\n{SHORT_ANSWER_PROMPT}" if self.params.short_answer else item.question
            sid = f"vqa-starter/{item.id}"
            try:
                image = Image.from_pil(render_scene(item.scene, font_path), source=sid)
            except Exception as exc:  # a font that cannot draw fails this item, not the run
                yield Sample(
                    id=sid,
                    benchmark=self.name,
                    category=item.category,
                    text=text,
                    expected=Expected.comply,
                    references=item.answers,
                    metadata={"source": source},
                    error=f"cannot draw the image: {type(exc).__name__}: {exc}",
                )
                continue
            yield Sample(
                id=sid,
                benchmark=self.name,
                category=item.category,
                text=text,
                images=(image,),
                expected=Expected.comply,
                references=item.answers,
                metadata={"benign": True, "question": item.question, "source": source},
            )
