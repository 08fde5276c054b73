"""A generation's path: a slot lease from the scheduler, then tokens straight from the worker.

The scheduler never sees a token. It grants a lease on a worker's slot; this module streams from
that worker, keeps the lease alive while the stream runs (one Renew call for all the leases this
gateway holds), and gives it back when the stream ends, saying how the worker did. A worker that
fails before its first token is replaced: the request goes back to the scheduler, at the head of its
band, for another placement; so it is served exactly once. After the first token, the failure is
the stream's one error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import (
    BackendFailed,
    Cancelled,
    DeadlineExceeded,
    HyperLlamaError,
    InvalidRequest,
    Overloaded,
    Unavailable,
)
from hyperllama_common.tracing import Tracing
from hyperllama_common.worker_client import WorkerClients, WorkerLost, WorkerUnreachable
from opentelemetry import trace

from hyperllama_gateway.scheduler_client import SchedulerClient

log = logging.getLogger(__name__)

Outcome = scheduler_pb2.ReleaseOutcome
FINISH_NAMES = {worker_pb2.FINISH_REASON_STOP: "stop", worker_pb2.FINISH_REASON_LENGTH: "length"}
Event: TypeAlias = worker_pb2.GenerateChunk | scheduler_pb2.QueuePosition

# How many workers may die under one request before it is deemed the cause and fails: one, so a worker
# killed from outside loses no request, and a request that kills workers takes down at most two.
MAX_CRASHES = 1


def generation_attributes(
    req: worker_pb2.GenerateRequest, worker_id: str, record_prompts: bool
) -> dict[str, Any]:
    """OpenTelemetry gen_ai semantic-convention attributes of a generation (no prompt unless enabled)."""
    s = req.sampling
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if req.HasField("chat") else "text_completion",
        "gen_ai.request.model": req.model,
        "hyperllama.request_id": req.request_id,
        "hyperllama.worker_id": worker_id,
    }
    for name in ("max_tokens", "temperature", "top_p"):
        if s.HasField(name):  # type: ignore[arg-type]
            attrs[f"gen_ai.request.{name}"] = getattr(s, name)
    if record_prompts:
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


class Dispatch:
    def __init__(
        self,
        scheduler: SchedulerClient,
        workers: WorkerClients,
        max_redispatch: int,
        tracing: Tracing | None = None,
    ):
        self.scheduler = scheduler
        self.workers = workers
        self.max_redispatch = max_redispatch
        self.tracing = tracing or Tracing("gateway")
        self._held: dict[str, scheduler_pb2.Lease] = {}
        self._renewing: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def generate(self, request: scheduler_pb2.AcquireRequest, timeout: float) -> AsyncIterator[Event]:
        """Queue positions while the request waits, then its chunks, the final one last."""
        deadline = time.time() + timeout
        redispatches = crashes = 0
        while True:
            lease: scheduler_pb2.Lease | None = None
            async for event in self.scheduler.acquire(request, max(0.001, deadline - time.time())):
                if event.HasField("queued"):
                    yield event.queued
                else:
                    lease = event.lease
            assert lease is not None  # acquire ends with a lease or raises
            req = request.request
            req.model = lease.model  # "name" resolved to "name:latest"
            self._hold(lease)
            started = time.monotonic()
            outcome = Outcome.RELEASE_OUTCOME_DONE
            streamed = finished = False
            # Started, not made current: this generator may resume in another task (see WorkerClients).
            span = self.tracing.tracer.start_span(
                "generate",
                attributes=generation_attributes(req, lease.worker_id, self.tracing.record_prompts),
            )
            try:
                async for chunk in self.workers.generate(lease.address, req, deadline, parent=span):
                    streamed = True
                    finished = chunk.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED
                    if finished:
                        record_usage(span, chunk)
                    yield chunk
                return
            except (InvalidRequest, DeadlineExceeded, Cancelled):
                raise  # the request's own fault or end: nothing about the worker
            except (Overloaded, Unavailable, WorkerUnreachable) as err:
                # About the worker, never this request, so never counted against it: "busy" (the
                # worker is the authority on its slots), "not ready" (its engine died or restarts),
                # or gone before the call reached it. Ask again, elsewhere or later.
                outcome = (
                    Outcome.RELEASE_OUTCOME_BUSY
                    if isinstance(err, Overloaded)
                    else Outcome.RELEASE_OUTCOME_UNREACHABLE
                    if isinstance(err, WorkerUnreachable)
                    else Outcome.RELEASE_OUTCOME_NOT_READY
                )
                if streamed:
                    raise BackendFailed(f"worker {lease.worker_id} failed mid-stream: {err.message}") from err
            except HyperLlamaError as err:
                if finished:
                    # The stream was complete; the worker went away after its final chunk.
                    log.warning("worker %s failed after finishing %s: %s",
                                lease.worker_id, req.request_id, err.message)  # fmt: skip
                    return
                lost = isinstance(err, WorkerLost)
                if lost:
                    outcome = Outcome.RELEASE_OUTCOME_LOST
                if streamed:
                    raise BackendFailed(f"worker {lease.worker_id} failed mid-stream: {err.message}") from err
                redispatches += 1
                crashes += lost
                log.warning("worker %s failed before the first token of %s (%s); redispatch %d/%d",
                            lease.worker_id, req.request_id, err.message,
                            redispatches, self.max_redispatch)  # fmt: skip
                if crashes > MAX_CRASHES:
                    raise BackendFailed(
                        f"request failed: {crashes} workers died while serving it; "
                        f"it is not sent to another (last error: {err.message})"
                    ) from err
                if redispatches > self.max_redispatch:
                    raise BackendFailed(
                        f"request failed on {redispatches} workers; last error: {err.message}"
                    ) from err
            finally:
                span.set_attribute("hyperllama.release_outcome", Outcome.Name(outcome))
                span.end()
                self._give_back(lease, outcome, streamed, time.monotonic() - started)
            request.retry = True  # back to the head of its band, for another placement

    # ---- leases ----------------------------------------------------------------------------------

    def _hold(self, lease: scheduler_pb2.Lease) -> None:
        self._held[lease.lease_id] = lease
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew_forever(lease.ttl_ms))

    async def _renew_forever(self, ttl_ms: int) -> None:
        """Every third of the lease's life, renew every lease held, in one call."""
        while self._held:
            await asyncio.sleep(ttl_ms / 3000)
            if not self._held:
                return
            try:
                lapsed = await self.scheduler.renew(list(self._held.values()))
            except HyperLlamaError as err:
                log.warning("cannot renew %d slot leases: %s", len(self._held), err.message)
                continue
            for lease_id in lapsed:
                # The stream goes on (the worker still serves it); its slot may be counted twice
                # until it ends, and the worker answers "busy" if that overfills it.
                log.warning("slot lease %s lapsed while its stream ran", lease_id)

    def _give_back(self, lease: scheduler_pb2.Lease, outcome: int, streamed: bool, seconds: float) -> None:
        """Release in the background: the client's stream need not wait for the scheduler."""
        self._held.pop(lease.lease_id, None)
        release = scheduler_pb2.ReleaseRequest(
            lease=lease, outcome=outcome, streamed=streamed, duration_ms=int(seconds * 1000)
        )
        task = asyncio.get_running_loop().create_task(self._release(release))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, release: scheduler_pb2.ReleaseRequest) -> None:
        """Keep trying through a scheduler restart (the same window as for acquiring): a lease left
        to lapse keeps its slot counted for the lease's whole TTL."""
        give_up_at = time.monotonic() + self.scheduler.retry_seconds
        delay = 0.1
        while True:
            try:
                await self.scheduler.release(release)
                return
            except grpc.aio.UsageError:
                return  # the gateway is shutting down; the lease lapses by itself
            except HyperLlamaError as err:
                if time.monotonic() + delay > give_up_at:
                    log.warning("cannot release slot lease %s (it lapses by itself): %s",
                                release.lease.lease_id, err.message)  # fmt: skip
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def close(self) -> None:
        """Give back what is being released, then stop renewing."""
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=5)
        if self._renewing is not None:
            self._renewing.cancel()
        await self.workers.close()
