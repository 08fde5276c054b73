"""TEST DOUBLE: a real gRPC worker process whose "engine" is a script, not a model.

It speaks the Worker API and registers with the scheduler like any worker, and emits deterministic
tokens instantly (or with HYPERLLAMA_SCRIPTED_TOKEN_DELAY seconds between them). The prompt (or the last
chat message) tells it how to misbehave:

    crash-before-first-token[:ID]   the process dies before emitting anything
    crash-after-N[:ID]              emits N tokens, then the process dies
    crash-after-final[:ID]          emits the whole answer and its final chunk, then dies
    answer-busy[:ID]                answers "busy" (Overloaded), as a worker whose slots are full
    engine-error[:ID]               answers an engine failure for this request (BackendFailed)
    answer-not-ready[:ID]           answers that its engine is not ready (Unavailable)
    stall                           emits nothing until cancelled
    anything else                   emits "<worker_id> t0 t1 ..." (max_tokens tokens, default 5)

With ":ID" only the worker of that id misbehaves; the others serve the request normally. Embedding
inputs work the same way for crash-before-first-token, answer-busy and stall; "dim-N" makes N-float vectors.

HYPERLLAMA_SCRIPTED_MODELS (comma-separated) serves several models, each with
HYPERLLAMA_SCRIPTED_SLOTS slots of its own; HYPERLLAMA_SCRIPTED_HEARTBEAT_SECONDS sets the heartbeat.
Like a real worker it answers "busy" when its slots are all taken. HYPERLLAMA_SCRIPTED_SERVED_LOG
names a file it appends every request id it starts serving to (one line each).
HYPERLLAMA_SCRIPTED_CACHE_TOKENS is the prompt cache it reports (prefix_cache_tokens; 0 = unknown).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter

from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.errors import BackendFailed, Overloaded, Unavailable
from hyperllama_common.grpc_server import GrpcServer
from hyperllama_common.registration import deregister, heartbeat_loop

MODELS = os.environ.get("HYPERLLAMA_SCRIPTED_MODELS", "scripted:1").split(",")


def misbehaves(text: str, what: str, me: str) -> bool:
    """Whether ``text`` asks for ``what`` from this worker (no ":ID", or this worker's id)."""
    found = re.search(rf"{what}(?::(\S+))?", text)
    return bool(found) and found.group(1) in (None, me)  # type: ignore[union-attr]


class ScriptedWorker(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, info: worker_pb2.WorkerInfo, delay: float, served_log: str = ""):
        self.info = info
        self.delay = delay
        self.served_log = served_log
        self.running: set[str] = set()
        self.per_model: Counter[str] = Counter()

    def snapshot(self) -> worker_pb2.WorkerInfo:
        info = worker_pb2.WorkerInfo()
        info.CopyFrom(self.info)
        info.slots_in_use = len(self.running)
        for m in info.models:
            m.slots_in_use = self.per_model[m.name]
        return info

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        text = (
            request.prompt if request.WhichOneof("input") == "prompt" else request.chat.messages[-1].content
        )
        me = self.info.worker_id
        if misbehaves(text, "answer-busy", me):
            raise Overloaded(f"{me} is busy")
        if misbehaves(text, "engine-error", me):
            raise BackendFailed(f"{me}'s engine failed on this request")
        if misbehaves(text, "answer-not-ready", me):
            raise Unavailable(f"{me}'s engine is not ready")
        own = next(m.slots_total for m in self.info.models if m.name == request.model)
        if (own and self.per_model[request.model] >= own) or len(self.running) >= self.info.slots_total:
            raise Overloaded(f"{me} is busy: all its slots are taken")
        if self.served_log:
            with open(self.served_log, "a") as log:
                log.write(request.request_id + "\n")
        self.running.add(request.request_id)
        self.per_model[request.model] += 1
        try:
            if misbehaves(text, "crash-before-first-token", me):
                os._exit(17)
            if "stall" in text:
                await asyncio.Event().wait()  # until the call is cancelled
            crash_after = re.search(r"crash-after-(\d+)(?::(\S+))?", text)
            if crash_after and crash_after.group(2) not in (None, me):
                crash_after = None
            n = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else 5
            yield worker_pb2.GenerateChunk(text=me, token_count=1)
            for i in range(n - 1):
                if self.delay:
                    await asyncio.sleep(self.delay)
                if crash_after and i + 1 >= int(crash_after.group(1)):
                    os._exit(17)
                yield worker_pb2.GenerateChunk(text=f" t{i}", token_count=1)
            yield worker_pb2.GenerateChunk(
                finish_reason=worker_pb2.FINISH_REASON_LENGTH,
                usage=worker_pb2.Usage(prompt_tokens=len(text.split()), completion_tokens=n),
            )
            if misbehaves(text, "crash-after-final", me):
                await asyncio.sleep(0.3)  # the final chunk leaves the socket first
                os._exit(17)
        finally:
            self.running.discard(request.request_id)
            self.per_model[request.model] -= 1

    async def Embed(self, request, context):  # type: ignore[no-untyped-def]
        me = self.info.worker_id
        joined = " ".join(request.inputs)
        if misbehaves(joined, "answer-busy", me):
            raise Overloaded(f"{me} is busy")
        if misbehaves(joined, "crash-before-first-token", me):
            os._exit(17)
        if "stall" in joined:
            await asyncio.Event().wait()
        dim = re.search(r"dim-(\d+)", joined)
        n = int(dim.group(1)) if dim else 2
        return worker_pb2.EmbedResponse(
            embeddings=[
                worker_pb2.Embedding(values=[float(len(t))] + [1.0] * (n - 1)) for t in request.inputs
            ],
            prompt_tokens=len(request.inputs),
        )

    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        return self.snapshot()

    async def Cancel(self, request, context):  # type: ignore[no-untyped-def]
        return worker_pb2.CancelResponse(cancelled=False)


async def main() -> None:
    scheduler = os.environ["HYPERLLAMA_WORKER_SCHEDULER_ADDRESS"]
    worker_id = os.environ["HYPERLLAMA_WORKER_WORKER_ID"]
    server = GrpcServer(f"127.0.0.1:{os.environ.get('HYPERLLAMA_WORKER_PORT', '0')}", "scripted", 5)
    slots = int(os.environ.get("HYPERLLAMA_SCRIPTED_SLOTS", "1"))
    info = worker_pb2.WorkerInfo(
        worker_id=worker_id,
        engine="scripted",
        pool="test",
        slots_total=slots * len(MODELS),
        ready=True,
        models=[
            # One model: the worker's slots are shared (slots_total 0); several: slots of their own.
            worker_pb2.ModelInfo(
                name=m,
                family="test",
                format="none",
                slots_total=slots if len(MODELS) > 1 else 0,
                prefix_cache_tokens=int(os.environ.get("HYPERLLAMA_SCRIPTED_CACHE_TOKENS", "0")),
            )
            for m in MODELS
        ],
        capabilities=["generate", "chat", "embed"],
    )
    worker = ScriptedWorker(
        info,
        float(os.environ.get("HYPERLLAMA_SCRIPTED_TOKEN_DELAY", "0")),
        os.environ.get("HYPERLLAMA_SCRIPTED_SERVED_LOG", ""),
    )
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(worker, server.server)
    port = await server.start()
    info.address = f"127.0.0.1:{port}"
    server.install_signal_handlers()
    every = float(os.environ.get("HYPERLLAMA_SCRIPTED_HEARTBEAT_SECONDS", "0.5"))
    beats = asyncio.create_task(heartbeat_loop(scheduler, worker.snapshot, every))
    await server.wait_for_stop_signal()
    beats.cancel()
    await deregister(scheduler, worker_id)
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
