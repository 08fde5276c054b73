"""Entry point: load the models, serve the Worker API, register with the scheduler."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid

from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.grpc_server import GrpcServer
from hyperllama_common.logs import setup_logging
from hyperllama_common.registration import deregister, heartbeat_loop
from hyperllama_common.tracing import Tracing
from hyperllama_common.worker_metrics import WorkerMetrics
from prometheus_client import start_http_server

from hyperllama_worker_llamacpp.batch_engine import BatchEngine
from hyperllama_worker_llamacpp.embedding import Embedder
from hyperllama_worker_llamacpp.model import LoadedModel
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


async def _first_failure(engines: dict[str, BatchEngine]) -> BatchEngine:
    waits = {asyncio.ensure_future(e.failed.wait()): e for e in engines.values()}
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return waits[done.pop()]
    finally:
        for task in waits:
            task.cancel()


async def serve(settings: WorkerSettings) -> int:
    """Serve until SIGTERM (returns 0) or until a decode loop dies (returns 1, so that the
    supervisor, make run's launcher or Kubernetes, starts a fresh worker)."""
    if settings.cpus:
        os.sched_setaffinity(0, parse_cpus(settings.cpus))
    threads = settings.threads or len(os.sched_getaffinity(0))
    specs = select(load_registry(settings.models_file), settings.models)
    metrics = WorkerMetrics(ENGINE, settings.pool)
    engines: dict[str, BatchEngine] = {}
    embedders: dict[str, Embedder] = {}
    for spec in specs:
        model = await asyncio.to_thread(LoadedModel, spec, settings.num_ctx, threads)
        engines[spec.name] = BatchEngine(
            model,
            settings.slots,
            settings.batch_tokens,
            threads,
            metrics.for_model(spec.name),
            asyncio.get_running_loop(),
            settings.prompt_cache_mb * 2**20,
        )
        embedders[spec.name] = Embedder(
            model, settings.embed_num_ctx or settings.num_ctx, threads, settings.embed_queue_max
        )

    tracing = Tracing("worker-llamacpp", settings.trace_prompts)
    server = GrpcServer(
        f"{settings.host}:{settings.port}",
        "hyperllama.worker.v1.WorkerService",
        settings.grace_seconds,
        tracing.server_interceptors(),
    )
    worker_id = settings.worker_id or f"{ENGINE}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    info = worker_pb2.WorkerInfo(
        worker_id=worker_id,
        engine=ENGINE,
        pool=settings.pool,
        ready=True,
        models=[e.model.info for e in engines.values()],
        capabilities=CAPABILITIES,
    )
    servicer = WorkerServicer(engines, embedders, info, tracing)
    not_serving: list[asyncio.Task[None]] = []
    for engine in engines.values():
        # NOT_SERVING before the failed requests get their errors (a task's first step runs first).
        engine.add_failure_listener(
            lambda: not_serving.append(asyncio.create_task(server.set_serving(False)))
        )
    info.CopyFrom(servicer.snapshot())  # slots per model and their sums
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server.server)
    port = await server.start()
    info.address = settings.advertise_address or f"{settings.host}:{port}"
    server.install_signal_handlers()
    if settings.metrics_port >= 0:
        start_http_server(settings.metrics_port, settings.host, registry=metrics.registry)
    log.info(
        "worker %s serving %s on %s (%d slots, %d threads)",
        worker_id,
        sorted(engines),
        info.address,
        settings.slots,
        threads,
    )

    heartbeats = asyncio.create_task(
        heartbeat_loop(settings.scheduler_address, servicer.snapshot, settings.heartbeat_seconds)
    )
    stop = asyncio.ensure_future(server.wait_for_stop_signal())
    failure = asyncio.ensure_future(_first_failure(engines))
    await asyncio.wait([stop, failure], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if failure.done():
        dead = failure.result()
        log.error(
            "the decode loop of %s died (%s); leaving the cluster to be restarted",
            dead.model.spec.name,
            dead.failure,
        )
        exit_code = 1
        await asyncio.gather(*not_serving)
    stop.cancel()
    failure.cancel()
    # Drain: stop taking new work first, then let running streams finish within the grace period.
    heartbeats.cancel()
    await deregister(settings.scheduler_address, worker_id)
    await server.stop()
    for engine in engines.values():
        engine.close()
    for embedder in embedders.values():
        embedder.close()
    tracing.shutdown()
    return exit_code


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker-llamacpp", settings.log_level, settings.log_json)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
