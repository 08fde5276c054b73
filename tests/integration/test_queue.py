"""The Redis queue: order, idempotent admission, the bound, and clean-up."""

import pytest
from hyperllama_common.errors import Overloaded
from hyperllama_scheduler import keys
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import RequestQueue

MODEL = "m:1"


async def admit(q: RequestQueue, rid: str, priority: int = 0) -> bool:
    return await q.admit(MODEL, rid, b"payload-" + rid.encode(), priority, ttl_ms=60_000, lease_ms=10_000)


async def test_priority_first_then_arrival(redis_client):
    q = RequestQueue(redis_client, max_per_model=10, retry_after=1, metrics=SchedulerMetrics())
    for rid, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)]:
        assert await admit(q, rid, prio)
    assert await q.head(MODEL, 10) == ["e", "b", "d", "a", "c"]


async def test_admission_is_idempotent_and_keeps_the_place(redis_client):
    q = RequestQueue(redis_client, max_per_model=10, retry_after=1, metrics=SchedulerMetrics())
    await admit(q, "first")
    await admit(q, "second")
    assert await admit(q, "first") is False  # a retried call
    assert await q.head(MODEL, 10) == ["first", "second"]
    assert await q.depth(MODEL) == 2


async def test_full_queue_refuses_at_once_and_never_exceeds_its_bound(redis_client):
    q = RequestQueue(redis_client, max_per_model=2, retry_after=3, metrics=SchedulerMetrics())
    await admit(q, "a")
    await admit(q, "b")
    with pytest.raises(Overloaded) as err:
        await admit(q, "c")
    assert err.value.retry_after == 3
    assert await q.depth(MODEL) == 2
    assert not await redis_client.exists(keys.request("c"), keys.request_lease("c"))


async def test_take_is_exclusive(redis_client):
    q = RequestQueue(redis_client, max_per_model=5, retry_after=1, metrics=SchedulerMetrics())
    await admit(q, "a")
    assert await q.take(MODEL, "a") is True
    assert await q.take(MODEL, "a") is False


async def test_requeue_first_puts_a_request_ahead_of_its_band(redis_client):
    q = RequestQueue(redis_client, max_per_model=5, retry_after=1, metrics=SchedulerMetrics())
    await admit(q, "a")
    await admit(q, "b")
    await q.take(MODEL, "b")
    await q.requeue_first(MODEL, "b", 0, b"payload-b", ttl_ms=60_000, lease_ms=10_000)
    assert await q.head(MODEL, 5) == ["b", "a"]
    # A dispatch pass that reads the head before the caller waits again finds it alive, not abandoned.
    assert await q.lease_alive("b")
    assert await redis_client.get(keys.request("b")) == b"payload-b"


async def test_renewal_readmits_a_request_redis_lost(redis_client):
    q = RequestQueue(redis_client, max_per_model=1, retry_after=1, metrics=SchedulerMetrics())
    await admit(q, "a")
    await redis_client.flushdb()  # Redis restarted empty
    assert await q.renew(MODEL, "a", 0, b"payload-a", ttl_ms=60_000, lease_ms=10_000) is False
    assert await q.head(MODEL, 5) == ["a"]
    assert await q.lease_alive("a")
    assert await q.renew(MODEL, "a", 0, b"payload-a", ttl_ms=60_000, lease_ms=10_000) is True
    assert await q.depth(MODEL) == 1


async def test_renewal_racing_a_take_does_not_put_the_request_back(redis_client):
    q = RequestQueue(redis_client, max_per_model=5, retry_after=1, metrics=SchedulerMetrics())
    await admit(q, "a")
    assert await q.take(MODEL, "a")
    assert await q.renew(MODEL, "a", 0, b"payload-a", ttl_ms=60_000, lease_ms=10_000) is True
    assert await q.depth(MODEL) == 0
    await q.forget(MODEL, "a")
    assert await redis_client.keys("hl:req*") == []


async def test_forget_leaves_nothing_behind(redis_client):
    q = RequestQueue(redis_client, max_per_model=5, retry_after=1, metrics=SchedulerMetrics())
    await admit(q, "a")
    await q.forget(MODEL, "a")
    assert await redis_client.keys("hl:req*") == []
    assert await q.depth(MODEL) == 0
