"""Integration fixtures: real Redis, a real scheduler process and scripted worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from cluster import LocalCluster
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

SUPPORT = Path(__file__).parents[1] / "support"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


class SchedulerHarness:
    """A scheduler process plus scripted workers, and a gRPC stub to drive them."""

    def __init__(self, cluster: LocalCluster):
        self.cluster = cluster
        self.channel = grpc.aio.insecure_channel(cluster.scheduler_address)
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)

    def add_worker(self, worker_id: str, **env: str) -> None:
        self.cluster.start_worker(
            worker_id,
            module="scripted_worker",
            extra_env={"PYTHONPATH": f"{SUPPORT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env},
        )

    async def wait_workers(self, count: int, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                listed = await self.stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=2)
                ids = sorted(w.worker_id for w in listed.workers)
                if len(ids) >= count:
                    return ids
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} workers did not register")
            await asyncio.sleep(0.05)

    def process(self, name: str):  # type: ignore[no-untyped-def]
        return next(p for p in self.cluster.processes if p.name == name)


@pytest.fixture
async def scheduler_factory(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> AsyncIterator[Callable[..., SchedulerHarness]]:
    made: list[SchedulerHarness] = []

    def make(**settings: str) -> SchedulerHarness:
        cluster = LocalCluster(log_dir=tmp_path, redis_url=redis_url)
        cluster.start_scheduler(**{"worker_lease_seconds": "2", **settings})
        harness = SchedulerHarness(cluster)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.channel.close()
        harness.cluster.stop()
