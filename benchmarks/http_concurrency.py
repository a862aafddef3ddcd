"""Requests/s of the OpenAI-compatible backend at concurrency 1, 8 and 32, next to the server's own limit.

For each server it sends the same N equal-size chat requests (greedy, fixed ``max_tokens``) through
:class:`~mmsafe.models.openai.OpenAICompatModel` at each concurrency, then the same requests
with a bare ``aiohttp`` client (the backend's own library) at the same concurrency (no mmsafe: no
message conversion, retries or result objects). Rows print side by side: mmsafe req/s, its ratio to concurrency 1, raw req/s and
mmsafe/raw (the backend's overhead; ~1.0 means the server is the limit). Each cell is the best of
``--repeat`` interleaved runs, after a warm-up at every concurrency.

By default it starts two local ``transformers serve`` servers (127.0.0.1, free ports, offline):

- ``llava``: the tiny random LLaVA with a 32×32 image per request. transformers serve answers one
  request at a time for it, so concurrency cannot raise throughput: this shows the overhead only.
- ``llama-cb``: a tiny random Llama text model with ``--continuous-batching``, which batches
  concurrent requests: this shows what concurrency buys against a server that can use it.

    python benchmarks/http_concurrency.py                       # both local servers, N=128
    python benchmarks/http_concurrency.py --servers llava --n 64
    python benchmarks/http_concurrency.py --base-url http://127.0.0.1:8000/v1 --model my-model --n 128
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image as PILImage

from mmsafe.models.openai import OpenAICompatModel
from mmsafe.types import Generation, Image, Message, Prompt

TEXT_CHAT_TEMPLATE = (
    "{%- for m in messages -%}<|{{ m['role'] }}|>{{ '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for p in m['content'] -%}{%- if p['type'] == 'text' -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ '\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ '\\n' }}{%- endif -%}"
)


# -- local servers -------------------------------------------------------------------------------------
def build_text_llama(dest: Path, tokenizer_json: Path) -> Path:
    """A tiny random Llama (2 layers, width 64) with the tiny LLaVA's tokenizer and a text chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = TEXT_CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``transformers serve`` on 127.0.0.1 in its own process group; ended by pid on exit."""

    def __init__(
        self, model_dir: Path, *, extra_args: tuple[str, ...] = (), log_path: Path, threads: int = 1
    ) -> None:
        self.model_dir = model_dir
        self.port = free_port()
        exe = Path(sys.executable).with_name("transformers")
        cmd = [str(exe) if exe.exists() else "transformers", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), *extra_args, str(model_dir)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        # a tiny model gains nothing from intra-op threads, and on a busy machine they cost 10-20x
        env["OMP_NUM_THREADS"] = str(threads)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text(errors='replace')[-1500:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# -- workload ------------------------------------------------------------------------------------------
def make_prompts(n: int, *, images: bool) -> list[Prompt]:
    """N requests of identical size: same-length text, same-size image (distinct content)."""
    prompts = []
    for i in range(n):
        text = f"Request {i:05d}: describe what you see and answer briefly."
        imgs = []
        if images:
            buf = io.BytesIO()
            PILImage.new("RGB", (32, 32), ((37 * i) % 256, (91 * i) % 256, 128)).save(buf, format="PNG")
            imgs = [Image.from_bytes(buf.getvalue())]
        prompts.append(Prompt(messages=(Message.user(text, imgs),)))
    return prompts


def via_mmsafe(base_url: str, model: str | None, prompts: list[Prompt], conc: int, max_tokens: int) -> float:
    m = OpenAICompatModel(
        base_url=base_url,
        model=model,
        concurrency=conc,
        max_retries=0,
        generation={"max_new_tokens": max_tokens},
    )
    m.load()
    t0 = time.perf_counter()
    res = m.generate(prompts, seeds=[0] * len(prompts))
    dt = time.perf_counter() - t0
    errors = [r for r in res if not isinstance(r, Generation)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(prompts)} requests failed; first: {errors[0]}")
    m.close()
    return len(prompts) / dt


def via_raw(bodies: list[dict[str, Any]], base_url: str, conc: int) -> float:
    """Req/s of a bare ``aiohttp`` client (the backend's own HTTP library) at ``conc`` in flight."""
    import aiohttp

    async def main() -> float:
        sem = asyncio.Semaphore(conc)
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=conc), timeout=timeout
        ) as client:

            async def one(body: dict[str, Any]) -> None:
                async with sem:
                    async with client.post(f"{base_url}/chat/completions", json=body) as r:
                        r.raise_for_status()
                        await r.read()

            t0 = time.perf_counter()
            await asyncio.gather(*(one(b) for b in bodies))
            return len(bodies) / (time.perf_counter() - t0)

    return asyncio.run(main())


def bench_server(
    label: str, base_url: str, model: str | None, *, images: bool, args: argparse.Namespace
) -> None:
    prompts = make_prompts(args.n, images=images)
    builder = OpenAICompatModel(
        base_url=base_url, model=model, generation={"max_new_tokens": args.max_tokens}
    )
    bodies = [builder.build_body(p, seed=0) for p in prompts]  # prebuilt: the raw client does no conversion
    # warm-up at every level: a continuous-batching server is slow on its first batches of each size
    for conc in args.concurrency:
        via_raw(bodies[: max(4, 2 * conc)], base_url, conc)
    print(
        f"\n{label}: {base_url}  N={args.n}  max_tokens={args.max_tokens}  images={'yes' if images else 'no'}"
    )
    print(
        f"{'concurrency':>11} {'mmsafe req/s':>13} {'vs c=1':>7} {'raw req/s':>10} {'raw vs c=1':>10} {'mmsafe/raw':>10}"
    )
    base = raw_base = None
    for conc in args.concurrency:
        rps = raw = 0.0
        for _ in range(args.repeat):  # interleaved, best of each: a busy machine only slows things down
            rps = max(rps, via_mmsafe(base_url, model, prompts, conc, args.max_tokens))
            raw = max(raw, via_raw(bodies, base_url, conc))
        base = base or rps
        raw_base = raw_base or raw
        print(
            f"{conc:>11} {rps:>13.1f} {rps / base:>6.2f}x {raw:>10.1f} {raw / raw_base:>9.2f}x {rps / raw:>10.2f}",
            flush=True,
        )
    top = max(args.concurrency) * 2
    limit = max(via_raw(bodies, base_url, top) for _ in range(args.repeat))
    print(f"server's own limit (raw aiohttp, concurrency {top}): {limit:.1f} req/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="an already running endpoint (…/v1); skips the local servers")
    ap.add_argument("--model", help="model name to send with --base-url")
    ap.add_argument("--images", action="store_true", help="with --base-url: send one image per request")
    ap.add_argument("--servers", default="llava,llama-cb", help="local servers to start: llava, llama-cb")
    ap.add_argument("--n", type=int, default=128, help="requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2, help="measurements per cell (the best is kept)")
    ap.add_argument("--server-threads", type=int, default=1, help="OMP_NUM_THREADS of local servers")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    args = ap.parse_args()
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"aiohttp {importlib.metadata.version('aiohttp')}"
    )

    if args.base_url:
        bench_server("endpoint", args.base_url.rstrip("/"), args.model, images=args.images, args=args)
        return

    from mmsafe.models.tiny_llava import build_tiny_llava

    with tempfile.TemporaryDirectory(prefix="mmsafe-http-bench-") as tmp:
        root = Path(tmp)
        llava = build_tiny_llava(root / "tiny-llava")
        wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
        for name in wanted:
            if name == "llava":
                server = LocalServer(llava, log_path=root / "llava.log", threads=args.server_threads)
                images = True
            elif name == "llama-cb":
                llama = build_text_llama(root / "tiny-llama", llava / "tokenizer.json")
                server = LocalServer(
                    llama, extra_args=("--continuous-batching",), log_path=root / "llama.log"
                )
                images = False
            else:
                raise SystemExit(f"unknown server {name!r}; choose from llava, llama-cb")
            try:
                t0 = time.perf_counter()
                server.wait()
                print(f"\n[{name}] transformers serve ready in {time.perf_counter() - t0:.1f} s")
                # the request's model must equal the preloaded path (or be omitted)
                bench_server(name, server.base_url, str(server.model_dir), images=images, args=args)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
