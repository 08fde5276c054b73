"""What both API families share: running a generation (dispatch.py), collecting it, and recording
its metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, Cancelled, HyperLlamaError

from hyperllama_gateway.deps import Call
from hyperllama_gateway.dispatch import Event
from hyperllama_gateway.metrics import outcome_of
from hyperllama_gateway.quotas import Ticket

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
    cached_prompt_tokens: int = 0
    timings: worker_pb2.Timings = field(default_factory=worker_pb2.Timings)
    # Per generated token, when the request asked for them.
    logprobs: list[worker_pb2.TokenLogprob] = field(default_factory=list)
    # The exchange as token ids (Ollama's context), when the request asked and the worker can.
    context: list[int] = field(default_factory=list)


def apply_final(result: Result, chunk: worker_pb2.GenerateChunk) -> bool:
    """Copy a final chunk's facts into ``result``; True when this chunk ends the stream."""
    if chunk.finish_reason == worker_pb2.FINISH_REASON_UNSPECIFIED:
        return False
    result.finish_reason = FINISH_REASONS[chunk.finish_reason]
    result.prompt_tokens = chunk.usage.prompt_tokens
    result.completion_tokens = chunk.usage.completion_tokens
    result.cached_prompt_tokens = chunk.usage.cached_prompt_tokens
    result.timings = chunk.timings
    result.context = list(chunk.context)
    return True


async def embed(
    call: Call, request: worker_pb2.EmbedRequest, keep_alive_ms: int | None = None
) -> worker_pb2.EmbedResponse:
    """Run an embedding request (cancelled if the client leaves) and record its metrics."""
    call.authorize(request.model)
    call.http.state.model = request.model
    started = time.perf_counter()
    timeout = call.settings.request_timeout_seconds
    ticket = await call.quotas.admit(call.tenant, call.request_id) if call.quotas is not None else None
    try:
        response = await until_disconnect(
            call.http, call.scheduler.embed(request, timeout, call.engine, keep_alive_ms)
        )
    except BaseException as err:
        if ticket is not None and call.quotas is not None:
            outcome = outcome_of(err) if isinstance(err, HyperLlamaError) else "cancelled"
            call.quotas.finish_soon(ticket, 0, 0, outcome)
        raise
    if ticket is not None and call.quotas is not None:
        call.quotas.finish_soon(ticket, response.prompt_tokens, 0, "ok")
    call.http.state.recorded = True
    call.metrics.record(call.http.url.path, request.model, "ok", time.perf_counter() - started)
    call.metrics.prompt_tokens.labels(request.model).inc(response.prompt_tokens)
    return response


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
    """One generation's stream. ``start`` waits (cancellably) for the first chunk so errors that
    happen before any output still get a real HTTP status; the stream's end records its metrics.
    With ``positions``, a request that has to queue starts at its first queue position instead, so
    the client hears where it stands (``events`` then yields QueuePosition before the chunks)."""

    def __init__(
        self,
        call: Call,
        request: worker_pb2.GenerateRequest,
        positions: bool = False,
        keep_alive_ms: int | None = None,
    ):
        call.authorize(request.model)
        self.started = time.perf_counter()
        self.created = int(time.time())
        self.request = request
        self.metrics = call.metrics
        self.http = call.http
        self.http.state.model = request.model
        self._call = call
        self._ticket: Ticket | None = None
        # What the stream has charged so far: a cut stream is charged what it used.
        self._prompt_tokens = self._completion_tokens = 0
        timeout = call.settings.request_timeout_seconds
        self._events = call.dispatch.generate(
            scheduler_pb2.AcquireRequest(
                request=request,
                priority=call.priority,
                deadline_unix_ms=int((time.time() + timeout) * 1000),
                engine=call.engine,
                keep_alive_ms=keep_alive_ms,
                tenant=call.tenant.name,
                weight=call.tenant.weight,
            ),
            timeout,
        )
        self._positions = positions
        self._first: Event | None = None

    async def start(self) -> None:
        await until_disconnect(self.http, self.begin())

    async def begin(self) -> None:
        """``start`` without watching the client: for a caller that watches it for several
        generations at once (n > 1), since only one may read the request's disconnect."""

        async def first() -> Event:
            async for event in self._events:
                if self._positions or isinstance(event, worker_pb2.GenerateChunk):
                    return event
            raise BackendFailed("the stream ended before it started")

        if self._call.quotas is not None:
            # Each choice is a stream of its own: it counts against the tenant's limits as one.
            self._ticket = await self._call.quotas.admit(self._call.tenant, self.request.request_id)
        try:
            self._first = await first()
        except BaseException as err:
            self._charge(outcome_of(err) if isinstance(err, HyperLlamaError) else "cancelled")
            raise

    def _charge(self, outcome: str) -> None:
        """Charge the tenant what the stream used (once; in the background: this may run while the
        stream is being torn down)."""
        if self._ticket is not None and self._call.quotas is not None:
            self._call.quotas.finish_soon(self._ticket, self._prompt_tokens, self._completion_tokens, outcome)

    def _record(self, outcome: str) -> None:
        self.http.state.recorded = True  # the error handler must not count this request again
        self.metrics.record(
            self.http.url.path, self.request.model, outcome, time.perf_counter() - self.started
        )

    async def _all_events(self) -> AsyncIterator[Event]:
        if self._first is not None:
            yield self._first
        async for event in self._events:
            yield event

    async def chunks(self) -> AsyncIterator[worker_pb2.GenerateChunk]:
        """Every chunk, the final one last (see ``events``)."""
        async for event in self.events():
            if isinstance(event, worker_pb2.GenerateChunk):
                yield event

    async def events(self) -> AsyncIterator[Event]:
        """Queue positions (only with ``positions``), then every chunk, the final one last; raises
        BackendFailed if the stream ends without it.

        The stream is read to its end (it ends right after the final chunk) rather than abandoned,
        so the call completes normally on every hop instead of being cancelled."""
        model = self.request.model
        last_text_at = 0.0
        final_seen = False
        self.metrics.in_flight.inc()
        try:
            async for chunk in self._all_events():
                if not isinstance(chunk, worker_pb2.GenerateChunk):
                    if self._positions:
                        yield chunk
                    continue
                now = time.perf_counter()
                self._completion_tokens += chunk.token_count
                self._prompt_tokens = chunk.usage.prompt_tokens or self._prompt_tokens
                if chunk.text:
                    if last_text_at == 0.0:
                        api = "openai" if self.http.url.path.startswith("/v1") else "ollama"
                        self.metrics.ttft.labels(api, model).observe(now - self.started)
                    elif chunk.token_count:
                        gap = (now - last_text_at) / chunk.token_count
                        for _ in range(chunk.token_count):
                            self.metrics.itl.labels(model).observe(gap)
                    last_text_at = now
                if chunk.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED:
                    final_seen = True
                    self._completion_tokens = chunk.usage.completion_tokens
                    self.metrics.prompt_tokens.labels(model).inc(chunk.usage.prompt_tokens)
                    self.metrics.output_tokens.labels(model).inc(chunk.usage.completion_tokens)
                yield chunk
            if not final_seen:
                raise BackendFailed("the stream ended without a finish")
            self._record("ok")
            self._charge("ok")
        except HyperLlamaError as err:
            if final_seen:
                # The final chunk is out: the stream is complete whatever broke after it, and a
                # second terminal marker (an error after "done") would contradict the first.
                self._record("ok")
                self._charge("ok")
                return
            self._record(outcome_of(err))
            self._charge(outcome_of(err))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._record("cancelled")  # the client went away mid-stream
            self._charge("cancelled")
            raise
        finally:
            self.metrics.in_flight.dec()

    async def collect(self) -> Result:
        return await until_disconnect(self.http, self.gathered())

    async def gathered(self) -> Result:
        """``collect`` without watching the client (see ``begin``)."""
        result = Result()
        parts = []
        async for chunk in self.chunks():
            parts.append(chunk.text)
            result.logprobs.extend(chunk.logprobs)
            apply_final(result, chunk)
        result.text = "".join(parts)
        return result

    async def close(self) -> None:
        """Give up a generation that will not be read (another choice of its request failed): its
        stream ends, which gives its slot back."""
        await self._events.aclose()
        self._charge("cancelled")

    def total_duration_ns(self) -> int:
        return int((time.perf_counter() - self.started) * 1e9)
