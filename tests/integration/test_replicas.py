"""Two scheduler replicas on one Redis, and one of them killed -9 under load: no running stream is
cut, every queued request is served by the other replica, none twice.

Workers are the scripted test double (tests/support/scripted_worker.py); each logs the ids of the
requests it starts serving, which is how "none twice" is checked.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from conftest import SUPPORT, SchedulerHarness
from hyperllama.scheduler.v1 import scheduler_pb2
from hyperllama.worker.v1 import worker_pb2
from hyperllama_cli.cluster import LocalCluster
from hyperllama_scheduler import keys
from test_scheduler import MODEL, until

# Long enough (15 s) that the queue fills and a replica dies while they run, however slow the machine.
RUNNING_TOKENS = 300
TOKEN_DELAY = 0.05


@pytest.fixture
async def replicas(redis_url: str, redis_client, tmp_path: Path):  # type: ignore[no-untyped-def]
    cluster = LocalCluster(log_dir=tmp_path, redis_url=redis_url)
    cluster.start_scheduler(worker_lease_seconds="3")
    cluster.start_scheduler(worker_lease_seconds="3")
    served_log = tmp_path / "served.log"
    for worker in ("a", "b"):
        cluster.start_worker(
            worker,
            module="scripted_worker",
            extra_env={
                "PYTHONPATH": f"{SUPPORT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "HYPERLLAMA_SCRIPTED_SLOTS": "2",
                "HYPERLLAMA_SCRIPTED_TOKEN_DELAY": str(TOKEN_DELAY),
                "HYPERLLAMA_SCRIPTED_SERVED_LOG": str(served_log),
            },
        )
    harness = SchedulerHarness(cluster)
    await harness.wait_workers(2)
    yield harness, served_log
    await harness.dispatch.close()
    await harness.scheduler.close()
    await harness.channel.close()
    cluster.stop()


def request(rid: str, max_tokens: int) -> scheduler_pb2.AcquireRequest:
    return scheduler_pb2.AcquireRequest(
        request=worker_pb2.GenerateRequest(
            request_id=rid,
            model=MODEL,
            prompt="hello",
            sampling=worker_pb2.SamplingParams(max_tokens=max_tokens),
        ),
        deadline_unix_ms=int((time.time() + 60) * 1000),
    )


async def test_killing_a_replica_cuts_no_stream_and_loses_no_queued_request(replicas, redis_client, caplog):
    h, served_log = replicas
    # Four streams fill both workers' slots; eight more wait in the queue, their Acquire calls
    # spread over both replicas.
    running = {
        f"run-{i}": asyncio.ensure_future(h.generate(request(f"run-{i}", RUNNING_TOKENS), 60))
        for i in range(4)
    }

    async def all_running() -> bool:
        return await leases_held(redis_client) == 4

    await until(all_running)
    queued = {f"q-{i}-{uuid.uuid4().hex[:6]}": None for i in range(8)}
    waiting = {rid: asyncio.ensure_future(h.generate(request(rid, 3), 60)) for rid in queued}

    async def all_queued() -> bool:
        return await redis_client.zcard(keys.queue(MODEL)) == len(waiting)

    await until(all_queued)
    victim = h.cluster.schedulers[0]
    victim.kill()  # SIGKILL: no clean-up of any kind
    h.cluster.processes.remove(victim)

    for rid, task in running.items():
        text, last, _ = await task
        assert text == "".join([last_worker(text)] + [f" t{i}" for i in range(RUNNING_TOKENS - 1)]), rid
        assert last.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    for rid, task in waiting.items():
        text, last, _ = await task
        assert text in ("a t0 t1", "b t0 t1"), rid
        assert last.usage.completion_tokens == 3

    # Calls go round robin over the replicas: some of the queued ones were on the one killed, and
    # were taken over by the other with their ids.
    assert any("scheduler unavailable, retrying" in r.getMessage() for r in caplog.records)
    served = Counter(served_log.read_text().split())
    expected = set(running) | set(waiting)
    assert set(served) == expected
    assert [rid for rid, n in served.items() if n > 1] == []  # none served twice

    async def nothing_left() -> bool:
        return await leases_held(redis_client) == 0 and await redis_client.keys("hl:req*") == []

    await until(nothing_left)
    assert await redis_client.zcard(keys.queue(MODEL)) == 0


async def leases_held(redis_client) -> int:  # type: ignore[no-untyped-def]
    return sum([await redis_client.zcard(keys.leases(w, MODEL)) for w in ("a", "b")])


def last_worker(text: str) -> str:
    return text.split(" ", 1)[0]
