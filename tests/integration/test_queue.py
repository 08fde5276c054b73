"""The Redis queue and slot leases on a real Redis: order (priority, fair share across tenants,
arrival), idempotent admission, the bound, owners, atomic grants, lapses and clean-up. Two
RequestQueue/SlotLeases objects on one Redis stand for two scheduler replicas."""

import math

import pytest
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import Overloaded
from hyperllama_scheduler import keys
from hyperllama_scheduler.leases import (
    GRANTED,
    GRANTED_BEFORE,
    MARKED,
    NO_SLOT,
    SOMEONE_WAITS,
    SlotLeases,
)
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import ADMITTED, REJOINED, SUPERSEDED, RequestQueue, cost
from hyperllama_scheduler.queue import GRANTED as QUEUE_GRANTED

MODEL = "m:1"
NEEDS = b'{"model": "m:1", "capabilities": ["generate"], "engine": "", "prefixes": []}'


def make_queue(redis_client, bound: int = 10, retry_after: int = 1) -> RequestQueue:
    return RequestQueue(
        redis_client, max_per_model=bound, retry_after=retry_after, metrics=SchedulerMetrics()
    )


def worker(wid: str = "w", slots: int = 2, own: int = 0) -> worker_pb2.WorkerInfo:
    return worker_pb2.WorkerInfo(
        worker_id=wid,
        address="127.0.0.1:1",
        slots_total=slots,
        models=[worker_pb2.ModelInfo(name=MODEL, slots_total=own), worker_pb2.ModelInfo(name="other:1")],
    )


async def admit(
    q: RequestQueue,
    rid: str,
    priority: int = 0,
    owner: str = "o",
    head: bool = False,
    tenant: str = "",
    weight: float = 1.0,
):
    return await q.admit(
        MODEL, rid, NEEDS, priority, owner=owner, ttl_ms=60_000, lease_ms=10_000,
        tenant=tenant, weight=weight, head=head,
    )  # fmt: skip


async def take(q: RequestQueue, count: int = 1000) -> list[str]:
    """Grant the head of the queue, one request at a time, as dispatch passes do; the ids taken."""
    leases = SlotLeases(q._redis, 15, SchedulerMetrics())
    taken: list[str] = []
    while len(taken) < count and (head := await q.head(MODEL, 1)):
        assert (await leases.grant(worker(slots=10_000), MODEL, head[0], [], queued=True)).code == GRANTED
        taken.append(head[0])
    return taken


async def flood(q: RequestQueue, tenant: str, count: int, start: int = 0, **kw) -> list[str]:
    """``count`` requests of ``tenant`` admitted one after another, ids "<tenant>-<n>" in order."""
    ids = [f"{tenant}-{n:03}" for n in range(start, start + count)]
    for rid in ids:
        await admit(q, rid, tenant=tenant, **kw)
    return ids


async def test_priority_first_then_arrival(redis_client):
    q = make_queue(redis_client)
    for rid, prio in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)]:
        await admit(q, rid, prio)
    assert await q.head(MODEL, 10) == ["e", "b", "d", "a", "c"]


async def test_admission_is_idempotent_keeps_the_place_and_passes_ownership(redis_client):
    q = make_queue(redis_client)
    await admit(q, "first", owner="call-1")
    await admit(q, "second")
    await admit(q, "first", owner="call-2")  # the caller's retry, on another replica
    assert await q.head(MODEL, 10) == ["first", "second"]
    assert await q.depth(MODEL) == 2
    # The first call learns it was replaced; the second owns the request now.
    first = await q.renew(MODEL, "first", NEEDS, 0, owner="call-1", ttl_ms=60_000, lease_ms=10_000)
    assert first.status == SUPERSEDED
    second = await q.renew(MODEL, "first", NEEDS, 0, owner="call-2", ttl_ms=60_000, lease_ms=10_000)
    assert (second.status, second.position, second.depth) == (ADMITTED, 0, 2)
    # The replaced call's clean-up leaves the request alone.
    await q.forget(MODEL, "first", owner="call-1")
    assert await q.head(MODEL, 10) == ["first", "second"]


async def test_full_queue_refuses_at_once_and_never_exceeds_its_bound(redis_client):
    q = make_queue(redis_client, bound=2, retry_after=3)
    await admit(q, "a")
    await admit(q, "b")
    with pytest.raises(Overloaded) as err:
        await admit(q, "c")
    assert err.value.retry_after == 3
    assert await q.depth(MODEL) == 2
    assert not await redis_client.exists(keys.request("c"), keys.request_lease("c"))
    # A request coming back after its worker failed is not refused: it had been admitted once.
    await admit(q, "back", head=True)
    assert await q.head(MODEL, 10) == ["back", "a", "b"]


async def test_a_grant_takes_the_request_and_a_slot_in_one_step(redis_client):
    q, leases = make_queue(redis_client), SlotLeases(redis_client, 15, SchedulerMetrics())
    other_replica = SlotLeases(redis_client, 15, SchedulerMetrics())
    await admit(q, "a")
    first = await leases.grant(worker(), MODEL, "a", [], queued=True)
    assert first.code == GRANTED and first.lease.worker_id == "w"
    # Another replica's pass for the same request finds the grant, not a second slot.
    again = await other_replica.grant(worker(), MODEL, "a", [], queued=True)
    assert again.code == GRANTED_BEFORE and again.lease == first.lease
    assert await q.depth(MODEL) == 0
    assert (await leases.in_use([worker()], MODEL)) == {"w": 1}
    assert (
        await q.renew(MODEL, "a", NEEDS, 0, owner="o", ttl_ms=1000, lease_ms=1000)
    ).status == QUEUE_GRANTED
    assert not await redis_client.exists(keys.request("a"), keys.request_lease("a"))


async def test_slots_are_never_over_granted(redis_client):
    q, leases = make_queue(redis_client), SlotLeases(redis_client, 15, SchedulerMetrics())
    for rid in ("a", "b", "c"):
        await admit(q, rid)
    codes = [
        (await leases.grant(worker(slots=2), MODEL, rid, [], queued=True)).code for rid in ("a", "b", "c")
    ]
    assert codes == [GRANTED, GRANTED, NO_SLOT]
    assert await q.head(MODEL, 10) == ["c"]  # refused, so still queued
    # Shared slots: another model of the same worker counts against them too.
    assert (await leases.grant(worker(slots=2), "other:1", "d", [], queued=False)).code == NO_SLOT
    # A model with slots of its own counts only those.
    own = worker(slots=4, own=1)
    assert (await leases.grant(own, MODEL, "c", [], queued=True)).code == NO_SLOT  # a and b hold 2 > 1


async def test_the_fast_path_yields_to_anyone_waiting(redis_client):
    q, leases = make_queue(redis_client), SlotLeases(redis_client, 15, SchedulerMetrics())
    await admit(q, "waiting")
    assert (await leases.grant(worker(), MODEL, "new", [], queued=False)).code == SOMEONE_WAITS
    assert (await leases.grant(worker(), MODEL, "waiting", [], queued=True)).code == GRANTED
    assert (await leases.grant(worker(), MODEL, "new", [], queued=False)).code == GRANTED


async def test_a_worker_marked_full_or_suspect_gets_nothing(redis_client):
    leases = SlotLeases(redis_client, 15, SchedulerMetrics())
    await redis_client.psetex(keys.worker_full("w"), 5000, "1")
    assert (await leases.grant(worker(), MODEL, "a", [], queued=False)).code == MARKED
    await redis_client.delete(keys.worker_full("w"))
    await redis_client.psetex(keys.worker_suspect("w"), 5000, "1")
    assert (await leases.grant(worker(), MODEL, "a", [], queued=False)).code == MARKED


async def test_leases_are_renewed_released_and_lapse(redis_client):
    leases = SlotLeases(redis_client, 15, SchedulerMetrics())
    kept = (await leases.grant(worker(slots=2), MODEL, "kept", [], queued=False)).lease
    lapsing = (await leases.grant(worker(slots=2), MODEL, "lapsing", [], queued=False)).lease
    assert await leases.in_use([worker()], MODEL) == {"w": 2}
    await redis_client.zadd(keys.leases("w", MODEL), {"lapsing": 1})  # as if its gateway died long ago
    assert await leases.in_use([worker()], MODEL) == {"w": 1}
    assert await leases.renew([kept, lapsing]) == ["lapsing"]
    # The lapsed slot is free for someone else; the renewed one is not.
    assert (await leases.grant(worker(slots=2), MODEL, "next", [], queued=False)).code == GRANTED
    assert (await leases.grant(worker(slots=2), MODEL, "more", [], queued=False)).code == NO_SLOT
    await leases.release(kept, duration_ms=1000, freed=True)
    assert await leases.in_use([worker()], MODEL) == {"w": 1}
    assert not await redis_client.exists(keys.grant("kept"))
    assert await leases.mean_duration_ms(MODEL) == 1000


async def test_prefixes_are_recorded_where_a_request_went(redis_client):
    leases = SlotLeases(redis_client, 15, SchedulerMetrics())
    a, b = worker("a", slots=4), worker("b", slots=4)
    await leases.grant(a, MODEL, "r1", ["p1", "p2", "p3"], queued=False)
    assert await leases.prefix_matches([a, b], MODEL, ["p1", "p2", "x3", "p3"]) == {"a": 2, "b": 0}


async def test_renewal_readmits_a_request_redis_lost(redis_client):
    q = make_queue(redis_client, bound=1)
    await admit(q, "a")
    await redis_client.flushdb()  # Redis restarted empty
    entry = await q.renew(MODEL, "a", NEEDS, 0, owner="o", ttl_ms=60_000, lease_ms=10_000)
    assert entry.status == REJOINED
    assert await q.head(MODEL, 10) == ["a"]


async def test_forget_leaves_nothing_behind_and_returns_an_undelivered_grant(redis_client):
    q, leases = make_queue(redis_client), SlotLeases(redis_client, 15, SchedulerMetrics())
    await admit(q, "gone")
    assert await q.forget(MODEL, "gone", owner="o") == b""
    await admit(q, "granted")
    granted = (await leases.grant(worker(), MODEL, "granted", [], queued=True)).lease
    stale = await q.forget(MODEL, "granted", owner="o")
    assert stale == granted.SerializeToString()
    await leases.release(granted)
    assert await redis_client.keys("hl:req*") == []
    assert await redis_client.keys("hl:queue*") == []
    assert await leases.in_use([worker()], MODEL) == {"w": 0}


async def test_an_abandoned_request_is_dropped_only_once_nobody_owns_it(redis_client):
    q = make_queue(redis_client)
    await admit(q, "a", owner="o")
    await q.forget(MODEL, "a", owner="")  # its owner still renews: kept
    assert await q.head(MODEL, 10) == ["a"]
    await redis_client.delete(keys.request_lease("a"))  # the owner stopped renewing
    await q.forget(MODEL, "a", owner="")
    assert await q.head(MODEL, 10) == []


async def test_a_copy_with_a_live_lease_is_never_retired_and_a_retired_one_grants_nothing(redis_client):
    replica, other_replica = (SlotLeases(redis_client, 15, SchedulerMetrics()) for _ in range(2))
    running = await replica.grant(worker(), MODEL, "a", [], queued=False, copy_keep_alive_ms=0)
    assert running.code == GRANTED
    assert ("w", MODEL) in await replica.expiries()  # keep_alive counted from the grant, for ps
    # A stream uses the copy: no replica may mark it for unloading, and its expiry waits for the end.
    assert await other_replica.retire("w", MODEL, 60_000) == 0
    assert ("w", MODEL) not in await replica.expiries()
    await replica.release(running.lease)
    assert await replica.due() == [("w", MODEL)]  # keep_alive 0 from the stream's end: due now
    # Idle now: exactly one replica retires it, and no slot of it is granted until it is unloaded.
    assert await replica.retire("w", MODEL, 60_000) == 1
    assert await other_replica.retire("w", MODEL, 60_000) == -1
    assert await replica.due() == []
    assert (await other_replica.grant(worker(), MODEL, "b", [], queued=False)).code == MARKED
    await replica.retired("w", MODEL)
    assert (await other_replica.grant(worker(), MODEL, "b", [], queued=False)).code == GRANTED


async def test_the_last_request_granted_sets_the_keep_alive_even_if_an_earlier_one_ends_last(redis_client):
    leases = SlotLeases(redis_client, 15, SchedulerMetrics())
    first = await leases.grant(worker(), MODEL, "a", [], queued=False, copy_keep_alive_ms=600_000)
    # An unload asked for while "a" runs (Ollama's keep_alive 0) wins when "a" ends after it.
    await leases.set_keep_alive("w", MODEL, 0)
    await leases.release(first.lease, keep_alive_ms=600_000)
    assert await leases.due() == [("w", MODEL)]
    # A copy loaded for a request keeps the keep_alive set while it loaded.
    await leases.set_keep_alive("w", MODEL, 300_000, unless_set=True)
    assert await leases.due() == [("w", MODEL)]


async def test_keep_alive_forever_leaves_no_expiry(redis_client):
    leases = SlotLeases(redis_client, 15, SchedulerMetrics())
    granted = await leases.grant(worker(), MODEL, "a", [], queued=False, copy_keep_alive_ms=-1)
    await leases.release(granted.lease, keep_alive_ms=300_000)  # the copy's own -1 wins
    assert await leases.expiries() == {}
    assert (await leases.last_used("w"))[MODEL] > 0  # eviction still sees when it served
    await leases.prune_keep_alives(live_workers=set())
    assert not await redis_client.exists(keys.KEEP_ALIVES)


async def test_a_copy_that_queued_requests_wait_for_is_not_retired(redis_client):
    q, leases = make_queue(redis_client), SlotLeases(redis_client, 15, SchedulerMetrics())
    await admit(q, "early")
    # An unload asked for after "early" arrived: it waits for "early" to be served, whose own
    # keep_alive (older than the unload) does not override it.
    await leases.set_keep_alive("w", MODEL, 0)
    assert await leases.retire("w", MODEL, 60_000) == 0
    granted = await leases.grant(
        worker(), MODEL, "early", [], queued=True, copy_keep_alive_ms=300_000, arrived_ms=1
    )
    assert granted.code == GRANTED
    await leases.release(granted.lease, keep_alive_ms=300_000)
    assert await leases.due() == [("w", MODEL)]
    assert await leases.retire("w", MODEL, 60_000) == 1


# ---- fair share across tenants within a priority band ---------------------------------------------


def of(tenant: str, taken: list[str]) -> list[str]:
    return [r for r in taken if r.startswith(f"{tenant}-")]


async def test_a_tenant_that_floods_the_queue_pushes_back_only_its_own_requests(redis_client):
    q = make_queue(redis_client, bound=100)
    a = await flood(q, "a", 50)
    b = await flood(q, "b", 5)
    taken = await take(q)
    assert max(taken.index(r) for r in b) < 10  # interleaved with a's first, not behind all 50
    assert of("a", taken) == a and of("b", taken) == b  # each tenant's own in arrival order


async def test_a_tenant_arriving_later_starts_at_the_queue_s_virtual_time(redis_client):
    q = make_queue(redis_client, bound=100)
    a = await flood(q, "a", 50)
    assert await take(q, 20) == a[:20]
    # b was idle: it gets no credit for that, nor waits behind what is left of the flood.
    b = await flood(q, "b", 5)
    taken = await take(q, 10)
    assert set(b) <= set(taken)
    assert of("a", taken) == a[20:25]


async def test_weights_share_a_band_in_proportion(redis_client):
    q = make_queue(redis_client, bound=200)
    await flood(q, "a", 60, weight=2)
    await flood(q, "b", 60)  # weight 1
    taken = await take(q, 60)
    rounds = [taken[i : i + 3] for i in range(0, 60, 3)]
    assert all(len(of("a", r)) == 2 and len(of("b", r)) == 1 for r in rounds)


def test_weight_0_counts_as_1_and_extreme_weights_are_clamped():
    assert cost(0) == cost(-2) == cost(math.nan) == cost(math.inf) == cost(1) == 1000
    assert cost(0.5) == 2000 and cost(4) == 250
    assert cost(1e9) == cost(1000) == 1  # still moves a tag on
    assert cost(1e-9) == cost(0.001) == 1_000_000


@pytest.mark.parametrize("tenant", ["", "solo"])
async def test_one_tenant_is_served_in_strict_arrival_order(redis_client, tenant):
    q = make_queue(redis_client, bound=100)
    ids = [f"r{n:03}" for n in range(40)]
    for rid in ids[:20]:
        await admit(q, rid, tenant=tenant, weight=3)
    taken = await take(q, 7)
    for rid in ids[20:30]:
        await admit(q, rid, tenant=tenant, weight=3)
    taken += await take(q)
    for rid in ids[30:]:  # after the band emptied
        await admit(q, rid, tenant=tenant, weight=3)
    taken += await take(q)
    assert taken == ids


async def test_priority_comes_before_fair_share(redis_client):
    q = make_queue(redis_client, bound=100)
    high = await flood(q, "a", 20, priority=5)
    low = await flood(q, "b", 3)
    top = await flood(q, "c", 1, priority=9)
    assert await take(q) == top + high + low


async def test_a_tenant_is_not_held_back_for_what_it_was_served_while_the_band_was_busy(redis_client):
    q = make_queue(redis_client, bound=100)
    await flood(q, "a", 30)
    await take(q)
    # Nobody waits now: everyone starts even again.
    b = await flood(q, "b", 3)
    a = await flood(q, "a", 3, start=30)
    assert await take(q) == [a[0], b[0], a[1], b[1], a[2], b[2]]


async def test_a_request_admitted_again_gets_a_fresh_start_tag(redis_client):
    q = make_queue(redis_client, bound=100)
    a = await flood(q, "a", 20)
    await admit(q, "b-000", tenant="b")
    before = await redis_client.zscore(keys.queue(MODEL), "b-000")
    await redis_client.zrem(keys.queue(MODEL), "b-000")  # its entry lost (Redis restarted, say)
    entry = await q.renew(
        MODEL, "b-000", NEEDS, 0, owner="o", ttl_ms=60_000, lease_ms=10_000, tenant="b"
    )  # fmt: skip
    assert entry.status == REJOINED
    # Tagged as b's next request: after b's earlier one (that was lost), still ahead of the flood.
    assert await redis_client.zscore(keys.queue(MODEL), "b-000") > before
    assert entry.position == 2
    assert await take(q) == [a[0], a[1], "b-000", *a[2:]]


async def test_a_request_sent_back_after_its_worker_failed_goes_first(redis_client):
    q = make_queue(redis_client, bound=100)
    a = await flood(q, "a", 10)
    b = await flood(q, "b", 3)
    await admit(q, "c-000", tenant="c", head=True)
    # A newcomer is not pulled to the head along with it.
    d = await flood(q, "d", 1)
    taken = await take(q)
    assert taken[0] == "c-000"
    assert taken[1:5] == [a[0], b[0], d[0], a[1]]
