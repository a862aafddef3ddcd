"""llama.cpp's server in a child process of its own, for :class:`~mmsafe.models.llamacpp.LlamaCppModel`.

Why a child process: llama.cpp (ggml) runs its threads on OpenMP and keeps them spinning between the graph's
operations; once PyTorch has run its own OpenMP pool in the same process (a transformers judge, a white-box
attack), llama.cpp there lost a third of its speed on this machine (58.6 -> 36.7 tok/s, Gemma-3-270M Q4_K_M, 2
threads on 2 cores; ``OMP_WAIT_POLICY=PASSIVE`` made it slow from the start). In a process of its own it keeps
its speed whatever the parent computes (51.9 -> 55.2 tok/s over the same PyTorch work). A crash inside llama.cpp
(a malformed GGUF that passes the header check, an out-of-memory) also ends the child only: the model's items fail
with a clear error and the run goes on.

The child is started with ``spawn`` (no copy of the parent's threads, locks or PyTorch state), imports only this
module and the binding, starts the embedded server on 127.0.0.1 with the API key it is given through the spawn
pipe (never argv or the environment, never logged), sends back its address or why it could not load, and stops
when its parent does (it watches its parent's pid) or when :meth:`LlamaServer.close` ends it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["LlamaServer", "ServerOptions", "ServerStartError"]

#: how long a child may take to load its model before the start is given up (a 4 GB GGUF from a slow disk)
START_TIMEOUT_S = 600.0


class ServerStartError(RuntimeError):
    """llama.cpp could not start on the file (its own message), or the child died before it said."""


@dataclass(frozen=True)
class ServerOptions:
    """What the child's server is started with (plain values: they cross the spawn pipe)."""

    model_path: str
    n_ctx: int
    n_threads: int
    api_key: str


def _serve(options: ServerOptions, conn: Any, parent: int) -> None:  # pragma: no cover - runs in the child
    """The child: start the server, say where it listens (or why not), then wait for the parent to go."""
    try:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = options.model_path
        params.n_ctx = options.n_ctx
        params.n_parallel = 1  # one slot: one sequence at a time (see LlamaCppModel)
        params.cpuparams.n_threads = options.n_threads
        params.cpuparams_batch.n_threads = options.n_threads
        params.warmup = False
        params.verbosity = -1  # llama.cpp's own log lines off; the parent logs what matters
        params.hostnames = ["127.0.0.1"]
        params.api_keys = [options.api_key]
        server = xllamacpp.Server(params)
        conn.send(("ok", str(server.listening_address).rstrip("/")))
    except BaseException as exc:  # everything goes back to the parent as text
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.close()
    while os.getppid() == parent:  # the parent gone (even SIGKILLed): this process is re-parented, so it ends
        time.sleep(0.5)
    del server


class LlamaServer:
    """A llama.cpp server running in a child process; :attr:`url` is where it listens."""

    def __init__(self, options: ServerOptions, *, timeout_s: float = START_TIMEOUT_S) -> None:
        self._closed = False
        ctx = mp.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_serve, args=(options, send, os.getpid()), name="mmsafe-llama.cpp", daemon=True
        )
        self._process.start()
        send.close()
        try:
            if not recv.poll(timeout_s):
                self.close()
                raise ServerStartError(f"llama.cpp did not start within {timeout_s:.0f} s")
            try:
                status, value = recv.recv()
            except EOFError:
                self._process.join(5)
                code = self._process.exitcode
                self.close()
                raise ServerStartError(
                    f"llama.cpp's process ended while loading (exit code {code})"
                ) from None
        finally:
            recv.close()
        if status != "ok":
            self.close()
            raise ServerStartError(str(value))
        self.url: str = str(value)

    @property
    def alive(self) -> bool:
        return not self._closed and self._process.is_alive()

    def responds(self, timeout_s: float = 2.0) -> bool:
        """Whether the server answers ``GET /health`` now (a process that died, however it was reaped, does not)."""
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=timeout_s) as resp:
                return 200 <= resp.status < 300
        except (OSError, ValueError):
            return False

    @property
    def exitcode(self) -> int | None:
        return None if self._closed else self._process.exitcode

    def close(self) -> None:
        """Stop the child (at once: it holds nothing to save) and reap it; again: nothing."""
        if self._closed:
            return
        self._closed = True
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(10)
        self._process.close()
