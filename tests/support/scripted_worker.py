"""TEST DOUBLE: a real gRPC worker process whose "engine" is a script, not a model.

It speaks the Worker API and registers with the scheduler like any worker, and emits deterministic
tokens instantly (or with HYPERLLAMA_SCRIPTED_TOKEN_DELAY seconds between them). The prompt (or the last
chat message) tells it how to misbehave:

    crash-before-first-token[:ID]   the process dies before emitting anything
    crash-after-N[:ID]              emits N tokens, then the process dies
    stall                           emits nothing until cancelled
    anything else                   emits "<worker_id> t0 t1 ..." (max_tokens tokens, default 5)

With ":ID" only the worker of that id misbehaves; the others serve the request normally.
"""

from __future__ import annotations

import asyncio
import os
import re

from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.grpc_server import GrpcServer
from hyperllama_common.registration import deregister, heartbeat_loop

MODEL = os.environ.get("HYPERLLAMA_SCRIPTED_MODEL", "scripted:1")


class ScriptedWorker(worker_pb2_grpc.WorkerServiceServicer):
    def __init__(self, info: worker_pb2.WorkerInfo, delay: float):
        self.info = info
        self.delay = delay
        self.running: set[str] = set()

    def snapshot(self) -> worker_pb2.WorkerInfo:
        info = worker_pb2.WorkerInfo()
        info.CopyFrom(self.info)
        info.slots_in_use = len(self.running)
        return info

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        text = (
            request.prompt if request.WhichOneof("input") == "prompt" else request.chat.messages[-1].content
        )
        me = self.info.worker_id
        self.running.add(request.request_id)
        try:
            crash_now = re.search(r"crash-before-first-token(?::(\S+))?", text)
            if crash_now and crash_now.group(1) in (None, me):
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
        finally:
            self.running.discard(request.request_id)

    async def Embed(self, request, context):  # type: ignore[no-untyped-def]
        return worker_pb2.EmbedResponse(
            embeddings=[worker_pb2.Embedding(values=[float(len(t)), 1.0]) for t in request.inputs],
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
    info = worker_pb2.WorkerInfo(
        worker_id=worker_id,
        engine="scripted",
        pool="test",
        slots_total=int(os.environ.get("HYPERLLAMA_SCRIPTED_SLOTS", "1")),
        ready=True,
        models=[worker_pb2.ModelInfo(name=MODEL, family="test", format="none")],
        capabilities=["generate", "chat", "embed"],
    )
    worker = ScriptedWorker(info, float(os.environ.get("HYPERLLAMA_SCRIPTED_TOKEN_DELAY", "0")))
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(worker, server.server)
    port = await server.start()
    info.address = f"127.0.0.1:{port}"
    server.install_signal_handlers()
    beats = asyncio.create_task(heartbeat_loop(scheduler, worker.snapshot, 0.5))
    await server.wait_for_stop_signal()
    beats.cancel()
    await deregister(scheduler, worker_id)
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
