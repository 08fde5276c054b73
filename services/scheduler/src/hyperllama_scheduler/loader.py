"""Model lifecycle across the cluster: load on demand, keep_alive, eviction, extra copies.

A request for a model in the store that no worker serves waits in the model's queue while one
replica loads it: load_placement picks the worker, a Redis key (keys.loading) makes that load the
only one, idle models the worker must give up are marked in Redis first (so no slot of them is
granted while they unload), and the worker fetches the model's blobs from the store and loads it.
Its registration then lists the model and the dispatch pass grants the waiting requests.

keep_alive: each lease carries its request's keep_alive; when the lease ends the copy's expiry is
set from it (keys.EXPIRIES), the last request's value winning as in Ollama. Every replica sweeps the
expiries each second; marking a copy as unloading is atomic, so only one replica unloads it, and
never while a stream uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable

import redis.asyncio as redis
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import (
    HyperLlamaError,
    InsufficientMemory,
    InvalidRequest,
    ModelInUse,
    ModelNotFound,
    Unavailable,
)
from hyperllama_common.worker_client import WorkerClients

from hyperllama_scheduler import keys, load_placement
from hyperllama_scheduler.leases import SlotLeases
from hyperllama_scheduler.load_placement import CatalogModel
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import RequestQueue, redis_errors_as_unavailable
from hyperllama_scheduler.registry import WorkerRegistry
from hyperllama_scheduler.settings import SchedulerSettings
from hyperllama_scheduler.store_catalog import StoreCatalog

log = logging.getLogger(__name__)

# A load that failed for a reason that may pass (no room yet, a worker away) is tried again after
# this; one that cannot succeed (not in the store, a format no worker loads) fails its waiters.
RETRY_MS = 3000
ERROR_MS = 10_000
# How long a copy is marked as unloading at most (a replica that dies mid-unload lets it lapse).
UNLOADING_MS = 60_000
# Sweeps between two prunes of keep_alives left by workers that are gone.
PRUNE_EVERY = 60


def _now_ms() -> int:
    return int(time.time() * 1000)


class ModelLoader:
    def __init__(
        self,
        client: redis.Redis,
        settings: SchedulerSettings,
        registry: WorkerRegistry,
        leases: SlotLeases,
        queue: RequestQueue,
        workers: WorkerClients,
        catalog: StoreCatalog,
        metrics: SchedulerMetrics,
        wake: Callable[[str], None],
    ):
        self._redis = client
        self.settings = settings
        self.registry = registry
        self.leases = leases
        self.queue = queue
        self.workers = workers
        self.catalog = catalog
        self.metrics = metrics
        self.wake = wake
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- keep_alive --------------------------------------------------------------------------

    def keep_alive_for(self, keep_alive_ms: int | None, pinned: bool) -> int:
        """What a request's keep_alive means for a copy, in ms (-1 = forever). None (the request did
        not say) is the cluster's default, except for a model its worker is configured to keep."""
        if keep_alive_ms is not None:
            return max(-1, keep_alive_ms)
        if pinned or self.settings.keep_alive_seconds < 0:
            return -1
        return int(self.settings.keep_alive_seconds * 1000)

    def is_pinned(self, worker_id: str, model: str) -> bool:
        info = self.registry.get(worker_id)
        return bool(info) and any(m.name == model and m.pinned for m in info.models)  # type: ignore[union-attr]

    # ---- loading -----------------------------------------------------------------------------

    async def describe(self, model: str) -> CatalogModel:
        return await self.catalog.describe(model)

    def copies(self, model: str, live: list[worker_pb2.WorkerInfo]) -> list[worker_pb2.WorkerInfo]:
        """Workers that serve the model or are loading it."""
        return [w for w in live if any(m.name == model for m in [*w.models, *w.loading])]

    async def ensure(self, model: str, *, extra: bool = False) -> None:
        """Start loading ``model`` on the best worker unless a copy exists (``extra``: unless one
        more copy is not allowed) or a load of it is under way somewhere."""
        live = await self.registry.live()
        if not live:
            # No worker at all (one restarting, or none started yet): nothing to judge the model
            # against, so its requests wait, under their deadlines, for a worker to register.
            return
        held = self.copies(model, live)
        if held and (not extra or (self.settings.max_copies and len(held) >= self.settings.max_copies)):
            return
        if extra and any(m.name == model for w in held for m in w.loading):
            return
        holders = {w.worker_id for w in held}
        candidates = [w for w in live if w.worker_id not in holders]
        if not candidates and held:
            return  # every worker has a copy already
        if await self._redis.exists(keys.loading(model)):
            return
        try:
            entry = await self.catalog.describe(model)
        except (ModelNotFound, InvalidRequest) as err:
            await self._fail(model, err.message, missing=isinstance(err, ModelNotFound))
            return
        except Unavailable as err:
            log.warning("cannot load %s: %s", model, err.message)
            return
        if not any(load_placement.can_host(entry, w) for w in candidates):
            if not held:
                await self._fail(model, self.no_host_message(entry, live))
            return
        plan = load_placement.plan_load(
            entry, candidates, await self._busy(candidates), await self._last_used(candidates), _now_ms()
        )
        if plan is None:
            return  # every worker that could host it is busy with what it holds: try again later
        if not await self._redis.set(keys.loading(model), plan.worker.worker_id, nx=True, px=self.load_ms):
            return  # another replica is loading it
        task = asyncio.get_running_loop().create_task(self._load(entry, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def load_ms(self) -> int:
        return int(self.settings.load_timeout_seconds * 1000)

    def no_host_message(self, entry: CatalogModel, live: list[worker_pb2.WorkerInfo]) -> str:
        formats = sorted({f for w in live for f in w.formats})
        if entry.format not in formats:
            return (
                f"no worker can load '{entry.name}': its format is '{entry.format}' and the workers "
                f"load {', '.join(formats) or 'nothing on demand'}"
            )
        largest = max((w.memory_budget_bytes for w in live if entry.format in w.formats), default=0)
        sizes = [load_placement.footprint(entry, w) for w in live if entry.format in w.formats]
        return (
            f"model '{entry.name}' needs {min(sizes) / 2**20:.0f} MiB but the largest worker's "
            f"memory budget is {largest / 2**20:.0f} MiB"
        )

    async def _busy(self, workers: list[worker_pb2.WorkerInfo]) -> dict[str, set[str]]:
        """Per worker, its models that streams use or requests wait for, or that are at their floor
        of copies: never evicted."""
        live = await self.registry.live()
        busy: dict[str, set[str]] = {}
        for w in workers:
            names = set()
            for m in w.models:
                used = await self.leases.in_use([w], m.name)
                if used.get(w.worker_id) or await self.queue.depth(m.name) or self._at_floor(m.name, live):
                    names.add(m.name)
            busy[w.worker_id] = names
        return busy

    def _at_floor(self, model: str, live: list[worker_pb2.WorkerInfo]) -> bool:
        floor = self.settings.min_copies.get(model, 0)
        return floor > 0 and len(self.copies(model, live)) <= floor

    async def keep_minimums(self) -> None:
        """Load copies of the models configured with a floor until each has that many."""
        if not self.settings.min_copies:
            return
        live = await self.registry.live()
        for model, floor in self.settings.min_copies.items():
            held = self.copies(model, live)
            if len(held) < floor:
                await self.ensure(model, extra=bool(held))

    async def _last_used(self, workers: list[worker_pb2.WorkerInfo]) -> dict[str, dict[str, int]]:
        return {w.worker_id: await self.leases.last_used(w.worker_id) for w in workers}

    async def _fail(self, model: str, message: str, missing: bool = False) -> None:
        """Waiting requests for the model fail with ``message`` (see error()); ``missing``: the
        store does not have it (a 404 rather than a 400)."""
        log.warning("cannot load %s: %s", model, message)
        value = json.dumps({"missing": missing, "message": message})
        await self._redis.set(keys.load_error(model), value, px=ERROR_MS)

    @redis_errors_as_unavailable
    async def error(self, model: str) -> HyperLlamaError | None:
        """Why the model cannot be loaded, if its last load attempt said so."""
        raw = await self._redis.get(keys.load_error(model))
        if not raw:
            return None
        failure = json.loads(raw)
        kind = ModelNotFound if failure.get("missing") else InvalidRequest
        return kind(str(failure.get("message")), param="model")

    @redis_errors_as_unavailable
    async def found(self, model: str) -> None:
        """The store has the model (again): a "not found" from an earlier load no longer holds."""
        failure = await self.error(model)
        if isinstance(failure, ModelNotFound):
            await self._redis.delete(keys.load_error(model))

    async def _load(self, entry: CatalogModel, plan: load_placement.LoadPlan) -> None:
        worker = plan.worker
        started = time.monotonic()
        loaded = False
        try:
            for victim in plan.evict:
                if not await self._unload(worker, victim, "evicted"):
                    self.metrics.loads.labels("no_room").inc()
                    return  # it became busy meanwhile: the next pass plans again
            info = await self.workers.load(worker.address, entry.name, entry.digest, self.load_ms / 1000)
            await self.registry.heartbeat(info)
            # A copy nobody uses unloads after the default keep_alive, like one whose stream ended,
            # or sooner if an unload was asked for while it loaded.
            await self.leases.set_keep_alive(
                worker.worker_id, entry.name, self.keep_alive_for(None, False), unless_set=True
            )
            await self._redis.delete(keys.load_error(entry.name))
            loaded = True
            self.metrics.loads.labels("ok").inc()
            self.metrics.load_seconds.observe(time.monotonic() - started)
            log.info("loaded %s on %s in %.2fs", entry.name, worker.worker_id, time.monotonic() - started)
        except InsufficientMemory as err:
            self.metrics.loads.labels("no_room").inc()
            log.warning("%s has no room for %s: %s", worker.worker_id, entry.name, err.message)
        except (InvalidRequest, ModelNotFound) as err:
            self.metrics.loads.labels("failed").inc()
            await self._fail(entry.name, err.message, missing=isinstance(err, ModelNotFound))
        except HyperLlamaError as err:
            self.metrics.loads.labels("failed").inc()
            log.warning("loading %s on %s failed: %s", entry.name, worker.worker_id, err.message)
        finally:
            with contextlib.suppress(HyperLlamaError, OSError):
                if loaded:
                    await self._redis.delete(keys.loading(entry.name))
                else:  # try again, elsewhere or later, after a pause
                    await self._redis.pexpire(keys.loading(entry.name), RETRY_MS)
            self.wake(entry.name)

    async def _unload(self, worker: worker_pb2.WorkerInfo, model: str, reason: str) -> bool:
        """Unload one idle copy; False if streams use it (or another replica is unloading it)."""
        if await self.leases.retire(worker.worker_id, model, UNLOADING_MS) != 1:
            return False
        started = time.monotonic()
        try:
            info = await self.workers.unload(worker.address, model)
        except ModelNotFound:
            return True  # gone already
        except ModelInUse:
            return False
        except HyperLlamaError:
            # The worker did not answer: try again at the next sweep but one.
            await self.leases.retry_expiry(worker.worker_id, model, _now_ms() + RETRY_MS)
            raise
        finally:
            await self.leases.retired(worker.worker_id, model)
        await self.registry.heartbeat(info)
        await self.leases.forget_copy(worker.worker_id, model)
        self.metrics.unloads.labels(reason).inc()
        self.metrics.unload_seconds.labels(reason).observe(time.monotonic() - started)
        log.info("unloaded %s from %s (%s)", model, worker.worker_id, reason)
        return True

    # ---- waiting for a load (Ollama's empty generate, embeddings) ----------------------------

    async def wait_loaded(self, model: str, deadline: float) -> list[worker_pb2.WorkerInfo]:
        """The workers serving ``model`` once one does, loading it if needed."""
        while True:
            serving = await self.registry.live_for(model)
            if serving:
                return serving
            failure = await self.error(model)
            if failure:
                raise failure
            await self.ensure(model)
            if time.time() >= deadline:
                raise Unavailable(f"model '{model}' did not load in time", retry_after=1)
            await asyncio.sleep(0.1)
            await self.registry.live(fresh=True)

    # ---- unloading ---------------------------------------------------------------------------

    async def unload_everywhere(self, model: str) -> int:
        """Unload every idle copy now; one that is busy, still loading, or that requests queued
        before this one wait for, unloads when they are served (keep_alive 0 from now on)."""
        done = 0
        waiting = await self.queue.depth(model)
        for w in self.copies(model, await self.registry.live(fresh=True)):
            if not waiting and await self._unload(w, model, "requested"):
                done += 1
            else:
                await self.leases.set_keep_alive(w.worker_id, model, 0)
        return done

    async def sweep_forever(self) -> None:
        """Unload the copies whose keep_alive ran out; every replica runs it."""
        for count in itertools.count():
            await asyncio.sleep(self.settings.sweep_seconds)
            try:
                await self.sweep()
                await self.keep_minimums()
                if count % PRUNE_EVERY == 0:
                    await self.leases.prune_keep_alives({w.worker_id for w in await self.registry.live()})
            except HyperLlamaError as err:
                log.warning("keep_alive sweep failed: %s", err.message)

    async def sweep(self) -> None:
        for worker_id, model in await self.leases.due():
            info = self.registry.get(worker_id)
            if info is not None and any(m.name == model for m in info.loading):
                continue  # unloaded once loaded (a sweep after that finds it due still)
            if info is None or not any(m.name == model for m in info.models):
                await self.leases.forget_copy(worker_id, model)  # the worker or the copy is gone
                continue
            if self._at_floor(model, await self.registry.live()):
                # Kept: the model is at its floor.
                await self.leases.forget_copy(worker_id, model, keep_alive=False)
                continue
            try:
                await self._unload(info, model, "keep_alive")
            except HyperLlamaError as err:
                log.warning("unloading %s from %s failed: %s", model, worker_id, err.message)
