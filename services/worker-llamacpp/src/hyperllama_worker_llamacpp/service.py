"""WorkerService over gRPC: runs the engine in threads and streams coalesced chunks."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator

import grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.errors import BackendFailed, Cancelled, HyperLlamaError, ModelNotFound

from hyperllama_worker_llamacpp.engine import LoadedModel

log = logging.getLogger(__name__)

_END = object()


def merge_chunks(chunks: list[worker_pb2.GenerateChunk]) -> worker_pb2.GenerateChunk:
    """Coalesce what the engine produced since the last send into one message."""
    if len(chunks) == 1:
        return chunks[0]
    merged = worker_pb2.GenerateChunk()
    merged.CopyFrom(chunks[-1])
    merged.text = "".join(c.text for c in chunks)
    merged.token_count = sum(c.token_count for c in chunks)
    return merged


async def stream_from_thread(
    produce: Iterator[worker_pb2.GenerateChunk], cancel: threading.Event
) -> AsyncIterator[worker_pb2.GenerateChunk]:
    """Drive a blocking generator in a thread; yield everything ready at each wake-up as one chunk."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def run() -> None:
        try:
            for item in produce:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if cancel.is_set():
                    break
        except BaseException as err:  # handed to the event loop, re-raised there
            loop.call_soon_threadsafe(queue.put_nowait, err)
        finally:
            produce.close()  # type: ignore[attr-defined]
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    thread = threading.Thread(target=run, name="generate", daemon=True)
    thread.start()
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            chunks = [c for c in batch if isinstance(c, worker_pb2.GenerateChunk)]
            if chunks:
                yield merge_chunks(chunks)
            for item in batch:
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    return
    finally:
        cancel.set()


class WorkerServicer(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, models: dict[str, LoadedModel], info: worker_pb2.WorkerInfo):
        self.models = models
        self.info = info
        self._running: dict[str, threading.Event] = {}

    def _model(self, name: str) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(
                f"model '{name}' is not served by this worker; it serves {sorted(self.models)}"
            )
        return model

    def snapshot(self) -> worker_pb2.WorkerInfo:
        info = worker_pb2.WorkerInfo()
        info.CopyFrom(self.info)
        info.slots_in_use = len(self._running)
        return info

    async def Generate(
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateChunk]:
        model = self._model(request.model)
        cancel = threading.Event()
        self._running[request.request_id] = cancel
        finished = False
        try:
            async for chunk in stream_from_thread(model.generate(request, cancel), cancel):
                finished = chunk.finish_reason != worker_pb2.FINISH_REASON_UNSPECIFIED
                yield chunk
        except HyperLlamaError:
            raise
        except Exception as err:
            log.exception("generation failed for %s", request.request_id)
            raise BackendFailed(f"llama.cpp failed: {err}") from err
        finally:
            self._running.pop(request.request_id, None)
        if not finished:
            raise Cancelled(f"request {request.request_id} was cancelled")

    async def Embed(
        self, request: worker_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.EmbedResponse:
        model = self._model(request.model)
        return await asyncio.to_thread(model.embed, list(request.inputs), request.truncate)

    async def Info(
        self, request: worker_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.WorkerInfo:
        return self.snapshot()

    async def Cancel(
        self, request: worker_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.CancelResponse:
        cancel = self._running.get(request.request_id)
        if cancel is not None:
            cancel.set()
        return worker_pb2.CancelResponse(cancelled=cancel is not None)
