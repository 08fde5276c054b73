"""A full llama.cpp worker answers "busy" (the real worker process and the real model).

The worker is the authority on its capacity: with every slot taken by a running generation, the next
one is refused at once with RESOURCE_EXHAUSTED ("ask again"), while the worker stays ready and keeps
serving. A slot is free again by the time its caller sees the stream end, so a caller that sends its
next request straight after one ends is never told busy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from hyperllama_common.errors import Overloaded, from_rpc_error
from hyperllama_common.healthcheck import serving

MODEL = "smollm2:135m"
NUM_CTX = 1024

pytestmark = pytest.mark.asyncio(loop_scope="module")

Stub = worker_pb2_grpc.WorkerServiceStub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def workers(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Callable[[int], Awaitable[Stub]]]:
    """Starts (once per slot count) a worker process with that many slots, talked to directly."""
    cluster = LocalCluster(log_dir=Path(tmp_path_factory.mktemp("busy")))
    channels: list[grpc.aio.Channel] = []
    stubs: dict[int, Stub] = {}

    async def start(slots: int) -> Stub:
        if slots not in stubs:
            port = free_port()
            # No scheduler is needed to talk to a worker directly; its heartbeats just fail.
            proc = cluster.start_worker(
                f"busy-{slots}",
                port=str(port),
                slots=str(slots),
                num_ctx=str(NUM_CTX),
                scheduler_address=f"127.0.0.1:{free_port()}",
            )
            await asyncio.to_thread(
                wait_for, lambda: serving(f"127.0.0.1:{port}", 2), "the worker", proc, 120
            )
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            stubs[slots] = Stub(channels[-1])
        return stubs[slots]

    yield start
    for channel in channels:
        await channel.close()
    cluster.stop()


def chat(
    rid: str, max_tokens: int, text: str = "Count to a million.", **sampling
) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(
        request_id=rid,
        model=MODEL,
        chat=worker_pb2.ChatConversation(messages=[worker_pb2.ChatMessage(role="user", content=text)]),
        sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, **sampling),
    )


def long_stream(stub: Stub, rid: str):  # type: ignore[no-untyped-def]
    """A generation that runs until it is cancelled (it may use the whole context)."""
    return stub.Generate(chat(rid, 100_000, ignore_eos=True), timeout=120)


async def refused_busy(stub: Stub, rid: str) -> None:
    call = stub.Generate(chat(rid, 8), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "busy" in (caught.value.details() or "")
    # What the scheduler reads: the worker said "ask again", it did not fail.
    assert isinstance(from_rpc_error(caught.value), Overloaded)


async def slots_in_use(stub: Stub) -> int:
    return (await stub.Info(worker_pb2.InfoRequest(), timeout=5)).slots_in_use


async def until_in_use_below(stub: Stub, n: int) -> None:
    deadline = time.monotonic() + 10
    while await slots_in_use(stub) >= n:
        assert time.monotonic() < deadline, "the worker kept the slot of a cancelled stream"
        await asyncio.sleep(0.02)


async def test_a_full_worker_refuses_at_once_stays_ready_and_frees_slots_as_streams_end(workers):
    stub = await workers(2)
    running = [long_stream(stub, "long-0"), long_stream(stub, "long-1")]
    for call in running:
        assert (await call.read()).text  # both are decoding: every slot is taken

    await refused_busy(stub, "third")
    info = await stub.Info(worker_pb2.InfoRequest(), timeout=5)
    assert info.ready and info.slots_total == 2 and info.slots_in_use == 2
    assert info.models[0].slots_in_use == 2

    # Bad input is still bad input, and a request that takes no slot is still answered.
    bad_role = chat("bad", 8)
    bad_role.chat.messages[0].role = "wizard"
    bad = stub.Generate(bad_role, timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bad.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    nothing = [c async for c in stub.Generate(chat("zero", 0), timeout=30)]
    assert nothing[-1].finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert nothing[-1].usage.completion_tokens == 0
    # Neither left a count behind.
    await refused_busy(stub, "fourth")
    assert await slots_in_use(stub) == 2

    # Cancelled through the Worker API: once the caller sees its stream end, the slot is free.
    await stub.Cancel(worker_pb2.CancelRequest(request_id="long-0"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await running[0].read() is not grpc.aio.EOF:
            pass
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    running[0] = long_stream(stub, "long-2")
    assert (await running[0].read()).text
    await refused_busy(stub, "fifth")

    # Cancelled by the caller going away: the worker frees the slot by itself.
    running[1].cancel()
    await until_in_use_below(stub, 2)
    running[1] = long_stream(stub, "long-3")
    assert (await running[1].read()).text
    await refused_busy(stub, "sixth")

    for call in running:
        call.cancel()
    await until_in_use_below(stub, 1)
    text = "".join([c.text async for c in stub.Generate(chat("after", 4, ignore_eos=True), timeout=30)])
    assert text


async def test_a_request_sent_right_after_a_stream_ends_is_never_busy(workers):
    stub = await workers(1)
    for i in range(20):
        chunks = [c async for c in stub.Generate(chat(f"seq-{i}", 3, ignore_eos=True), timeout=30)]
        assert chunks[-1].finish_reason == worker_pb2.FINISH_REASON_LENGTH
        assert chunks[-1].usage.completion_tokens == 3


async def test_a_request_sent_as_soon_as_the_final_chunk_arrives_is_never_busy(workers):
    """Stricter than waiting for the stream's status: the next request goes out the moment the chunk
    carrying the finish reason has been read."""
    stub = await workers(1)
    call = stub.Generate(chat("chain-0", 3, ignore_eos=True), timeout=30)
    for i in range(1, 22):
        chunk = await call.read()  # a busy answer would raise here
        while chunk is not grpc.aio.EOF and chunk.finish_reason == worker_pb2.FINISH_REASON_UNSPECIFIED:
            chunk = await call.read()
        assert chunk is not grpc.aio.EOF, "the stream ended without a finish reason"
        assert chunk.usage.completion_tokens == 3
        previous = call
        if i < 21:
            call = stub.Generate(chat(f"chain-{i}", 3, ignore_eos=True), timeout=30)
        assert await previous.read() is grpc.aio.EOF
        assert await previous.code() == grpc.StatusCode.OK
