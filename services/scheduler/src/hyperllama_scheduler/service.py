"""The scheduler's gRPC services: SchedulerService for the gateway, RegistryService for workers.

The scheduler is the control plane: it admits, queues, places and leases slots; the gateway streams
tokens straight from the worker it was granted. Every piece of state is in Redis, so any replica
serves any call and a replica that dies loses nothing but the calls it was answering, which their
callers repeat on another replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import (
    BackendFailed,
    DeadlineExceeded,
    HyperLlamaError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
    quote,
)
from hyperllama_common.tracing import Tracing
from hyperllama_common.worker_client import WorkerClients, WorkerLost, WorkerUnreachable

from hyperllama_scheduler import load_placement, placement, routing
from hyperllama_scheduler.dispatcher import Dispatcher, Needs
from hyperllama_scheduler.leases import SlotLeases, capacity
from hyperllama_scheduler.loader import ModelLoader
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import RequestQueue, check_tenant
from hyperllama_scheduler.registry import WorkerRegistry
from hyperllama_scheduler.routing import Requirements
from hyperllama_scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)

# How many workers may die under one embedding request before it is deemed the cause and fails.
MAX_CRASHES = 1
# Most leases one Renew call may carry (a gateway holds one per running stream).
MAX_RENEW = 10_000

Outcome = scheduler_pb2.ReleaseOutcome
_SUSPECT_OUTCOMES = (
    Outcome.RELEASE_OUTCOME_NOT_READY,
    Outcome.RELEASE_OUTCOME_UNREACHABLE,
    Outcome.RELEASE_OUTCOME_LOST,
)


def _check_lease(lease: scheduler_pb2.Lease) -> None:
    if not (lease.lease_id and lease.worker_id and lease.model):
        raise InvalidRequest("a lease needs lease_id, worker_id and model", param="lease")


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(
        self,
        settings: SchedulerSettings,
        queue: RequestQueue,
        registry: WorkerRegistry,
        leases: SlotLeases,
        dispatcher: Dispatcher,
        workers: WorkerClients,
        metrics: SchedulerMetrics,
        tracing: Tracing,
        loader: ModelLoader,
    ):
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.queue = queue
        self.registry = registry
        self.leases = leases
        self.dispatcher = dispatcher
        self.workers = workers
        self.loader = loader
        self._exported_models: set[str] = set()
        self._exported_workers: set[str] = set()

    async def _resolve(self, model: str, needs: Requirements) -> tuple[str, list[worker_pb2.WorkerInfo]]:
        """The model's full name and the live workers that meet ``needs`` (capabilities, engine pin).

        As in Ollama, a name without a tag means ``:latest``."""
        live = await self.registry.live()
        if not any(m.name in (model, f"{model}:latest") for w in live for m in w.models):
            # The copy of the registry may be a second old: a worker that registered through another
            # replica since, or a model loaded meanwhile, is in Redis already.
            live = await self.registry.live(fresh=True)
        if not live:
            raise Unavailable("no worker is ready yet; retry shortly", retry_after=1)
        names = {m.name for w in live for m in w.models}
        if model not in names and ":" not in model and f"{model}:latest" in names:
            model = f"{model}:latest"
        serving = [w for w in live if any(m.name == model for m in w.models)]
        if not serving:
            return await self._resolve_in_store(model, needs, live, names)
        if needs.engine:
            engines = sorted({w.engine for w in serving})
            serving = [w for w in serving if w.engine == needs.engine]
            if not serving:
                raise InvalidRequest(
                    f"engine '{quote(needs.engine)}' does not serve model '{model}'; "
                    f"engines serving it: {', '.join(engines)}",
                    param="engine",
                )
        capable = [w for w in serving if needs.accepts(w)]
        if not capable:
            on = f" on engine '{quote(needs.engine)}'" if needs.engine else ""
            raise InvalidRequest(
                f"no worker serving '{model}'{on} supports {needs.missing(serving)}", param="model"
            )
        return model, capable

    async def _resolve_in_store(
        self, model: str, needs: Requirements, live: list[worker_pb2.WorkerInfo], names: set[str]
    ) -> tuple[str, list[worker_pb2.WorkerInfo]]:
        """A model no worker serves: the store's name for it and no workers (it is to be loaded),
        or the workers serving it under that name."""
        try:
            entry = await self.loader.describe(model)
        except (ModelNotFound, Unavailable) as err:
            if isinstance(err, Unavailable):
                log.warning("cannot ask the store about %s: %s", quote(model), err.message)
            raise ModelNotFound(
                f"model '{quote(model)}' not found; available models: {', '.join(sorted(names))}",
                param="model",
            ) from None
        serving = [w for w in live if any(m.name == entry.name for m in w.models) and needs.accepts(w)]
        if serving:
            return entry.name, serving
        await self.loader.found(entry.name)
        if not any(needs.accepts(w) and load_placement.can_host(entry, w) for w in live):
            if not any(needs.accepts(w) for w in live):
                on = f" on engine '{quote(needs.engine)}'" if needs.engine else ""
                raise InvalidRequest(f"no worker{on} supports {needs.missing(live)}", param="model")
            raise Unavailable(self.loader.no_host_message(entry, live), retry_after=1)
        return entry.name, []

    def _deadline(self, deadline_unix_ms: int, context: grpc.aio.ServicerContext) -> float:
        deadline = time.time() + self.settings.default_request_timeout_seconds
        if deadline_unix_ms:
            deadline = min(deadline, deadline_unix_ms / 1000)
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = min(deadline, time.time() + remaining)
        return deadline

    async def Acquire(
        self, request: scheduler_pb2.AcquireRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scheduler_pb2.AcquireEvent]:
        req = request.request
        if not req.request_id:
            raise InvalidRequest("request_id is required", param="request_id")
        check_tenant(request.tenant)
        requirements = routing.for_generate(req, request.engine)
        try:
            model, _ = await self._resolve(req.model, requirements)
        except (Unavailable, ModelNotFound):
            # No live worker serves the model right now. A request that had been placed (its worker
            # failed) or queued (its replica died) before waits for one to come back, under the name
            # it was resolved to then; a new one is refused.
            stored = await self.queue.needs_of(req.request_id)
            if stored:
                model = Needs.decode(stored).model
            elif request.retry:
                model = req.model  # the gateway sends the name its lease carried
            else:
                raise
        prefixes = placement.prefix_hashes(req) if self.dispatcher.prefix_aware else []
        keep_alive = request.keep_alive_ms if request.HasField("keep_alive_ms") else None
        needs = Needs(model, requirements, tuple(prefixes), keep_alive)
        deadline = self._deadline(request.deadline_unix_ms, context)
        if request.retry:
            self.metrics.redispatches.labels(model).inc()
        started = time.monotonic()
        # Started, not made current: a streaming handler's context must not change across its yields.
        span = self.tracing.tracer.start_span(
            "acquire", attributes={"gen_ai.request.model": model, "hyperllama.request_id": req.request_id}
        )
        try:
            lease = await self.dispatcher.grant_now(model, req.request_id, needs)
            span.set_attribute("hyperllama.queued", lease is None)
            if lease is None:
                async for event in self._wait_in_queue(request, model, needs, deadline):
                    if event.HasField("lease"):
                        lease = event.lease
                        break
                    yield event
            assert lease is not None
            span.set_attribute("hyperllama.worker_id", lease.worker_id)
            self.metrics.queue_wait.labels(model).observe(time.monotonic() - started)
            self.metrics.dispatches.labels(model, lease.worker_id).inc()
            yield scheduler_pb2.AcquireEvent(lease=lease)
        finally:
            span.end()

    async def _wait_in_queue(
        self, request: scheduler_pb2.AcquireRequest, model: str, needs: Needs, deadline: float
    ) -> AsyncIterator[scheduler_pb2.AcquireEvent]:
        """Queue the request and wait for its lease, reporting its place; the last event is the lease.
        A request that leaves before its lease reached its caller leaves nothing behind."""
        rid = request.request.request_id
        owner = uuid.uuid4().hex  # this call, as opposed to a repeat of it on another replica
        admission = await self.queue.admit(
            model,
            rid,
            needs.encode(),
            request.priority,
            owner=owner,
            ttl_ms=int((deadline - time.time()) * 1000),
            lease_ms=self.dispatcher.request_lease_ms,
            tenant=request.tenant,
            weight=request.weight,
            head=request.retry,
        )
        if admission.grant:  # granted before this call: its first call's replica died
            yield scheduler_pb2.AcquireEvent(lease=scheduler_pb2.Lease.FromString(admission.grant))
            return
        delivered = False
        try:
            waiting = self.dispatcher.wait(
                model, rid, needs, request.priority, owner, deadline,
                tenant=request.tenant, weight=request.weight,
            )  # fmt: skip
            async for item in waiting:
                if isinstance(item, scheduler_pb2.Lease):
                    delivered = True
                    yield scheduler_pb2.AcquireEvent(lease=item)
                    return
                item.eta_ms = await self._eta_ms(model, item.position)
                yield scheduler_pb2.AcquireEvent(queued=item)
        except DeadlineExceeded:
            self.metrics.deadlines_exceeded.labels(model).inc()
            raise
        except asyncio.CancelledError:
            self.metrics.cancellations.labels(model, "queued").inc()
            raise
        finally:
            if not delivered:
                await self._forget(model, rid, owner)

    async def _forget(self, model: str, request_id: str, owner: str) -> None:
        """Best effort (it runs on the way out of failures too): what is left lapses by its TTL."""
        try:
            stale = await self.queue.forget(model, request_id, owner)
            if stale:
                await self.leases.release(scheduler_pb2.Lease.FromString(stale))
                self.dispatcher.wake(model)
        except HyperLlamaError as err:
            log.warning("cannot clean up %s: %s", request_id, err.message)

    async def _slots_total(self, model: str) -> tuple[list[worker_pb2.WorkerInfo], int]:
        workers = await self.registry.live_for(model)
        return workers, sum(capacity(w, model)[0] for w in workers)

    async def _eta_ms(self, model: str, position: int) -> int:
        """Waves of the model's slots ahead of this place, each as long as a typical stream (0: no
        estimate yet)."""
        _, slots = await self._slots_total(model)
        mean = await self.leases.mean_duration_ms(model)
        return math.ceil((position + 1) / max(1, slots)) * mean

    async def Renew(
        self, request: scheduler_pb2.RenewRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.RenewResponse:
        if len(request.leases) > MAX_RENEW:
            raise InvalidRequest(f"at most {MAX_RENEW} leases per call", param="leases")
        for lease in request.leases:
            _check_lease(lease)
        lapsed = await self.leases.renew(list(request.leases)) if request.leases else []
        return scheduler_pb2.RenewResponse(lapsed=lapsed)

    async def Release(
        self, request: scheduler_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReleaseResponse:
        lease, outcome = request.lease, request.outcome
        _check_lease(lease)
        done = outcome == Outcome.RELEASE_OUTCOME_DONE
        keep_alive = lease.keep_alive_ms if lease.HasField("keep_alive_ms") else None
        keep = self.loader.keep_alive_for(keep_alive, self.loader.is_pinned(lease.worker_id, lease.model))
        waiting = await self.leases.release(
            lease, request.duration_ms if done else 0, freed=done, keep_alive_ms=keep
        )
        if outcome == Outcome.RELEASE_OUTCOME_BUSY:
            # The worker is the authority on its slots: asked again later, never deemed broken.
            await self.registry.mark_full(lease.worker_id)
        elif outcome in _SUSPECT_OUTCOMES:
            await self.registry.mark_unhealthy(lease.worker_id)
            if outcome != Outcome.RELEASE_OUTCOME_NOT_READY:
                phase = "mid_stream" if request.streamed else "before_first_token"
                self.metrics.worker_failures.labels(lease.worker_id, phase).inc()
        if waiting:
            self.dispatcher.wake(lease.model)
        return scheduler_pb2.ReleaseResponse()

    async def QueueStatus(
        self, request: scheduler_pb2.QueueStatusRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.QueueStatusResponse:
        names = {m.name for w in await self.registry.live() for m in w.models}
        names |= self._exported_models  # a model whose workers died still has its queue
        out = []
        for model in sorted(names):
            workers, slots = await self._slots_total(model)
            depth = await self.queue.depth(model)
            if not workers and not depth:
                continue
            leased = sum((await self.leases.in_use(workers, model)).values()) if workers else 0
            out.append(
                scheduler_pb2.ModelQueue(
                    model=model,
                    depth=depth,
                    oldest_wait_ms=await self.queue.oldest_wait_ms(model),
                    eta_ms=await self._eta_ms(model, depth) if depth or leased >= slots else 0,
                    slots_total=slots,
                    slots_leased=leased,
                )
            )
        return scheduler_pb2.QueueStatusResponse(models=out)

    async def export_gauges(self) -> None:
        """Refresh the gauges that describe state rather than events (queue depth, workers)."""
        live = await self.registry.live()
        self.registry.export(live)
        # Models seen before stay in the set: when their last worker dies their queue matters most.
        for model in {m.name for w in live for m in w.models} - self._exported_models:
            self.metrics.start_model(model)
            self._exported_models.add(model)
        for w in live:
            if w.worker_id not in self._exported_workers:
                self.metrics.start_worker(w.worker_id, [m.name for m in w.models])
                self._exported_workers.add(w.worker_id)
        for model in self._exported_models:
            self.metrics.queue_depth.labels(model).set(await self.queue.depth(model))
            self.metrics.queue_oldest_wait.labels(model).set(await self.queue.oldest_wait_ms(model) / 1000)

    async def Embed(
        self, request: scheduler_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedResponse:
        """Embeddings take no slot here: each worker bounds its own embedding queue and answers
        "busy" past it, and the next worker is asked. Cancelling the call cancels the worker's."""
        req = request.request
        deadline = self._deadline(0, context)
        req.model, capable = await self._resolve(req.model, routing.for_embed(request.engine))
        if not capable:  # in the store, loaded nowhere yet
            needs = routing.for_embed(request.engine)
            capable = [w for w in await self.loader.wait_loaded(req.model, deadline) if needs.accepts(w)]
        crashes = busy = 0
        last: HyperLlamaError | None = None
        keep_alive = request.keep_alive_ms if request.HasField("keep_alive_ms") else None
        for worker in capable:
            try:
                response = await self.workers.embed(worker.address, req, deadline - time.time())
            except Overloaded as err:
                busy += 1
                last = err
            except (Unavailable, WorkerUnreachable) as err:  # not ready, or gone before the call
                await self.registry.mark_unhealthy(worker.worker_id)
                last = err
            except WorkerLost as err:
                await self.registry.mark_unhealthy(worker.worker_id)
                self.metrics.worker_failures.labels(worker.worker_id, "before_first_token").inc()
                crashes += 1
                last = err
                if crashes > MAX_CRASHES:
                    break
            else:
                # An embedding is a use of the copy like a generation: it renews the copy's keep_alive
                # (the request's, else the default), and keep_alive 0 unloads it afterwards.
                keep = self.loader.keep_alive_for(
                    keep_alive, self.loader.is_pinned(worker.worker_id, req.model)
                )
                await self.leases.set_keep_alive(worker.worker_id, req.model, keep)
                return response
        if busy:
            raise Overloaded(
                f"every worker serving '{req.model}' is busy with embeddings; retry shortly",
                retry_after=self.settings.retry_after_seconds,
            )
        raise BackendFailed(f"embedding failed: {last.message if last else 'no worker answered'}")

    async def ListModels(
        self, request: scheduler_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListModelsResponse:
        entries: dict[str, scheduler_pb2.ModelEntry] = {}
        expiries = await self.leases.expiries()
        for worker in await self.registry.live():
            copies = [(m, scheduler_pb2.COPY_STATE_READY) for m in worker.models]
            copies += [(m, scheduler_pb2.COPY_STATE_LOADING) for m in worker.loading]
            for info, state in copies:
                entry = entries.get(info.name)
                if entry is None:
                    entry = entries[info.name] = scheduler_pb2.ModelEntry(info=info)
                slots = info.slots_total or worker.slots_total
                leased = 0
                if state == scheduler_pb2.COPY_STATE_READY:
                    if entry.info.slots_total == 0 and not entry.worker_ids:
                        entry.info.CopyFrom(info)  # a ready copy describes it better than a loading one
                    entry.worker_ids.append(worker.worker_id)
                    entry.slots_total += slots
                    leased = (await self.leases.in_use([worker], info.name)).get(worker.worker_id, 0)
                    entry.slots_leased += leased
                entry.placements.append(
                    scheduler_pb2.Placement(
                        worker_id=worker.worker_id,
                        engine=worker.engine,
                        pool=worker.pool,
                        state=state,
                        slots_total=slots,
                        slots_leased=leased,
                        expires_at_unix_ms=expiries.get((worker.worker_id, info.name), 0),
                        memory_bytes=info.memory_bytes,
                    )
                )
        for name, entry in entries.items():
            entry.queue_depth = await self.queue.depth(name)
        return scheduler_pb2.ListModelsResponse(models=[entries[n] for n in sorted(entries)])

    async def LoadModel(
        self, request: scheduler_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.LoadModelResponse:
        """Load the model unless a worker serves it, and give its copies the request's keep_alive."""
        model, _ = await self._resolve(request.model, Requirements(("generate",)))
        deadline = self._deadline(request.deadline_unix_ms, context)
        serving = await self.loader.wait_loaded(model, deadline)
        keep_alive = request.keep_alive_ms if request.HasField("keep_alive_ms") else None
        for w in serving:
            keep = self.loader.keep_alive_for(keep_alive, self.loader.is_pinned(w.worker_id, model))
            await self.leases.set_keep_alive(w.worker_id, model, keep)
        return scheduler_pb2.LoadModelResponse(model=model)

    async def UnloadModel(
        self, request: scheduler_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.UnloadModelResponse:
        if not request.model:
            raise InvalidRequest("model is required", param="model")
        live = await self.registry.live()
        model = request.model
        if not self.loader.copies(model, live):
            try:
                model = (await self.loader.describe(model)).name
            except Unavailable:
                return scheduler_pb2.UnloadModelResponse(model=request.model)  # loaded nowhere
            # A model the store does not have either: ModelNotFound (404), as Ollama answers.
        unloaded = await self.loader.unload_everywhere(model)
        return scheduler_pb2.UnloadModelResponse(model=model, unloaded=unloaded)

    async def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        return scheduler_pb2.ListWorkersResponse(workers=await self.registry.live(fresh=True))


class RegistryServicer(scheduler_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: WorkerRegistry, dispatcher: Dispatcher):
        self.registry = registry
        self.dispatcher = dispatcher

    async def Heartbeat(
        self, request: scheduler_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.HeartbeatResponse:
        info = request.worker
        if not info.worker_id or not info.address:
            raise InvalidRequest("worker_id and address are required")
        await self.registry.heartbeat(info)
        for model in info.models:
            self.dispatcher.wake(model.name)
        return scheduler_pb2.HeartbeatResponse(lease_seconds=int(self.registry.lease_ms / 1000))

    async def Deregister(
        self, request: scheduler_pb2.DeregisterRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.DeregisterResponse:
        await self.registry.deregister(request.worker_id)
        return scheduler_pb2.DeregisterResponse()
