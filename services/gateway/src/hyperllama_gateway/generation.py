"""What both API families share: running a generation through the scheduler and collecting it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, Cancelled

from hyperllama_gateway.scheduler_client import SchedulerClient

T = TypeVar("T")

FINISH_REASONS = {
    worker_pb2.FINISH_REASON_STOP: "stop",
    worker_pb2.FINISH_REASON_LENGTH: "length",
}


@dataclass
class Result:
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: worker_pb2.Timings = field(default_factory=worker_pb2.Timings)


def apply_final(result: Result, chunk: worker_pb2.GenerateChunk) -> bool:
    """Copy a final chunk's facts into ``result``; True when this chunk ends the stream."""
    if chunk.finish_reason == worker_pb2.FINISH_REASON_UNSPECIFIED:
        return False
    result.finish_reason = FINISH_REASONS[chunk.finish_reason]
    result.prompt_tokens = chunk.usage.prompt_tokens
    result.completion_tokens = chunk.usage.completion_tokens
    result.timings = chunk.timings
    return True


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` but cancel it (end to end) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done():
            raise Cancelled("client disconnected") from None
        raise
    finally:
        watcher.cancel()


class Generation:
    """One generation's stream; ``start`` waits (cancellably) for the first chunk so errors that
    happen before any output still get a real HTTP status."""

    def __init__(
        self,
        scheduler: SchedulerClient,
        request: worker_pb2.GenerateRequest,
        priority: int,
        timeout: float,
        engine: str = "",
    ):
        self.started_ns = time.perf_counter_ns()
        self.created = int(time.time())
        self.request = request
        self._chunks = scheduler.generate(
            scheduler_pb2.GenerateRequest(
                request=request,
                priority=priority,
                deadline_unix_ms=int((time.time() + timeout) * 1000),
                engine=engine,
            ),
            timeout,
        )
        self._first: worker_pb2.GenerateChunk | None = None

    async def start(self, http_request: Request) -> None:
        self._first = await until_disconnect(http_request, anext(self._chunks))

    async def chunks(self) -> AsyncIterator[worker_pb2.GenerateChunk]:
        """Every chunk; raises BackendFailed if the stream ends without a finish."""
        if self._first is not None:
            yield self._first
            if self._first.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED:
                return
        async for chunk in self._chunks:
            yield chunk
            if chunk.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED:
                return
        raise BackendFailed("the stream ended without a finish")

    async def collect(self, http_request: Request) -> Result:
        async def gather() -> Result:
            result = Result()
            parts = []
            async for chunk in self.chunks():
                parts.append(chunk.text)
                apply_final(result, chunk)
            result.text = "".join(parts)
            return result

        return await until_disconnect(http_request, gather())

    def total_duration_ns(self) -> int:
        return time.perf_counter_ns() - self.started_ns
