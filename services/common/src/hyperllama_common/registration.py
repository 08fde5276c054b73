"""How every worker, whatever its engine, announces itself to the scheduler and leaves again.

The scheduler address may name several replicas (``hyperllama_common.targets``). They share the
worker registry in Redis, so any replica may take a heartbeat: the channel spreads them round robin
and skips a replica whose connection failed, and a worker keeps its lease while one replica dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2

from hyperllama_common.targets import scheduler_channel

log = logging.getLogger(__name__)


async def heartbeat_loop(
    scheduler_address: str,
    snapshot: Callable[[], worker_pb2.WorkerInfo],
    interval: float,
    changed: asyncio.Event | None = None,
) -> None:
    """Renew the worker's lease forever; survives scheduler restarts (the channel reconnects).
    ``changed``: set when the worker's models changed, to send the next heartbeat at once."""
    async with scheduler_channel(scheduler_address) as channel:
        stub = scheduler_pb2_grpc.RegistryServiceStub(channel)
        while True:
            try:
                await stub.Heartbeat(
                    scheduler_pb2.HeartbeatRequest(worker=snapshot()), timeout=max(1.0, interval)
                )
            except grpc.aio.AioRpcError as err:
                # A replica that died under the call: the next heartbeat goes to another at once
                # rather than an interval later, so the lease never lapses for one dead replica.
                log.warning("heartbeat to %s failed: %s", scheduler_address, err.code().name)
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    await _retry_once(stub, snapshot)
            if changed is None:
                await asyncio.sleep(interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), interval)
            changed.clear()


async def _retry_once(
    stub: scheduler_pb2_grpc.RegistryServiceStub, snapshot: Callable[[], worker_pb2.WorkerInfo]
) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.Heartbeat(scheduler_pb2.HeartbeatRequest(worker=snapshot()), timeout=1.0)


async def deregister(scheduler_address: str, worker_id: str) -> None:
    """Best effort: if it fails the lease lapses by itself."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        async with scheduler_channel(scheduler_address) as channel:
            await scheduler_pb2_grpc.RegistryServiceStub(channel).Deregister(
                scheduler_pb2.DeregisterRequest(worker_id=worker_id), timeout=2
            )
