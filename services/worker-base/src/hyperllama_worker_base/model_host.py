"""The one model an engine worker serves, and how it changes: an engine's server (vLLM, MAX) runs one model
for its whole life, so loading another means stopping the engine child and starting a new one on the new
model's directory, and unloading means stopping it.

A model is either configured (pinned: the worker starts with it) or loaded on demand from the model store,
whose model directory (config.json, safetensors, tokenizer files) is laid out in the worker's cache. A load
is refused while another model is held (the scheduler unloads an idle one first) and when the model and the
engine's own needs do not fit the memory budget. A load whose engine never becomes healthy on its first
start fails with the engine's reason rather than retrying for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import (
    BackendFailed,
    InsufficientMemory,
    InvalidRequest,
    ModelInUse,
    ModelNotFound,
)
from hyperllama_common.model_source import ModelSource

from hyperllama_worker_base.hf_model import (
    chat_template,
    describe_hf_model,
    end_tokens,
    generation_defaults,
    vocab_size,
)
from hyperllama_worker_base.supervisor import EngineSupervisor
from hyperllama_worker_base.tokenizer import HfTokenizer, Tokenizer

log = logging.getLogger(__name__)


class ModelHost:
    def __init__(
        self,
        start_engine: Callable[[Path], EngineSupervisor],
        context_length: int,
        budget_bytes: int,
        engine_bytes: int,
        start_timeout: float,
        source: ModelSource | None,
    ):
        # A supervisor for a new engine child on a model directory (not started yet).
        self._start_engine = start_engine
        self._context_length = context_length
        self.budget_bytes = budget_bytes
        # What the engine takes besides the weights: its runtime and its KV cache.
        self.engine_bytes = engine_bytes
        self._start_timeout = start_timeout
        self.source = source
        self.model: worker_pb2.ModelInfo | None = None
        self.model_dir: Path | None = None
        # Token ids a request may name (prompts, logit_bias) are below this; 0 = unknown.
        self.vocab_size = 0
        self.end_tokens: frozenset[str] = frozenset()  # their logprob entries are left out
        # The model's chat template (to see whether it renders tools), the sampling values of its
        # generation_config.json, and its tokenizer (loading in the background from the start).
        self.chat_template = ""
        self.generation: dict[str, float | int] = {}
        self.tokenizer: Tokenizer | None = None
        self.loading: worker_pb2.ModelInfo | None = None
        # A model from the store brings its SYSTEM and PARAMETERS: the defaults under each request's own.
        self.system = ""
        self.parameters: dict[str, object] = {}
        self.supervisor: EngineSupervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Called when a load starts or ends and after an unload, so the scheduler hears of it at once.
        self.on_change: Callable[[], None] = lambda: None

    @property
    def ready(self) -> bool:
        """Able to serve what it holds: true with no model (it can load one), else while the engine is."""
        return self.supervisor is None or self.supervisor.ready

    @property
    def last_problem(self) -> str:
        return self.supervisor.last_problem if self.supervisor else "no model is loaded"

    @property
    def used_bytes(self) -> int:
        held = self.model.memory_bytes if self.model else 0
        return held + (self.loading.memory_bytes if self.loading else 0)

    def footprint(self, size_bytes: int) -> int:
        return size_bytes + self.engine_bytes

    def serve_configured(self, name: str, directory: Path) -> None:
        """Start the engine on the configured model; it stays until explicitly unloaded."""
        model = describe_hf_model(name, directory, self._context_length)
        model.pinned = True
        model.memory_bytes = self.footprint(model.size_bytes)
        self._run(model, directory)

    def _run(self, model: worker_pb2.ModelInfo, directory: Path) -> None:
        self.supervisor = self._start_engine(directory)
        self._task = asyncio.get_running_loop().create_task(self.supervisor.run(), name="engine-supervisor")
        self.model, self.model_dir = model, directory
        self.vocab_size = vocab_size(directory)
        self.end_tokens = end_tokens(directory)
        self.chat_template = chat_template(directory)
        self.generation = generation_defaults(directory)
        self.tokenizer = HfTokenizer(directory)
        self.tokenizer.warm()

    async def load(self, name: str, digest: str) -> float:
        """Load ``name`` from the store and start the engine on it; the seconds it took."""
        if self.source is None:
            raise InvalidRequest("this worker has no model store to load from")
        started = time.monotonic()
        async with self._lock:
            if self.model is not None and self.model.name == name:
                return 0.0
            if self.model is not None:
                raise InsufficientMemory(
                    f"this worker's engine runs one model at a time and serves '{self.model.name}': "
                    "unload it first",
                    retry_after=1,
                )
            described = await self.source.describe(name, digest)
            fmt = str(described.get("details", {}).get("format") or "")
            if fmt != "safetensors":
                raise InvalidRequest(
                    f"model '{name}' is {fmt or 'of no known format'}; this engine loads model directories "
                    "(safetensors)"
                )
            needed = self.footprint(int(described.get("size") or 0))
            if needed > self.budget_bytes:
                raise InsufficientMemory(
                    f"model '{name}' needs {needed / 2**20:.0f} MiB with the engine but this worker's "
                    f"budget is {self.budget_bytes / 2**20:.0f} MiB"
                )
            self.loading = worker_pb2.ModelInfo(name=name, format=fmt, memory_bytes=needed)
            self.on_change()
            try:
                fetched = await self.source.fetch_directory(name, info=described)
                model = await asyncio.to_thread(
                    describe_hf_model, fetched.name, fetched.path, self._context_length
                )
                model.digest = "sha256:" + fetched.digest
                model.memory_bytes = needed
                self._run(model, fetched.path)
                self.system, self.parameters = fetched.system or "", dict(fetched.parameters)
                await self._first_start()
            except BaseException:
                await self._stop()
                raise
            finally:
                self.loading = None
                self.on_change()
        seconds = time.monotonic() - started
        log.info("loaded %s on demand in %.1fs", name, seconds)
        return seconds

    async def _first_start(self) -> None:
        """Until the new engine is healthy; its first start failing fails the load."""
        supervisor = self.supervisor
        assert supervisor is not None and self._task is not None
        deadline = time.monotonic() + self._start_timeout + 10
        while not supervisor.ready:
            # A second start means the first failed (the supervisor restarts after a pause).
            if supervisor.starts > 1 or self._task.done() or time.monotonic() > deadline:
                raise BackendFailed(f"the engine did not start on the model: {supervisor.last_problem}")
            await asyncio.sleep(0.2)

    async def unload(self, name: str, busy: int) -> None:
        """Stop the engine serving ``name``; ``busy``: the streams that use it now."""
        if self.loading is not None and self.loading.name == name:
            raise ModelInUse(f"model '{name}' is still loading here")
        if self.model is None or self.model.name != name:
            raise ModelNotFound(f"model '{name}' is not loaded on this worker")
        if busy:
            raise ModelInUse(f"model '{name}' is serving {busy} streams")
        async with self._lock:
            if self.model is None or self.model.name != name:
                return
            await self._stop()
        self.on_change()
        log.info("unloaded %s", name)

    async def _stop(self) -> None:
        """Stop the engine child (its supervisor stops it on the way out) and forget the model."""
        task, self._task = self._task, None
        self.model = self.model_dir = None
        self.vocab_size = 0
        self.end_tokens = frozenset()
        self.chat_template, self.generation, self.tokenizer = "", {}, None
        self.supervisor = None
        self.system, self.parameters = "", {}
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        await self._stop()
