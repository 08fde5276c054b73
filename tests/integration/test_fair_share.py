"""Fair share across tenants between real processes (issue 12): a tenant that floods a model's queue
does not hold back another tenant's requests, which wait about as long as they would alone.

The worker is the scripted test double (tests/support/scripted_worker.py) with a short pause between
tokens, so a flood takes a few seconds to drain; it logs the order in which it starts serving
requests.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_common.errors import InvalidRequest
from hyperllama_scheduler import keys
from test_scheduler import MODEL, collect, request, until

SLOTS = 2
MAX_TOKENS = 5
TOKEN_DELAY = 0.02  # 4 pauses: 80 ms a request, 25 requests a second on 2 slots
FLOOD = 200
SMALL = 10


def of_tenant(tenant: str, rid: str, weight: float = 0.0) -> scheduler_pb2.AcquireRequest:
    req = request(rid=rid, max_tokens=MAX_TOKENS, deadline_s=60)
    req.tenant, req.weight = tenant, weight
    return req


async def wait_of(h, req: scheduler_pb2.AcquireRequest, heard: set[str] | None = None) -> float:
    """Seconds from asking for a slot to the first chunk, which the scripted worker sends as soon as
    the lease is used: the request's wait. ``heard``: gets the id once the scheduler has answered
    (queued, or granted at once)."""
    started = time.monotonic()
    waited = None
    async for event in h.dispatch.generate(req, 60):
        if heard is not None:
            heard.add(req.request.request_id)
        if waited is None and isinstance(event, worker_pb2.GenerateChunk):
            waited = time.monotonic() - started
    assert waited is not None
    return waited


async def idle(h, redis_client) -> None:
    async def nothing_waits_or_runs() -> bool:
        leased = await redis_client.zcard(keys.leases("w", MODEL))
        return leased == 0 and await redis_client.zcard(keys.queue(MODEL)) == 0

    await until(nothing_waits_or_runs)


async def test_a_flooding_tenant_does_not_hold_back_another(scheduler_factory, redis_client, tmp_path):
    served_log = tmp_path / "served"
    h = scheduler_factory(queue_max_per_model=str(FLOOD + SMALL + 10))
    h.add_worker(
        "w",
        HYPERLLAMA_SCRIPTED_SLOTS=str(SLOTS),
        HYPERLLAMA_SCRIPTED_TOKEN_DELAY=str(TOKEN_DELAY),
        HYPERLLAMA_SCRIPTED_SERVED_LOG=str(served_log),
    )
    await h.wait_workers(1)
    await collect(h, of_tenant("b", "warm-up"))  # channels opened, stream lengths known
    await idle(h, redis_client)

    alone = await asyncio.gather(*(wait_of(h, of_tenant("b", f"b-alone-{n}")) for n in range(SMALL)))
    await idle(h, redis_client)

    heard: set[str] = set()
    flood = [asyncio.ensure_future(wait_of(h, of_tenant("a", f"a-{n:03}"), heard)) for n in range(FLOOD)]

    async def flood_admitted() -> bool:
        return len(heard) == FLOOD

    await until(flood_admitted, timeout=30)
    waiting = await redis_client.zcard(keys.queue(MODEL))
    crowded = await asyncio.gather(*(wait_of(h, of_tenant("b", f"b-{n}")) for n in range(SMALL)))
    await asyncio.gather(*flood)

    p50_alone, p50_crowded = statistics.median(alone), statistics.median(crowded)
    print(
        f"\nB's p50 wait: alone {p50_alone * 1000:.0f} ms, behind a flood of {FLOOD} "
        f"({waiting} still queued when B arrived) {p50_crowded * 1000:.0f} ms"
    )
    # B shares the slots with A half and half: about twice its wait alone. The absolute slack is
    # for scheduling noise: ~200 waiting calls, the scheduler and the worker share two cores with
    # this test, and a wake-up that comes late costs a request a whole stream (80 ms) or more.
    assert p50_crowded <= 2 * p50_alone + 0.4

    # That bound means something only if A's flood would have held B back: A's requests were all
    # admitted before B's, so in arrival order every one still waiting would run first. Fair share
    # serves B among the first of them.
    assert waiting >= FLOOD // 2
    order = [line for line in served_log.read_text().split() if line.startswith(("a-", "b-"))]
    last_b = max(i for i, rid in enumerate(order) if rid.startswith("b-"))
    a_after = sum(1 for rid in order[last_b:] if rid.startswith("a-"))
    assert a_after >= waiting - 3 * SMALL


@pytest.mark.parametrize("tenant", ["has space", "x" * 65, "ümlaut", "a/b"])
async def test_a_tenant_name_of_the_wrong_shape_is_refused(scheduler_factory, tenant):
    h = scheduler_factory()
    h.add_worker("w")
    await h.wait_workers(1)
    with pytest.raises(InvalidRequest) as err:
        await collect(h, of_tenant(tenant, "bad"))
    assert err.value.param == "tenant"
    text, _ = await collect(h, of_tenant("tenant-1.x_y", "good", weight=2))
    assert text.startswith("w")
