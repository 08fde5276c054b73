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
from typing import TypeAlias

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
from hyperllama_common.worker_client import WorkerClients, WorkerLost, WorkerUnreachable

from hyperllama_gateway.scheduler_client import SchedulerClient

log = logging.getLogger(__name__)

Outcome = scheduler_pb2.ReleaseOutcome
Event: TypeAlias = worker_pb2.GenerateChunk | scheduler_pb2.QueuePosition

# How many workers may die under one request before it is deemed the cause and fails: one, so a worker
# killed from outside loses no request, and a request that kills workers takes down at most two.
MAX_CRASHES = 1
# Tries to give a lease back (each may reach another replica) before leaving it to lapse.
RELEASE_TRIES = 3


class Dispatch:
    def __init__(self, scheduler: SchedulerClient, workers: WorkerClients, max_redispatch: int):
        self.scheduler = scheduler
        self.workers = workers
        self.max_redispatch = max_redispatch
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
            try:
                async for chunk in self.workers.generate(lease.address, req, deadline):
                    streamed = True
                    finished = chunk.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED
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
        for attempt in range(RELEASE_TRIES):
            try:
                await self.scheduler.release(release)
                return
            except grpc.aio.UsageError:
                return  # the gateway is shutting down; the lease lapses by itself
            except HyperLlamaError as err:
                if attempt == RELEASE_TRIES - 1:
                    log.warning("cannot release slot lease %s (it lapses by itself): %s",
                                release.lease.lease_id, err.message)  # fmt: skip
                    return
                await asyncio.sleep(0.2 * (attempt + 1))

    async def close(self) -> None:
        """Give back what is being released, then stop renewing."""
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=5)
        if self._renewing is not None:
            self._renewing.cancel()
        await self.workers.close()
