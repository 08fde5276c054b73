"""How every worker, whatever its engine, announces itself to the scheduler and leaves again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2

log = logging.getLogger(__name__)


async def heartbeat_loop(
    scheduler_address: str, snapshot: Callable[[], worker_pb2.WorkerInfo], interval: float
) -> None:
    """Renew the worker's lease forever; survives scheduler restarts (the channel reconnects)."""
    async with grpc.aio.insecure_channel(scheduler_address) as channel:
        stub = scheduler_pb2_grpc.RegistryServiceStub(channel)
        while True:
            try:
                await stub.Heartbeat(
                    scheduler_pb2.HeartbeatRequest(worker=snapshot()), timeout=max(1.0, interval)
                )
            except grpc.aio.AioRpcError as err:
                log.warning("heartbeat to %s failed: %s", scheduler_address, err.code().name)
            await asyncio.sleep(interval)


async def deregister(scheduler_address: str, worker_id: str) -> None:
    """Best effort: if it fails the lease lapses by itself."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        async with grpc.aio.insecure_channel(scheduler_address) as channel:
            await scheduler_pb2_grpc.RegistryServiceStub(channel).Deregister(
                scheduler_pb2.DeregisterRequest(worker_id=worker_id), timeout=2
            )
