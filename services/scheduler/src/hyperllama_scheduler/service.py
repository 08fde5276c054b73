"""The scheduler's gRPC services: SchedulerService for the gateway, RegistryService for workers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import (
    BackendFailed,
    Cancelled,
    DeadlineExceeded,
    HyperLlamaError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
    quote,
)
from hyperllama_common.tracing import Tracing
from opentelemetry import trace

from hyperllama_scheduler import routing
from hyperllama_scheduler.dispatcher import Dispatcher, Slot
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import RequestQueue
from hyperllama_scheduler.registry import WorkerRegistry
from hyperllama_scheduler.routing import Requirements
from hyperllama_scheduler.settings import SchedulerSettings
from hyperllama_scheduler.worker_client import WorkerClients, WorkerLost, WorkerUnreachable

log = logging.getLogger(__name__)


def generation_attributes(
    req: worker_pb2.GenerateRequest, worker_id: str, tracing: Tracing
) -> dict[str, Any]:
    """OpenTelemetry gen_ai semantic-convention attributes of a generation (no prompt unless enabled)."""
    s = req.sampling
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if req.HasField("chat") else "text_completion",
        "gen_ai.request.model": req.model,
        "hyperllama.request_id": req.request_id,
        "hyperllama.worker_id": worker_id,
    }
    for name, field in (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if s.HasField(field):  # type: ignore[arg-type]
            attrs[f"gen_ai.request.{name}"] = getattr(s, field)
    if tracing.record_prompts:
        attrs["gen_ai.prompt"] = (
            "\n".join(f"{m.role}: {m.content}" for m in req.chat.messages)
            if req.HasField("chat")
            else req.prompt
        )
    return attrs


def record_usage(span: trace.Span, chunk: worker_pb2.GenerateChunk) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", chunk.usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", chunk.usage.completion_tokens)
    span.set_attribute("gen_ai.response.finish_reasons", [FINISH_NAMES.get(chunk.finish_reason, "unknown")])


# How many workers may die under one request before it is deemed the cause and fails: one, so a worker
# killed from outside loses no request, and a request that kills workers takes down at most two.
MAX_CRASHES = 1

FINISH_NAMES = {worker_pb2.FINISH_REASON_STOP: "stop", worker_pb2.FINISH_REASON_LENGTH: "length"}


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(
        self,
        settings: SchedulerSettings,
        queue: RequestQueue,
        registry: WorkerRegistry,
        dispatcher: Dispatcher,
        workers: WorkerClients,
        metrics: SchedulerMetrics,
        tracing: Tracing,
    ):
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.queue = queue
        self.registry = registry
        self.dispatcher = dispatcher
        self.workers = workers
        self._active: dict[str, asyncio.Task[object]] = {}
        self._superseded: set[asyncio.Task[object]] = set()
        self._exported_models: set[str] = set()
        self._exported_workers: set[str] = set()

    async def _resolve(self, model: str, needs: Requirements) -> tuple[str, list[worker_pb2.WorkerInfo]]:
        """The model's full name and the live workers that meet ``needs`` (capabilities, engine pin).

        As in Ollama, a name without a tag means ``:latest``."""
        live = await self.registry.live()
        if not live:
            raise Unavailable("no worker is ready yet; retry shortly", retry_after=1)
        names = {m.name for w in live for m in w.models}
        if model not in names and ":" not in model and f"{model}:latest" in names:
            model = f"{model}:latest"
        serving = [w for w in live if any(m.name == model for m in w.models)]
        if not serving:
            raise ModelNotFound(
                f"model '{quote(model)}' not found; available models: {', '.join(sorted(names))}",
                param="model",
            )
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

    def _deadline(self, deadline_unix_ms: int, context: grpc.aio.ServicerContext) -> float:
        deadline = time.time() + self.settings.default_request_timeout_seconds
        if deadline_unix_ms:
            deadline = min(deadline, deadline_unix_ms / 1000)
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = min(deadline, time.time() + remaining)
        return deadline

    async def _supersede(self, request_id: str) -> None:
        """A second call with the id of a running one (a caller's retry over a broken connection)
        replaces it: the first is cancelled and has cleaned up before the second starts."""
        old = self._active.get(request_id)
        if old is not None and old is not asyncio.current_task():
            log.warning("request %s arrived again; cancelling the earlier call", request_id)
            self._superseded.add(old)
            old.cancel()
            await asyncio.wait({old})
            self._superseded.discard(old)  # it may have ended before the cancel reached it

    async def Generate(
        self, request: scheduler_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        req = request.request
        if not req.request_id:
            raise InvalidRequest("request_id is required", param="request_id")
        needs = routing.for_generate(req, request.engine)
        model, _ = await self._resolve(req.model, needs)
        req.model = model
        deadline = self._deadline(request.deadline_unix_ms, context)
        await self._supersede(req.request_id)
        task = asyncio.current_task()
        if task is not None:
            self._active[req.request_id] = task
        payload = b""  # the stored body, serialised only if the request ever waits (not on the fast path)
        lease_ms = self.dispatcher.lease_ms

        def ttl_ms() -> int:
            return int((deadline - time.time()) * 1000)

        async def renew() -> None:
            if not await self.queue.renew(
                model, req.request_id, request.priority, payload, ttl_ms(), lease_ms
            ):
                log.warning("request %s was missing from the queue (Redis restarted?); admitted again",
                            req.request_id)  # fmt: skip
                self.dispatcher.wake(model)

        tracer = self.tracing.tracer
        m = self.metrics
        redispatches = crashes = 0
        slot: Slot | None = None
        phase = "queued"
        went_through_queue = False
        try:
            with tracer.start_as_current_span("dispatch", attributes={"gen_ai.request.model": model}) as span:
                slot = await self.dispatcher.reserve_now(model, needs.accepts)
                span.set_attribute("hyperllama.queued", slot is None)
                if slot is None:
                    went_through_queue = True
                    payload = request.SerializeToString()
                    await self.queue.admit(
                        model, req.request_id, payload, request.priority, ttl_ms=ttl_ms(), lease_ms=lease_ms
                    )
            while True:
                queued_at = time.monotonic()
                if slot is None:
                    phase = "queued"
                    with tracer.start_as_current_span(
                        "queue.wait", attributes={"gen_ai.request.model": model}
                    ):
                        try:
                            slot = await self.dispatcher.wait_for_slot(
                                model, req.request_id, deadline, needs.accepts, renew
                            )
                        except DeadlineExceeded:
                            m.deadlines_exceeded.labels(model).inc()
                            raise
                m.queue_wait.labels(model).observe(time.monotonic() - queued_at)
                m.dispatches.labels(model, slot.worker_id).inc()
                phase = "running"
                started = finished = False
                try:
                    with tracer.start_as_current_span(
                        "generate", attributes=generation_attributes(req, slot.worker_id, self.tracing)
                    ) as span:
                        async for chunk in self.workers.generate(slot.address, req, deadline):
                            started = True
                            if chunk.finish_reason:
                                finished = True
                                record_usage(span, chunk)
                            yield chunk
                    return
                except (InvalidRequest, DeadlineExceeded, Cancelled):
                    raise
                except (Overloaded, Unavailable, WorkerUnreachable) as err:
                    # About the worker, not this request, so never counted against it: "busy" (the
                    # worker is the authority on its slots), "not ready" (its engine died or
                    # restarts), or gone before the call reached it. Ask again, elsewhere or later.
                    if started:
                        raise BackendFailed(
                            f"worker {slot.worker_id} failed mid-stream: {err.message}"
                        ) from err
                    if isinstance(err, Overloaded):
                        self.registry.mark_full(slot.worker_id)
                    else:
                        self.registry.mark_unhealthy(slot.worker_id)
                except HyperLlamaError as err:
                    if finished:
                        # The stream was complete; the worker went away after its final chunk.
                        log.warning("worker %s failed after finishing %s: %s",
                                    slot.worker_id, req.request_id, err.message)  # fmt: skip
                        return
                    lost = isinstance(err, WorkerLost)
                    if lost:
                        self.registry.mark_unhealthy(slot.worker_id)
                    m.worker_failures.labels(
                        slot.worker_id, "mid_stream" if started else "before_first_token"
                    ).inc()
                    if started:
                        raise BackendFailed(
                            f"worker {slot.worker_id} failed mid-stream: {err.message}"
                        ) from err
                    redispatches += 1
                    crashes += lost
                    log.warning(
                        "worker %s failed before the first token of %s (%s); redispatch %d/%d",
                        slot.worker_id,
                        req.request_id,
                        err.message,
                        redispatches,
                        self.settings.max_redispatch,
                    )
                    if crashes > MAX_CRASHES:
                        raise BackendFailed(
                            f"request failed: {crashes} workers died while serving it; "
                            f"it is not sent to another (last error: {err.message})"
                        ) from err
                    if redispatches > self.settings.max_redispatch:
                        raise BackendFailed(
                            f"request failed on {redispatches} workers; last error: {err.message}"
                        ) from err
                    m.redispatches.labels(model).inc()
                finally:
                    self.dispatcher.release(slot)
                    slot = None
                # Back to the head of its band, then wait for another slot.
                went_through_queue = True
                phase = "queued"
                payload = payload or request.SerializeToString()
                await self.queue.requeue_first(
                    model, req.request_id, request.priority, payload, ttl_ms(), lease_ms
                )
        except asyncio.CancelledError:
            m.cancellations.labels(model, phase).inc()
            if task in self._superseded:
                # Its caller is still there: tell it why, rather than leave it to its deadline.
                self._superseded.discard(task)
                raise Cancelled("replaced by a newer call with the same request id") from None
            raise
        finally:
            if slot is not None:  # reserved at once, then left before using it
                self.dispatcher.release(slot)
            if self._active.get(req.request_id) is task:
                del self._active[req.request_id]
            if went_through_queue:  # nothing of a queued request stays in Redis
                await self.queue.forget(model, req.request_id)

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
        oldest = self.dispatcher.oldest_wait()
        for model in self._exported_models:
            self.metrics.queue_depth.labels(model).set(await self.queue.depth(model))
            self.metrics.queue_oldest_wait.labels(model).set(oldest.get(model, 0.0))

    async def Embed(
        self, request: scheduler_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedResponse:
        """Embeddings take no slot here: each worker bounds its own embedding queue and answers
        "busy" past it, and the next worker is asked. Cancelling the call cancels the worker's."""
        req = request.request
        deadline = self._deadline(0, context)
        req.model, capable = await self._resolve(req.model, routing.for_embed(request.engine))
        crashes = busy = 0
        last: HyperLlamaError | None = None
        for worker in capable:
            try:
                return await self.workers.embed(worker.address, req, deadline - time.time())
            except Overloaded as err:
                busy += 1
                last = err
            except (Unavailable, WorkerUnreachable) as err:  # not ready, or gone before the call
                self.registry.mark_unhealthy(worker.worker_id)
                last = err
            except WorkerLost as err:
                self.registry.mark_unhealthy(worker.worker_id)
                self.metrics.worker_failures.labels(worker.worker_id, "before_first_token").inc()
                crashes += 1
                last = err
                if crashes > MAX_CRASHES:
                    break
        if busy:
            raise Overloaded(
                f"every worker serving '{req.model}' is busy with embeddings; retry shortly",
                retry_after=self.settings.retry_after_seconds,
            )
        raise BackendFailed(f"embedding failed: {last.message if last else 'no worker answered'}")

    async def Cancel(
        self, request: scheduler_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.CancelResponse:
        task = self._active.get(request.request_id)
        if task is not None:
            task.cancel()
        return scheduler_pb2.CancelResponse(cancelled=task is not None)

    async def ListModels(
        self, request: scheduler_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListModelsResponse:
        entries: dict[str, scheduler_pb2.ModelEntry] = {}
        for worker in await self.registry.live():
            for info in worker.models:
                entry = entries.get(info.name)
                if entry is None:
                    entry = entries[info.name] = scheduler_pb2.ModelEntry(info=info)
                entry.worker_ids.append(worker.worker_id)
                entry.slots_total += info.slots_total or worker.slots_total
        for name, entry in entries.items():
            entry.queue_depth = await self.queue.depth(name)
        return scheduler_pb2.ListModelsResponse(models=[entries[n] for n in sorted(entries)])

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
