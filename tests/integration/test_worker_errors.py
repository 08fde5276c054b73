"""What each kind of worker failure leads to, as the gateway reports it to the scheduler when it
gives the lease back: only a broken call or "not ready" makes a worker suspect; "busy" means ask
again; a request that kills workers is not passed on and on; a worker that
dies after its final chunk leaves a complete stream.

Workers are the scripted test double (tests/support/scripted_worker.py). Their heartbeats are slow
here, so a worker the scheduler sidelined would stay sidelined for the whole test.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import BackendFailed, Cancelled, ModelNotFound
from hyperllama_common.grpc_server import MESSAGE_SIZE_OPTIONS
from hyperllama_scheduler import keys
from test_scheduler import collect, request, until

SLOW_BEATS = {"HYPERLLAMA_SCRIPTED_HEARTBEAT_SECONDS": "4"}


def slow_scheduler(scheduler_factory):  # type: ignore[no-untyped-def]
    return scheduler_factory(worker_lease_seconds="12")


async def listed(h) -> list[str]:  # type: ignore[no-untyped-def]
    response = await h.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5)
    return sorted(w.worker_id for w in response.workers)


async def test_an_engine_error_for_one_request_sidelines_no_worker(scheduler_factory):
    h = slow_scheduler(scheduler_factory)
    h.add_worker("a", **SLOW_BEATS)
    h.add_worker("b", **SLOW_BEATS)
    await h.wait_workers(2)
    with pytest.raises(BackendFailed) as err:
        await collect(h, request("engine-error", max_tokens=2))
    assert "engine failed on this request" in err.value.message
    # Both workers still take work at once, long before their next heartbeat.
    assert await listed(h) == ["a", "b"]
    text, last = await collect(h, request(max_tokens=2))
    assert text in ("a t0", "b t0")
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH


async def test_busy_means_ask_another_worker_not_that_it_is_broken(scheduler_factory):
    h = slow_scheduler(scheduler_factory)
    # "a" has more free slots, so it is asked first, and answers busy.
    h.add_worker("a", HYPERLLAMA_SCRIPTED_SLOTS="4", **SLOW_BEATS)
    h.add_worker("b", **SLOW_BEATS)
    await h.wait_workers(2)
    text, last = await collect(h, request("answer-busy:a", max_tokens=3))
    assert text == "b t0 t1"
    assert last.usage.completion_tokens == 3
    assert await listed(h) == ["a", "b"]  # busy is not a failure


async def test_a_worker_that_says_it_is_not_ready_gets_no_work_until_it_says_otherwise(scheduler_factory):
    h = slow_scheduler(scheduler_factory)
    # "a" has more free slots, so it is asked first; its engine is down (it restarts).
    h.add_worker("a", HYPERLLAMA_SCRIPTED_SLOTS="4", **SLOW_BEATS)
    h.add_worker("b", **SLOW_BEATS)
    await h.wait_workers(2)
    # Served by b however often a says so: not counted against the request's re-dispatches.
    for _ in range(4):
        text, _ = await collect(h, request("answer-not-ready:a", max_tokens=2))
        assert text == "b t0"
    assert await listed(h) == ["b"]


async def test_a_request_sent_to_a_worker_that_is_gone_waits_for_it_to_come_back(scheduler_factory):
    """The worker died before the request reached it (its lease still holds): the request cannot
    have caused that, so it is not counted against it; it is served once the worker is back on the
    same address, as make run's launcher or Kubernetes brings it back."""
    h = slow_scheduler(scheduler_factory)
    h.add_worker("a", **SLOW_BEATS)
    await h.wait_workers(1)
    a = h.process("a")
    a.kill()
    pending = asyncio.ensure_future(collect(h, request(max_tokens=2), timeout=30))
    for _ in range(3):  # refused while it is down, however often it is asked
        await asyncio.sleep(0.5)
        assert not pending.done()
    h.cluster.restart(a)
    text, last = await pending
    assert text == "a t0"
    assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH


async def test_a_request_that_kills_workers_is_not_passed_to_a_third(scheduler_factory):
    h = slow_scheduler(scheduler_factory)
    for worker in ("a", "b", "c"):
        h.add_worker(worker, **SLOW_BEATS)
    await h.wait_workers(3)
    with pytest.raises(BackendFailed) as err:
        await collect(h, request("crash-before-first-token", max_tokens=2))
    assert "2 workers died while serving it" in err.value.message

    async def two_gone() -> bool:  # a process whose socket closed may take a moment to exit
        return sum(not h.process(w).alive() for w in ("a", "b", "c")) == 2

    await until(two_gone)
    alive = [w for w in ("a", "b", "c") if h.process(w).alive()]
    assert len(alive) == 1  # one retry (a worker killed from outside loses nothing), no more
    text, _ = await collect(h, request(max_tokens=2))
    assert text == f"{alive[0]} t0"


async def test_a_worker_dying_after_its_final_chunk_leaves_a_complete_stream(scheduler_factory):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    chunks = [c async for c in h.dispatch.generate(request("crash-after-final", max_tokens=3), 20)]
    assert "".join(c.text for c in chunks) == "a t0 t1"
    assert [c.finish_reason for c in chunks][-1] == worker_pb2.FINISH_REASON_LENGTH
    assert sum(1 for c in chunks if c.finish_reason) == 1


async def test_slots_are_counted_per_model_on_a_two_model_worker(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a", HYPERLLAMA_SCRIPTED_MODELS="m1:1,m2:1", HYPERLLAMA_SCRIPTED_SLOTS="1")
    await h.wait_workers(1)

    def for_model(model: str, prompt: str = "hello"):  # type: ignore[no-untyped-def]
        req = request(prompt, max_tokens=2)
        req.request.model = model
        return req

    stall = asyncio.ensure_future(collect(h, for_model("m1:1", "stall"), timeout=30))
    await until(lambda: _in_use(h, 1))
    # m1's only slot is taken: a second m1 request waits, though the worker has a free m2 slot.
    second = asyncio.ensure_future(collect(h, for_model("m1:1"), timeout=30))
    await until(lambda: _zcard(redis_client, "m1:1", 1))
    text, _ = await collect(h, for_model("m2:1"), timeout=10)
    assert text == "a t0"
    assert not second.done()
    stall.cancel()
    text, _ = await second
    assert text == "a t0"


async def test_an_embedding_response_over_4_mib_is_relayed(scheduler_factory):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    req = scheduler_pb2.EmbedRequest(
        request=worker_pb2.EmbedRequest(request_id="big", model="scripted:1", inputs=["dim-1500000"])
    )
    async with grpc.aio.insecure_channel(h.cluster.scheduler_address, options=MESSAGE_SIZE_OPTIONS) as ch:
        from hyperllama.scheduler.v1 import scheduler_pb2_grpc

        response = await scheduler_pb2_grpc.SchedulerServiceStub(ch).Embed(req, timeout=30)
    assert len(response.embeddings[0].values) == 1_500_000  # 6 MB of floats
    assert await listed(h) == ["a"]


async def test_embeddings_on_busy_workers_are_refused_with_retry_after(scheduler_factory):
    h = slow_scheduler(scheduler_factory)
    h.add_worker("a", **SLOW_BEATS)
    await h.wait_workers(1)
    req = scheduler_pb2.EmbedRequest(
        request=worker_pb2.EmbedRequest(request_id="e", model="scripted:1", inputs=["answer-busy"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.stub.Embed(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("hl-retry-after", "1") in tuple(err.value.trailing_metadata())
    assert await listed(h) == ["a"]


async def test_a_second_call_with_a_running_id_replaces_the_first(scheduler_factory, redis_client):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    stall = asyncio.ensure_future(collect(h, request("stall"), timeout=30))
    await until(lambda: _in_use(h, 1))
    first = asyncio.ensure_future(collect(h, request(rid="same", max_tokens=2), timeout=30))
    await until(lambda: _zcard(redis_client, "scripted:1", 1))
    second = asyncio.ensure_future(collect(h, request(rid="same", max_tokens=3), timeout=30))
    started = time.monotonic()
    with pytest.raises(Cancelled):
        await first  # ends at once instead of waiting, orphaned, for its deadline
    assert time.monotonic() - started < 5
    stall.cancel()
    text, _ = await second
    assert text == "a t0 t1"
    await until(lambda: _zcard(redis_client, "scripted:1", 0))

    async def nothing_left() -> bool:  # the lease goes back in the background
        return await redis_client.keys("hl:req*") == []

    await until(nothing_left)


async def _in_use(h, n: int) -> bool:  # type: ignore[no-untyped-def]
    response = await h.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2)
    return sum(w.slots_in_use for w in response.workers) == n


async def _zcard(redis_client, model: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await redis_client.zcard(keys.queue(model)) == n


async def test_a_huge_model_name_is_not_found_and_not_echoed_whole(scheduler_factory):
    h = scheduler_factory()
    h.add_worker("a")
    await h.wait_workers(1)
    req = request()
    req.request.model = "x" * 1_000_000
    with pytest.raises(ModelNotFound) as err:
        await collect(h, req)
    # Not "queue full" or a transport error: the echoed name fits the status's trailer.
    assert "(1000000 characters)" in err.value.message
    assert len(err.value.message) < 1000
