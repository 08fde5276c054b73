"""Prefix-aware placement between real processes: a request goes to the worker that was sent its
prompt's prefix, even when another is idler; without prefix awareness, to the least loaded.

Workers are the scripted test double (tests/support/scripted_worker.py); their answer starts with
their id, which is how the test sees where a request went.
"""

from __future__ import annotations

import asyncio

import pytest
from hyperllama.scheduler.v1 import scheduler_pb2
from test_scheduler import collect, request, until

# Long enough for several whole blocks of the scheduler's prefix hashing (256 bytes each).
SYSTEM = "You are the assistant of tenant seven. " * 40


@pytest.mark.parametrize("prefix_aware", ["true", "false"])
async def test_a_shared_prefix_goes_where_it_went_before(scheduler_factory, prefix_aware):
    h = scheduler_factory(prefix_aware=prefix_aware)
    h.add_worker("a", HYPERLLAMA_SCRIPTED_SLOTS="4")
    h.add_worker("b", HYPERLLAMA_SCRIPTED_SLOTS="4")
    await h.wait_workers(2)
    first, _ = await collect(h, request(SYSTEM + "first question", max_tokens=2))
    home = first.split()[0]
    # A long request with the same prefix keeps one slot busy: of its home, if placement knows.
    stall = asyncio.ensure_future(collect(h, request(SYSTEM + "stall", max_tokens=2), timeout=30))
    busy: list[str] = []

    async def one_busy() -> bool:
        listed = await h.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2)
        busy[:] = [w.worker_id for w in listed.workers if w.slots_in_use == 1]
        return len(busy) == 1

    await until(one_busy)
    idle = "b" if busy[0] == "a" else "a"
    again, _ = await collect(h, request(SYSTEM + "second question", max_tokens=2))
    if prefix_aware == "true":
        assert busy[0] == home
        assert again.split()[0] == home  # its cache likely holds the prefix: worth more than idleness
    else:
        assert again.split()[0] == idle  # least loaded
    # A prompt without a whole block in common goes by load alone.
    fresh, _ = await collect(h, request("A short unrelated prompt.", max_tokens=2))
    assert fresh.split()[0] == idle
    stall.cancel()
