"""WorkerService over gRPC: hands requests to the batch engines and streams coalesced chunks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.errors import (
    Cancelled,
    HyperLlamaError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    Unavailable,
)
from hyperllama_common.tracing import Tracing

from hyperllama_worker_llamacpp.batch_engine import BatchEngine
from hyperllama_worker_llamacpp.batching import Sequence
from hyperllama_worker_llamacpp.model_set import ModelSet

log = logging.getLogger(__name__)


def merge_chunks(chunks: list[worker_pb2.GenerateChunk]) -> worker_pb2.GenerateChunk:
    """Coalesce what the engine produced since the last send into one message."""
    if len(chunks) == 1:
        return chunks[0]
    merged = worker_pb2.GenerateChunk()
    merged.CopyFrom(chunks[-1])
    merged.text = "".join(c.text for c in chunks)
    merged.token_count = sum(c.token_count for c in chunks)
    if not merged.usage.prompt_tokens:  # the first text chunk's count of prompt tokens
        merged.usage.prompt_tokens = max(c.usage.prompt_tokens for c in chunks)
    if any(c.logprobs for c in chunks[:-1]):
        del merged.logprobs[:]
        for c in chunks:
            merged.logprobs.extend(c.logprobs)
    return merged


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(
        self,
        models: ModelSet,
        info: worker_pb2.WorkerInfo,
        tracing: Tracing,
    ):
        self.models = models
        self.engines = models.engines  # the same dicts: models loaded later are served at once
        self.embedders = models.embedders
        self.tracing = tracing
        self.info = info
        self._running: dict[str, tuple[BatchEngine, Sequence]] = {}
        # Generations holding a slot, per model, counted by the handlers: one is admitted before it
        # reaches its engine and let go before its caller sees the stream end, so a caller that sends
        # its next request right after a stream ends always finds the slot free. The engine frees
        # its own slot a decode step later at most (a cancel); a request admitted in between waits
        # in the engine's queue for that step.
        self._admitted: dict[str, int] = {}
        # Calls using a model outside a slot (tokenizing a prompt, embedding): an unload waits for
        # them too, since it frees what they use.
        self._preparing: dict[str, int] = {}

    def _engine(self, name: str) -> BatchEngine:
        engine = self.engines.get(name)
        if engine is None:
            raise ModelNotFound(
                f"model '{name}' is not served by this worker; it serves {sorted(self.engines)}"
            )
        if not engine.alive:
            raise Unavailable(
                f"model '{name}' cannot be served here: its engine has stopped ({engine.failure})"
            )
        return engine

    @property
    def ready(self) -> bool:
        """False from the moment any decode loop has died: the worker is about to exit."""
        return all(e.alive for e in self.engines.values())

    def snapshot(self) -> worker_pb2.WorkerInfo:
        """WorkerInfo with live numbers: slots per model (each model has its own) and their sums."""
        info = worker_pb2.WorkerInfo()
        info.CopyFrom(self.info)
        del info.models[:]
        for engine in self.engines.values():
            model = info.models.add()
            model.CopyFrom(engine.model.info)
            model.slots_total = engine.slots
            model.slots_in_use = self._admitted.get(model.name, 0)
            model.prefix_cache_tokens = engine.planner.cache_capacity
        info.loading.extend(self.models.loading.values())
        info.memory_budget_bytes = self.models.budget_bytes
        info.memory_used_bytes = self.models.used_bytes
        info.kv_tokens_per_model = self.models.kv_tokens
        info.overhead_bytes_per_model = self.models.overhead_bytes
        if self.models.source is not None:
            info.blobs.extend(self.models.source.cached_digests())
        info.slots_total = sum(m.slots_total for m in info.models)
        info.slots_in_use = sum(m.slots_in_use for m in info.models)
        info.ready = self.info.ready and self.ready
        return info

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        engine = self._engine(request.model)
        queue: asyncio.Queue[object] = asyncio.Queue()
        emit = queue.put_nowait  # the engine calls it on this event loop
        span = self.tracing.tracer.start_span(
            "llama.generate", attributes={"gen_ai.request.model": request.model}
        )
        self._preparing[request.model] = self._preparing.get(request.model, 0) + 1
        try:
            seq = await asyncio.to_thread(engine.prepare, request, emit)
        except HyperLlamaError as err:
            engine.metrics.request("client_error")
            span.record_exception(err)
            span.end()
            raise
        finally:
            self._preparing[request.model] -= 1
        held = seq.limit > 0  # max_tokens 0 is answered without a slot
        if held:
            if self._admitted.get(request.model, 0) >= engine.slots:
                seq.state.sampler.close()
                span.set_attribute("hyperllama.outcome", "busy")
                span.end()
                raise Overloaded(
                    f"model '{request.model}' on worker {self.info.worker_id} is busy: all "
                    f"{engine.slots} slots are taken; ask again"
                )
            self._admitted[request.model] = self._admitted.get(request.model, 0) + 1
        try:
            engine.submit(seq)
        except HyperLlamaError as err:  # the engine stopped since _engine() looked
            if held:
                self._admitted[request.model] -= 1
            span.record_exception(err)
            span.end()
            raise
        self._running[request.request_id] = (engine, seq)
        finished = False
        outcome = "cancelled"
        try:
            while not finished:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                chunks = [i for i in items if isinstance(i, worker_pb2.GenerateChunk)]
                if chunks:
                    merged = merge_chunks(chunks)
                    finished = merged.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED
                    if finished:
                        # The engine freed the slot before it sent the final chunk: count it free
                        # before the caller can see that chunk and send its next request.
                        if held:
                            self._admitted[request.model] -= 1
                            held = False
                        span.set_attributes(
                            {
                                "gen_ai.usage.input_tokens": merged.usage.prompt_tokens,
                                "gen_ai.usage.output_tokens": merged.usage.completion_tokens,
                                "hyperllama.cached_prompt_tokens": merged.usage.cached_prompt_tokens,
                                "hyperllama.slot": seq.slot,
                            }
                        )
                    yield merged
                for item in items:
                    if isinstance(item, Exception):
                        outcome = "cancelled" if isinstance(item, Cancelled) else "failed"
                        raise item
            outcome = "ok"
        finally:
            span.set_attribute("hyperllama.outcome", outcome)
            span.end()
            engine.metrics.request(outcome)
            self._running.pop(request.request_id, None)
            if held:
                self._admitted[request.model] -= 1
            if not finished:
                engine.cancel(seq)  # the caller went away: stop decoding, free the slot

    async def Embed(
        self, request: worker_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedResponse:
        self._engine(request.model)  # the model is served here and its engine is alive
        self._preparing[request.model] = self._preparing.get(request.model, 0) + 1
        try:
            return await self.embedders[request.model].embed(
                list(request.inputs), request.truncate, [list(t.ids) for t in request.token_inputs]
            )
        finally:
            self._preparing[request.model] -= 1

    async def Info(
        self, request: worker_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerInfo:
        return self.snapshot()

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.CancelResponse:
        running = self._running.get(request.request_id)
        if running is not None:
            running[0].cancel(running[1])
        return worker_pb2.CancelResponse(cancelled=running is not None)

    async def Load(
        self, request: worker_pb2.LoadRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.LoadResponse:
        if not request.model:
            raise InvalidRequest("model is required", param="model")
        await self.models.load(request.model, request.digest)
        return worker_pb2.LoadResponse(worker=self.snapshot())

    async def Unload(
        self, request: worker_pb2.UnloadRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.UnloadResponse:
        busy = self._admitted.get(request.model, 0) + self._preparing.get(request.model, 0)
        await self.models.unload(request.model, busy)
        self._admitted.pop(request.model, None)
        return worker_pb2.UnloadResponse(worker=self.snapshot())
