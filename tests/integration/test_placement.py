"""Prefix-aware placement between real processes: a request goes to the worker that was sent its
prompt's prefix, even when another is idler; without prefix awareness, to the least loaded.

Workers are the scripted test double (tests/support/scripted_worker.py); their answer starts with
their id, which is how the test sees where a request went.
"""

from __future__ import annotations

import asyncio

import pytest
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_scheduler import keys, placement
from hyperllama_scheduler.dispatcher import Dispatcher, Needs
from hyperllama_scheduler.leases import SlotLeases
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import RequestQueue
from hyperllama_scheduler.registry import WorkerRegistry
from hyperllama_scheduler.routing import Requirements
from test_scheduler import MODEL, collect, request, until

# Long enough for several whole blocks of the scheduler's prefix hashing (256 bytes each).
SYSTEM = "You are the assistant of tenant seven. " * 40


async def first_then_stall(h, redis_client):  # type: ignore[no-untyped-def]
    """Send the prefix once (its worker is its home), then a stalling request with the same prefix;
    returns (home, the worker the stall holds a slot of, the stall's task)."""
    first, _ = await collect(h, request(SYSTEM + "first question", max_tokens=2))
    home = first.split()[0]

    async def released() -> bool:  # leases go back in the background
        return await redis_client.zcard(keys.leases(home, MODEL)) == 0

    await until(released)
    stall = asyncio.ensure_future(collect(h, request(SYSTEM + "stall", max_tokens=2), timeout=30))
    busy: list[str] = []

    async def one_busy() -> bool:
        listed = await h.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2)
        busy[:] = [w.worker_id for w in listed.workers if w.slots_in_use == 1]
        return len(busy) == 1

    await until(one_busy)
    return home, busy[0], stall


@pytest.mark.parametrize("prefix_aware", ["true", "false"])
async def test_a_shared_prefix_goes_where_it_went_before(scheduler_factory, redis_client, prefix_aware):
    h = scheduler_factory(prefix_aware=prefix_aware)
    h.add_worker("a", HYPERLLAMA_SCRIPTED_SLOTS="4")
    h.add_worker("b", HYPERLLAMA_SCRIPTED_SLOTS="4")
    await h.wait_workers(2)
    # A long request with the same prefix keeps one slot busy: of its home, if placement knows.
    home, busy, stall = await first_then_stall(h, redis_client)
    idle = "b" if busy == "a" else "a"
    again, _ = await collect(h, request(SYSTEM + "second question", max_tokens=2))
    if prefix_aware == "true":
        assert busy == home
        assert again.split()[0] == home  # its cache likely holds the prefix: worth more than idleness
    else:
        assert again.split()[0] == idle  # least loaded

    # A prompt without a whole block in common goes by load alone.
    async def idle_again() -> bool:
        return await redis_client.zcard(keys.leases(idle, MODEL)) == 0

    await until(idle_again)
    fresh, _ = await collect(h, request("A short unrelated prompt.", max_tokens=2))
    assert fresh.split()[0] == idle
    stall.cancel()


@pytest.mark.parametrize("patience", ["30", "0"])
async def test_a_request_waits_a_little_for_the_busy_worker_that_holds_its_prefix(
    scheduler_factory, redis_client, patience
):
    h = scheduler_factory(prefix_patience_seconds=patience)
    h.add_worker("a")  # one slot each
    h.add_worker("b")
    await h.wait_workers(2)
    home, busy, stall = await first_then_stall(h, redis_client)
    assert busy == home  # its home had a free slot
    again = asyncio.ensure_future(collect(h, request(SYSTEM + "second question", max_tokens=2)))
    if patience == "0":
        text, _ = await again  # no patience: the idle worker, at once
        assert text.split()[0] != home
    else:
        await asyncio.sleep(1.5)  # not a synchronisation: the request must still be waiting then
        assert not again.done()
        stall.cancel()
        text, _ = await again
        assert text.split()[0] == home  # it waited for its home's slot
    stall.cancel()


async def test_a_prefix_the_worker_has_likely_dropped_since_no_longer_draws_its_requests(
    scheduler_factory, redis_client
):
    """A worker that reports a prompt cache of about two prompts' size is sent three other long
    prompts after a tenant's: the tenant's next request goes by load, not to the worker that has
    most likely pushed its prompt out of its cache."""
    h = scheduler_factory()
    cache_tokens = str(2 * len(SYSTEM) // 4)  # two prompts' worth at 4 bytes a token
    h.add_worker("a", HYPERLLAMA_SCRIPTED_SLOTS="4", HYPERLLAMA_SCRIPTED_CACHE_TOKENS=cache_tokens)
    h.add_worker("b", HYPERLLAMA_SCRIPTED_SLOTS="4", HYPERLLAMA_SCRIPTED_CACHE_TOKENS=cache_tokens)
    await h.wait_workers(2)
    home, busy, stall = await first_then_stall(h, redis_client)
    assert busy == home
    again, _ = await collect(h, request(SYSTEM + "second question", max_tokens=2))
    assert again.split()[0] == home  # still fresh: the prefix wins over the idle worker
    for n in range(3):  # other tenants' prompts, sent to the same worker
        other = f"You are the assistant of tenant {n}. " * 40
        await redis_client.zadd(  # as the scheduler records a grant: every block, scored by time
            keys.prefixes(home, MODEL),
            {b: 10**13 + n for b in placement.prefix_hashes(request(other + "?").request)},
        )
    third, _ = await collect(h, request(SYSTEM + "third question", max_tokens=2))
    assert third.split()[0] != home  # by load: the busy home holds the stall
    stall.cancel()


async def test_a_request_does_not_wait_for_its_home_when_another_free_worker_holds_its_prefix(
    scheduler_factory, redis_client
):
    h = scheduler_factory(prefix_patience_seconds="30")
    h.add_worker("a")  # one slot each
    h.add_worker("b")
    await h.wait_workers(2)
    home, busy, stall = await first_then_stall(h, redis_client)
    other = "b" if home == "a" else "a"
    hashes = placement.prefix_hashes(request(SYSTEM + "x").request)
    assert len(hashes) == 6
    # Most of the prefix was sent to the other worker too (less than to its home, which stays home).
    await redis_client.zadd(keys.prefixes(other, MODEL), {b: 1 for b in hashes[:4]})
    text, _ = await collect(h, request(SYSTEM + "second question", max_tokens=2), timeout=10)
    assert text.split()[0] == other  # at once, not after 30 s of patience
    stall.cancel()


async def test_a_request_whose_home_slot_was_just_taken_waits_for_it_rather_than_prefill_elsewhere(
    redis_client,
):
    """The race behind a placement: a dispatch pass counts the home's free slot, another replica
    leases it before this grant. The request must then wait for its home (within the patience), not
    fall through to the other worker, which would compute its whole prefix again. In-process
    against real Redis, so the race is set up exactly: the pass's count says free, Redis says full."""
    metrics = SchedulerMetrics()
    registry = WorkerRegistry(redis_client, 10, metrics)
    leases = SlotLeases(redis_client, 10, metrics)
    dispatcher = Dispatcher(
        redis_client, RequestQueue(redis_client, 16, 1, metrics), registry, leases, 10,
        prefix_patience_seconds=30,
    )  # fmt: skip
    for worker_id in ("home", "other"):
        await registry.heartbeat(
            worker_pb2.WorkerInfo(
                worker_id=worker_id,
                address=f"{worker_id}:1",
                ready=True,
                capabilities=["generate"],
                slots_total=1,
                models=[worker_pb2.ModelInfo(name=MODEL, slots_total=1)],
            )
        )
    prefixes = tuple(placement.prefix_hashes(request(SYSTEM + "?").request))
    needs = Needs(MODEL, Requirements(("generate",)), prefixes)
    await redis_client.zadd(keys.prefixes("home", MODEL), {h: 1 for h in prefixes})  # sent there before
    # The home's one slot, leased by another replica after this pass counted it free.
    await redis_client.zadd(keys.leases("home", MODEL), {"someone-else": 2**50})

    lease = await dispatcher._place(MODEL, "r1", needs, queued=False, in_use={}, waited=0.5)
    assert lease is None  # waits for its home
    assert await redis_client.zcard(keys.leases("other", MODEL)) == 0

    lease = await dispatcher._place(MODEL, "r1", needs, queued=False, in_use={}, waited=31)
    assert lease is not None and lease.worker_id == "other"  # past the patience: by load
