"""One cluster with a worker of every engine serving smollm2:135m: llama.cpp from the GGUF, vLLM and
MAX from the Hugging Face directory that `make models` prepares. The conformance suite talks to each
worker's gRPC API directly; the pinned-engine tests go through the gateway with the official clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import ollama
import openai
import pytest
from hyperllama.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from hyperllama.worker.v1 import worker_pb2, worker_pb2_grpc
from hyperllama_cli.cluster import LocalCluster, free_port, wait_for
from support.cluster_state import reported

MODEL = "smollm2:135m"
ENGINES = ("llamacpp", "vllm", "max")


@dataclass
class EngineWorker:
    engine: str
    address: str
    stub: worker_pb2_grpc.WorkerServiceStub
    channel: grpc.Channel

    def info(self) -> worker_pb2.WorkerInfo:
        return self.stub.Info(worker_pb2.InfoRequest(), timeout=5)


def _registered(scheduler_address: str) -> list[worker_pb2.WorkerInfo]:
    with grpc.insecure_channel(scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        return list(stub.ListWorkers(scheduler_pb2.ListWorkersRequest(), timeout=5).workers)


@pytest.fixture(scope="session")
def engine_cluster(redis_url: str, logs_dir: Path) -> Iterator[LocalCluster]:
    # Its own Redis database, apart from the other tiers' clusters.
    c = LocalCluster(gateway_port=free_port(), log_dir=logs_dir, redis_url=redis_url.rsplit("/", 1)[0] + "/2")
    with reported(c):
        c.start_scheduler()
        for engine in ENGINES:
            c.start_engine_worker(engine, f"conformance-{engine}", heartbeat_seconds="0.5")
        c.start_gateway()
        # A first MAX start compiles the model (a few minutes on 2 cores); later starts use its cache.
        c.wait_ready(len(ENGINES), timeout=900)
        yield c


@pytest.fixture(scope="session")
def engine_workers(engine_cluster: LocalCluster) -> Iterator[dict[str, EngineWorker]]:
    def all_registered() -> bool:
        return {w.engine for w in _registered(engine_cluster.scheduler_address) if w.ready} >= set(ENGINES)

    wait_for(all_registered, "every engine's worker registered", None, 60)
    workers = {}
    for info in _registered(engine_cluster.scheduler_address):
        channel = grpc.insecure_channel(info.address)
        workers[info.engine] = EngineWorker(
            info.engine, info.address, worker_pb2_grpc.WorkerServiceStub(channel), channel
        )
    yield workers
    for w in workers.values():
        w.channel.close()


@pytest.fixture(params=ENGINES)
def worker(request: pytest.FixtureRequest, engine_workers: dict[str, EngineWorker]) -> EngineWorker:
    return engine_workers[request.param]


@pytest.fixture(scope="session")
def gateway_url(engine_cluster: LocalCluster) -> str:
    return engine_cluster.gateway_url


def pinned_openai(gateway_url: str, engine: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway_url}/v1",
        api_key="not-needed",
        max_retries=0,
        timeout=120,
        default_headers={"X-HyperLlama-Engine": engine},
    )


def pinned_ollama(gateway_url: str, engine: str) -> ollama.Client:
    return ollama.Client(host=gateway_url, timeout=120, headers={"X-HyperLlama-Engine": engine})
