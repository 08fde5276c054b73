"""Entry point: load the models, serve the Worker API, register with the scheduler."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import uuid
from pathlib import Path

from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.cpus import usable_cores
from hyperllama_common.grpc_server import GrpcServer
from hyperllama_common.logs import setup_logging
from hyperllama_common.memory import detect_budget_bytes
from hyperllama_common.model_source import ModelSource
from hyperllama_common.registration import deregister, heartbeat_loop
from hyperllama_common.tracing import Tracing
from hyperllama_common.worker_metrics import WorkerMetrics
from prometheus_client import start_http_server

from hyperllama_worker_llamacpp.model_set import ModelSet
from hyperllama_worker_llamacpp.registry import load_registry, select
from hyperllama_worker_llamacpp.service import WorkerServicer
from hyperllama_worker_llamacpp.settings import WorkerSettings

log = logging.getLogger("hyperllama_worker_llamacpp")

ENGINE = "llamacpp"
FORMATS = ["gguf"]
CAPABILITIES = [
    "generate", "chat", "embed", "json_object", "json_schema", "seed", "stop",
    "logprobs", "logit_bias", "token_prompt", "context",
]  # fmt: skip


def parse_cpus(spec: str) -> set[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}."""
    cpus: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


async def serve(settings: WorkerSettings) -> int:
    """Serve until SIGTERM (returns 0) or until a decode loop dies (returns 1, so that the
    supervisor, make run's launcher or Kubernetes, starts a fresh worker)."""
    if settings.cpus:
        os.sched_setaffinity(0, parse_cpus(settings.cpus))
    threads = settings.threads or len(usable_cores())
    specs = select(load_registry(settings.models_file), settings.models)
    metrics = WorkerMetrics(ENGINE, settings.pool)
    budget = settings.memory_budget_mb * 2**20 or detect_budget_bytes()
    source = ModelSource(
        settings.store_url,
        Path(settings.cache_dir).expanduser(),
        store_dir=Path(settings.store_dir).expanduser() if settings.store_dir else None,
    )
    models = ModelSet(settings, threads, metrics, budget, source)
    for spec in specs:
        await models.add(spec)

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
        capabilities=CAPABILITIES,
        formats=FORMATS,
    )
    changed = asyncio.Event()  # a load or unload: heartbeat now rather than at the next interval
    models.on_change = changed.set
    servicer = WorkerServicer(models, info, tracing)
    failed = asyncio.Event()
    not_serving: list[asyncio.Task[None]] = []

    def on_failure() -> None:
        # NOT_SERVING before the failed requests get their errors (a task's first step runs first).
        not_serving.append(asyncio.create_task(server.set_serving(False)))
        failed.set()

    models.add_failure_listener(on_failure)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server.server)
    port = await server.start()
    info.address = settings.advertise_address or f"{settings.host}:{port}"
    server.install_signal_handlers()
    if settings.metrics_port >= 0:
        start_http_server(settings.metrics_port, settings.host, registry=metrics.registry)
    log.info(
        "worker %s serving %s on %s (%d slots, %d threads)",
        worker_id,
        sorted(models.engines),
        info.address,
        settings.slots,
        threads,
    )

    heartbeats = asyncio.create_task(
        heartbeat_loop(settings.scheduler_address, servicer.snapshot, settings.heartbeat_seconds, changed)
    )
    stop = asyncio.ensure_future(server.wait_for_stop_signal())
    failure = asyncio.ensure_future(failed.wait())
    await asyncio.wait([stop, failure], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if failure.done():
        dead = [e for e in models.engines.values() if not e.alive]
        log.error(
            "the decode loop of %s died (%s); leaving the cluster to be restarted",
            dead[0].model.spec.name if dead else "a model",
            dead[0].failure if dead else "",
        )
        exit_code = 1
        await asyncio.gather(*not_serving)
    stop.cancel()
    failure.cancel()
    # Drain: stop taking new work first, then let running streams finish within the grace period.
    heartbeats.cancel()
    await deregister(settings.scheduler_address, worker_id)
    await server.stop()
    models.close()
    await source.aclose()
    tracing.shutdown()
    return exit_code


def main() -> None:
    settings = WorkerSettings()
    setup_logging("worker-llamacpp", settings.log_level, settings.log_json)
    sys.exit(asyncio.run(serve(settings)))


if __name__ == "__main__":
    main()
