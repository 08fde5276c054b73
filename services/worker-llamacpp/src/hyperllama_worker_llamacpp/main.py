"""Entry point: load the models, serve the Worker API, register with the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import grpc

from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.grpc_server import GrpcServer
from hyperllama_common.logs import setup_logging
from hyperllama_worker_llamacpp.engine import LoadedModel
from hyperllama_worker_llamacpp.registry import load_registry, select
from hyperllama_worker_llamacpp.service import WorkerServicer
from hyperllama_worker_llamacpp.settings import WorkerSettings

log = logging.getLogger("hyperllama_worker_llamacpp")

ENGINE = "llamacpp"
CAPABILITIES = ["generate", "chat", "embed", "json_object", "json_schema", "seed", "stop"]


def parse_cpus(spec: str) -> set[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


async def heartbeat_loop(settings: WorkerSettings, servicer: WorkerServicer) -> None:
    """Renew this worker's lease at the scheduler; reconnects by itself if the scheduler restarts."""
    async with grpc.aio.insecure_channel(settings.scheduler_address) as channel:
        stub = scheduler_pb2_grpc.RegistryServiceStub(channel)
        while True:
            try:
                await stub.Heartbeat(
                    scheduler_pb2.HeartbeatRequest(worker=servicer.snapshot()),
                    timeout=max(1.0, settings.heartbeat_seconds),
                )
            except grpc.aio.AioRpcError as err:
                log.warning("heartbeat to %s failed: %s", settings.scheduler_address, err.code().name)
            await asyncio.sleep(settings.heartbeat_seconds)


async def deregister(settings: WorkerSettings, worker_id: str) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError):
        async with grpc.aio.insecure_channel(settings.scheduler_address) as channel:
            await scheduler_pb2_grpc.RegistryServiceStub(channel).Deregister(
                scheduler_pb2.DeregisterRequest(worker_id=worker_id), timeout=2
            )


async def serve(settings: WorkerSettings) -> None:
    if settings.cpus:
        os.sched_setaffinity(0, parse_cpus(settings.cpus))
    threads = settings.threads or len(os.sched_getaffinity(0))
    specs = select(load_registry(settings.models_file), settings.models)
    models = {s.name: await asyncio.to_thread(LoadedModel, s, settings.num_ctx, threads) for s in specs}

    server = GrpcServer(f"{settings.host}:{settings.port}", "hyperllama.worker.v1.WorkerService", settings.grace_seconds)
    worker_id = settings.worker_id or f"{ENGINE}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    info = worker_pb2.WorkerInfo(
        worker_id=worker_id,
        engine=ENGINE,
        pool=settings.pool,
        slots_total=1,
        ready=True,
        models=[m.info for m in models.values()],
        capabilities=CAPABILITIES,
    )
    servicer = WorkerServicer(models, info)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server.server)
    port = await server.start()
    info.address = settings.advertise_address or f"{settings.host}:{port}"
    server.install_signal_handlers()
    log.info("worker %s serving %s on %s (%d threads)", worker_id, sorted(models), info.address, threads)

    heartbeats = asyncio.create_task(heartbeat_loop(settings, servicer))
    await server.wait_for_stop_signal()
    # Drain: stop taking new work first, then let running streams finish within the grace period.
    heartbeats.cancel()
    await deregister(settings, worker_id)
    await server.stop()


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker-llamacpp", settings.log_level, settings.log_json)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
