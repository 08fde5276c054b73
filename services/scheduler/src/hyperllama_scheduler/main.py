"""Entry point: connect to Redis, serve the scheduler's gRPC services, stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import sys

import redis.asyncio as redis
from hyperllama.scheduler.v1 import scheduler_pb2_grpc
from hyperllama_common.errors import HyperLlamaError
from hyperllama_common.grpc_server import GrpcServer
from hyperllama_common.logs import setup_logging
from hyperllama_common.redis_access import RedisCredentialsRefused, check_credentials
from hyperllama_common.tracing import Tracing
from hyperllama_common.worker_client import WorkerClients
from prometheus_client import start_http_server

from hyperllama_scheduler.dispatcher import Dispatcher
from hyperllama_scheduler.leases import SlotLeases
from hyperllama_scheduler.loader import ModelLoader
from hyperllama_scheduler.metrics import SchedulerMetrics
from hyperllama_scheduler.queue import RequestQueue
from hyperllama_scheduler.registry import WorkerRegistry
from hyperllama_scheduler.service import RegistryServicer, SchedulerServicer
from hyperllama_scheduler.settings import SchedulerSettings
from hyperllama_scheduler.store_catalog import StoreCatalog

log = logging.getLogger("hyperllama_scheduler")


async def serve(settings: SchedulerSettings) -> None:
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
    )
    try:
        await check_credentials(client, settings.redis_url)
    except RedisCredentialsRefused:
        await client.aclose()
        raise
    metrics = SchedulerMetrics()
    queue = RequestQueue(client, settings.queue_max_per_model, settings.retry_after_seconds, metrics)
    registry = WorkerRegistry(client, settings.worker_lease_seconds, metrics)
    leases = SlotLeases(client, settings.slot_lease_seconds, metrics)
    dispatcher = Dispatcher(
        client,
        queue,
        registry,
        leases,
        settings.request_lease_seconds,
        settings.prefix_aware,
        settings.prefix_patience_seconds,
        replica_after_seconds=settings.replica_after_seconds,
    )
    tracing = Tracing("scheduler")
    workers = WorkerClients(tracing.client_interceptors())
    catalog = StoreCatalog(settings.store_url)
    loader = ModelLoader(
        client, settings, registry, leases, queue, workers, catalog, metrics, dispatcher.wake
    )
    dispatcher.loader = loader

    server = GrpcServer(
        f"{settings.host}:{settings.port}",
        "hyperllama.scheduler.v1.SchedulerService",
        settings.grace_seconds,
        tracing.server_interceptors(),
    )
    scheduler = SchedulerServicer(
        settings, queue, registry, leases, dispatcher, workers, metrics, tracing, loader
    )
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(scheduler, server.server)
    scheduler_pb2_grpc.add_RegistryServiceServicer_to_server(
        RegistryServicer(registry, dispatcher), server.server
    )
    port = await server.start()
    server.install_signal_handlers()
    if settings.metrics_port >= 0:
        start_http_server(settings.metrics_port, settings.host, registry=metrics.registry)
    log.info("scheduler serving on %s:%d, metrics on :%d", settings.host, port, settings.metrics_port)
    background = [
        asyncio.create_task(refresh_gauges(scheduler)),
        asyncio.create_task(dispatcher.listen()),
        asyncio.create_task(loader.sweep_forever()),
    ]
    await server.wait_for_stop_signal()
    for task in background:
        task.cancel()
    await server.stop()
    await workers.close()
    await catalog.aclose()
    await client.aclose()
    tracing.shutdown()


async def refresh_gauges(scheduler: SchedulerServicer, every: float = 2.0) -> None:
    while True:
        try:
            await scheduler.export_gauges()
        except HyperLlamaError as err:
            log.warning("cannot refresh metrics: %s", err.message)
        await asyncio.sleep(every)


def main() -> None:
    settings = SchedulerSettings()
    setup_logging("scheduler", settings.log_level, settings.log_json)
    try:
        asyncio.run(serve(settings))
    except RedisCredentialsRefused as err:
        log.error("%s (HYPERLLAMA_SCHEDULER_REDIS_URL)", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
