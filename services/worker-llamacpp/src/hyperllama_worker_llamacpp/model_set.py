"""The models this worker holds: those its configuration names (pinned) and those the scheduler
loads on demand from the model store, each with its batch engine and embedder, and what each takes
of the worker's memory budget.

A model's footprint is counted before it loads (weights + its slots' KV cache + the prompt cache
+ buffers): a load that does not fit is refused with InsufficientMemory, never attempted, so the
worker is never killed for memory. Which idle model to unload to make room is the scheduler's call
(it knows which models have streams on the way); this set only refuses to unload a busy one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InsufficientMemory, InvalidRequest, ModelInUse, ModelNotFound
from hyperllama_common.model_source import ModelSource
from hyperllama_common.worker_metrics import WorkerMetrics

from hyperllama_worker_llamacpp.batch_engine import BatchEngine
from hyperllama_worker_llamacpp.embedding import Embedder
from hyperllama_worker_llamacpp.model import LoadedModel
from hyperllama_worker_llamacpp.registry import ModelSpec
from hyperllama_worker_llamacpp.settings import WorkerSettings

log = logging.getLogger(__name__)

# Compute buffers and the model's own small context, besides weights, KV cache and prompt cache.
BUFFER_BYTES = 64 * 2**20


class ModelSet:
    def __init__(
        self,
        settings: WorkerSettings,
        threads: int,
        metrics: WorkerMetrics,
        budget_bytes: int,
        source: ModelSource | None,
    ):
        self.settings = settings
        self.threads = threads
        self.metrics = metrics
        self.budget_bytes = budget_bytes
        self.source = source
        self.engines: dict[str, BatchEngine] = {}
        self.embedders: dict[str, Embedder] = {}
        self.footprints: dict[str, int] = {}
        self.loading: dict[str, worker_pb2.ModelInfo] = {}
        self._lock = asyncio.Lock()  # one load at a time: two would both count the same free memory
        self._failure_listeners: list[Callable[[], None]] = []
        # Called when a load starts or ends and after an unload, so the scheduler hears of it at once.
        self.on_change: Callable[[], None] = lambda: None

    @property
    def kv_tokens(self) -> int:
        return self.settings.slots * self.settings.num_ctx

    @property
    def overhead_bytes(self) -> int:
        return self.settings.prompt_cache_mb * 2**20 + BUFFER_BYTES

    def footprint(self, weights_bytes: int, kv_bytes_per_token: int) -> int:
        return weights_bytes + kv_bytes_per_token * self.kv_tokens + self.overhead_bytes

    @property
    def used_bytes(self) -> int:
        return sum(self.footprints.values()) + sum(m.memory_bytes for m in self.loading.values())

    def add_failure_listener(self, listener: Callable[[], None]) -> None:
        """``listener`` runs when the decode loop of any model, loaded now or later, dies."""
        self._failure_listeners.append(listener)
        for engine in self.engines.values():
            engine.add_failure_listener(listener)

    def _check_fits(self, name: str, needed: int) -> None:
        free = self.budget_bytes - self.used_bytes
        if needed > free:
            raise InsufficientMemory(
                f"model '{name}' needs {needed / 2**20:.0f} MiB but this worker has "
                f"{max(0, free) / 2**20:.0f} MiB of its {self.budget_bytes / 2**20:.0f} MiB budget free",
                retry_after=1,
            )

    async def add(self, spec: ModelSpec) -> None:
        """Load ``spec``'s weights and start serving it (loads run one at a time)."""
        async with self._lock:
            await self._add(spec, spec.path.stat().st_size)

    async def _add(self, spec: ModelSpec, weights_bytes: int) -> None:
        model = await asyncio.to_thread(LoadedModel, spec, self.settings.num_ctx, self.threads)
        footprint = self.footprint(weights_bytes, model.kv_bytes_per_token)
        model.info.pinned = spec.pinned
        model.info.memory_bytes = footprint
        engine = BatchEngine(
            model,
            self.settings.slots,
            self.settings.batch_tokens,
            self.threads,
            self.metrics.for_model(spec.name),
            asyncio.get_running_loop(),
            self.settings.prompt_cache_mb * 2**20,
        )
        for listener in self._failure_listeners:
            engine.add_failure_listener(listener)
        self.embedders[spec.name] = Embedder(
            model,
            self.settings.embed_num_ctx or self.settings.num_ctx,
            self.threads,
            self.settings.embed_queue_max,
        )
        self.footprints[spec.name] = footprint
        self.engines[spec.name] = engine  # last: from here on requests reach it

    async def load(self, name: str, digest: str) -> float:
        """Load a model from the store (fetching its blobs first); returns the seconds it took."""
        if self.source is None:
            raise InvalidRequest("this worker has no model store to load from")
        started = time.monotonic()
        async with self._lock:
            if name in self.engines:
                return 0.0
            described = await self.source.describe(name, digest)
            if described.get("details", {}).get("format", "gguf") != "gguf":
                raise InvalidRequest(f"model '{name}' is not GGUF; the llama.cpp engine cannot load it")
            kv_per_token = int(described.get("kv_bytes_per_token") or 0)
            needed = self.footprint(int(described.get("size") or 0), kv_per_token)
            self._check_fits(name, needed)
            self.loading[name] = worker_pb2.ModelInfo(name=name, format="gguf", memory_bytes=needed)
            self.on_change()
            try:
                fetched = await self.source.fetch(name, info=described)
                spec = ModelSpec(
                    name=name,
                    path=fetched.path,
                    options=dict(fetched.parameters),
                    system=fetched.system or "",
                    go_template=(fetched.template or "") if fetched.template_from_layer else "",
                    digest="sha256:" + fetched.digest.removeprefix("sha256:"),
                    pinned=False,
                )
                await self._add(spec, fetched.size)
            finally:
                self.loading.pop(name, None)
                self.on_change()
        seconds = time.monotonic() - started
        log.info("loaded %s on demand in %.2fs", name, seconds)
        return seconds

    async def unload(self, name: str, admitted: int) -> None:
        """Stop serving ``name`` and free its memory; ``admitted``: the streams the servicer counts."""
        if name in self.loading:
            raise ModelInUse(f"model '{name}' is still loading here")
        engine = self.engines.get(name)
        if engine is None:
            raise ModelNotFound(f"model '{name}' is not loaded on this worker")
        if admitted or engine.in_use:
            raise ModelInUse(f"model '{name}' is serving {max(admitted, engine.in_use)} streams")
        async with self._lock:
            if self.engines.get(name) is not engine:
                return
            del self.engines[name]  # first: no new request reaches it
            embedder = self.embedders.pop(name)
            self.footprints.pop(name, None)
            await asyncio.to_thread(_close, engine, embedder)
        self.on_change()
        log.info("unloaded %s", name)

    def close(self) -> None:
        for name, engine in list(self.engines.items()):
            _close(engine, self.embedders[name])


def _close(engine: BatchEngine, embedder: Embedder) -> None:
    engine.close()
    embedder.close()
    engine.model.llm.close()  # the weights' mapping and the model's own context
