"""A worker's main loop: serve the Worker API, keep the engine running on its model (or none, until the
scheduler loads one), heartbeat, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_common.grpc_server import GrpcServer
from hyperllama_common.memory import detect_budget_bytes, detect_gpu_budget_bytes
from hyperllama_common.model_source import ModelSource
from hyperllama_common.registration import deregister, heartbeat_loop
from hyperllama_common.tracing import Tracing
from hyperllama_common.worker_metrics import WorkerMetrics
from prometheus_client import start_http_server

from hyperllama_worker_base.adapter import EngineAdapter
from hyperllama_worker_base.engine_process import EngineProcess
from hyperllama_worker_base.model_host import ModelHost
from hyperllama_worker_base.openai_client import EngineClient
from hyperllama_worker_base.pool import DevicePool
from hyperllama_worker_base.service import EngineServicer
from hyperllama_worker_base.settings import EngineWorkerSettings
from hyperllama_worker_base.supervisor import EngineSupervisor

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_directory(settings: EngineWorkerSettings) -> Path:
    path = Path(settings.model_path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no Hugging Face model directory at {path} (config.json missing); "
            "`make models` prepares the default one from the bundled GGUF"
        )
    return path


def memory_budget(settings: EngineWorkerSettings, pool: DevicePool) -> int:
    """What the worker may fill with models: as set, else its GPUs' memory on a GPU pool, else its
    cgroup's limit or the machine's RAM."""
    if settings.memory_budget_mb:
        return settings.memory_budget_mb * 2**20
    if pool.device != "gpu":
        return detect_budget_bytes()
    try:
        return detect_gpu_budget_bytes(pool.gpus)
    except OSError as err:
        raise SystemExit(f"{err}; set HYPERLLAMA_WORKER_MEMORY_BUDGET_MB to this worker's budget") from None


async def _follow_readiness(host: ModelHost, server: GrpcServer) -> None:
    """The standard gRPC health service says SERVING only while the engine is ready (or none runs)."""
    serving: bool | None = None
    while True:
        if host.ready != serving:
            serving = host.ready
            await server.set_serving(serving)
        await asyncio.sleep(0.5)


async def serve(
    settings: EngineWorkerSettings, make_engine: Callable[[DevicePool, Path], EngineAdapter]
) -> None:
    # httpx logs every request at INFO: one line per health check and per generation.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    pool = DevicePool.from_settings(settings.device, settings.cpus, settings.gpus, settings.pool)
    configured = model_directory(settings) if settings.model else None
    engine_port = settings.engine_port or free_port()
    client = EngineClient(f"http://127.0.0.1:{engine_port}")
    # The adapter's dialect and capabilities do not depend on the model; its command line does.
    engine = make_engine(pool, configured or Path())

    def start_engine(directory: Path) -> EngineSupervisor:
        adapter = make_engine(pool, directory)
        return EngineSupervisor(
            lambda: EngineProcess(
                adapter.command(engine_port), {**adapter.env(), **pool.child_env()}, pool.cpus
            ),
            client,
            adapter.health_path,
            settings.engine_start_timeout_seconds,
            settings.engine_health_interval_seconds,
            settings.engine_health_failures,
            settings.engine_restart_backoff_seconds,
        )

    source = None
    if settings.store_url:
        source = ModelSource(
            settings.store_url,
            Path(settings.cache_dir),
            store_dir=Path(settings.store_dir) if settings.store_dir else None,
        )
    host = ModelHost(
        start_engine,
        settings.max_model_len,
        memory_budget(settings, pool),
        settings.engine_memory_mb * 2**20,
        settings.engine_start_timeout_seconds,
        source,
    )
    if configured is not None:
        host.serve_configured(settings.model, configured)
    changed = asyncio.Event()
    host.on_change = changed.set

    worker_id = settings.worker_id or f"{engine.name}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    info = worker_pb2.WorkerInfo(
        worker_id=worker_id,
        engine=engine.name,
        pool=pool.name,
        slots_total=settings.max_batch,
        capabilities=engine.capabilities,
        # What placement needs to load a model here: model directories, one at a time, each with the
        # engine's own memory besides its weights (its KV cache is inside that, not per token).
        formats=["safetensors"] if source is not None else [],
        kv_tokens_per_model=settings.max_batch * max(1, settings.max_model_len),
        max_models=1,
    )
    tracing = Tracing(f"worker-{engine.name}", settings.trace_prompts)
    server = GrpcServer(
        f"{settings.host}:{settings.port}",
        "hyperllama.worker.v1.WorkerService",
        settings.grace_seconds,
        tracing.server_interceptors(),
    )
    metrics = WorkerMetrics(engine.name, pool.name)
    servicer = EngineServicer(engine, client, host, info, metrics)
    if settings.metrics_port >= 0:
        start_http_server(settings.metrics_port, settings.host, registry=metrics.registry)
    worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server.server)
    port = await server.start()
    info.address = settings.advertise_address or f"{settings.host}:{port}"
    server.install_signal_handlers()
    log.info(
        "worker %s (%s on %s, cores %s) serving %s on %s; engine on port %d",
        worker_id, engine.name, pool.name, pool.cpu_range(), settings.model or "nothing yet", info.address,
        engine_port,
    )  # fmt: skip

    tasks = [
        asyncio.create_task(_follow_readiness(host, server), name="readiness"),
        asyncio.create_task(
            heartbeat_loop(
                settings.scheduler_address, servicer.snapshot, settings.heartbeat_seconds, changed
            ),
            name="heartbeats",
        ),
    ]
    await server.wait_for_stop_signal()
    # Drain: leave the registry first, let running streams finish, then stop the engine.
    for task in tasks:
        task.cancel()
    await deregister(settings.scheduler_address, worker_id)
    await server.stop()
    await host.close()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await client.aclose()
    if source is not None:
        await source.aclose()
    tracing.shutdown()
