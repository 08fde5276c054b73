"""End-to-end fixtures: the real cluster (Redis, model store, scheduler, llama.cpp worker, gateway) and real
clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
from hyperllama_cli.cluster import LocalCluster, free_port
from support.cluster_state import reported
from support.registry import RegistryServer, registry_binary

MODEL = "smollm2:135m"
# The e2e cluster's small bounds make "queue full" and "body too large" cheap to reach.
SLOTS = 2
QUEUE_MAX = 2
MAX_BODY_BYTES = 256 * 1024


@pytest.fixture(scope="session")
def cluster(redis_url: str, logs_dir: Path) -> Iterator[LocalCluster]:
    # Its own Redis database, so the integration tests' FLUSHDB never touches it.
    c = LocalCluster(gateway_port=free_port(), log_dir=logs_dir, redis_url=redis_url.rsplit("/", 1)[0] + "/1")
    with reported(c):
        c.start_store()
        c.start_scheduler(queue_max_per_model=str(QUEUE_MAX), retry_after_seconds="2")
        c.start_worker("worker-llamacpp-0", heartbeat_seconds="0.5", slots=str(SLOTS))
        c.start_gateway(max_body_bytes=str(MAX_BODY_BYTES))
        c.wait_ready(1)
        yield c


@pytest.fixture(scope="session")
def base_url(cluster: LocalCluster) -> str:
    return cluster.gateway_url


@pytest.fixture(scope="session")
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def oll(base_url: str) -> ollama.Client:
    return ollama.Client(host=base_url, timeout=120)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A real OCI registry (Debian's docker-registry) on loopback, one per test module."""
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed (make registry-server, from registry.mk)")
    server = RegistryServer(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()
