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
    DeadlineExceeded,
    HyperLlamaError,
    InvalidRequest,
    ModelNotFound,
    Unavailable,
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
from hyperllama_scheduler.worker_client import WorkerClients

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
        self._exported_models: set[str] = set()

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
                f"model '{model}' not found; available models: {', '.join(sorted(names))}", param="model"
            )
        if needs.engine:
            engines = sorted({w.engine for w in serving})
            serving = [w for w in serving if w.engine == needs.engine]
            if not serving:
                raise InvalidRequest(
                    f"engine '{needs.engine}' does not serve model '{model}'; "
                    f"engines serving it: {', '.join(engines)}",
                    param="engine",
                )
        capable = [w for w in serving if needs.accepts(w)]
        if not capable:
            on = f" on engine '{needs.engine}'" if needs.engine else ""
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
        tracer = self.tracing.tracer
        with tracer.start_as_current_span("dispatch", attributes={"gen_ai.request.model": model}) as span:
            slot: Slot | None = await self.dispatcher.reserve_now(model, needs.accepts)
            span.set_attribute("hyperllama.queued", slot is None)
            if slot is None:
                await self.queue.admit(
                    model,
                    req.request_id,
                    request.SerializeToString(),
                    request.priority,
                    ttl_ms=int((deadline - time.time()) * 1000),
                    lease_ms=self.dispatcher.lease_ms,
                )
        task = asyncio.current_task()
        if task is not None:
            self._active[req.request_id] = task
        m = self.metrics
        redispatches = 0
        phase = "queued" if slot is None else "running"
        try:
            while True:
                queued_at = time.monotonic()
                if slot is None:
                    phase = "queued"
                    with tracer.start_as_current_span(
                        "queue.wait", attributes={"gen_ai.request.model": model}
                    ):
                        try:
                            slot = await self.dispatcher.wait_for_slot(
                                model, req.request_id, deadline, needs.accepts
                            )
                        except DeadlineExceeded:
                            m.deadlines_exceeded.labels(model).inc()
                            raise
                m.queue_wait.labels(model).observe(time.monotonic() - queued_at)
                m.dispatches.labels(model, slot.worker_id).inc()
                phase = "running"
                started = False
                try:
                    with tracer.start_as_current_span(
                        "generate", attributes=generation_attributes(req, slot.worker_id, self.tracing)
                    ) as span:
                        async for chunk in self.workers.generate(slot.address, req, deadline):
                            started = True
                            if chunk.finish_reason:
                                record_usage(span, chunk)
                            yield chunk
                    return
                except (InvalidRequest, DeadlineExceeded):
                    raise
                except HyperLlamaError as err:
                    self.registry.mark_unhealthy(slot.worker_id)
                    failed_in = "mid_stream" if started else "before_first_token"
                    m.worker_failures.labels(slot.worker_id, failed_in).inc()
                    if started:
                        raise BackendFailed(
                            f"worker {slot.worker_id} failed mid-stream: {err.message}"
                        ) from err
                    redispatches += 1
                    log.warning(
                        "worker %s failed before the first token of %s (%s); redispatch %d/%d",
                        slot.worker_id,
                        req.request_id,
                        err.message,
                        redispatches,
                        self.settings.max_redispatch,
                    )
                    if redispatches > self.settings.max_redispatch:
                        raise BackendFailed(
                            f"request failed on {redispatches} workers; last error: {err.message}"
                        ) from err
                    m.redispatches.labels(model).inc()
                    await self.queue.requeue_first(model, req.request_id, request.priority)
                finally:
                    self.dispatcher.release(slot)
                    slot = None
        except asyncio.CancelledError:
            m.cancellations.labels(model, phase).inc()
            raise
        finally:
            self._active.pop(req.request_id, None)
            if phase == "queued":  # dispatched requests left Redis when they were taken
                await self.queue.forget(model, req.request_id)

    async def export_gauges(self) -> None:
        """Refresh the gauges that describe state rather than events (queue depth, workers)."""
        live = await self.registry.live()
        self.registry.export(live)
        # Models seen before stay in the set: when their last worker dies their queue matters most.
        self._exported_models |= {m.name for w in live for m in w.models}
        oldest = self.dispatcher.oldest_wait()
        for model in self._exported_models:
            self.metrics.queue_depth.labels(model).set(await self.queue.depth(model))
            self.metrics.queue_oldest_wait.labels(model).set(oldest.get(model, 0.0))

    async def Embed(
        self, request: scheduler_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedResponse:
        req = request.request
        deadline = self._deadline(0, context)
        last: HyperLlamaError | None = None
        req.model, capable = await self._resolve(req.model, routing.for_embed(request.engine))
        for worker in capable:
            try:
                return await self.workers.embed(worker.address, req, deadline - time.time())
            except (InvalidRequest, DeadlineExceeded):
                raise
            except HyperLlamaError as err:
                self.registry.mark_unhealthy(worker.worker_id)
                last = err
        raise BackendFailed(f"embedding failed on every worker: {last.message if last else ''}")

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
                entry.slots_total += worker.slots_total
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
