"""The control plane between real processes: placement, leases, re-dispatch, failures, deadlines,
cancellation, queue positions; tokens flow from the worker to the caller (the gateway's dispatch).

Workers here are the scripted test double (tests/support/scripted_worker.py): real gRPC worker
processes that can be told to crash or stall.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, DeadlineExceeded, ModelNotFound, Overloaded
from hyperllama_scheduler import keys

MODEL = "scripted:1"


def request(prompt: str = "hello", max_tokens: int = 4, rid: str | None = None, deadline_s: float = 30):
    return scheduler_pb2.AcquireRequest(
        request=worker_pb2.GenerateRequest(
            request_id=rid or uuid.uuid4().hex,
            model=MODEL,
            prompt=prompt,
            sampling=worker_pb2.SamplingParams(max_tokens=max_tokens),
        ),
        deadline_unix_ms=int((time.time() + deadline_s) * 1000),
    )


async def collect(h, req, timeout: float = 20):
    text, last, _ = await h.generate(req, timeout)
    return text, last


async def test_stream_comes_from_the_worker_with_finish_and_usage(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("w1")
    await h.wait_workers(1)
    text, last = await collect(h, request(max_tokens=4))
    assert text == "w1 t0 t1 t2"
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 4
    # The lease is given back when the stream ends (in the background).
    await until(lambda: _leases_held(redis_client, "w1", 0))
    assert await redis_client.keys("hl:req*") == []


async def test_unknown_model_lists_the_available_ones(scheduler_factory):
    h = scheduler_factory()
    h.add_worker("w1")
    await h.wait_workers(1)
    req = request()
    req.request.model = "nope:1"
    with pytest.raises(ModelNotFound) as err:
        await collect(h, req)
    assert "scripted:1" in err.value.message


async def test_worker_dying_before_first_token_is_replaced_exactly_once(scheduler_factory):
    h = scheduler_factory()
    # "a" has more free slots, so the dispatcher sends the request there first.
    h.add_worker("a", HYPERLLAMA_SCRIPTED_SLOTS="4")
    h.add_worker("b")
    await h.wait_workers(2)
    text, last = await collect(h, request("crash-before-first-token:a", max_tokens=3))
    assert text == "b t0 t1"  # served once, by b
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert not h.process("a").alive()
    # "a" gets no more work: the next request goes to b although a had more slots.
    text, _ = await collect(h, request(max_tokens=2))
    assert text == "b t0"


async def test_worker_dying_mid_stream_gives_an_explicit_error(scheduler_factory):
    h = scheduler_factory()
    # A pause between tokens lets the sent ones leave the socket before the process dies.
    h.add_worker("a", HYPERLLAMA_SCRIPTED_TOKEN_DELAY="0.2")
    await h.wait_workers(1)
    received = []
    started = time.monotonic()
    with pytest.raises(BackendFailed) as err:
        async for chunk in h.dispatch.generate(request("crash-after-2", max_tokens=10), 20):
            received.append(chunk)
    assert time.monotonic() - started < 10  # not a hang until the deadline
    assert [c.text for c in received] == ["a", " t0"]
    assert all(c.finish_reason == worker_pb2.FINISH_REASON_UNSPECIFIED for c in received)
    assert "mid-stream" in err.value.message


async def test_deadline_passes_while_queued(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    with pytest.raises(DeadlineExceeded):
        await collect(h, request(rid="late", deadline_s=1.0), timeout=1.0)
    await until(lambda: _zcard_is(redis_client, 0))
    assert not await redis_client.exists(keys.request("late"), keys.request_lease("late"))
    stall.cancel()


async def test_cancelling_a_queued_request_removes_it(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    queued = asyncio.ensure_future(collect(h, request(rid="queued"), timeout=30))
    await until(lambda: _zcard_is(redis_client, 1))
    queued.cancel()
    await until(lambda: _zcard_is(redis_client, 0))
    assert not await redis_client.exists(keys.request("queued"))
    stall.cancel()


async def test_cancelling_a_running_request_frees_the_slot(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h, request("stall"), timeout=60))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    stall.cancel()
    # With the slot still held this would wait for the stalled stream's 60 s deadline.
    text, _ = await collect(h, request(max_tokens=2), timeout=10)
    assert text == "a t0"


async def test_full_queue_is_refused_with_retry_after(scheduler_factory, redis_client):
    h = scheduler_factory(queue_max_per_model="1", retry_after_seconds="4")
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    waiting = asyncio.ensure_future(collect(h, request(), timeout=30))
    await until(lambda: _zcard_is(redis_client, 1))
    with pytest.raises(Overloaded) as err:
        await collect(h, request())
    assert err.value.retry_after == 4
    assert await redis_client.zcard(keys.queue(MODEL)) == 1
    stall.cancel()
    text, _ = await waiting
    assert text.startswith("a")


async def test_a_scheduler_restart_cuts_no_stream_and_queued_requests_keep_their_place(
    scheduler_factory, redis_client
):
    h = scheduler_factory()
    h.add_worker("a", HYPERLLAMA_SCRIPTED_TOKEN_DELAY="0.1")
    await h.wait_workers(1)
    running = asyncio.ensure_future(collect(h, request(max_tokens=40), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    first = asyncio.ensure_future(collect(h, request(rid="first", max_tokens=2), timeout=30))
    await until(lambda: _zcard_is(redis_client, 1))
    second = asyncio.ensure_future(collect(h, request(rid="second", max_tokens=2), timeout=30))
    await until(lambda: _zcard_is(redis_client, 2))
    score = await redis_client.zscore(keys.queue(MODEL), "first")

    old = h.process("scheduler")
    old.kill()  # SIGKILL: no clean-up of any kind
    h.cluster.processes.remove(old)
    # A new scheduler on the same address; the callers' retries find it, with the same ids.
    h.cluster.start_scheduler(
        port=int(h.cluster.scheduler_address.rsplit(":", 1)[1]), worker_lease_seconds="2"
    )
    await until(lambda: _lease_renewed(redis_client, "first"))  # the retried call took it over
    assert await redis_client.zscore(keys.queue(MODEL), "first") == score

    # The running stream never passed through the scheduler: it ends normally.
    text, last = await running
    assert text == "a" + "".join(f" t{i}" for i in range(39))
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert (await first)[0] == "a t0"
    assert (await second)[0] == "a t0"
    assert await redis_client.zcard(keys.queue(MODEL)) == 0
    await until(lambda: _no_request_keys(redis_client))


async def test_queued_requests_learn_their_place(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h, request("stall"), timeout=30))
    await until(lambda: queue_depth_and_busy(h, redis_client, busy=True))
    heard: dict[str, list[scheduler_pb2.QueuePosition]] = {"one": [], "two": []}

    async def follow(rid: str, prompt: str) -> str:
        text = []
        async for event in h.dispatch.generate(request(prompt, rid=rid, max_tokens=2), 30):
            if isinstance(event, scheduler_pb2.QueuePosition):
                heard[rid].append(event)
            else:
                text.append(event.text)
        return "".join(text)

    one = asyncio.ensure_future(follow("one", "stall"))
    await until(lambda: _zcard_is(redis_client, 1))
    two = asyncio.ensure_future(follow("two", "hello"))
    await until(lambda: _zcard_is(redis_client, 2))
    status = await h.stub.QueueStatus(scheduler_pb2.QueueStatusRequest(), timeout=2)
    (entry,) = [q for q in status.models if q.model == MODEL]
    assert (entry.depth, entry.slots_total, entry.slots_leased) == (2, 1, 1)
    assert entry.oldest_wait_ms >= 0
    assert heard["one"][0].position == 0
    assert (heard["two"][0].position, heard["two"][0].depth) == (1, 2)

    stall.cancel()  # "one" runs (and stalls); "two" is next in line now, and hears it

    async def two_is_next() -> bool:
        return bool(heard["two"]) and heard["two"][-1].position == 0

    await until(two_is_next)
    one.cancel()
    assert await two == "a t0"


async def _leases_held(redis_client, worker: str, n: int) -> bool:
    return await redis_client.zcard(keys.leases(worker, MODEL)) == n


async def _no_request_keys(redis_client) -> bool:
    return await redis_client.keys("hl:req*") == []


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
