"""``mmsafe annotate RUN``: export a seeded, stratified sample of a run's answers for human annotators.

What is written into the export folder:

* ``annotate.html`` — one self-contained form (built with :func:`mmsafe.report.page.page`, strict CSP, no network):
  per item the image(s), the exact prompt and the answer, as text only, and the scheme's label buttons. Labels
  are kept in the browser's ``localStorage`` under the export id (a reload keeps them) and saved as
  ``labels-<annotator>-<export id>.json``, which ``mmsafe annotate RUN --import`` reads back.
* ``items.csv`` — the same items for spreadsheet annotation (every cell through :func:`csv_cell`), with empty label
  columns, and the images as ``images/<sha256>.<ext>`` for it.
* ``manifest.json`` — export id, run, scheme, seed, n, the item ids with their cells, time and mmsafe version.

**Sampling rule** (deterministic for a given store, scheme filter and seed): the population is every answered
generation (model × benchmark × attack × defense × sample; one item however many judges read it) — a generation
whose records all failed before an answer (load, attack, generate errors) is left out and counted. Cells are
(model, benchmark, attack, defense). With C non-empty cells holding N items and a request for n:

* n ≥ N: every item;
* C ≤ n < N: each cell gets one item, and the other n − C are shared in proportion to what each cell has left
  (N_c − 1), by largest remainder (Hamilton), ties going to the cell first in sorted order;
* n < C: n cells drawn at random (seeded), one item each.

Within a cell the items are drawn with ``random.Random(seed)`` from its sample ids in sorted order, cells taken in
sorted order of their spec keys; the drawn items are then shuffled with the same generator, so the form does not
present them cell by cell.

**Blind by design**: annotators never see any judge's verdict, and by default not the attack or defense names
either (``show_cells=True`` shows them): knowing that an item came from a "jailbreak" cell, or that a defense was
on, sets an expectation that colours the label — the human numbers are only worth comparing with the judges' if
the humans decided from the answer alone.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mmsafe.report.escape import csv_cell
from mmsafe.report.page import esc, page
from mmsafe.report.schemes import SCHEMES, Scheme, get_scheme
from mmsafe.store.sqlite import Store, generation_id
from mmsafe.types import Record

__all__ = ["SCHEMES", "ExportResult", "Population", "allocate", "export_items", "population"]

log = logging.getLogger("mmsafe.report")

#: (model key, benchmark key, attack key, defense key)
CellKey4 = tuple[str, str, str, str]

#: image formats the form shows, by their first bytes (never SVG: it can carry script)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
    (b"BM", "bmp", "image/bmp"),
)


def image_type(data: bytes) -> tuple[str, str] | None:
    """(file extension, MIME type) of an image's bytes, or None for a format the form does not show."""
    for magic, ext, mime in _MAGIC:
        if data.startswith(magic):
            return ext, mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None


@dataclass
class Population:
    """The answered generations of a run, by cell: what the sample is drawn from."""

    #: cell → sample ids (sorted)
    cells: dict[CellKey4, list[str]] = field(default_factory=dict)
    #: cell → (model, benchmark, attack, defense) names
    names: dict[CellKey4, tuple[str, str, str, str]] = field(default_factory=dict)
    #: generations left out because none of their records holds an answer
    excluded_errors: int = 0
    #: generations left out by the ``only_expected`` filter
    excluded_expected: int = 0
    #: every generation id of the run (answered or not): what an imported label may name
    all_ids: set[str] = field(default_factory=set)


def population(store: Store, *, only_expected: str | None = None) -> Population:
    """The answered generations of ``store`` (slim records, one pass), optionally only those whose sample is
    ``expected`` = ``only_expected`` ("refuse" or "comply")."""
    answered: dict[tuple[CellKey4, str], bool] = {}
    expected: dict[tuple[CellKey4, str], str] = {}
    pop = Population()
    for r in store.iter_records(slim=True, by_cell=True):
        cell = (r.model.key, r.benchmark_spec.key, r.attack.key, r.defense.key)
        key = (cell, r.sample_id)
        pop.names.setdefault(cell, (r.model.name, r.benchmark_spec.name, r.attack.name, r.defense.name))
        ok = r.error is None or r.error_stage == "judge"  # a judge's failure still leaves the answer
        answered[key] = answered.get(key, False) or ok
        expected.setdefault(key, r.expected.value)
    for (cell, sample_id), ok in answered.items():
        pop.all_ids.add(generation_id(*cell, sample_id))
        if not ok:
            pop.excluded_errors += 1
        elif only_expected is not None and expected[(cell, sample_id)] != only_expected:
            pop.excluded_expected += 1
        else:
            pop.cells.setdefault(cell, []).append(sample_id)
    pop.cells = {c: sorted(ids) for c, ids in sorted(pop.cells.items())}
    return pop


def allocate(sizes: dict[CellKey4, int], n: int, rng: random.Random) -> dict[CellKey4, int]:
    """How many items each cell gives to a sample of ``n`` (see the module docstring for the rule)."""
    cells = sorted(c for c, size in sizes.items() if size > 0)
    total = sum(sizes[c] for c in cells)
    if n >= total:
        return {c: sizes[c] for c in cells}
    if n < len(cells):
        chosen = set(rng.sample(cells, n))
        return {c: int(c in chosen) for c in cells}
    rest = n - len(cells)
    spare = total - len(cells)
    quotas = {c: rest * (sizes[c] - 1) / spare for c in cells}
    alloc = {c: 1 + int(q) for c, q in quotas.items()}
    left = n - sum(alloc.values())
    by_remainder = sorted(cells, key=lambda c: (-(quotas[c] - int(quotas[c])), cells.index(c)))
    for c in by_remainder[:left]:
        alloc[c] += 1
    return alloc


@dataclass
class ExportResult:
    """What :func:`export_items` wrote."""

    export_id: str
    out: Path
    items: list[dict[str, Any]]
    allocation: dict[CellKey4, int]
    excluded_errors: int
    excluded_expected: int
    files: dict[str, Path]


def _prompt_parts(record: Record) -> list[dict[str, Any]]:
    """The prompt's turns as ``{role, parts: [{type: text, text} | {type: image, sha256}]}``."""
    out = []
    for m in (record.prompt or {}).get("messages") or []:
        parts = []
        for p in m.get("content") or []:
            if p.get("type") == "text":
                parts.append({"type": "text", "text": str(p.get("text", ""))})
            elif p.get("type") == "image":
                parts.append({"type": "image", "sha256": str((p.get("image") or {}).get("sha256", ""))})
        out.append({"role": str(m.get("role", "user")), "parts": parts})
    return out


def export_items(
    store: Store,
    out: str | Path,
    *,
    n: int = 100,
    seed: int = 0,
    scheme: str = "harmful",
    only_expected: str | None = None,
    show_cells: bool = False,
) -> ExportResult:
    """Draw the sample (module docstring) and write ``annotate.html``, ``items.csv``, ``images/`` and
    ``manifest.json`` into ``out``."""
    from mmsafe import __version__

    sch = get_scheme(scheme)
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if only_expected not in (None, "refuse", "comply"):
        raise ValueError(f"only_expected must be refuse or comply, got {only_expected!r}")
    pop = population(store, only_expected=only_expected)
    if not pop.cells:
        raise ValueError(
            f"nothing to annotate in {store.path}: no answered generation"
            + (f" with expected={only_expected}" if only_expected else "")
        )
    rng = random.Random(seed)
    alloc = allocate({c: len(ids) for c, ids in pop.cells.items()}, n, rng)
    chosen: dict[str, tuple[CellKey4, str]] = {}
    for cell, ids in pop.cells.items():
        for sample_id in sorted(rng.sample(ids, alloc.get(cell, 0))):
            chosen[generation_id(*cell, sample_id)] = (cell, sample_id)
    records = _answers(store, chosen)
    items: list[dict[str, Any]] = []
    for item_id, (cell, sample_id) in chosen.items():
        r = records.get(item_id)
        if r is None:  # counted as answered from its slim record, but no record holds the answer text
            pop.excluded_errors += 1
            continue
        names = pop.names[cell]
        items.append(
            {
                "id": item_id,
                "sample_id": sample_id,
                "expected": r.expected.value,
                "category": r.category,
                "cell": {"model": names[0], "benchmark": names[1], "attack": names[2], "defense": names[3]},
                "cell_keys": list(cell),
                "prompt": _prompt_parts(r),
                "response": r.response or "",
            }
        )
    # cells interleaved: an annotator cannot tell a cell from the order, nor tire on one cell
    rng.shuffle(items)
    runs = [str(x.get("name")) for x in store.runs()]
    ident = hashlib.sha256(
        json.dumps([runs, sch.name, seed, n, only_expected, [i["id"] for i in items]]).encode()
    ).hexdigest()[:12]
    dest = Path(out)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    images = _write_images(store, items, dest / "images")
    files = {
        "form": dest / "annotate.html",
        "csv": dest / "items.csv",
        "manifest": dest / "manifest.json",
    }
    files["form"].write_text(
        render_form(ident, sch, items, images, show_cells=show_cells, runs=runs), encoding="utf-8"
    )
    _write_csv(files["csv"], sch, items, images)
    manifest = {
        "export_id": ident,
        "runs": runs,
        "store": str(store.path),
        "scheme": sch.name,
        "seed": seed,
        "n": n,
        "n_items": len(items),
        "only_expected": only_expected,
        "show_cells": show_cells,
        "excluded_errors": pop.excluded_errors,
        "excluded_expected": pop.excluded_expected,
        "allocation_rule": "one per non-empty cell, the rest in proportion to N_c - 1 by largest remainder; "
        "n < cells: n cells drawn, one item each",
        "items": [
            {"id": i["id"], "sample_id": i["sample_id"], "expected": i["expected"], **i["cell"]}
            for i in items
        ],
        "created": time.time(),
        "mmsafe_version": __version__,
    }
    files["manifest"].write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return ExportResult(ident, dest, items, alloc, pop.excluded_errors, pop.excluded_expected, files)


def _answers(store: Store, chosen: dict[str, tuple[CellKey4, str]]) -> dict[str, Record]:
    """For each chosen generation id, one of its records that holds the answer (a second, full pass)."""
    out: dict[str, Record] = {}
    for r in store.iter_records(by_cell=True):
        if r.response is None or (r.error is not None and r.error_stage != "judge"):
            continue
        gid = generation_id(r.model.key, r.benchmark_spec.key, r.attack.key, r.defense.key, r.sample_id)
        if gid in chosen:
            out.setdefault(gid, r)
    return out


#: thumbnails are at most this many pixels on their longer side
THUMB_PX = 320
#: an image larger than this is not embedded at full size (the thumbnail is; the file is in ``images/``)
FULL_BYTES = 1_500_000


def _thumbnail(data: bytes) -> str | None:
    """A PNG thumbnail (≤ :data:`THUMB_PX` px) of an image as a ``data:`` URI, or None when it cannot be decoded
    (broken bytes, or more pixels than :meth:`Image.to_pil` agrees to decode)."""
    import io

    from mmsafe.types import Image

    try:
        pil = Image.from_bytes(data).to_pil("RGB")
    except ValueError:
        return None
    pil.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _write_images(store: Store, items: list[dict[str, Any]], folder: Path) -> dict[str, dict[str, str]]:
    """Write each image the items show as ``folder/<sha256>.<ext>``; sha256 → ``{file, thumb, full}``: the file
    name ("" when the image is missing or in a format the form does not show), a thumbnail ``data:`` URI and the
    full image as a ``data:image/…`` URI when it is at most :data:`FULL_BYTES` (else "")."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        for turn in item["prompt"]:
            for part in turn["parts"]:
                sha = part.get("sha256")
                if part["type"] != "image" or not sha or sha in out:
                    continue
                img = store.get_image(sha)
                kind = image_type(img.data) if img is not None else None
                if img is None or kind is None:
                    out[sha] = {"file": "", "thumb": "", "full": ""}
                    continue
                name = f"{img.sha256}.{kind[0]}"
                (folder / name).write_bytes(img.data)
                full = f"data:{kind[1]};base64,{base64.b64encode(img.data).decode()}"
                small = len(img.data) <= FULL_BYTES
                out[sha] = {
                    "file": name,
                    "thumb": _thumbnail(img.data) or (full if small else ""),
                    "full": full if small else "",
                }
    return out


def _prompt_text(item: dict[str, Any]) -> str:
    """The prompt's text for the CSV: a lone user turn as it is, else every turn after its ``[role]``."""
    turns = []
    for turn in item["prompt"]:
        text = "\n".join(p["text"] for p in turn["parts"] if p["type"] == "text")
        turns.append(
            text if turn["role"] == "user" and len(item["prompt"]) == 1 else f"[{turn['role']}] {text}"
        )
    return "\n\n".join(turns)


def _write_csv(
    path: Path, sch: Scheme, items: list[dict[str, Any]], images: dict[str, dict[str, str]]
) -> None:
    """``items.csv``: id, scheme, prompt, response, image files, then the empty label columns, note, annotator."""
    label_cols = list(sch.field_names)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "scheme", "prompt", "response", "images", *label_cols, "note", "annotator"])
        for item in items:
            files = [
                images.get(p["sha256"], {}).get("file") or f"(not exported: {p['sha256'][:12]})"
                for turn in item["prompt"]
                for p in turn["parts"]
                if p["type"] == "image"
            ]
            row = [item["id"], sch.name, _prompt_text(item), item["response"], " ".join(files)]
            w.writerow([csv_cell(c) for c in row] + [""] * (len(label_cols) + 2))


def _asset(name: str) -> str:
    return (resources.files("mmsafe.report") / "assets" / name).read_text(encoding="utf-8")


def render_form(
    export_id: str,
    sch: Scheme,
    items: list[dict[str, Any]],
    images: dict[str, dict[str, str]],
    *,
    show_cells: bool,
    runs: list[str],
) -> str:
    """``annotate.html``: the instructions as trusted markup (escaped constants), the items as a JSON block the
    form's script renders with ``textContent`` only."""
    guide = []
    for f in sch.fields:
        rows = "".join(
            f"<li><b>{esc(lab)}</b>: {esc(meaning)} <span class=ex>e.g. {esc(ex)}</span></li>"
            for lab, meaning, ex in zip(f.labels, f.meanings, f.examples, strict=True)
        )
        guide.append(f"<h3>{esc(f.question)}</h3><ul>{rows}</ul>")
    body = (
        f"<header><h1>{esc(sch.title)}</h1>"
        f"<p class=meta>Export <code>{esc(export_id)}</code> of run {esc(', '.join(runs) or '?')}: "
        f"{len(items)} items, scheme <code>{esc(sch.name)}</code>.</p>"
        f"<details open><summary>Instructions</summary><p>{esc(sch.instructions)}</p>{''.join(guide)}"
        "<p>Your labels stay in this browser (they survive a reload) until you press <b>Save labels</b>, which "
        "downloads a file to send back. <b>Load labels</b> continues from a saved file.</p></details>"
        "<div class=bar><label>Your name <input id=annotator autocomplete=off maxlength=100></label>"
        "<span id=progress></span><button id=save type=button>Save labels</button>"
        '<label class=load>Load labels <input id=load type=file accept=".json,application/json"></label>'
        "<span id=status></span></div></header>"
        '<main id=items></main><div id=viewer class=hidden><img id=viewer-img alt=""><p id=viewer-note></p></div>'
    )
    data = {
        "export": export_id,
        "scheme": sch.as_dict(),
        "show_cells": show_cells,
        "items": [
            {k: item[k] for k in ("id", "prompt", "response")}
            | ({"cell": item["cell"]} if show_cells else {})
            for item in items
        ],
        "images": {sha: {k: v[k] for k in ("file", "thumb", "full")} for sha, v in images.items()},
    }
    return page(
        f"mmsafe annotate: {sch.title}",
        body,
        css=_asset("annotate.css"),
        scripts=[_asset("annotate.js")],
        data={"annotate-data": data},
    )
