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
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2
from hyperllama_cli.cluster import LocalCluster
from hyperllama_common.worker_client import WorkerClients
from hyperllama_gateway.dispatch import Dispatch
from hyperllama_gateway.scheduler_client import SchedulerClient

SUPPORT = Path(__file__).parents[1] / "support"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


class SchedulerHarness:
    """Scheduler processes plus scripted workers, a gRPC stub to drive them, and the gateway's own
    dispatch (lease from the scheduler, tokens from the worker) to run generations as it does."""

    def __init__(self, cluster: LocalCluster, retry_seconds: float = 10.0):
        self.cluster = cluster
        self.channel = grpc.aio.insecure_channel(cluster.scheduler_address.split(",")[0])
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.scheduler = SchedulerClient(cluster.scheduler_address, 3.0, retry_seconds)
        self.dispatch = Dispatch(self.scheduler, WorkerClients(), max_redispatch=2)

    async def generate(
        self, request: scheduler_pb2.AcquireRequest, timeout: float = 20
    ) -> tuple[str, worker_pb2.GenerateChunk, list[scheduler_pb2.QueuePosition]]:
        """Run a generation as the gateway does: (text, final chunk, queue positions heard)."""
        request = scheduler_pb2.AcquireRequest.FromString(request.SerializeToString())
        chunks: list[worker_pb2.GenerateChunk] = []
        positions: list[scheduler_pb2.QueuePosition] = []
        async for event in self.dispatch.generate(request, timeout):
            if isinstance(event, scheduler_pb2.QueuePosition):
                positions.append(event)
            else:
                chunks.append(event)
        return "".join(c.text for c in chunks), chunks[-1], positions

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
        await harness.dispatch.close()
        await harness.scheduler.close()
        await harness.channel.close()
        harness.cluster.stop()
