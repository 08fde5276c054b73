"""WorkerService backed by an engine's OpenAI-compatible server.

Text from the engine passes through StopStringFilter even though the engine is given the stop strings
too: the engine stops early (saves compute) and the filter guarantees that no part of a stop string
reaches the client, whatever the engine's streaming does with partial matches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.errors import (
    BackendFailed,
    Cancelled,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from hyperllama_common.textstream import StopStringFilter
from hyperllama_common.worker_metrics import ModelMetrics

from hyperllama_worker_base.adapter import EngineAdapter
from hyperllama_worker_base.openai_client import EngineClient
from hyperllama_worker_base.supervisor import EngineSupervisor

log = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant", "tool"}
# Tokens read past a stop string the worker saw first, waiting for the engine to stop by itself.
_DRAIN_AFTER_STOP = 8
FINISH = {"stop": worker_pb2.FINISH_REASON_STOP, "length": worker_pb2.FINISH_REASON_LENGTH}


@dataclass
class Running:
    task: asyncio.Task[Any] | None
    cancel_requested: bool = False


@dataclass
class Progress:
    """What one generation has seen of the engine's stream so far."""

    produced: int = 0
    prompt_tokens: int = 0
    engine_completion_tokens: int | None = None
    finish: int = worker_pb2.FINISH_REASON_UNSPECIFIED
    first_token_ns: int = 0
    texts: list[str] = field(default_factory=list)

    def completion_tokens(self) -> int:
        return self.engine_completion_tokens if self.engine_completion_tokens is not None else self.produced


def request_body(req: worker_pb2.GenerateRequest, engine: EngineAdapter, model_id: str) -> tuple[str, dict]:
    """The engine endpoint and body for a request: chat goes to the engine's chat template."""
    body: dict[str, Any] = {
        "model": model_id,
        "stream_options": {"include_usage": True},
        **engine.sampling(req.sampling),
    }
    kind = req.response_format.kind
    if kind == worker_pb2.ResponseFormat.KIND_JSON_OBJECT:
        body["response_format"] = {"type": "json_object"}
    elif kind == worker_pb2.ResponseFormat.KIND_JSON_SCHEMA:
        try:
            schema = json.loads(req.response_format.json_schema)
        except ValueError as err:
            raise InvalidRequest(
                f"the JSON schema is not valid JSON: {err}", param="response_format"
            ) from err
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    if req.HasField("chat"):
        for m in req.chat.messages:
            if m.role not in ROLES:
                raise InvalidRequest(
                    f"unknown role '{m.role}'; expected one of {sorted(ROLES)}", param="messages"
                )
        body["messages"] = [{"role": m.role, "content": m.content} for m in req.chat.messages]
        return "/v1/chat/completions", body
    body["prompt"] = req.prompt
    return "/v1/completions", body


class EngineServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        engine: EngineAdapter,
        client: EngineClient,
        supervisor: EngineSupervisor,
        info: worker_pb2.WorkerInfo,
        model_id: str,
        metrics: ModelMetrics,
    ):
        self.engine = engine
        self.metrics = metrics
        # Generations streaming from the engine now. The engine runs at most slots_total sequences
        # (its --max-num-seqs / --max-batch-size) and queues the rest where nobody can see them:
        # past that the worker answers busy, so the scheduler can ask another worker.
        self._admitted = 0
        metrics.slots_total.set(info.slots_total)
        metrics.slots_in_use.set_function(lambda: self._admitted)
        self.client = client
        self.supervisor = supervisor
        self.info = info
        self.model_id = model_id  # the name the engine's server knows the model by
        self._running: dict[str, Running] = {}

    def snapshot(self) -> worker_pb2.WorkerInfo:
        info = worker_pb2.WorkerInfo()
        info.CopyFrom(self.info)
        info.ready = self.supervisor.ready
        info.slots_in_use = self._admitted
        return info

    def _check_model(self, name: str) -> None:
        served = [m.name for m in self.info.models]
        if name not in served:
            raise ModelNotFound(f"model '{name}' is not served by this worker; it serves {served}")

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        self._check_model(request.model)
        path, body = request_body(request, self.engine, self.model_id)
        if not self.supervisor.ready:
            raise Unavailable(f"the {self.engine.name} engine is not ready: {self.supervisor.last_problem}")
        if self._admitted >= self.info.slots_total:
            raise Overloaded(
                f"model '{request.model}' on worker {self.info.worker_id} is busy: all "
                f"{self.info.slots_total} slots are taken; ask again"
            )
        self._admitted += 1
        running = Running(asyncio.current_task())
        self._running[request.request_id] = running
        arrived = time.perf_counter_ns()
        progress = Progress()
        outcome = "failed"
        try:
            async for chunk in self._relay(path, body, request, progress):
                yield chunk
            outcome = "ok"
        except InvalidRequest:
            outcome = "client_error"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            if running.cancel_requested:
                raise Cancelled(f"request {request.request_id} was cancelled") from None
            raise
        except GeneratorExit:
            outcome = "cancelled"
            raise
        finally:
            # Before the final chunk goes out: its caller may send the next request at once.
            self._admitted -= 1
            if self._running.get(request.request_id) is running:
                self._running.pop(request.request_id)
            self.metrics.request(outcome)
        done = time.perf_counter_ns()
        first = progress.first_token_ns or done
        if progress.first_token_ns:
            self.metrics.ttft.observe((progress.first_token_ns - arrived) / 1e9)
        self.metrics.prompt_tokens.inc(progress.prompt_tokens)
        self.metrics.output_tokens.inc(progress.completion_tokens())
        yield worker_pb2.GenerateChunk(
            finish_reason=progress.finish,
            usage=worker_pb2.Usage(
                prompt_tokens=progress.prompt_tokens, completion_tokens=progress.completion_tokens()
            ),
            timings=worker_pb2.Timings(
                load_duration_ns=0, prompt_eval_duration_ns=first - arrived, eval_duration_ns=done - first
            ),
        )

    async def _relay(
        self, path: str, body: dict[str, Any], request: worker_pb2.GenerateRequest, progress: Progress
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        chat = request.HasField("chat")
        stops = StopStringFilter(list(request.sampling.stop))
        after_stop = 0
        async for event in self.client.stream(path, body, param="messages" if chat else "prompt"):
            usage = event.get("usage")
            if usage:
                progress.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                progress.engine_completion_tokens = int(usage.get("completion_tokens") or 0)
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                if piece:
                    if not progress.produced:
                        progress.first_token_ns = time.perf_counter_ns()
                    progress.produced += 1
                    if stops.stopped:
                        after_stop += 1
                    text, hit = stops.feed(piece)
                    if text:
                        yield worker_pb2.GenerateChunk(text=text, token_count=1)
                    if hit:
                        progress.finish = worker_pb2.FINISH_REASON_STOP
                reason = choice.get("finish_reason")
                if reason and not stops.stopped:
                    if reason not in FINISH:
                        raise BackendFailed(f"the engine ended the request with finish_reason '{reason}'")
                    progress.finish = FINISH[reason]
            # Some engines emit a stop string before they act on it. The engine has the stop strings
            # too, so it ends within a few tokens and its final usage still arrives; an engine that
            # does not is cut off (leaving the stream closes the connection, which aborts it there).
            if after_stop > _DRAIN_AFTER_STOP:
                return
        tail = stops.flush()
        if tail:
            yield worker_pb2.GenerateChunk(text=tail)
        if progress.finish == worker_pb2.FINISH_REASON_UNSPECIFIED:
            raise BackendFailed("the engine's stream ended without a finish_reason")

    async def Embed(
        self, request: worker_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedResponse:
        self._check_model(request.model)
        raise InvalidRequest(
            f"the {self.engine.name} worker does not serve embeddings for '{request.model}' "
            "(its engine runs the model for generation); use a worker with the 'embed' capability",
            param="model",
        )

    async def Info(
        self, request: worker_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerInfo:
        return self.snapshot()

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.CancelResponse:
        running = self._running.get(request.request_id)
        if running is not None and running.task is not None:
            running.cancel_requested = True
            running.task.cancel()
        return worker_pb2.CancelResponse(cancelled=running is not None)
