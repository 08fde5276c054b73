"""The scheduler between real processes: dispatch, re-dispatch, failures, deadlines, cancellation.

Workers here are the scripted test double (tests/support/scripted_worker.py): real gRPC worker
processes that can be told to crash or stall.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_scheduler import keys

MODEL = "scripted:1"


def request(prompt: str = "hello", max_tokens: int = 4, rid: str | None = None, deadline_s: float = 30):
    return scheduler_pb2.GenerateRequest(
        request=worker_pb2.GenerateRequest(
            request_id=rid or uuid.uuid4().hex,
            model=MODEL,
            prompt=prompt,
            sampling=worker_pb2.SamplingParams(max_tokens=max_tokens),
        ),
        deadline_unix_ms=int((time.time() + deadline_s) * 1000),
    )


async def collect(stub, req, timeout: float = 20):
    chunks = [c async for c in stub.Generate(req, timeout=timeout)]
    return "".join(c.text for c in chunks), chunks[-1]


async def test_stream_is_relayed_with_finish_and_usage(scheduler_factory):
    h = scheduler_factory()
    h.add_worker("w1")
    await h.wait_workers(1)
    text, last = await collect(h.stub, request(max_tokens=4))
    assert text == "w1 t0 t1 t2"
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 4


async def test_unknown_model_lists_the_available_ones(scheduler_factory):
    h = scheduler_factory()
    h.add_worker("w1")
    await h.wait_workers(1)
    req = request()
    req.request.model = "nope:1"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(h.stub, req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "scripted:1" in err.value.details()


async def test_worker_dying_before_first_token_is_replaced_exactly_once(scheduler_factory):
    h = scheduler_factory()
    # "a" has more free slots, so the dispatcher sends the request there first.
    h.add_worker("a", HYPERLLAMA_SCRIPTED_SLOTS="4")
    h.add_worker("b")
    await h.wait_workers(2)
    text, last = await collect(h.stub, request("crash-before-first-token:a", max_tokens=3))
    assert text == "b t0 t1"  # served once, by b
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert not h.process("a").alive()
    # "a" gets no more work: the next request goes to b although a had more slots.
    text, _ = await collect(h.stub, request(max_tokens=2))
    assert text == "b t0"


async def test_worker_dying_mid_stream_gives_an_explicit_error(scheduler_factory):
    h = scheduler_factory()
    # A pause between tokens lets the sent ones leave the socket before the process dies.
    h.add_worker("a", HYPERLLAMA_SCRIPTED_TOKEN_DELAY="0.2")
    await h.wait_workers(1)
    received = []
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for chunk in h.stub.Generate(request("crash-after-2", max_tokens=10), timeout=20):
            received.append(chunk)
    assert time.monotonic() - started < 10  # not a hang until the deadline
    assert [c.text for c in received] == ["a", " t0"]
    assert all(c.finish_reason == worker_pb2.FINISH_REASON_UNSPECIFIED for c in received)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "mid-stream" in err.value.details()


async def test_deadline_passes_while_queued(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h.stub, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(h.stub, request(rid="late", deadline_s=1.0))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await redis_client.zcard(keys.queue(MODEL)) == 0
    assert not await redis_client.exists(keys.request("late"), keys.request_lease("late"))
    stall.cancel()


async def test_cancelling_a_queued_request_removes_it(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h.stub, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    queued = asyncio.ensure_future(collect(h.stub, request(rid="queued"), timeout=30))
    await until(lambda: _zcard_is(redis_client, 1))
    queued.cancel()
    await until(lambda: _zcard_is(redis_client, 0))
    assert not await redis_client.exists(keys.request("queued"))
    stall.cancel()


async def test_cancelling_a_running_request_frees_the_slot(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h.stub, request("stall"), timeout=60))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    stall.cancel()
    # With the slot still held this would wait for the stalled stream's 60 s deadline.
    text, _ = await collect(h.stub, request(max_tokens=2), timeout=10)
    assert text == "a t0"


async def test_full_queue_is_refused_with_retry_after(scheduler_factory, redis_client):
    h = scheduler_factory(queue_max_per_model="1", retry_after_seconds="4")
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h.stub, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    waiting = asyncio.ensure_future(collect(h.stub, request(), timeout=30))
    await until(lambda: _zcard_is(redis_client, 1))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await collect(h.stub, request())
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("hl-retry-after", "4") in tuple(err.value.trailing_metadata())
    assert await redis_client.zcard(keys.queue(MODEL)) == 1
    stall.cancel()
    text, _ = await waiting
    assert text.startswith("a")


async def test_queued_requests_survive_a_scheduler_restart(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h.stub, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    queued = asyncio.ensure_future(collect(h.stub, request(rid="keep"), timeout=30))
    await until(lambda: _zcard_is(redis_client, 1))
    score = await redis_client.zscore(keys.queue(MODEL), "keep")

    old = h.process("scheduler")
    old.kill()  # SIGKILL: no clean-up of any kind
    h.cluster.processes.remove(old)
    for task in (stall, queued):
        with pytest.raises(grpc.aio.AioRpcError):
            await task
    assert await redis_client.zscore(keys.queue(MODEL), "keep") == score

    # A new scheduler on the same address; the worker's heartbeats find it again.
    h.cluster.start_scheduler(
        port=int(h.cluster.scheduler_address.rsplit(":", 1)[1]), worker_lease_seconds="2"
    )
    await h.wait_workers(1)
    # The worker is busy again, and the caller retries with the same id (as the gateway does):
    # admission finds the request queued and it keeps its place.
    stall = asyncio.ensure_future(collect(h.stub, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    await redis_client.pexpire(keys.request_lease("keep"), 3_000)
    retried = asyncio.ensure_future(collect(h.stub, request(rid="keep", max_tokens=2)))
    await until(lambda: _lease_renewed(redis_client, "keep"))  # the retry was admitted
    assert await redis_client.zscore(keys.queue(MODEL), "keep") == score
    assert await redis_client.zcard(keys.queue(MODEL)) == 1
    stall.cancel()
    text, _ = await retried
    assert text == "a t0"
    assert await redis_client.zcard(keys.queue(MODEL)) == 0
    assert await redis_client.keys("hl:req*") == []


async def queue_depth_and_busy(h, redis_client, busy: bool) -> bool:
    listed = await h.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2)
    return any((w.slots_in_use > 0) == busy for w in listed.workers)


async def _lease_renewed(redis_client, rid: str) -> bool:
    # Admission sets the lease to its full 10 s again.
    return await redis_client.pttl(keys.request_lease(rid)) > 5_000


async def _zcard_is(redis_client, n: int) -> bool:
    return await redis_client.zcard(keys.queue(MODEL)) == n


async def until(check, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.05)
